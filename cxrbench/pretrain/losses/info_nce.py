"""InfoNCE (van den Oord et al. 2018; MoCo, He et al. 2020): each query against its key and a bank of negatives."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def info_nce(q: torch.Tensor, k: torch.Tensor, negatives: torch.Tensor, *, temperature: float = 0.2) -> torch.Tensor:
    """Mean over the B queries of the cross entropy of picking ``k[i]`` among ``k[i]`` and the N
    ``negatives`` by cosine similarity / ``temperature``. ``q``, ``k``: ``[B, D]``; ``negatives``: ``[N, D]``."""
    if q.shape != k.shape:
        raise ValueError(f"queries and keys differ in shape: {tuple(q.shape)} vs {tuple(k.shape)}")
    if negatives.ndim != 2 or negatives.shape[1] != q.shape[1]:
        raise ValueError(f"negatives must be [N, {q.shape[1]}], got {tuple(negatives.shape)}")
    q, k, negatives = (
        F.normalize(q.float(), dim=1),
        F.normalize(k.float(), dim=1),
        F.normalize(negatives.float(), dim=1),
    )
    positive = (q * k).sum(dim=1, keepdim=True)
    logits = torch.cat([positive, q @ negatives.T], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long, device=q.device))
