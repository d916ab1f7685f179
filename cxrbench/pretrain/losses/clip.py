"""CLIP (Radford et al. 2021): symmetric image–text cross entropy over the batch with a learned temperature."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

#: CLIP's initial temperature 0.07 as a log scale, and the cap of the scale (100)
INIT_LOGIT_SCALE = math.log(1 / 0.07)
MAX_LOGIT_SCALE = math.log(100.0)


def clip_loss(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """``(CE(s·I·Tᵀ) + CE(s·T·Iᵀ)) / 2`` with ``s = exp(logit_scale)`` (clamped at 100) on L2-normalised
    ``image`` and ``text`` (``[B, D]``; row ``i`` a pair)."""
    if image.shape != text.shape or image.ndim != 2:
        raise ValueError(f"image and text must be [B, D] of one shape, got {tuple(image.shape)}, {tuple(text.shape)}")
    scale = logit_scale.float().clamp(max=MAX_LOGIT_SCALE).exp()
    logits = scale * F.normalize(image.float(), dim=1) @ F.normalize(text.float(), dim=1).T
    target = torch.arange(len(image), device=image.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
