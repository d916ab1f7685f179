"""REFERS (Zhou et al. 2022): the views of one study fused by learned attention weights into one study
feature, contrasted with the study's report (bidirectional InfoNCE over the studies of the batch)."""

from __future__ import annotations

import torch

from cxrbench.pretrain.losses.convirt import convirt_loss


def fuse_views(features: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """One feature per study: the softmax(``scores``)-weighted mean of its views' ``features`` ``[N, D]``.
    ``groups`` ``[N]``: each view's study index in 0..S-1; returns ``[S, D]``."""
    n_groups = int(groups.max()) + 1 if len(groups) else 0
    scores = scores.float().reshape(-1)
    top = torch.full((n_groups,), float("-inf"), device=scores.device).scatter_reduce(0, groups, scores, reduce="amax")
    weights = (scores - top[groups]).exp()
    norm = torch.zeros(n_groups, device=scores.device).index_add(0, groups, weights)
    weights = weights / norm[groups]
    out = torch.zeros(n_groups, features.shape[1], device=features.device, dtype=torch.float32)
    return out.index_add(0, groups, features.float() * weights.unsqueeze(1))


def refers_loss(
    study: torch.Tensor, text: torch.Tensor, *, temperature: float = 0.1, weight: float = 0.5
) -> torch.Tensor:
    """Bidirectional InfoNCE between fused study features and their reports (``[S, D]`` each)."""
    return convirt_loss(study, text, temperature=temperature, weight=weight)
