"""Training augmentations of grey chest X-rays, batched on the device: the random views of
self-supervised methods and the rotation/flip of finetuning recipes.

Each image in a batch gets its own crop, scale, flip, brightness/contrast and noise, drawn from a
generator the caller seeds, so views are reproducible and cheap on GPU and CPU alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class ViewSettings:
    """Strength of each random transform (defaults suit radiographs: no colour, mild geometry).

    The crop keeps at least 70 % of the image: with ImageNet's harsher crops two views of one chest
    X-ray differ more than two different chests do, and contrastive methods learned nothing on the
    phantoms (tests/perf/bench_ssl.py; figures in CHANGELOG.md).
    """

    min_scale: float = 0.7
    max_rotation_deg: float = 5.0
    flip: bool = True
    brightness: float = 0.3
    contrast: float = 0.3
    noise: float = 0.02
    max_scale: float = 1.0  # crop area fractions are drawn from [min_scale, max_scale]


def random_views(
    x: torch.Tensor, generator: torch.Generator, settings: ViewSettings = ViewSettings(), *, size: int | None = None
) -> torch.Tensor:
    """One random view per image of ``x`` ``[B, 1, H, W]`` in [0, 1], clamped to [0, 1]; ``size``: the
    side of the (square) views, sampled at that resolution (DINO's smaller local crops), else H x W."""
    b = x.shape[0]
    shape = list(x.shape) if size is None else [b, x.shape[1], int(size), int(size)]

    def uniform(low: float, high: float) -> torch.Tensor:
        return torch.rand(b, generator=generator, device="cpu").mul(high - low).add(low).to(x.device)

    scale = uniform(settings.min_scale, settings.max_scale).sqrt()  # side length fraction of the crop
    angle = uniform(-settings.max_rotation_deg, settings.max_rotation_deg) * torch.pi / 180
    shift_x = uniform(-1, 1) * (1 - scale)
    shift_y = uniform(-1, 1) * (1 - scale)
    flip = torch.where(uniform(0, 1) < 0.5, -1.0, 1.0) if settings.flip else torch.ones_like(scale)
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    theta = torch.stack([torch.stack([cos * flip, -sin, shift_x], 1), torch.stack([sin * flip, cos, shift_y], 1)], 1)
    grid = F.affine_grid(theta.to(x.dtype), shape, align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    contrast = uniform(1 - settings.contrast, 1 + settings.contrast).view(b, 1, 1, 1)
    brightness = uniform(-settings.brightness, settings.brightness).view(b, 1, 1, 1) / 2
    out = (out - mean) * contrast + mean + brightness
    if settings.noise > 0:
        noise = torch.randn(out.shape, generator=generator, device="cpu").to(x.device)
        out = out + noise * settings.noise
    return out.clamp_(0, 1)


def part_views(
    part: torch.Tensor,
    generator: torch.Generator,
    settings: ViewSettings,
    bounds: tuple[int, int],
    total: int,
    *,
    size: int | None = None,
) -> torch.Tensor:
    """Views (of side ``size``, see ``random_views``) of rows ``bounds`` of a ``total``-image batch,
    drawn as for the whole batch, so that processes holding parts of one batch reproduce the
    single-process views image for image."""
    lo, hi = bounds
    if (lo, hi) == (0, total):
        return random_views(part, generator, settings, size=size)
    whole = part.new_zeros((total, *part.shape[1:]))
    whole[lo:hi] = part
    return random_views(whole, generator, settings, size=size)[lo:hi]
