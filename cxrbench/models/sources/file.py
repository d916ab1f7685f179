"""``file:PATH``: a local state dict (safetensors, or ``.pt/.pth/.bin/.ckpt`` loaded with
``weights_only``) for ``--arch``, or a folder written by ``save_encoder``. Never unpickles objects."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn


from cxrbench.errors import CxrbenchError
from cxrbench.models.sources._saved import saved_spec
from cxrbench.models.sources.base import (
    DEFAULT_ARCH,
    EncoderSpec,
    WeightSpec,
    build_timm,
    saved_arch,
    split_arch,
    timm_config,
)
from cxrbench.rundir import file_hash

PREFIX = "file:"


@dataclass(frozen=True)
class FileSpec(EncoderSpec):
    """A state dict in one file, loaded exactly into timm ``arch`` (wrapper prefixes and heads handled)."""

    def backbone(self, *, input_size: int, seed: int) -> nn.Module:
        from cxrbench.models.encoders import load_exact, read_state_dict

        path = Path(self.weights.location)
        model = build_timm(self.arch, input_size=input_size, pretrained=False)
        load_exact(model, read_state_dict(path), path)
        return model


def parse(name: str, *, arch: str | None, run: Path | None) -> EncoderSpec:
    from cxrbench.models.encoders import ENCODER_WEIGHTS

    raw = name[len(PREFIX) :]
    if not raw:
        raise CxrbenchError("file: encoder needs a path, e.g. file:/weights/encoder.safetensors")
    path = Path(raw).expanduser().resolve()
    source = f"file:{path}"
    readable = "file-" + path.name.split(".")[0]
    if path.is_dir():
        weights_path = path / ENCODER_WEIGHTS
        present = weights_path.is_file()
        recorded = saved_arch(path)
        if recorded is None:
            raise CxrbenchError(f"{path} is a folder without an encoder.json (written by cxrbench pretrain)")
        weights = WeightSpec(name, recorded, source, present, str(weights_path), "")
        extra = {"weights": file_hash(weights_path)} if present else {}
        return saved_spec(name, path, arch=arch, source=source, weights=weights, extra_inputs=extra, readable=readable)
    bare, _ = split_arch(arch or DEFAULT_ARCH)
    mean, std, size = timm_config(bare)
    present = path.is_file()
    weights = WeightSpec(name, bare, source, present, str(path), "")
    extra = {"weights": file_hash(path)} if present else {}
    return FileSpec(name, bare, source, weights, mean, std, size, extra_inputs=extra, readable=readable)
