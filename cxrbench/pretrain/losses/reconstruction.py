"""The chest CT study's composite reconstruction loss (Tariq et al.): w1 MSE + w2 (1 - SSIM) +
w3 quantisation + w4 MSE inside the masked region, per image, shared by ``masked`` and ``denoise``.

The default weights are those of the study's released training code (0.2, 0.1, 0.8, 0.2); the
paper itself leaves them as hyper-parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cxrbench.errors import CxrbenchError
from cxrbench.pretrain.losses.ssim import ssim_loss


@dataclass(frozen=True)
class Weights:
    """The weight of each term; a zero weight leaves its term out (not computed)."""

    mse: float = 0.2
    ssim: float = 0.1
    quantization: float = 0.8
    masked: float = 0.2

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if value < 0:
                raise CxrbenchError(f"loss weight {name} must be >= 0, got {value}")
        if not any(vars(self).values()):
            raise CxrbenchError("at least one loss weight must be above 0")


def reconstruction_terms(
    output: torch.Tensor,
    target: torch.Tensor,
    weights: Weights,
    *,
    quantization: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Each weighted term per image ``[B]``, unweighted: ``mse``, ``ssim`` (1 - SSIM), ``quantization``
    (the quantiser's loss, when given) and ``masked_mse`` (mean over the pixels where ``mask`` is
    true, when given). ``output``, ``target``: ``[B, C, H, W]``; ``mask``: the same or ``[B, 1, H, W]``."""
    error = (output.float() - target.float()).pow(2)
    terms: dict[str, torch.Tensor] = {}
    if weights.mse:
        terms["mse"] = error.flatten(1).mean(dim=1)
    if weights.ssim:
        terms["ssim"] = ssim_loss(output, target)
    if weights.quantization and quantization is not None:
        terms["quantization"] = quantization.float()
    if weights.masked and mask is not None:
        m = mask.to(error.dtype).expand_as(error).flatten(1)  # a [B, 1, H, W] mask covers every channel
        terms["masked_mse"] = (error.flatten(1) * m).sum(dim=1) / m.sum(dim=1).clamp_min(1)
    return terms


_WEIGHT_OF = {"mse": "mse", "ssim": "ssim", "quantization": "quantization", "masked_mse": "masked"}


def weighted_sum(terms: dict[str, torch.Tensor], weights: Weights) -> torch.Tensor:
    """The composite loss per image: each term times its weight, summed."""
    return sum(getattr(weights, _WEIGHT_OF[name]) * value for name, value in terms.items())
