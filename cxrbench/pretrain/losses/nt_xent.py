"""NT-Xent (Chen et al. 2020, SimCLR): normalised-temperature cross entropy over 2B views."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, *, temperature: float = 0.1) -> torch.Tensor:
    """Mean cross entropy of each view against the other 2B-1; positives are (z1[i], z2[i])."""
    if z1.shape != z2.shape:
        raise ValueError(f"view embeddings differ in shape: {tuple(z1.shape)} vs {tuple(z2.shape)}")
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    logits = z @ z.T / temperature
    n = z1.shape[0]
    logits.fill_diagonal_(float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(logits.float(), targets)
