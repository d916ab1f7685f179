"""The small interface an Encoder needs of a model, so timm, transformers or 3-D models plug in alike.

A backbone is an ``nn.Module`` with ``num_features`` whose forward maps normalised images to pooled
features ``[B, D]``; where the model has them, ``forward_features`` gives tokens (ViT patches, CNN
feature-map cells, word tokens). timm models satisfy it as they are (``num_classes=0``); other
models get a thin adapter module in their source.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class Backbone(Protocol):
    """Pooled features from ``forward``; width ``num_features``; optional ``forward_features``."""

    num_features: int

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...


def patch_size(backbone: Backbone) -> int | None:
    """The side of a ViT patch in pixels (timm's ``patch_embed.patch_size``, or an adapter's own
    ``patch_size``), or None for models without patches."""
    patch = getattr(getattr(backbone, "patch_embed", None), "patch_size", None)
    if patch is not None:
        return int(patch[0])
    own = getattr(backbone, "patch_size", None)
    return own if isinstance(own, int) and not isinstance(own, bool) else None


def tokens(backbone: Backbone, x: torch.Tensor) -> torch.Tensor | None:
    """Tokens ``[B, N, D]`` of normalised images ``x`` (CNN maps flattened to cells), or None."""
    forward_features = getattr(backbone, "forward_features", None)
    if forward_features is None:
        return None
    feats = forward_features(x)
    if feats is None:  # an adapter whose wrapped model has no tokens
        return None
    if feats.ndim == 4:  # [B, C, H, W] -> [B, H*W, C]
        feats = feats.flatten(2).transpose(1, 2)
    return feats


def dynamic_size(backbone: Backbone) -> bool:
    """Let a timm ViT take images of any multiple of its patch size, in place: position embeddings
    are interpolated to each input's patch grid (what timm's ``dynamic_img_size=True`` builds; the
    weights are unchanged). True when it did; False for other backbones (nothing is changed)."""
    from timm.layers import Format, PatchEmbed
    from timm.models.vision_transformer import VisionTransformer

    embed = getattr(backbone, "patch_embed", None)
    if not isinstance(backbone, VisionTransformer) or type(embed) is not PatchEmbed:
        return False
    backbone.dynamic_img_size = True
    embed.strict_img_size, embed.flatten, embed.output_fmt = False, False, Format.NHWC
    return True


def feature_maps(backbone: Backbone, x: torch.Tensor, *, levels: int = 4) -> list[torch.Tensor]:
    """Intermediate feature maps ``[B, C, h, w]`` of normalised images ``x``, shallow to deep: a
    CNN's stages, or ``levels`` evenly spaced ViT blocks (timm's ``forward_intermediates``); else
    the tokens as one square map. Empty for a backbone with neither (U-Nets need maps)."""
    intermediates = getattr(backbone, "forward_intermediates", None)
    if intermediates is not None:
        blocks = getattr(backbone, "blocks", None)
        if blocks is not None and patch_size(backbone) is not None:  # a ViT: spread over its depth
            depth = len(blocks)
            indices = sorted({max(0, round(depth * (i + 1) / levels) - 1) for i in range(levels)})
            return list(intermediates(x, indices=indices, intermediates_only=True))
        return list(intermediates(x, intermediates_only=True))
    found = tokens(backbone, x)
    if found is None:
        return []
    side = int(found.shape[1] ** 0.5)
    grid = found[:, found.shape[1] - side * side :]  # leading class/register tokens dropped
    return [grid.transpose(1, 2).reshape(found.shape[0], -1, side, side)]
