"""Modified ConVIRT (the report-sections paper): the image against the mean of the FINDINGS and IMPRESSION
embeddings (global), FINDINGS against IMPRESSION (local); ``L = λ·L_local + (1−λ)·L_global``."""

from __future__ import annotations

import torch

from cxrbench.pretrain.losses.convirt import convirt_loss


def sections_loss(
    image: torch.Tensor,
    findings: torch.Tensor,
    impression: torch.Tensor,
    *,
    temperature: float = 0.1,
    global_weight: float = 0.75,
    local_weight: float = 0.75,
    total_weight: float = 0.75,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The total and its global and local terms. Global: ConVIRT's loss (``global_weight`` on image→text)
    between the image and the mean of the two section embeddings; local: ConVIRT's formula between the
    sections (``local_weight`` = α on findings→impression); ``total_weight`` = λ on the local term.
    The paper's loss scalars are all 0.75 and τ = 0.1."""
    text = (findings + impression) / 2
    g = convirt_loss(image, text, temperature=temperature, weight=global_weight)
    loc = convirt_loss(findings, impression, temperature=temperature, weight=local_weight)
    return total_weight * loc + (1 - total_weight) * g, g, loc
