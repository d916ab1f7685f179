"""Joint contrastive learning (Cai et al. 2020): InfoNCE over infinitely many positive keys per query,
bounded in closed form from the keys' mean and covariance (S2MTS2's pretraining loss)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def jcl_loss(
    q: torch.Tensor,
    keys: torch.Tensor,
    negatives: torch.Tensor,
    *,
    temperature: float = 0.2,
    covariance_weight: float = 1.0,
) -> torch.Tensor:
    """Mean over the B queries of JCL's upper bound on the expected InfoNCE loss when the positive key
    is Gaussian, ``k+ ~ N(mu, Sigma)`` with ``mu``/``Sigma`` the mean/covariance of the M given keys:

    ``-log exp(q.mu/t) / (exp(q.mu/t) + sum_j exp(q.n_j/t + lambda q'Sigma q / (2 t^2)))``

    (Jensen's inequality and the Gaussian moment generating function; ``lambda`` =
    ``covariance_weight``, 1 for the exact bound). ``q``: ``[B, D]``; ``keys``: ``[B, M, D]`` (M >= 2,
    no gradient); ``negatives``: ``[N, D]``. Queries, keys and negatives are L2-normalised first.
    """
    if keys.ndim != 3 or keys.shape[0] != q.shape[0] or keys.shape[2] != q.shape[1] or keys.shape[1] < 2:
        raise ValueError(f"keys must be [B, M >= 2, D] for queries {tuple(q.shape)}, got {tuple(keys.shape)}")
    if negatives.ndim != 2 or negatives.shape[1] != q.shape[1]:
        raise ValueError(f"negatives must be [N, {q.shape[1]}], got {tuple(negatives.shape)}")
    q = F.normalize(q.float(), dim=1)
    keys = F.normalize(keys.detach().float(), dim=2)
    negatives = F.normalize(negatives.detach().float(), dim=1)
    mean = keys.mean(dim=1)
    # q' Sigma q with Sigma = mean of (k - mu)(k - mu)' over the M keys: the mean of (q.(k - mu))^2
    spread = torch.einsum("bd,bmd->bm", q, keys - mean[:, None]).pow(2).mean(dim=1)
    positive = (q * mean).sum(dim=1, keepdim=True) / temperature
    negative = q @ negatives.T / temperature + (covariance_weight * spread / (2 * temperature**2))[:, None]
    logits = torch.cat([positive, negative], dim=1)
    return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long, device=q.device))
