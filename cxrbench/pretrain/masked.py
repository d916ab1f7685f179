"""Masked-region reconstruction (chest CT study, Tariq et al.) for any encoder, with the progressive 5->10->20->33% chain."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch

from cxrbench.engine.data import Batch
from cxrbench.engine.loop import Loss, Step
from cxrbench.errors import CxrbenchError
from cxrbench.models.decoder import Decoder, upsample_steps
from cxrbench.models.encoders import Encoder
from cxrbench.pretrain.base import Method as MethodBase
from cxrbench.pretrain.losses.reconstruction import Weights, reconstruction_terms, weighted_sum


def region_masks(uniform: torch.Tensor, size: tuple[int, int], ratio: float) -> torch.Tensor:
    """One rectangular region per image covering exactly ``round(ratio * H * W)`` pixels ``[B, 1, H, W]``.

    ``uniform``: ``[B, 3]`` draws in [0, 1) for the aspect (height/width log-uniform in [1/2, 2]) and
    the top and left corner. The region is an ``h x w`` rectangle plus, where ``h * w`` falls short,
    the first rows of the next column: the pixel count is exact whatever the image size.
    """
    height, width = size
    n = max(1, round(ratio * height * width))
    rows = torch.arange(height).view(1, height, 1)
    cols = torch.arange(width).view(1, 1, width)
    boxes = []
    for aspect_u, top_u, left_u in uniform.tolist():
        aspect = math.exp((2 * aspect_u - 1) * math.log(2))
        h = min(max(round(math.sqrt(n * aspect)), -(-n // width)), height, n)
        w, q = divmod(n, h)
        top = int(top_u * (height - h + 1))
        left = int(left_u * (width - w - (q > 0) + 1))
        boxes.append((top, left, h, w, q))
    t, left, h, w, q = (torch.tensor(v).view(-1, 1, 1) for v in zip(*boxes, strict=True))
    inside = (rows >= t) & (rows < t + h) & (cols >= left) & (cols < left + w)
    column = (cols == left + w) & (rows >= t) & (rows < t + q)
    return (inside | column).unsqueeze(1)


class Method(MethodBase):
    """Random rectangular regions covering ``ratio`` of each image are blanked (``fill``); the encoder
    and a decoder with no skip connections (``cxrbench.models.decoder``; the study's vector-quantised
    code, ``quantize=false`` for a continuous one) reconstruct the whole image. Loss: the study's composite ``mse_weight`` MSE +
    ``ssim_weight`` (1 - SSIM) + ``quantization_weight`` codebook/commitment + ``masked_weight`` MSE
    inside the region. ``ratios``: the progressive chain; each ratio trains ``--epochs`` epochs
    starting from the previous one's weights (one ratio: a single stage)."""

    defaults: ClassVar[dict[str, Any]] = {**MethodBase.defaults, "epochs": 25, "lr": 1e-3, "weight_decay": 0.0}
    drop_last: ClassVar[bool] = False

    def __init__(
        self,
        encoder: Encoder,
        *,
        ratios: list[float] = [0.05, 0.1, 0.2, 0.33],  # noqa: B006 - read only
        fill: float = 0.0,
        quantize: bool = True,
        codes: int = 512,
        code_dim: int = 64,
        decoder_width: int = 64,
        decoder_blocks: int = 2,
        mse_weight: float = 0.2,
        ssim_weight: float = 0.1,
        quantization_weight: float = 0.8,
        masked_weight: float = 0.2,
        channels: int = 1,
    ) -> None:
        super().__init__(encoder)
        if not ratios or not all(0 < r < 1 for r in ratios):
            raise CxrbenchError(f"masked: ratios must be fractions between 0 and 1, got {ratios}")
        self.ratios = [float(r) for r in ratios]
        self.ratio = self.ratios[0]
        self.fill = float(fill)
        self.weights = Weights(mse_weight, ssim_weight, quantization_weight, masked_weight)
        self.decoder = Decoder(
            encoder.num_features,
            steps=upsample_steps(encoder, encoder.input_size),
            width=decoder_width,
            code_dim=code_dim,
            blocks=decoder_blocks,
            quantize=quantize,
            codes=codes,
            channels=channels,
        )

    def phases(self) -> int:
        return len(self.ratios)

    def enter_phase(self, phase: int) -> None:
        self.ratio = self.ratios[phase]

    def loss(self, batch: Batch, step: Step) -> Loss:
        images, dist, total = batch["images"], step.dist, step.total
        lo, hi = dist.bounds(total)
        draws = torch.rand(total, 3, generator=step.generator)[lo:hi]  # the whole batch's, sliced
        mask = region_masks(draws, tuple(images.shape[-2:]), self.ratio).to(images.device)
        masked = torch.where(mask, torch.full_like(images, self.fill), images)
        out = self.decoder.reconstruct(self.encoder, masked)
        terms = reconstruction_terms(out.image, images, self.weights, quantization=out.quantization, mask=mask)
        part = weighted_sum(terms, self.weights).sum() / total
        logged = {name: dist.all_sum(value.detach().sum() / total) for name, value in terms.items()}
        return Loss(part * dist.world_size, dist.all_sum(part.detach()), logged)
