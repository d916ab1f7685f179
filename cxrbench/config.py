"""Suites -> typed dataclasses: datasets × encoders × adaptations × label fractions × seeds.

A suite names what to prepare, which encoders to pretrain in the run, how to adapt them, and the
baseline every other encoder is compared with. The built-in suites ship inside the package
(``cxrbench/suites.toml``), so ``cxrbench run --suite smoke`` works from any folder; a local
``benchmarks.toml`` (in the current folder, or ``--config PATH``) adds suites and replaces built-in
ones of the same name, whole. Mistakes are one-line errors naming the file and key.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple

from cxrbench.errors import CxrbenchError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

#: the local suites file read from the current folder when no ``--config`` is given
LOCAL_CONFIG = Path("benchmarks.toml")
#: where the built-in suites are said to come from
BUILTIN = "built in"
_PACKAGED = "suites.toml"
ADAPTATIONS = ("probe", "finetune", "segment")
#: the adaptations of a suite that names none
DEFAULT_ADAPTATIONS = ("probe", "finetune")


@dataclass(frozen=True)
class DatasetSpec:
    """How to prepare one dataset: the adapter name, its ``--root`` and prepare options."""

    name: str
    root: str | None = None
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PretrainSpec:
    """An encoder trained inside the run by a pretrain method."""

    name: str
    method: str
    dataset: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Suite:
    """One named grid of stage runs."""

    name: str
    description: str
    datasets: tuple[DatasetSpec, ...]
    encoders: tuple[str, ...]
    baseline: str
    adaptations: tuple[str, ...] = DEFAULT_ADAPTATIONS
    fractions: tuple[float, ...] = (1.0,)
    seeds: tuple[int, ...] = (0,)
    arch: str | None = None
    pretrain: dict[str, PretrainSpec] = field(default_factory=dict)
    probe: dict[str, Any] = field(default_factory=dict)
    finetune: dict[str, Any] = field(default_factory=dict)
    segment: dict[str, Any] = field(default_factory=dict)
    evaluate: dict[str, Any] = field(default_factory=dict)
    compare: dict[str, Any] = field(default_factory=dict)
    #: training dataset -> datasets its models are also tested on (external validation)
    external: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: SLURM resources by stage kind (``default``, ``prepare``, ``finetune``, ...) for ``--executor slurm``
    slurm: dict[str, Any] = field(default_factory=dict)


class Found(NamedTuple):
    """A suite and where it comes from: ``built in`` or the file that defines it."""

    suite: Suite
    origin: str
    replaces_builtin: bool = False


def load_config(path: Path | str) -> dict[str, Suite]:
    """Every suite in one suites file; one-line errors for a missing file or bad TOML."""
    path = Path(path)
    if not path.is_file():
        raise CxrbenchError(
            f"config {path} not found (leave out --config for the built-in suites and ./{LOCAL_CONFIG})"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise CxrbenchError(f"config {path} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise CxrbenchError(f"config {path} cannot be read: {exc.strerror}") from None
    return _parse(text, str(path))


def builtin_suites() -> dict[str, Suite]:
    """The suites shipped inside the package (``cxrbench/suites.toml``)."""
    text = resources.files("cxrbench").joinpath(_PACKAGED).read_text(encoding="utf-8")
    return _parse(text, f"cxrbench/{_PACKAGED}")


def available_suites(config: Path | str | None = None) -> dict[str, Found]:
    """Every suite by name: the built-in ones, then those of ``config`` (default ``./benchmarks.toml``
    when present) added or replacing a built-in one of the same name. A ``config`` given but
    missing is an error; a local file without suites adds nothing."""
    found = {name: Found(suite, BUILTIN) for name, suite in builtin_suites().items()}
    path = _config_path(config)
    if path is not None:
        for name, suite in load_config(path).items():
            found[name] = Found(suite, str(path), replaces_builtin=name in found)
    return dict(sorted(found.items()))


def get_suite(name: str, config: Path | str | None = None) -> Suite:
    """The suite called ``name`` (see ``available_suites``); one-line error listing the known suites."""
    found = available_suites(config)
    if name not in found:
        path = _config_path(config)
        where = "built-in suites" + (f" or {path}" if path is not None else "")
        raise CxrbenchError(f"unknown suite '{name}' in {where} (known: {', '.join(found)})")
    return found[name].suite


def _config_path(config: Path | str | None) -> Path | None:
    """The suites file to read over the built-in ones: ``config`` if given, else ``./benchmarks.toml`` if present."""
    if config is not None:
        return Path(config)
    return LOCAL_CONFIG if LOCAL_CONFIG.is_file() else None


def _parse(text: str, where: str) -> dict[str, Suite]:
    """The suites of one file's text; ``where`` names the file in errors."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise CxrbenchError(f"config {where} is not valid TOML: {exc}") from None
    stray = sorted(set(data) - {"suites"})
    if stray:
        raise CxrbenchError(f"config {where}: unknown top-level keys {stray} (suites are [suites.NAME] tables)")
    suites = _table(data.get("suites", {}), f"{where}: suites")
    return {name: _suite(name, table, where) for name, table in suites.items()}


def _suite(name: str, table: Any, path: str) -> Suite:
    where = f"{path}: suites.{name}"
    if not isinstance(table, dict):
        raise CxrbenchError(f"{where} must be a table")
    known = set(Suite.__dataclass_fields__) | {"prepare"}
    unknown = sorted(set(table) - known)
    if unknown:
        raise CxrbenchError(f"{where}: unknown keys {unknown}")

    prepare = _table(table.get("prepare", {}), f"{where}.prepare")
    names = _strings(table.get("datasets"), f"{where}.datasets")
    stray = sorted(set(prepare) - set(names))
    if stray:
        raise CxrbenchError(f"{where}.prepare.{stray[0]}: '{stray[0]}' is not in datasets {names}")
    datasets = []
    for dataset in names:
        options = dict(_table(prepare.get(dataset, {}), f"{where}.prepare.{dataset}"))
        root = options.pop("root", None)
        datasets.append(DatasetSpec(dataset, None if root is None else str(root), options))

    pretrain = {}
    for enc, spec in _table(table.get("pretrain", {}), f"{where}.pretrain").items():
        spec = dict(_table(spec, f"{where}.pretrain.{enc}"))
        method = spec.pop("method", enc)
        dataset = spec.pop("dataset", names[0])
        if dataset not in names:
            raise CxrbenchError(f"{where}.pretrain.{enc}.dataset '{dataset}' is not in datasets {names}")
        pretrain[enc] = PretrainSpec(enc, str(method), str(dataset), spec)

    from cxrbench.models.sources import builtin_names, is_builtin

    encoders = _strings(table.get("encoders"), f"{where}.encoders")
    for enc in encoders:
        if not is_builtin(enc) and enc not in pretrain:
            raise CxrbenchError(
                f"{where}.encoders: '{enc}' is neither built in ({', '.join(builtin_names())}), "
                f"a file: path, nor defined under suites.{name}.pretrain"
            )
    baseline = table.get("baseline", "imagenet")
    if baseline not in encoders:
        raise CxrbenchError(f"{where}.baseline '{baseline}' is not one of its encoders {encoders}")
    adaptations = _strings(table.get("adaptations", list(DEFAULT_ADAPTATIONS)), f"{where}.adaptations")
    bad = [a for a in adaptations if a not in ADAPTATIONS]
    if bad:
        raise CxrbenchError(f"{where}.adaptations: unknown {bad} (allowed: {', '.join(ADAPTATIONS)})")
    fractions = tuple(_list(table.get("fractions", [1.0]), f"{where}.fractions"))
    if not all(isinstance(f, (int, float)) and not isinstance(f, bool) and 0 < f <= 1 for f in fractions):
        raise CxrbenchError(f"{where}.fractions must be numbers in (0, 1]: {list(fractions)}")
    seeds = tuple(_list(table.get("seeds", [0]), f"{where}.seeds"))
    if not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise CxrbenchError(f"{where}.seeds must be a list of integers: {list(seeds)}")

    external = {}
    for train, tests in _table(table.get("external", {}), f"{where}.external").items():
        tests = _strings(tests, f"{where}.external.{train}")
        for dataset in (train, *tests):
            if dataset not in names:
                raise CxrbenchError(f"{where}.external: '{dataset}' is not in datasets {names}")
        if train in tests or len(set(tests)) != len(tests):
            raise CxrbenchError(f"{where}.external.{train}: list other datasets, each once")
        external[train] = tuple(tests)

    return Suite(
        name=name,
        description=str(table.get("description", "")),
        datasets=tuple(datasets),
        encoders=tuple(encoders),
        baseline=baseline,
        adaptations=tuple(adaptations),
        fractions=tuple(float(f) for f in fractions),
        seeds=seeds,
        arch=table.get("arch"),
        pretrain=pretrain,
        probe=_adaptation(table, "probe", names, where),
        finetune=_adaptation(table, "finetune", names, where),
        segment=_adaptation(table, "segment", names, where),
        evaluate=dict(_table(table.get("evaluate", {}), f"{where}.evaluate")),
        compare=dict(_table(table.get("compare", {}), f"{where}.compare")),
        external=external,
        slurm=dict(_table(table.get("slurm", {}), f"{where}.slurm")),
    )


def _adaptation(table: dict, key: str, names: list[str], where: str) -> dict[str, Any]:
    """An adaptation's options; its optional ``datasets`` (default: all of the suite's) must be
    among the suite's datasets (e.g. ``segment`` only where there are masks)."""
    options = dict(_table(table.get(key, {}), f"{where}.{key}"))
    if "datasets" in options:
        chosen = _strings(options["datasets"], f"{where}.{key}.datasets")
        stray = [d for d in chosen if d not in names]
        if stray:
            raise CxrbenchError(f"{where}.{key}.datasets: '{stray[0]}' is not in datasets {names}")
    return options


def _table(value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        raise CxrbenchError(f"{where} must be a table")
    return value


def _list(value: Any, where: str) -> list:
    if not isinstance(value, list) or not value:
        raise CxrbenchError(f"{where} must be a non-empty list")
    return value


def _strings(value: Any, where: str) -> list[str]:
    values = _list(value, where)
    if not all(isinstance(v, str) for v in values):
        raise CxrbenchError(f"{where} must be a list of strings")
    return values
