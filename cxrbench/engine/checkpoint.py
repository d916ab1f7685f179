"""Training checkpoints: the whole state of a run at a step boundary, written atomically, read with
``weights_only=True`` (never unpickling objects), with torch's global generator state."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from cxrbench.rundir import atomic_path

CHECKPOINT = "last.pt"


def save_checkpoint(directory: Path, state: dict[str, Any]) -> Path:
    """Write ``state`` (tensors, numbers, strings, nested dicts) atomically to ``directory/last.pt``."""
    path = Path(directory) / CHECKPOINT
    with atomic_path(path) as tmp:
        torch.save({**state, "torch_rng": torch.get_rng_state()}, tmp)
    return path


def load_checkpoint(directory: Path) -> dict[str, Any] | None:
    """The last checkpoint, loaded with ``weights_only=True``; None if there is none."""
    path = Path(directory) / CHECKPOINT
    if not path.exists():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    torch.set_rng_state(state.pop("torch_rng"))
    return state
