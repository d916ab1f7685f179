"""Label harmonisation across datasets: which label of one dataset is which label of another.

The table ships as ``cxrbench/labels.toml`` (every mapping with its source); a ``labels.toml`` in
the current folder adds findings or replaces built-in ones whole, as local suites do. External
validation trains on one dataset and tests on another only on the findings both have.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from cxrbench.data.adapters.base import label_key
from cxrbench.errors import CxrbenchError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

#: the local table read on top of the built-in one, from the current folder
LOCAL_LABELS = Path("labels.toml")
_PACKAGED = "labels.toml"


@dataclass(frozen=True)
class Finding:
    """One finding: its name, each dataset adapter's label for it, and where that comes from."""

    name: str
    labels: dict[str, str]
    source: str
    origin: str = "built in"

    @property
    def key(self) -> str:
        """The label name used in external predictions (``Pleural_Thickening`` -> ``pleural_thickening``)."""
        return label_key(self.name)


@dataclass(frozen=True)
class SharedLabels:
    """The findings a training and a test dataset share, and the labels each keeps to itself."""

    train: str
    test: str
    #: (finding key, training dataset's label, test dataset's label), as the prepared datasets name them
    pairs: tuple[tuple[str, str, str], ...]
    only_train: tuple[str, ...] = ()
    only_test: tuple[str, ...] = ()
    sources: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """The mapping as stage settings (a changed table changes the stage key)."""
        return {
            "pairs": [list(p) for p in self.pairs],
            "only_train": list(self.only_train),
            "only_test": list(self.only_test),
        }


def _parse(text: str, where: str) -> dict[str, Finding]:
    """The findings of one table's text; mistakes are one-line errors naming ``where``."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise CxrbenchError(f"label table {where} is not valid TOML: {exc}") from None
    stray = sorted(set(data) - {"findings"})
    if stray:
        raise CxrbenchError(f"label table {where}: unknown top-level keys {stray} (findings are [findings.NAME])")
    findings = data.get("findings", {})
    if not isinstance(findings, dict):
        raise CxrbenchError(f"label table {where}: findings must be a table")
    out = {}
    for name, entry in findings.items():
        if not isinstance(entry, dict):
            raise CxrbenchError(f"label table {where}: findings.{name} must be a table")
        entry = dict(entry)
        source = entry.pop("source", None)
        if not isinstance(source, str) or not source.strip():
            raise CxrbenchError(f"label table {where}: findings.{name} needs a source (where the mapping comes from)")
        bad = [k for k, v in entry.items() if not isinstance(v, str) or not label_key(v)]
        if bad:
            raise CxrbenchError(f"label table {where}: findings.{name}.{bad[0]} must be a label name (text)")
        out[name] = Finding(name, entry, source, where)
    keys: dict[str, str] = {}
    for finding in out.values():
        if finding.key in keys:
            raise CxrbenchError(
                f"label table {where}: findings {keys[finding.key]!r} and {finding.name!r} are one name"
            )
        keys[finding.key] = finding.name
    return out


def label_table(local: Path | None = None) -> dict[str, Finding]:
    """The built-in findings, then those of ``local`` (default ``./labels.toml`` when present)."""
    text = resources.files("cxrbench").joinpath(_PACKAGED).read_text(encoding="utf-8")
    table = _parse(text, f"cxrbench/{_PACKAGED}")
    path = local if local is not None else (LOCAL_LABELS if LOCAL_LABELS.is_file() else None)
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise CxrbenchError(f"label table {path} cannot be read: {exc.strerror}") from None
        table.update(_parse(text, str(path)))
    by_key = {}
    for finding in table.values():  # a local finding may rename a built-in one's key
        by_key[finding.key] = finding
    return {f.name: f for f in by_key.values()}


def shared_labels(
    train: tuple[str, list[str]],
    test: tuple[str, list[str]],
    *,
    table: dict[str, Finding] | None = None,
    train_name: str | None = None,
    test_name: str | None = None,
) -> SharedLabels:
    """The findings shared by two datasets given as (adapter, prepared label names).

    Labels are matched through the table's findings; labels of an adapter the table does not
    cover are matched by their (normalised) name. The order is the training dataset's.
    """
    table = label_table() if table is None else table
    (train_adapter, train_labels), (test_adapter, test_labels) = train, test

    def canonical(adapter: str, labels: list[str]) -> dict[str, tuple[str, str]]:
        """Prepared label -> (finding key, source) for every label of the dataset that has one."""
        found = {}
        for finding in table.values():
            name = finding.labels.get(adapter)
            if name is not None and label_key(name) in labels:
                found[label_key(name)] = (finding.key, finding.source)
        mapped_keys = {key for key, _ in found.values()}
        for label in labels:  # unmapped labels stand for themselves
            if label not in found and label not in mapped_keys:
                found[label] = (label, "same name")
        return found

    a, b = canonical(train_adapter, train_labels), canonical(test_adapter, test_labels)
    b_by_key = {key: label for label, (key, _) in b.items()}
    pairs, sources = [], {}
    for label in train_labels:
        if label in a and a[label][0] in b_by_key:
            key = a[label][0]
            pairs.append((key, label, b_by_key[key]))
            sources[key] = a[label][1]
    used_train = {p[1] for p in pairs}
    used_test = {p[2] for p in pairs}
    return SharedLabels(
        train=train_name or train_adapter,
        test=test_name or test_adapter,
        pairs=tuple(pairs),
        only_train=tuple(x for x in train_labels if x not in used_train),
        only_test=tuple(x for x in test_labels if x not in used_test),
        sources=sources,
    )


def known_labels(adapter: str, table: dict[str, Finding] | None = None) -> list[str]:
    """An adapter's label names (normalised) without its data: its fixed label list where it has one
    (``LABELS``/``FINDINGS``), else the names the table gives it."""
    from cxrbench.data.adapters import get_adapter

    module = get_adapter(adapter)
    fixed = getattr(module, "LABELS", None) or getattr(module, "FINDINGS", None)
    if fixed:
        return [label_key(name) for name in fixed]
    table = label_table() if table is None else table
    return [label_key(f.labels[adapter]) for f in table.values() if adapter in f.labels]


def dataset_labels(name: str, run=None) -> tuple[str, list[str]]:
    """(adapter, normalised labels) of ``name``: a prepared dataset of ``run`` when there is one, else
    an adapter name (its known labels)."""
    from cxrbench.rundir import layout_of

    if run is not None and (layout_of(run).prepared(name) / "manifest.json").is_file():
        from cxrbench.data.prepared import load_prepared
        from cxrbench.stages.prepare import adapter_of

        prepared = load_prepared(run, name)
        return adapter_of(prepared.manifest), prepared.labels
    return name, known_labels(name)
