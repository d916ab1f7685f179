"""timm weights on the Hugging Face hub, found offline: the hub cache or ``$CXRBENCH_WEIGHTS_DIR``.

Shared by the ``imagenet`` and ``dinov2`` sources; nothing here touches the network.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn


from cxrbench.models.sources.base import EncoderSpec, WeightSpec, build_timm

_HUB_FILES = ("model.safetensors", "pytorch_model.bin")


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache directory, read from the environment at call time."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface"
    )
    return Path(home).expanduser() / "hub"


def cached_hub_file(repo: str, filenames: tuple[str, ...] = _HUB_FILES) -> Path | None:
    """The first of ``filenames`` of ``repo`` in the hub cache, or None."""
    from huggingface_hub import try_to_load_from_cache

    for filename in filenames:
        found = try_to_load_from_cache(repo, filename, cache_dir=hub_cache_dir())
        if isinstance(found, str) and os.path.isfile(found):
            return Path(found)
    return None


def local_weights_file(arch: str, tag: str) -> Path | None:
    """``$CXRBENCH_WEIGHTS_DIR/<arch>.<tag>.safetensors`` (or ``<arch>.<tag>/model.safetensors``)."""
    root = os.environ.get("CXRBENCH_WEIGHTS_DIR")
    if not root:
        return None
    for candidate in (Path(root) / f"{arch}.{tag}.safetensors", Path(root) / f"{arch}.{tag}" / "model.safetensors"):
        if candidate.is_file():
            return candidate
    return None


def hub_weights(name: str, arch: str, tag: str) -> WeightSpec:
    """Where timm's ``arch.tag`` weights are offline, and the command that fetches them."""
    repo = f"timm/{arch}.{tag}"
    found = local_weights_file(arch, tag) or cached_hub_file(repo)
    return WeightSpec(
        name,
        arch,
        f"hf-hub:{repo}",
        found is not None,
        str(found) if found else None,
        f"hf download {repo} config.json model.safetensors",
    )


@dataclass(frozen=True)
class TimmHubSpec(EncoderSpec):
    """timm ``arch.tag`` with the hub weights found offline."""

    tag: str = ""

    @property
    def hub_repo(self) -> str:
        return f"timm/{self.arch}.{self.tag}"

    def backbone(self, *, input_size: int, seed: int) -> nn.Module:
        return build_timm(
            f"{self.arch}.{self.tag}",
            input_size=input_size,
            pretrained=True,
            pretrained_cfg_overlay={"file": self.weights.location},
        )
