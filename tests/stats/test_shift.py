"""The internal-vs-external drop against scikit-learn AUCs on the same bootstrap resamples."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from cxrbench.errors import CxrbenchError
from cxrbench.stats.bootstrap import bootstrap_counts
from cxrbench.stats.shift import auc_shift


def _set(rng: np.random.Generator, n: int, signal: float) -> tuple[np.ndarray, np.ndarray]:
    Y = (rng.random((n, 3)) < 0.35).astype(float)
    S = Y * signal + rng.normal(size=(n, 3))
    Y[rng.random((n, 3)) < 0.1] = np.nan  # unknown labels are left out
    return Y, S


def _reference_mean(Y: np.ndarray, S: np.ndarray, counts: np.ndarray | None = None) -> float:
    """Mean over labels of sklearn's AUC, on a resample given as counts (index repetition)."""
    idx = np.arange(Y.shape[0]) if counts is None else np.repeat(np.arange(Y.shape[0]), counts)
    aucs = []
    for j in range(Y.shape[1]):
        y, s = Y[idx, j], S[idx, j]
        known = ~np.isnan(y)
        if len(set(y[known])) < 2:
            return float("nan")
        aucs.append(roc_auc_score(y[known], s[known]))
    return float(np.mean(aucs))


def test_points_and_cis_match_sklearn_on_the_same_resamples() -> None:
    rng = np.random.default_rng(3)
    internal, external = _set(rng, 120, 1.5), _set(rng, 90, 0.6)
    n_boot, seed = 40, 5
    shift = auc_shift(internal, external, n_boot=n_boot, seed=seed)
    assert shift.internal == pytest.approx(_reference_mean(*internal), abs=1e-12)
    assert shift.external == pytest.approx(_reference_mean(*external), abs=1e-12)
    assert shift.drop == pytest.approx(shift.internal - shift.external, abs=1e-12)
    ci = bootstrap_counts(120, n_boot=n_boot, seed=seed)
    ce = bootstrap_counts(90, n_boot=n_boot, seed=seed + 1)  # independent resamples of the other set
    mi = np.array([_reference_mean(*internal, c) for c in ci])
    me = np.array([_reference_mean(*external, c) for c in ce])
    keep = ~np.isnan(mi - me)
    assert shift.drop_ci == pytest.approx(tuple(np.percentile((mi - me)[keep], [2.5, 97.5])), abs=1e-9)
    assert shift.internal_ci == pytest.approx(tuple(np.percentile(mi[~np.isnan(mi)], [2.5, 97.5])), abs=1e-9)
    assert shift.external_ci[0] < shift.external < shift.external_ci[1]
    assert shift.drop_ci[0] > 0  # a real drop (signal 1.5 vs 0.6) is found


def test_labels_with_one_class_on_either_set_are_left_out() -> None:
    rng = np.random.default_rng(0)
    (Yi, Si), (Ye, Se) = _set(rng, 80, 1.0), _set(rng, 80, 1.0)
    Ye[:, 1] = 0.0
    shift = auc_shift((Yi, Si), (Ye, Se), n_boot=10)
    assert shift.labels == (0, 2)
    assert shift.internal == pytest.approx(
        np.mean([roc_auc_score(Yi[~np.isnan(Yi[:, j]), j], Si[~np.isnan(Yi[:, j]), j]) for j in (0, 2)])
    )


def test_mismatched_labels_are_an_error() -> None:
    with pytest.raises(CxrbenchError, match="same labels"):
        auc_shift((np.zeros((4, 2)), np.zeros((4, 2))), (np.zeros((4, 3)), np.zeros((4, 3))))


def test_patient_clusters_resample_whole_patients() -> None:
    rng = np.random.default_rng(8)
    internal, external = _set(rng, 60, 1.2), _set(rng, 40, 0.4)
    pi, pe = np.repeat(np.arange(30), 2), np.repeat(np.arange(20), 2)  # two images per patient
    shift = auc_shift(internal, external, n_boot=30, seed=2, clusters=(pi, pe))
    ci = bootstrap_counts(60, n_boot=30, seed=2, clusters=pi)
    ce = bootstrap_counts(40, n_boot=30, seed=3, clusters=pe)
    assert (ci[:, 0::2] == ci[:, 1::2]).all()  # both images of a patient come together
    diff = np.array(
        [_reference_mean(*internal, a) - _reference_mean(*external, b) for a, b in zip(ci, ce, strict=True)]
    )
    assert shift.drop_ci == pytest.approx(tuple(np.percentile(diff[~np.isnan(diff)], [2.5, 97.5])), abs=1e-9)
    assert shift.drop_ci != auc_shift(internal, external, n_boot=30, seed=2).drop_ci
