"""BYOL's loss (Grill et al. 2020): mean squared error between L2-normalised prediction and target."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def byol_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Mean over rows of ``|| p/|p| - z/|z| ||^2 = 2 - 2 cos(p, z)``; ``z`` (the target) gets no gradient."""
    if p.shape != z.shape:
        raise ValueError(f"predictions and targets differ in shape: {tuple(p.shape)} vs {tuple(z.shape)}")
    p, z = F.normalize(p.float(), dim=1), F.normalize(z.detach().float(), dim=1)
    return (2 - 2 * (p * z).sum(dim=1)).mean()
