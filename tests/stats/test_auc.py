"""Exact AUC / AUPRC against scikit-learn, on whole samples and on every bootstrap replicate."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from cxrbench.errors import CxrbenchError
from cxrbench.stats.auc import (
    ScoreLayout,
    auc_or_nan,
    average_precision,
    label_aucs,
    macro_auc_ovr,
    mean_auc,
    replicate_metrics,
    roc_auc,
)
from cxrbench.stats.bootstrap import bootstrap_counts


def _cases(rng, k=40):
    for i in range(k):
        n = int(rng.integers(2, 300))
        y = rng.integers(0, 2, n)
        y[0], y[1] = 0, 1
        if i % 3 == 0:
            s = rng.normal(size=n)
        elif i % 3 == 1:
            s = rng.integers(0, 4, n).astype(float)  # heavily tied
        else:
            s = np.round(rng.random(n), 1) + y * 0.05
        yield y, s


def test_roc_auc_and_ap_equal_sklearn_random_and_tied():
    rng = np.random.default_rng(0)
    for y, s in _cases(rng):
        assert abs(roc_auc(y, s) - roc_auc_score(y, s)) < 1e-12
        assert abs(average_precision(y, s) - average_precision_score(y, s)) < 1e-12


def test_constant_scores_give_one_half():
    assert roc_auc([0, 1, 0, 1, 1], [3.0] * 5) == 0.5


def test_every_replicate_equals_sklearn_on_its_resample():
    rng = np.random.default_rng(1)
    for y, s in _cases(rng, k=9):
        counts = bootstrap_counts(y.size, n_boot=15, seed=int(rng.integers(1000)))
        res = replicate_metrics(ScoreLayout(y.astype(bool), s), counts.T.astype(np.float32))
        for b in range(counts.shape[0]):
            idx = np.repeat(np.arange(y.size), counts[b])
            if np.unique(y[idx]).size < 2:
                assert np.isnan(res["auc"][b]) and np.isnan(res["auprc"][b])
                continue
            assert abs(res["auc"][b] - roc_auc_score(y[idx], s[idx])) < 1e-12
            assert abs(res["auprc"][b] - average_precision_score(y[idx], s[idx])) < 1e-12
            assert res["n_pos"][b] == y[idx].sum() and res["n_neg"][b] == (1 - y[idx]).sum()


def test_threshold_counts_match_direct_count():
    rng = np.random.default_rng(2)
    for y, s in _cases(rng, k=10):
        for t in (np.median(s), s.min(), s.max() + 1):
            w = rng.integers(0, 3, (y.size, 4)).astype(np.float32)
            res = replicate_metrics(ScoreLayout(y.astype(bool), s, threshold=t), w)
            pred = s >= t
            np.testing.assert_array_equal(res["tp"], w[(y == 1) & pred].sum(0))
            np.testing.assert_array_equal(res["fp"], w[(y == 0) & pred].sum(0))


def test_torch_cpu_path_equals_numpy_path():
    rng = np.random.default_rng(3)
    for y, s in [*_cases(rng, k=6), (np.r_[0, 0, 1], np.r_[0.2, 0.1, 0.4])]:
        layout = ScoreLayout(y.astype(bool), s, threshold=float(np.median(s)))
        w = bootstrap_counts(y.size, n_boot=64, seed=0).T.astype(np.float32)
        a, b = replicate_metrics(layout, w), replicate_metrics(layout, w, device="cpu")
        for k in a:
            np.testing.assert_allclose(a[k], b[k], rtol=0, atol=1e-6)
            np.testing.assert_array_equal(np.isnan(a[k]), np.isnan(b[k]))


def test_layout_with_sample_positions_in_larger_matrix():
    rng = np.random.default_rng(4)
    cols = np.array([5, 1, 7, 3, 0, 9])
    y = np.array([1, 0, 1, 0, 0, 1], bool)
    s = rng.normal(size=6)
    w = rng.integers(0, 3, (10, 8)).astype(np.float32)
    res = replicate_metrics(ScoreLayout(y, s, cols=cols), w)
    for b in range(8):
        reps = w[cols, b].astype(int)
        idx = np.repeat(np.arange(6), reps)
        if np.unique(y[idx]).size == 2:
            assert abs(res["auc"][b] - roc_auc_score(y[idx], s[idx])) < 1e-12


def test_macro_auc_ovr_equals_sklearn():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 4, 200)
    p = rng.dirichlet(np.ones(4), 200)
    ref = roc_auc_score(y, p, multi_class="ovr", average="macro")
    assert abs(macro_auc_ovr(y, p) - ref) < 1e-12


@pytest.mark.parametrize(
    "y, s, match",
    [
        ([1, 1, 1], [0.1, 0.2, 0.3], "only positives"),
        ([0], [0.5], "only negatives"),
        ([0, 1, 0], [0.1, np.nan, 0.3], "NaN"),
        ([0, 1], [0.1], "has 1"),
        ([0, 2], [0.1, 0.2], "only 0 and 1"),
    ],
)
def test_degenerate_inputs_raise_clear_errors(y, s, match):
    with pytest.raises(CxrbenchError, match=match):
        roc_auc(y, s)


def test_auc_or_nan_label_aucs_and_mean_auc_skip_unknowns_and_single_class_labels():
    rng = np.random.default_rng(4)
    Y = rng.integers(0, 2, (60, 3)).astype(float)
    S = rng.normal(size=(60, 3))
    Y[::7, 0] = np.nan  # unknown targets are left out of that label only
    Y[:, 1] = 1.0  # a single class: NaN, and left out of the mean
    Y[:5, 1] = np.nan
    assert np.isnan(auc_or_nan([], [])) and np.isnan(auc_or_nan([1, 1], [0.2, 0.3]))
    known = ~np.isnan(Y[:, 0])
    ref0 = roc_auc_score(Y[known, 0], S[known, 0])
    ref2 = roc_auc_score(Y[:, 2], S[:, 2])
    got = label_aucs(Y, S)
    assert got[0] == pytest.approx(ref0) and np.isnan(got[1]) and got[2] == pytest.approx(ref2)
    assert mean_auc(Y, S) == pytest.approx((ref0 + ref2) / 2)
    assert np.isnan(mean_auc(Y[:, 1:2], S[:, 1:2]))
    with pytest.raises(CxrbenchError, match="one shape"):
        label_aucs(Y, S[:, :2])
