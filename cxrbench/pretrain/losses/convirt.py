"""ConVIRT (Zhang et al. 2020): bidirectional image–text InfoNCE, ``λ·ℓ(image→text) + (1−λ)·ℓ(text→image)``."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def directional(u: torch.Tensor, v: torch.Tensor, *, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean over the batch of ``ℓ(u→v)`` and ``ℓ(v→u)``: the cross entropy of picking pair ``i`` among the
    batch by cosine similarity / ``temperature`` (``u``, ``v``: ``[B, D]``, row ``i`` a pair)."""
    if u.shape != v.shape or u.ndim != 2:
        raise ValueError(f"pairs must be two [B, D] tensors of one shape, got {tuple(u.shape)} and {tuple(v.shape)}")
    logits = F.normalize(u.float(), dim=1) @ F.normalize(v.float(), dim=1).T / temperature
    target = torch.arange(len(u), device=u.device)
    return F.cross_entropy(logits, target), F.cross_entropy(logits.T, target)


def convirt_loss(
    image: torch.Tensor, text: torch.Tensor, *, temperature: float = 0.1, weight: float = 0.75
) -> torch.Tensor:
    """``weight·ℓ(image→text) + (1−weight)·ℓ(text→image)`` averaged over the batch (ConVIRT's λ = 0.75, τ = 0.1)."""
    to_text, to_image = directional(image, text, temperature=temperature)
    return weight * to_text + (1 - weight) * to_image
