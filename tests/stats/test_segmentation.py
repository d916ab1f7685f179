"""Segmentation metrics: mean Dice/IoU and their bootstrap CIs against hand-computed cases, a plain
loop over the same resamples and scipy.stats.bootstrap; paired Δ against the same loop."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from cxrbench.adapt.segment import dice_iou
from cxrbench.errors import CxrbenchError
from cxrbench.stats.bootstrap import bootstrap_counts, bootstrap_pvalue
from cxrbench.stats.multiplicity import adjust_pvalues
from cxrbench.stats.segmentation import compare_segmentation, evaluate_segmentation


def _cases(encoder: str, tp, fp, fn, *, split="test", patients=None, adaptation="segment", fraction=1.0):
    tp, fp, fn = (np.asarray(v) for v in (tp, fp, fn))
    dice, iou = dice_iou(tp, fp, fn)
    n = len(tp)
    return pd.DataFrame(
        {
            "encoder": encoder, "adaptation": adaptation, "fraction": fraction, "seed": 0,
            "case_id": [f"c{i:03d}" for i in range(n)],  # sorted = row order: the resamples index sorted ids
            "patient_id": patients if patients is not None else [f"p{i}" for i in range(n)],
            "split": split, "tp": tp, "fp": fp, "fn": fn, "dice": dice, "iou": iou,
        }
    )  # fmt: skip


def test_mean_dice_and_iou_match_a_hand_computed_case() -> None:
    # dice: 2*4/(8+2+1) = 8/11, 2*3/(6+0+3) = 2/3, empty case = 1 ; iou: 4/7, 3/6, 1
    cases = _cases("a", [4, 3, 0], [2, 0, 0], [1, 3, 0])
    out = evaluate_segmentation(cases, n_boot=50).set_index("metric")
    assert out.loc["dice", "value"] == pytest.approx((8 / 11 + 2 / 3 + 1) / 3)
    assert out.loc["iou", "value"] == pytest.approx((4 / 7 + 1 / 2 + 1) / 3)
    assert (out["label"] == "mean").all() and out.loc["dice", "n_pos"] == 2 and out.loc["dice", "n_neg"] == 1
    # val rows never count
    both = pd.concat([cases, _cases("a", [0], [5], [5], split="val")], ignore_index=True)
    again = evaluate_segmentation(both, n_boot=50).set_index("metric")
    assert again.loc["dice", "value"] == pytest.approx(out.loc["dice", "value"])


def test_ci_is_the_percentile_interval_of_the_shared_resamples_and_agrees_with_scipy() -> None:
    rng = np.random.default_rng(3)
    n = 40
    tp, fp, fn = rng.integers(0, 30, n), rng.integers(0, 10, n), rng.integers(0, 10, n)
    cases = _cases("a", tp, fp, fn)
    n_boot = 4000
    out = evaluate_segmentation(cases, n_boot=n_boot, seed=7).set_index("metric")
    dice = cases["dice"].to_numpy()
    counts = bootstrap_counts(n, n_boot=n_boot, seed=7)
    loop = np.array([np.average(dice, weights=c) for c in counts])
    assert (out.loc["dice", "ci_low"], out.loc["dice", "ci_high"]) == pytest.approx(
        tuple(np.percentile(loop, [2.5, 97.5]))
    )
    ref = stats.bootstrap((dice,), np.mean, n_resamples=n_boot, method="percentile", random_state=1)
    assert out.loc["dice", "ci_low"] == pytest.approx(ref.confidence_interval.low, abs=0.01)
    assert out.loc["dice", "ci_high"] == pytest.approx(ref.confidence_interval.high, abs=0.01)


def test_patient_clusters_resample_whole_patients() -> None:
    cases = _cases("a", [4, 3, 0, 5], [2, 0, 0, 1], [1, 3, 0, 0], patients=["p", "p", "q", "r"])
    out = evaluate_segmentation(cases, n_boot=300, seed=1, cluster="patient").set_index("metric")
    counts = bootstrap_counts(4, n_boot=300, seed=1, clusters=np.array(["p", "p", "q", "r"], dtype=object))
    assert (counts[:, 0] == counts[:, 1]).all()
    loop = np.array([np.average(cases["dice"], weights=c) for c in counts])
    assert out.loc["dice", "ci_low"] == pytest.approx(np.percentile(loop, 2.5))
    bad = cases.assign(patient_id=["p", "p", "q", None])
    with pytest.raises(CxrbenchError, match="patient_id"):
        evaluate_segmentation(bad, n_boot=10, cluster="patient")


def test_paired_delta_uses_the_same_resamples_for_both_encoders_and_corrects_p_values() -> None:
    rng = np.random.default_rng(0)
    n = 30
    base = _cases("random", rng.integers(1, 20, n), rng.integers(0, 20, n), rng.integers(0, 20, n))
    good = _cases("masked", base["tp"] + 10, base["fp"], base["fn"])
    same = _cases("other", base["tp"], base["fp"], base["fn"])
    cases = pd.concat([base, good, same], ignore_index=True)
    table, warnings = compare_segmentation(cases, baseline="random", n_boot=500, seed=2, correction="holm")
    assert warnings == []
    rows = table.set_index(["encoder", "metric"])
    counts = bootstrap_counts(n, n_boot=500, seed=2)
    diff = np.array([np.average(good["dice"], weights=c) - np.average(base["dice"], weights=c) for c in counts])
    rec = rows.loc[("masked", "dice")]
    assert rec["delta"] == pytest.approx(good["dice"].mean() - base["dice"].mean())
    assert (rec["delta_ci_low"], rec["delta_ci_high"]) == pytest.approx(tuple(np.percentile(diff, [2.5, 97.5])))
    assert rec["p_value"] == pytest.approx(bootstrap_pvalue(diff)) and rec["n_cases"] == n
    assert rec["delta"] > 0 and bool(rec["significant"])
    assert rows.loc[("other", "dice"), "delta"] == 0 and not rows.loc[("other", "dice"), "significant"]
    dice_rows = table[table["metric"] == "dice"]
    assert dice_rows["p_adjusted"].tolist() == pytest.approx(
        adjust_pvalues(dice_rows["p_value"].to_numpy(), method="holm").tolist()
    )


def test_pairs_only_cases_both_scored_and_skips_models_without_a_twin() -> None:
    base = _cases("random", [1, 2, 3], [1, 1, 1], [1, 1, 1])
    part = _cases("masked", [5, 5], [0, 0], [0, 0])  # c0, c1 only
    lonely = _cases("masked", [1], [0], [0], fraction=0.1)
    table, warnings = compare_segmentation(pd.concat([base, part, lonely]), baseline="random", n_boot=100)
    rec = table.set_index("metric").loc["dice"]
    assert rec["n_cases"] == 2 and rec["baseline_value"] == pytest.approx(base["dice"][:2].mean())
    assert len(warnings) == 1 and "skipped" in warnings[0]
    with pytest.raises(CxrbenchError, match="baseline encoder 'imagenet'"):
        compare_segmentation(base, baseline="imagenet", n_boot=10)
