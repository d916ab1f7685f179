"""``dinov2``: DINOv2 ViT weights (self-supervised on natural images), ViT-B/14 by default.

Evaluated at 224 px (16 x 16 patches of 14 px), the resolution of the DINOv2-vs-ImageNet paper;
timm's config says 518, which costs ~5x more (``input_size=518`` still gives it).
"""

from __future__ import annotations

from pathlib import Path

from cxrbench.errors import CxrbenchError
from cxrbench.models.sources._hub import TimmHubSpec, hub_weights
from cxrbench.models.sources.base import has_hub_weights, split_arch, timm_config

NAMES = ("dinov2",)
ARCH = "vit_base_patch14_dinov2"
TAG = "lvd142m"
INPUT_SIZE = 224


def parse(name: str, *, arch: str | None, run: Path | None) -> TimmHubSpec:
    bare, tag = split_arch(arch or ARCH)
    tag = tag or TAG
    if "dinov2" not in bare or not has_hub_weights(bare, tag):
        raise CxrbenchError(f"dinov2 needs a DINOv2 ViT for --arch (e.g. {ARCH}), got {arch!r}")
    mean, std, _ = timm_config(bare, tag)
    weights = hub_weights(name, bare, tag)
    return TimmHubSpec(name, bare, weights.source, weights, mean, std, INPUT_SIZE, tag=tag)
