"""Scores from other tools, in the predictions format with no manifest, go through evaluate + compare."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from tests.stages.conftest import cli


def _write(
    run: Path,
    encoder: str,
    scores: np.ndarray,
    y: np.ndarray,
    patients: np.ndarray,
    dataset: str = "outside",
    name: str = "probe",
) -> None:
    n = len(y)
    frame = pd.DataFrame(
        {
            "sample_id": [f"img{i}" for i in range(n)] * 2,
            "patient_id": list(patients) * 2,
            "split": ["val"] * n + ["test"] * n,
            "label": "effusion",
            "y_true": np.concatenate([y, y]).astype(float),
            "y_score": np.concatenate([scores, scores]),
        }
    )
    path = run / "predictions" / dataset / encoder / f"{name}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(path)


def test_external_predictions_are_evaluated_and_compared(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    patients = np.array([f"p{i // 2}" for i in range(300)])
    good = y + rng.normal(0, 0.8, 300)
    weak = y + rng.normal(0, 3.0, 300)
    run = tmp_path / "run"
    _write(run, "imagenet", weak, y, patients)
    _write(run, "mine", good, y, patients)
    cli("evaluate", "--n-boot", "200", "--cluster", "patient", "--run", str(run))
    cli("compare", "--baseline", "imagenet", "--n-boot", "200", "--cluster", "patient", "--no-plots", "--run", str(run))

    metrics = pd.read_parquet(run / "evaluation/metrics.parquet")
    auc = metrics[(metrics["metric"] == "auc") & (metrics["label"] == "effusion")].set_index("encoder")
    assert abs(auc.loc["mine", "value"] - roc_auc_score(y, good)) < 1e-12
    table = pd.read_parquet(run / "comparisons/outside.parquet")
    row = table[table["label"] == "effusion"].iloc[0]
    assert row["encoder"] == "mine"
    assert abs(row["delta"] - (roc_auc_score(y, good) - roc_auc_score(y, weak))) < 1e-12
    assert row["delta_ci_low"] > 0 and row["significant"]
    assert "mine" in (run / "comparisons/outside.md").read_text()


def test_compare_with_only_the_baseline_reports_its_aucs_and_roc_curves(tmp_path: Path) -> None:
    """A baseline run alone (or a dataset only the baseline was run on) is reported, not an error."""
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 200)
    patients = np.array([f"p{i}" for i in range(200)])
    base = y + rng.normal(0, 1.0, 200)
    run = tmp_path / "run"
    _write(run, "imagenet", base, y, patients, dataset="solo")
    cli("evaluate", "--n-boot", "50", "--run", str(run))
    cli("compare", "--baseline", "imagenet", "--n-boot", "50", "--run", str(run))  # plots on

    home = run / "comparisons"
    assert pd.read_parquet(home / "solo.parquet").empty  # no differences
    table = (home / "solo.md").read_text()
    assert f"{roc_auc_score(y, base):.3f}" in table and "imagenet" in table
    plots = sorted(p.name for p in (home / "plots").iterdir())
    assert plots == ["solo-roc-effusion.pdf", "solo-roc-effusion.png"]  # no forest plot of nothing
    assert not list(home.glob("summary.*"))  # no "maximum improvement" without another encoder

    # with a second dataset that has another encoder, that one is compared and summarised as usual
    _write(run, "imagenet", base, y, patients, dataset="pair")
    _write(run, "mine", y + rng.normal(0, 0.5, 200), y, patients, dataset="pair")
    cli("evaluate", "--n-boot", "50", "--run", str(run))
    cli("compare", "--baseline", "imagenet", "--n-boot", "50", "--run", str(run))
    assert (home / "plots" / "pair-forest.png").is_file() and not (home / "plots" / "solo-forest.png").exists()
    summary = pd.read_parquet(home / "summary.parquet")
    rows = summary.set_index("dataset")["best (probe)"].to_dict()
    assert rows == {"pair": "mine", "solo": ""}


def test_predictions_are_read_and_checked_once_per_process(tmp_path: Path, monkeypatch) -> None:
    """evaluate checks each dataset's rows once (not again in the bootstrap), and compare in the
    same process (a suite) reuses what evaluate read while the files are unchanged."""
    import cxrbench.stages.evaluate as evaluate_stage
    import cxrbench.stats.engine as engine
    from cxrbench.stages.compare import compare

    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 200)
    patients = np.array([f"p{i}" for i in range(200)])
    run = tmp_path / "run"
    _write(run, "imagenet", y + rng.normal(0, 2.0, 200), y, patients)
    _write(run, "mine", y + rng.normal(0, 1.0, 200), y, patients)
    calls = {"read": 0, "validate": 0}

    def counted(fn, key):
        def wrapper(*args, **kwargs):
            calls[key] += 1
            return fn(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(evaluate_stage, "_read_table", counted(evaluate_stage._read_table, "read"))
    monkeypatch.setattr(engine, "_validate", counted(engine._validate, "validate"))
    evaluate_stage.evaluate(run, n_boot=20)
    assert calls == {"read": 2, "validate": 1}
    compare(run, baseline="imagenet", n_boot=20, plots=False)
    assert calls == {"read": 2, "validate": 1}
    # a changed file is read again
    path = run / "predictions/outside/mine/probe.parquet"
    frame = pd.read_parquet(path)
    frame["y_score"] = frame["y_score"] + 1.0
    frame.to_parquet(path)
    evaluate_stage.evaluate(run, n_boot=20)
    assert calls == {"read": 4, "validate": 2}


def test_models_with_several_seeds_get_a_mean_over_seeds_table(tmp_path: Path) -> None:
    """Label-efficiency runs (``probe-f0.10-s0``, ``-s1``, ...) get ``comparisons/seeds.*``: each
    encoder's macro AUC averaged over its seeds against the baseline's same seeds."""
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 200)
    patients = np.array([f"p{i}" for i in range(200)])
    run = tmp_path / "run"
    deltas = []
    for seed in range(3):
        base, mine = y + rng.normal(0, 2.0, 200), y + rng.normal(0, 1.0, 200)
        for encoder, scores in (("imagenet", base), ("mine", mine)):
            _write(run, encoder, scores, y, patients, dataset="ext", name=f"probe-f0.10-s{seed}")
        deltas.append(roc_auc_score(y, mine) - roc_auc_score(y, base))
    cli("evaluate", "--n-boot", "200", "--run", str(run))
    cli("compare", "--baseline", "imagenet", "--n-boot", "200", "--no-plots", "--run", str(run))
    per_seed = pd.read_parquet(run / "comparisons/ext.parquet")
    assert sorted(per_seed.loc[per_seed["label"] == "mean", "seed"]) == [0, 1, 2]
    pooled = pd.read_parquet(run / "comparisons/seeds.parquet")
    assert len(pooled) == 1
    row = pooled.iloc[0]
    assert (row["dataset"], row["encoder"], row["adaptation"], row["seeds"]) == ("ext", "mine", "probe", 3)
    assert abs(row["fraction"] - 0.1) < 1e-12
    assert abs(row["delta"] - np.mean(deltas)) < 1e-12
    assert row["delta_ci_low"] < row["delta"] < row["delta_ci_high"] and row["significant"]
    text = (run / "comparisons/seeds.md").read_text()
    assert "Mean over seeds" in text and f"{np.mean(deltas):.3f}" in text
    for fmt in ("csv", "tex", "html"):
        assert (run / "comparisons" / f"seeds.{fmt}").is_file()


def test_no_mean_over_seeds_table_without_repeated_seeds(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 100)
    patients = np.array([f"p{i}" for i in range(100)])
    run = tmp_path / "run"
    _write(run, "imagenet", y + rng.normal(0, 2.0, 100), y, patients)
    _write(run, "mine", y + rng.normal(0, 1.0, 100), y, patients)
    cli("evaluate", "--n-boot", "50", "--run", str(run))
    cli("compare", "--baseline", "imagenet", "--n-boot", "50", "--no-plots", "--run", str(run))
    assert not list((run / "comparisons").glob("seeds.*"))


def test_a_dataset_named_like_a_comparisons_view_is_refused(tmp_path: Path, capsys) -> None:
    """Outside predictions in ``predictions/seeds/`` would overwrite compare's ``seeds.*`` table."""
    from cxrbench.cli import main

    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 40)
    run = tmp_path / "run"
    _write(run, "imagenet", y + rng.normal(0, 1.0, 40), y, np.array([f"p{i}" for i in range(40)]), dataset="seeds")
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "--n-boot", "20", "--run", str(run)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1, err
    assert "predictions/seeds/imagenet/probe.parquet" in err and "'seeds'" in err and "rename" in err
    assert not (run / "evaluation" / "metrics.parquet").exists()
