"""A label whose test set has one class: evaluate leaves it out of the mean, and compare must not fail."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from tests.stages.conftest import cli


def _labels(rng: np.random.Generator, n: int = 120) -> pd.DataFrame:
    """Val and test rows of two labels; 'nodule' has no positive in test."""
    frames = []
    for label, test_positives in (("effusion", True), ("nodule", False)):
        y_test = rng.integers(0, 2, n).astype(float) if test_positives else np.zeros(n)
        frames.append(
            pd.DataFrame(
                {
                    "sample_id": [f"img{i}" for i in range(2 * n)],
                    "patient_id": [f"p{i // 2}" for i in range(2 * n)],
                    "split": ["val"] * n + ["test"] * n,
                    "label": label,
                    "y_true": np.concatenate([rng.integers(0, 2, n).astype(float), y_test]),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def _write(run: Path, encoder: str, labels: pd.DataFrame, noise: float, rng: np.random.Generator) -> None:
    path = run / "predictions/outside" / encoder / "probe.parquet"
    path.parent.mkdir(parents=True)
    labels.assign(y_score=labels["y_true"] + rng.normal(0, noise, len(labels))).to_parquet(path)


def test_compare_with_plots_skips_the_roc_of_a_single_class_label(tmp_path: Path) -> None:
    """Found with 40 phantom patients (no test positive of consolidation): compare stopped with
    'ROC needs at least one positive and one negative example' after evaluate had warned."""
    rng = np.random.default_rng(0)
    run = tmp_path / "run"
    labels = _labels(rng)
    _write(run, "imagenet", labels, 3.0, rng)
    _write(run, "mine", labels, 0.8, rng)
    cli("evaluate", "--n-boot", "50", "--run", str(run))
    cli("compare", "--baseline", "imagenet", "--n-boot", "50", "--run", str(run))
    plots = sorted(p.name for p in (run / "comparisons/plots").glob("*.png"))
    assert "outside-roc-effusion.png" in plots and "outside-roc-nodule.png" not in plots
    assert "mine" in (run / "comparisons/outside.md").read_text()
