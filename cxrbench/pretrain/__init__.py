"""Self-supervised pretraining methods: one module per method (defining ``Method``), discovered by
module name like the dataset adapters; all train on the one engine (``cxrbench.engine``)."""

from __future__ import annotations

import importlib
import pkgutil

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
