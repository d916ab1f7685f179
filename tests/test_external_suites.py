"""Suites with external tests: ``external = {train = [tests]}`` is checked and reaches probe/finetune."""

from __future__ import annotations

from pathlib import Path

import pytest

from cxrbench.config import load_config
from cxrbench.errors import CxrbenchError

BASE = """
[suites.x]
datasets = ["synthetic", "site-b"]
encoders = ["random"]
baseline = "random"
adaptations = ["probe", "finetune"]
{external}
[suites.x.prepare.site-b]
adapter = "synthetic"
site = "b"
n_patients = 10
"""


def _load(tmp_path: Path, external: str):
    path = tmp_path / "benchmarks.toml"
    path.write_text(BASE.format(external=external))
    return load_config(path)["x"]


def test_external_tables_are_parsed(tmp_path: Path) -> None:
    assert _load(tmp_path, 'external = { synthetic = ["site-b"] }').external == {"synthetic": ("site-b",)}
    assert _load(tmp_path, "").external == {}


@pytest.mark.parametrize(
    ("external", "message"),
    [
        ('external = { nih = ["site-b"] }', "'nih' is not in datasets"),
        ('external = { synthetic = ["chexpert"] }', "'chexpert' is not in datasets"),
        ('external = { synthetic = ["synthetic"] }', "list other datasets"),
        ('external = { synthetic = ["site-b", "site-b"] }', "list other datasets"),
        ('external = { synthetic = "site-b" }', "must be a non-empty list"),
    ],
)
def test_bad_external_tables_are_one_line_errors(tmp_path: Path, external: str, message: str) -> None:
    with pytest.raises(CxrbenchError, match=message):
        _load(tmp_path, external)


def test_the_suite_passes_external_tests_and_prepares_named_datasets(tmp_path: Path, monkeypatch) -> None:
    import cxrbench.stages.compare as compare_stage
    import cxrbench.stages.evaluate as evaluate_stage
    import cxrbench.stages.finetune as finetune_stage
    import cxrbench.stages.prepare as prepare_stage
    import cxrbench.stages.probe as probe_stage
    from cxrbench.rundir import Manifest
    from cxrbench.stages.suite import run_suite

    calls: list[tuple[str, dict]] = []

    def record(name):
        def stage(*args, **kwargs):
            calls.append((name, {"args": args[1:], **kwargs}))
            return Manifest(stage=name, key=str(len(calls)), settings={}, complete=True)

        return stage

    for module, name in (
        (prepare_stage, "prepare"),
        (probe_stage, "probe"),
        (finetune_stage, "finetune"),
        (evaluate_stage, "evaluate"),
        (compare_stage, "compare"),
    ):
        monkeypatch.setattr(module, name, record(name))
    import cxrbench.grid.cells as cells

    real_execute = cells.execute

    def execute(run, suite, cell, **kwargs):  # the features cells read prepared data: not here
        if cell.kind == "features":
            return Manifest(stage="features", key="f", settings={}, complete=True)
        return real_execute(run, suite, cell, **kwargs)

    monkeypatch.setattr(cells, "execute", execute)
    run_suite(tmp_path / "run", _load(tmp_path, 'external = { synthetic = ["site-b"] }'))
    prepares = [c for n, c in calls if n == "prepare"]
    assert [(c["args"], c["name"]) for c in prepares] == [(("synthetic",), None), (("synthetic",), "site-b")]
    assert prepares[1]["options"] == {"site": "b", "n_patients": 10}
    adapted = {(n, c["dataset"]): c["test_datasets"] for n, c in calls if n in ("probe", "finetune")}
    assert adapted == {
        ("probe", "synthetic"): ("site-b",),
        ("finetune", "synthetic"): ("site-b",),
        ("probe", "site-b"): (),
        ("finetune", "site-b"): (),
    }
