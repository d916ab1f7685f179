"""Encoders saved by ``save_encoder`` (``encoder.safetensors`` + ``encoder.json``): a pretrain output in
the run, or such a folder given as ``file:DIR``. Their preprocessing comes from ``encoder.json``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn


from cxrbench.errors import CxrbenchError
from cxrbench.models.sources.base import IMAGENET_MEAN, IMAGENET_STD, EncoderSpec, WeightSpec, build_timm, split_arch


@dataclass(frozen=True)
class SavedSpec(EncoderSpec):
    """A saved encoder folder; ``backbone`` rebuilds timm ``arch`` and loads the weights exactly."""

    directory: Path = Path()

    def backbone(self, *, input_size: int, seed: int) -> nn.Module:
        from cxrbench.models.encoders import load_exact, read_state_dict

        model = build_timm(self.arch, input_size=input_size, pretrained=False)
        load_exact(model, read_state_dict(Path(self.weights.location)), Path(self.weights.location))
        return model


def saved_spec(
    name: str, directory: Path, *, arch: str | None, source: str, weights: WeightSpec, **identity
) -> SavedSpec:
    """The spec of the saved encoder in ``directory`` (``arch`` overrides the recorded one)."""
    from cxrbench.models.encoders import ENCODER_META

    meta_path = directory / ENCODER_META
    try:
        meta = json.loads(meta_path.read_text())
        recorded = str(meta["arch"])
        if weights.present:  # without weights the spec only says what is missing (weights check)
            mean, std, size = tuple(meta["mean"]), tuple(meta["std"]), int(meta["input_size"])
        else:
            mean, std, size = IMAGENET_MEAN, IMAGENET_STD, 224
    except (OSError, KeyError, TypeError, ValueError) as exc:
        raise CxrbenchError(f"{meta_path} is not a valid encoder description ({exc})") from None
    bare, _ = split_arch(arch or recorded)
    return SavedSpec(name, bare, source, weights, mean, std, size, directory=directory, **identity)
