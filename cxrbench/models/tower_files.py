"""Where an encoder pretrained with a text tower keeps it, beside ``encoder.safetensors`` (read without torch,
so ``evaluate`` can tell which encoders have one cheaply)."""

from __future__ import annotations

from pathlib import Path

#: the projection heads of both sides, their layout, and the text model folder (``save_pretrained``)
HEADS = "projection.safetensors"
HEADS_META = "projection.json"
TEXT_DIR = "text"


def has_text_tower(home: Path) -> bool:
    """Whether the saved encoder folder ``home`` holds a text tower and projection heads."""
    return (Path(home) / HEADS).is_file() and (Path(home) / TEXT_DIR / "config.json").is_file()
