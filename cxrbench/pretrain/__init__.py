"""Self-supervised pretraining methods: one module per method (defining ``Method``), discovered by
module name like the dataset adapters; all train on the one engine (``cxrbench.engine``)."""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

from cxrbench.errors import CxrbenchError

_NOT_METHODS = {"base", "losses"}


def method_names() -> list[str]:
    """Every method ``cxrbench pretrain`` accepts."""
    names = [
        m.name for m in pkgutil.iter_modules(__path__) if m.name not in _NOT_METHODS and not m.name.startswith("_")
    ]
    return sorted(n.replace("_", "-") for n in names)


def get_method(name: str) -> type:
    """The ``Method`` class of a pretraining method; one-line error for unknown names."""
    if name not in method_names():
        raise CxrbenchError(f"unknown pretrain method '{name}' (known: {', '.join(method_names())})")
    return importlib.import_module(f"{__name__}.{name.replace('-', '_')}").Method


def method_summaries() -> dict[str, str]:
    """Each method's name and the first line of its module docstring, read without importing it
    (``cxrbench pretrain --help`` lists them without loading torch)."""
    out = {}
    for name in method_names():
        source = Path(__path__[0], name.replace("-", "_") + ".py").read_text(encoding="utf-8")
        doc = ast.get_docstring(ast.parse(source)) or ""
        out[name] = doc.strip().splitlines()[0] if doc.strip() else ""
    return out
