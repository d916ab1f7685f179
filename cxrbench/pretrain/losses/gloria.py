"""GLoRIA (Huang et al. 2021): a global image–report contrastive loss plus a local one, where each word
attends over the image's regions and the word–context similarities are aggregated per pair."""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: the paper's temperatures: word→region attention τ1, word aggregation τ2, pair logits τ3
TAU1, TAU2, TAU3 = 4.0, 5.0, 10.0


def _symmetric(scores: torch.Tensor) -> torch.Tensor:
    """Mean of the image→text and text→image cross entropies of ``scores`` ``[B images, B reports]``."""
    target = torch.arange(len(scores), device=scores.device)
    return (F.cross_entropy(scores, target) + F.cross_entropy(scores.T, target)) / 2


def global_loss(image: torch.Tensor, text: torch.Tensor, *, tau3: float = TAU3) -> torch.Tensor:
    """Symmetric cross entropy of ``τ3 · cos(image_i, text_k)`` (``[B, D]`` each)."""
    return _symmetric(tau3 * F.normalize(image.float(), dim=1) @ F.normalize(text.float(), dim=1).T)


def local_scores(
    regions: torch.Tensor,
    words: torch.Tensor,
    word_mask: torch.Tensor,
    *,
    tau1: float = TAU1,
    tau2: float = TAU2,
) -> torch.Tensor:
    """``Z[j, k]``: how well image ``j``'s regions ``[B, R, D]`` explain report ``k``'s words ``[B, L, D]``.

    Each word of report ``k`` attends over image ``j``'s regions (softmax of ``τ1·cos``) into a context
    ``c``; ``Z = log(Σ_words exp(τ2·cos(c, w)))/τ2`` over the real words (``word_mask`` 1).
    """
    r = F.normalize(regions.float(), dim=-1)  # [B, R, D]
    w = F.normalize(words.float(), dim=-1)  # [B, L, D]
    attn = torch.softmax(tau1 * torch.einsum("jrd,kld->jklr", r, w), dim=-1)  # [Bi, Bt, L, R]
    context = F.normalize(torch.einsum("jklr,jrd->jkld", attn, regions.float()), dim=-1)
    sim = tau2 * (context * w.unsqueeze(0)).sum(-1)  # [Bi, Bt, L]
    sim = sim.masked_fill(word_mask.unsqueeze(0) == 0, float("-inf"))
    return torch.logsumexp(sim, dim=-1) / tau2


def local_loss(
    regions: torch.Tensor, words: torch.Tensor, word_mask: torch.Tensor, *, tau1=TAU1, tau2=TAU2, tau3=TAU3
) -> torch.Tensor:
    """Symmetric cross entropy of ``τ3 · Z`` (``local_scores``)."""
    return _symmetric(tau3 * local_scores(regions, words, word_mask, tau1=tau1, tau2=tau2))


def gloria_loss(
    image: torch.Tensor,
    text: torch.Tensor,
    regions: torch.Tensor,
    words: torch.Tensor,
    word_mask: torch.Tensor,
    *,
    local_weight: float = 1.0,
    global_weight: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``global_weight·global + local_weight·local`` and the two terms (the paper weighs them 1:1)."""
    g = global_loss(image, text)
    loc = local_loss(regions, words, word_mask)
    return global_weight * g + local_weight * loc, g, loc
