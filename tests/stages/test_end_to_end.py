"""Every stage on tiny phantoms through the CLI: artifacts follow the contracts, findings are learnt."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import roc_auc_score

from tests.stages.conftest import ARCH, cli

PRED_COLUMNS = ["sample_id", "patient_id", "split", "label", "y_true", "y_score"]
FINDINGS = ["cardiomegaly", "pleural_effusion", "nodule", "pneumothorax", "consolidation"]


@pytest.fixture(scope="module")
def pipeline(phantom_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    import shutil

    run = tmp_path_factory.mktemp("e2e") / "run"
    shutil.copytree(phantom_run, run)
    r = ("--run", str(run))
    cli("pretrain", "simclr", "--dataset", "synthetic", "--epochs", "1", "--arch", ARCH, *r)
    cli("probe", "--dataset", "synthetic", "--encoder", "random", "--arch", ARCH, *r)
    cli("probe", "--dataset", "synthetic", "--encoder", "simclr", *r)
    for encoder in ("random", "simclr"):
        cli(
            "finetune",
            "--dataset",
            "synthetic",
            "--encoder",
            encoder,
            "--arch",
            ARCH,
            "--epochs",
            "6",
            "--optimizer",
            "adamw",
            "--lr",
            "0.001",
            "--batch-size",
            "32",
            *r,
        )
    cli("evaluate", "--n-boot", "100", *r)
    cli("compare", "--baseline", "random", "--n-boot", "100", "--no-plots", *r)
    return run


def test_samples_contract(pipeline: Path) -> None:
    samples = pd.read_parquet(pipeline / "prepared/synthetic/samples.parquet")
    for column in ["sample_id", "patient_id", "split", "view"]:
        assert column in samples
    assert set(samples["split"]) == {"train", "val", "test"}
    assert samples.groupby("patient_id")["split"].nunique().max() == 1
    assert [c for c in samples if c.startswith("label:")] == [f"label:{f}" for f in FINDINGS]
    assert set(samples["view"].dropna()) <= {"PA", "AP"}  # --views frontal by default
    values = samples[[f"label:{f}" for f in FINDINGS]].stack(future_stack=True)
    assert set(values.dropna().unique()) <= {0.0, 1.0}


def test_predictions_contract(pipeline: Path) -> None:
    files = sorted((pipeline / "predictions/synthetic").glob("*/*.parquet"))
    assert [f.relative_to(pipeline / "predictions/synthetic").as_posix() for f in files] == [
        "random/finetune.parquet",
        "random/probe.parquet",
        "simclr/finetune.parquet",
        "simclr/probe.parquet",
    ]
    for path in files:
        table = pq.read_table(path)
        assert table.column_names == PRED_COLUMNS
        frame = table.to_pandas()
        assert set(frame["split"]) == {"val", "test"}
        assert frame["y_score"].between(0, 1).all()
        manifest = json.loads(path.with_name(path.stem + ".manifest.json").read_text())
        assert manifest["complete"] and manifest["key"] and manifest["versions"]["torch"]


def test_finetuned_auc_clearly_above_chance(pipeline: Path) -> None:
    preds = pd.read_parquet(pipeline / "predictions/synthetic/random/finetune.parquet")
    test = preds[(preds["split"] == "test") & preds["y_true"].notna()]
    aucs = {label: roc_auc_score(g["y_true"], g["y_score"]) for label, g in test.groupby("label")}
    assert sum(aucs.values()) / len(aucs) > 0.65, aucs


def test_metrics_and_comparison(pipeline: Path) -> None:
    metrics = pd.read_parquet(pipeline / "evaluation/metrics.parquet")
    assert list(metrics.columns[:5]) == ["dataset", "encoder", "adaptation", "fraction", "seed"]
    auc = metrics[(metrics["metric"] == "auc") & (metrics["label"] == "mean")]
    assert len(auc) == 4 and (auc["ci_low"] <= auc["value"]).all() and (auc["value"] <= auc["ci_high"]).all()

    table = pd.read_parquet(pipeline / "comparisons/synthetic.parquet")
    for adaptation in ("probe", "finetune"):
        rows = table[(table["encoder"] == "simclr") & (table["adaptation"] == adaptation)]
        assert sorted(rows["label"]) == sorted([*FINDINGS, "mean"])
    for column in ["delta", "delta_ci_low", "delta_ci_high", "p_value", "p_adjusted", "significant"]:
        assert column in table
    for suffix in ("md", "csv", "tex", "html"):
        assert (pipeline / f"comparisons/synthetic.{suffix}").stat().st_size > 0
    assert "cardiomegaly" in (pipeline / "comparisons/synthetic.md").read_text()
