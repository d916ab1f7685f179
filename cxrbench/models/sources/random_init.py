"""``random``: a seeded random initialisation of ``--arch`` (ImageNet mean/std), the floor of any table."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn


from cxrbench.models.sources.base import DEFAULT_ARCH, EncoderSpec, WeightSpec, build_timm, split_arch, timm_config

NAMES = ("random",)


@dataclass(frozen=True)
class RandomSpec(EncoderSpec):
    def backbone(self, *, input_size: int, seed: int) -> nn.Module:
        import torch

        with torch.random.fork_rng(devices=[]):  # the same weights whatever the global generator did
            torch.manual_seed(seed)
            return build_timm(self.arch, input_size=input_size, pretrained=False)


def parse(name: str, *, arch: str | None, run: Path | None) -> RandomSpec:
    bare, _ = split_arch(arch or DEFAULT_ARCH)
    mean, std, size = timm_config(bare)
    return RandomSpec(name, bare, "random", WeightSpec(name, bare, "random", True, None, ""), mean, std, size)
