"""``imagenet``: supervised ImageNet weights from timm for ``--arch`` (the papers' baseline).

torchvision's weights where timm has them (``tv_in1k``), ImageNet-21K (``augreg_in21k``) for ViTs,
else timm's default tag; ``--arch resnet50.a1_in1k`` picks a tag.
"""

from __future__ import annotations

from pathlib import Path

from cxrbench.errors import CxrbenchError
from cxrbench.models.sources._hub import TimmHubSpec, hub_weights
from cxrbench.models.sources.base import DEFAULT_ARCH, has_hub_weights, split_arch, timm_config

NAMES = ("imagenet",)


def _default_tag(arch: str) -> str:
    from timm.models import get_pretrained_cfg

    preferred = ("augreg_in21k", "tv_in1k") if arch.startswith("vit_") else ("tv_in1k",)
    for tag in preferred:
        if has_hub_weights(arch, tag):
            return tag
    cfg = get_pretrained_cfg(arch)
    hub_id = (cfg.hf_hub_id or "") if cfg is not None else ""
    if "." not in hub_id:
        raise CxrbenchError(f"timm has no Hugging Face ImageNet weights for --arch {arch!r}")
    return hub_id.rsplit(".", 1)[-1]


def parse(name: str, *, arch: str | None, run: Path | None) -> TimmHubSpec:
    bare, tag = split_arch(arch or DEFAULT_ARCH)
    tag = tag or _default_tag(bare)
    if not has_hub_weights(bare, tag):
        raise CxrbenchError(f"timm has no Hugging Face weights {bare}.{tag} for imagenet")
    mean, std, size = timm_config(bare, tag)
    weights = hub_weights(name, bare, tag)
    return TimmHubSpec(name, bare, weights.source, weights, mean, std, size, tag=tag)
