"""Flip prediction (as in the chest CT study of Tariq et al.): classify no / horizontal / vertical flip."""

from __future__ import annotations

from cxrbench.models.encoders import Encoder
from cxrbench.pretrain._pretext import Flip, PretextMethod


class Method(PretextMethod):
    """A linear head on the pooled features; cross entropy. ``vertical=false`` leaves the 2-way task
    (flipped horizontally or not)."""

    def __init__(self, encoder: Encoder, *, vertical: bool = True) -> None:
        super().__init__(encoder, [Flip(encoder.num_features, vertical=vertical)])
