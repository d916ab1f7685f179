"""Suites that segment and pretrain on CT: the `segment` adaptation, per-adaptation `datasets`, and
the built-in `ct-smoke` suite's shape."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from cxrbench.config import builtin_suites, load_config
from cxrbench.errors import CxrbenchError
from cxrbench.stages.suite import run_suite

_SUITE = """
[suites.ct]
datasets = ["synthetic-ct", "synthetic-lidc"]
encoders = ["rot"]
baseline = "rot"
adaptations = ["segment"]
arch = "resnet10t"
[suites.ct.prepare.synthetic-ct]
n_patients = 4
phantom_size = 32
size = 32
[suites.ct.prepare.synthetic-lidc]
n_patients = 4
phantom_size = 32
size = 32
split = "50/25/25"
[suites.ct.pretrain.rot]
method = "rotation"
dataset = "synthetic-ct"
epochs = 1
batch_size = 16
[suites.ct.segment]
datasets = ["synthetic-lidc"]
epochs = 1
batch_size = 32
width = 4
"""


def test_a_suite_pretrains_on_ct_and_segments_only_the_datasets_it_names(
    tmp_path: Path, monkeypatch, one_torch_thread
) -> None:
    monkeypatch.setenv("CXRBENCH_QUIET", "1")
    (config := tmp_path / "benchmarks.toml").write_text(_SUITE)
    suite = load_config(config)["ct"]
    assert suite.adaptations == ("segment",) and suite.segment["datasets"] == ["synthetic-lidc"]
    done = run_suite(tmp_path / "run", suite)
    segmented = sorted(name for name in done if name.startswith("segment"))
    assert segmented == ["segment/synthetic-lidc/rot/f=1/s=0"] and "pretrain/rot" in done
    assert not any(name.startswith(("probe", "finetune")) for name in done)
    metrics = pd.read_parquet(tmp_path / "run/evaluation/metrics.parquet")  # evaluate reads the Dice table
    assert set(metrics["dataset"]) == {"synthetic-lidc"} and "compare" in done
    assert (tmp_path / "run/segmentation/synthetic-lidc/rot/segment.parquet").is_file()
    assert not (tmp_path / "run/segmentation/synthetic-ct").exists()
    again = run_suite(tmp_path / "run", suite)  # finished: nothing redone
    assert {name: m.key for name, m in again.items()} == {name: m.key for name, m in done.items()}


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ('[suites.ct.segment]\ndatasets = ["lidc"]', "suites.ct.segment.datasets: 'lidc' is not in datasets"),
        ("[suites.ct.finetune]\ndatasets = []", "suites.ct.finetune.datasets must be a non-empty list"),
        ('adaptations = ["segment", "knn"]', "unknown ['knn']"),
    ],
)
def test_adaptation_mistakes_are_one_line_errors(tmp_path: Path, extra: str, named: str) -> None:
    head = '[suites.ct]\ndatasets = ["synthetic-lidc"]\nencoders = ["random"]\nbaseline = "random"\n'
    if extra.startswith("adaptations"):
        head, extra = head + extra + "\n", ""
    (config := tmp_path / "b.toml").write_text(head + extra + "\n")
    with pytest.raises(CxrbenchError, match=named.replace("[", r"\[").replace("]", r"\]")) as info:
        load_config(config)
    assert "\n" not in info.value.message


def test_the_ct_smoke_suite_pretrains_on_ct_finetunes_pe_at_two_fractions_and_segments() -> None:
    suite = builtin_suites()["ct-smoke"]
    assert [d.name for d in suite.datasets] == ["synthetic-ct", "synthetic-lidc"]
    assert suite.baseline == "random" and len(suite.fractions) == 2
    assert {spec.method for spec in suite.pretrain.values()} == {"masked", "next-slice"}
    assert {spec.dataset for spec in suite.pretrain.values()} == {"synthetic-ct"}
    assert suite.finetune["datasets"] == ["synthetic-ct"] and suite.segment["datasets"] == ["synthetic-lidc"]
    assert set(suite.adaptations) == {"finetune", "segment"}
