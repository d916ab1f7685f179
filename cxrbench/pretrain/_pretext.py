"""Pretext tasks (as benchmarked for chest CT by Tariq et al.): predict a rotation or a flip, remove
salt-and-pepper noise. Each task owns its head and returns one loss per image; ``PretextMethod``
sums the tasks it is given, so ``rotation``, ``flip``, ``denoise`` and their combination
(``pretext --option tasks=rotation,flip``) share one implementation.

Labels and noise are drawn for the whole batch from the step's generator and sliced to this rank's
rows, so several processes reproduce the single-process draw image for image; the per-image losses
are summed and divided by the whole batch's size, so DDP's gradient average is the single-process one.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from cxrbench.engine.data import Batch
from cxrbench.engine.loop import Loss, Step
from cxrbench.errors import CxrbenchError
from cxrbench.models.decoder import Decoder
from cxrbench.pretrain.base import Method as MethodBase
from cxrbench.pretrain.losses.reconstruction import Weights, reconstruction_terms, weighted_sum


def _draw(generator: torch.Generator, shape: tuple[int, ...], bounds: tuple[int, int], draw) -> torch.Tensor:
    """``draw(shape_of_whole_batch)`` sliced to ``bounds`` (CPU generator; moved by the caller)."""
    lo, hi = bounds
    return draw(shape)[lo:hi]


class Rotation(nn.Module):
    """4-way classification of a rotation by 0, 90, 180 or 270 degrees (Gidaris et al. 2018)."""

    name = "rotation"

    def __init__(self, width: int) -> None:
        super().__init__()
        self.head = nn.Linear(width, 4)

    def forward(self, encoder: nn.Module, x: torch.Tensor, generator: torch.Generator, bounds, total) -> torch.Tensor:
        labels = _draw(generator, (total,), bounds, lambda s: torch.randint(0, 4, s, generator=generator))
        labels = labels.to(x.device)
        turned = torch.stack([torch.rot90(img, int(k), dims=(1, 2)) for img, k in zip(x, labels, strict=True)])
        return F.cross_entropy(self.head(encoder(turned)).float(), labels, reduction="none")


class Flip(nn.Module):
    """Classification of a flip: none, horizontal, and (``vertical``, as in the CT study) vertical."""

    name = "flip"

    def __init__(self, width: int, *, vertical: bool = True) -> None:
        super().__init__()
        self.classes = 3 if vertical else 2
        self.head = nn.Linear(width, self.classes)

    def forward(self, encoder: nn.Module, x: torch.Tensor, generator: torch.Generator, bounds, total) -> torch.Tensor:
        labels = _draw(generator, (total,), bounds, lambda s: torch.randint(0, self.classes, s, generator=generator))
        labels = labels.to(x.device)
        flipped = torch.where((labels == 1).view(-1, 1, 1, 1), x.flip(-1), x)
        flipped = torch.where((labels == 2).view(-1, 1, 1, 1), x.flip(-2), flipped)
        return F.cross_entropy(self.head(encoder(flipped)).float(), labels, reduction="none")


def salt_and_pepper(x: torch.Tensor, noise: torch.Tensor, amount: float) -> torch.Tensor:
    """``x`` with the pixels where ``noise[..., 0] < amount`` set to white or black (``noise[..., 1]``
    above or below 0.5); ``noise``: uniform draws ``[*x.shape, 2]``, or ``[B, 1, H, W, 2]`` for the
    same pixels in every channel."""
    hit, salt = noise[..., 0] < amount, noise[..., 1] < 0.5
    return torch.where(hit, salt.to(x.dtype), x)


class Denoise(nn.Module):
    """Remove salt-and-pepper noise (``amount`` of the pixels; 50% in the CT study) with the shared
    encoder-decoder (``cxrbench.models.decoder``: no skips, optional vector-quantised code); the
    study's composite loss per image (``weights``: MSE, 1 - SSIM, quantisation)."""

    name = "denoise"

    def __init__(
        self,
        width: int,
        *,
        steps: int,
        amount: float = 0.5,
        hidden: int = 64,
        quantize: bool = False,
        weights: Weights | None = None,
        channels: int = 1,
    ) -> None:
        super().__init__()
        if not 0 < amount <= 1:
            raise CxrbenchError(f"denoise: the noise amount must be in (0, 1], got {amount}")
        self.amount, self.weights = amount, weights or Weights()
        self.decoder = Decoder(width, steps=steps, width=hidden, quantize=quantize, channels=channels)

    def forward(self, encoder: nn.Module, x: torch.Tensor, generator: torch.Generator, bounds, total) -> torch.Tensor:
        # the same pixels in every channel (CT in several windows: one HU value, corrupted once)
        noise = _draw(generator, (total, 1, *x.shape[-2:], 2), bounds, lambda s: torch.rand(s, generator=generator))
        noisy = salt_and_pepper(x, noise.to(x.device), self.amount)
        out = self.decoder.reconstruct(encoder, noisy)
        terms = reconstruction_terms(out.image, x, self.weights, quantization=out.quantization)
        return weighted_sum(terms, self.weights)


TASKS = {"rotation": Rotation, "flip": Flip, "denoise": Denoise}


class PretextMethod(MethodBase):
    """The sum of pretext tasks' losses (each the mean over the batch); each task logged on its own."""

    defaults: ClassVar[dict[str, Any]] = {**MethodBase.defaults}
    drop_last: ClassVar[bool] = False  # no loss here needs full batches

    def __init__(self, encoder, tasks: list[nn.Module]) -> None:
        super().__init__(encoder)
        if not tasks:
            raise CxrbenchError(f"pretext: choose at least one task of {', '.join(TASKS)}")
        self.tasks = nn.ModuleList(tasks)

    def loss(self, batch: Batch, step: Step) -> Loss:
        images, dist, total = batch["images"], step.dist, step.total
        bounds = dist.bounds(total)
        terms = {}
        for task in self.tasks:
            # each task draws from a generator of its own (seeded from the step's), so the number of
            # draws one task makes never shifts another's
            seed = int(torch.randint(0, 2**62, (1,), generator=step.generator))
            per_image = task(self.encoder, images, torch.Generator().manual_seed(seed), bounds, total)
            terms[task.name] = per_image.sum() / total
        part = sum(terms.values())
        value = dist.all_sum(part.detach())  # the whole batch's loss, for the log
        return Loss(part * dist.world_size, value, {k: dist.all_sum(v.detach()) for k, v in terms.items()})
