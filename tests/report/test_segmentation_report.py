"""Segmentation and bias tables and the Dice-vs-epoch plot: cells from the comparison rows, one
curve per training run, nothing drawn without two epochs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cxrbench.report.bias import bias_table
from cxrbench.report.segmentation import plot_epoch_curves, segmentation_table
from cxrbench.stats.segmentation import compare_segmentation, evaluate_segmentation
from tests.stats.test_segmentation import _cases


def test_segmentation_table_cells_come_from_the_metrics_and_the_comparison() -> None:
    base = _cases("random", [1, 2, 3, 4], [1, 1, 0, 0], [0, 1, 1, 0])
    good = _cases("masked", [3, 4, 5, 6], [0, 0, 0, 0], [0, 0, 0, 0])
    cases = pd.concat([base, good], ignore_index=True)
    metrics = evaluate_segmentation(cases, n_boot=50).assign(dataset="d")
    table, _ = compare_segmentation(cases, baseline="random", n_boot=50)
    human = segmentation_table(table, metrics, dataset="d", baseline="random")
    assert human["encoder"].tolist() == ["random", "masked"] and human["n cases"].tolist() == ["4", "4"]
    dice = table.set_index("metric").loc["dice"]
    assert human.loc[1, "Δ Dice [CI]"].startswith(f"{dice['delta']:.3f} [")
    assert human.loc[0, "Δ Dice [CI]"] == "" and human.loc[0, "Dice [CI]"].startswith(f"{base['dice'].mean():.3f}")


def test_epoch_plot_draws_one_line_per_run_and_nothing_for_one_epoch(tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    rows = [
        {"dataset": "d", "encoder": e, "adaptation": "segment", "fraction": f, "seed": 0, "epoch": k,
         "val_dice": 0.1 * k, "test_dice": 0.1 * k}
        for e in ("random", "masked") for f in (0.1, 1.0) for k in range(3)
    ]  # fmt: skip
    drawn = []
    real = plt.Axes.plot
    try:
        plt.Axes.plot = lambda self, *a, **k: drawn.append(k.get("label")) or real(self, *a, **k)
        paths = plot_epoch_curves(pd.DataFrame(rows), dataset="d", out_stem=tmp_path / "c", baseline="random")
    finally:
        plt.Axes.plot = real
    assert [p.suffix for p in paths] == [".png", ".pdf"] and all(p.is_file() for p in paths)
    assert sorted(drawn) == sorted(f"{e} / segment f{f:g}" for e in ("random", "masked") for f in (0.1, 1.0))
    one = pd.DataFrame([r for r in rows if r["epoch"] == 0])
    assert plot_epoch_curves(one, dataset="d", out_stem=tmp_path / "one") == []


def test_bias_table_lists_random_then_each_encoder_with_its_delta() -> None:
    comparison = pd.DataFrame(
        {"encoder": ["masked"], "adaptation": ["attr"], "fraction": [1.0], "seed": [0], "label": ["mean"],
         "auc": [0.8], "auc_ci_low": [0.7], "auc_ci_high": [0.9], "delta": [0.2], "delta_ci_low": [0.1],
         "delta_ci_high": [0.3], "significant": [True]}
    )  # fmt: skip
    metrics = pd.DataFrame(
        {"dataset": ["ct+sex"], "encoder": ["random"], "adaptation": ["attr"], "fraction": [1.0], "seed": [0],
         "label": ["mean"], "metric": ["auc"], "value": [0.6], "ci_low": [0.5], "ci_high": [0.7]}
    )  # fmt: skip
    table = bias_table({"ct+sex": comparison}, metrics)
    assert table[["dataset", "attribute", "encoder"]].values.tolist() == [
        ["ct", "sex", "random"],
        ["ct", "sex", "masked"],
    ]
    assert table["AUC [CI]"].tolist() == ["0.600 [0.500, 0.700]", "0.800 [0.700, 0.900]"]
    assert table["Δ vs random [CI]"].tolist() == ["", "0.200 [0.100, 0.300]*"]
    assert np.all(table["fraction"] == "1")
