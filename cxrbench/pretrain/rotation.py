"""Rotation prediction (Gidaris et al. 2018): classify a rotation by 0, 90, 180 or 270 degrees."""

from __future__ import annotations

from cxrbench.models.encoders import Encoder
from cxrbench.pretrain._pretext import PretextMethod, Rotation


class Method(PretextMethod):
    """A 4-way linear head on the pooled features; cross entropy. Combine with other pretext tasks
    through ``pretext --option tasks=rotation,flip``."""

    def __init__(self, encoder: Encoder) -> None:
        super().__init__(encoder, [Rotation(encoder.num_features)])
