"""Registry of encoder sources: one module per source, discovered like the dataset adapters.

A source module defines ``parse(name, *, arch, run) -> EncoderSpec`` and claims names by ``NAMES``
(exact: ``imagenet``), ``PREFIX`` (``file:``), or ``FALLBACK = True`` (pretrain outputs in the run).
Adding a module adds the source; ``resolve_encoder`` is the one place a name is resolved.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import pkgutil
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType

from cxrbench.errors import CxrbenchError
from cxrbench.models.sources.base import EncoderSpec, WeightSpec

__all__ = [
    "EncoderSpec",
    "WeightSpec",
    "builtin_names",
    "check_weights",
    "is_builtin",
    "resolve_encoder",
    "source_modules",
]


@functools.cache
def source_modules() -> tuple[ModuleType, ...]:
    """Every source module, in name order (``base`` and ``_private`` helpers excluded)."""
    names = sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name != "base" and not m.name.startswith("_"))
    return tuple(importlib.import_module(f"{__name__}.{n}") for n in names)


def builtin_names() -> list[str]:
    """Encoder names claimed exactly by a source (``imagenet``, ``dinov2``, ``random``, ...)."""
    return sorted(n for m in source_modules() for n in getattr(m, "NAMES", ()))


def _claimant(name: str) -> ModuleType:
    modules = source_modules()
    for module in modules:
        if name in getattr(module, "NAMES", ()):
            return module
    for module in modules:
        prefix = getattr(module, "PREFIX", None)
        if prefix and name.startswith(prefix):
            return module
    return next(m for m in modules if getattr(m, "FALLBACK", False))


def weights_dir() -> Path:
    """Where published weights are looked for by their authors' file names: ``$CXRBENCH_WEIGHTS_DIR``,
    else ``~/.cache/cxrbench/weights``."""
    import os

    return Path(os.environ.get("CXRBENCH_WEIGHTS_DIR") or "~/.cache/cxrbench/weights").expanduser()


def _published_default(name: str) -> str:
    """``mococxr`` -> ``mococxr:$CXRBENCH_WEIGHTS_DIR/r5w-00001.pth.tar`` for sources that name their
    authors' file (``FILE``); any other name unchanged."""
    for module in source_modules():
        prefix, file = getattr(module, "PREFIX", None), getattr(module, "FILE", None)
        if prefix and file and name == prefix.rstrip(":"):
            return f"{prefix}{weights_dir() / file}"
    return name


def resolve_encoder(name: str, *, arch: str | None = None, run: Path | None = None) -> EncoderSpec:
    """The spec of encoder ``name`` (weights, preprocessing, identity); one-line errors for bad names.

    ``arch`` is the timm architecture where the source needs one; ``run`` the run directory whose
    pretrain outputs are encoders too. Weights are not required to be present (``spec.require()``).
    """
    if not isinstance(name, str) or not name:
        raise CxrbenchError(f"encoder name must be a non-empty string, got {name!r}")
    full = _published_default(name)
    spec = _claimant(full).parse(full, arch=arch, run=run)
    return spec if full == name else dataclasses.replace(spec, name=name)  # named as the user wrote it


def is_builtin(name: str) -> bool:
    """True when ``name`` is claimed by a source other than the run's pretrain outputs."""
    return not getattr(_claimant(_published_default(name)), "FALLBACK", False)


def check_weights(encoders: Iterable[tuple[str, str | None]], *, run: Path | None = None) -> list[WeightSpec]:
    """One weight spec per distinct ``(name, arch)`` pair, in order (for ``weights check``)."""
    seen: dict[tuple[str, str | None], WeightSpec] = {}
    for name, arch in encoders:
        if (name, arch) not in seen:
            seen[(name, arch)] = resolve_encoder(name, arch=arch, run=run).weights
    return list(seen.values())
