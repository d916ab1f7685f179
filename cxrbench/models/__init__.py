"""Encoders (a backbone with its preprocessing) and the sources their weights come from.

Names are imported on first use, so reading a suite (which asks ``models.sources`` which encoder
names are built in) does not load torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Encoder": "cxrbench.models.encoders",
    "create_encoder": "cxrbench.models.encoders",
    "read_state_dict": "cxrbench.models.encoders",
    "save_encoder": "cxrbench.models.encoders",
    "EncoderSpec": "cxrbench.models.sources",
    "WeightSpec": "cxrbench.models.sources",
    "check_weights": "cxrbench.models.sources",
    "resolve_encoder": "cxrbench.models.sources",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
