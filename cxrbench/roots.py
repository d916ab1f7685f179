"""Where each dataset was unpacked on this machine: kept out of suites, so one suite fits every site.

A dataset's root is, first found: ``$CXRBENCH_ROOT_<NAME>`` (``nih`` -> ``CXRBENCH_ROOT_NIH``,
``pediatric-pneumonia`` -> ``CXRBENCH_ROOT_PEDIATRIC_PNEUMONIA``), the ``roots.toml`` in
``$XDG_CONFIG_HOME/cxrbench/`` (default ``~/.config/cxrbench/``) with lines such as
``nih = "/data/nih"``, or the suite's own ``prepare.<dataset>.root``.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import NamedTuple

from cxrbench.errors import CxrbenchError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

FILE = "roots.toml"


class Root(NamedTuple):
    """A dataset's root and where it was set (``$VAR``, the roots file, the suite); path None: unset."""

    path: str | None
    origin: str


def env_name(dataset: str) -> str:
    """``CXRBENCH_ROOT_<NAME>``: the dataset name upper-cased, other characters as ``_``."""
    return "CXRBENCH_ROOT_" + re.sub(r"[^A-Za-z0-9]", "_", dataset).upper()


def roots_file() -> Path:
    """``$XDG_CONFIG_HOME/cxrbench/roots.toml``, with XDG's default ``~/.config``."""
    base = os.environ.get("XDG_CONFIG_HOME") or "~/.config"
    return Path(base).expanduser() / "cxrbench" / FILE


def configured_roots() -> dict[str, str]:
    """The ``dataset = "path"`` entries of the roots file ({} when it does not exist)."""
    path = roots_file()
    if not path.is_file():
        return {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise CxrbenchError(f"{path} is not a readable TOML file: {exc}") from None
    bad = sorted(k for k, v in data.items() if not isinstance(v, str))
    if bad:
        raise CxrbenchError(f"{path}: '{bad[0]}' must be a path in quotes, e.g. {bad[0]} = \"/data/{bad[0]}\"")
    return data


def dataset_root(dataset: str, suite_root: str | None) -> Root:
    """The root of ``dataset``: environment, then the roots file, then the suite."""
    variable = env_name(dataset)
    if os.environ.get(variable):
        return Root(os.path.expanduser(os.environ[variable]), f"${variable}")
    configured = configured_roots()
    if dataset in configured:
        return Root(os.path.expanduser(configured[dataset]), str(roots_file()))
    if suite_root is not None:
        return Root(os.path.expanduser(suite_root), "the suite")
    return Root(None, f'unset (set ${variable} or add {dataset} = "/path" to {roots_file()})')
