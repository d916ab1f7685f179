"""DeLong's test for correlated ROC AUCs (DeLong 1988), with the fast midrank algorithm of Sun & Xu (2014).

Ties count one half, the covariance uses n-1 denominators, and the test is two-sided on the normal
scale, as in pROC's ``roc.test(method = "delong")``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from cxrbench.errors import CxrbenchError

__all__ = ["delong_covariance", "delong_test", "delong_ci", "DelongResult"]


def _norm() -> Any:
    """scipy's standard normal, imported on first use (scipy.stats takes ~1 s to import)."""
    from scipy.stats import norm

    return norm


def _inputs(y_true: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true, dtype=float).ravel()
    s = np.atleast_2d(np.asarray(scores, dtype=float))
    if s.shape[1] != y.size:
        raise CxrbenchError(f"scores must be (k, n) with n = {y.size} samples; got {s.shape}")
    if not np.isin(y, (0.0, 1.0)).all():
        raise CxrbenchError("y_true must hold only 0 and 1 (unknown labels must be dropped first)")
    if not np.isfinite(s).all():
        raise CxrbenchError("scores hold NaN or infinite values")
    m = int(y.sum())
    if m < 2 or y.size - m < 2:
        raise CxrbenchError(f"DeLong's test needs at least 2 positives and 2 negatives; got {m} and {y.size - m}")
    return y.astype(bool), s


def delong_covariance(y_true: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    """Return (aucs, covariance) of k correlated AUCs; ``scores`` is (k, n), higher = positive.

    Covariance = S10 / m + S01 / n with S10, S01 the sample covariances (n-1) of the structural
    components V10 (per positive) and V01 (per negative), computed from midranks in O(k n log n).
    """
    y, s = _inputs(y_true, scores)
    x, z = s[:, y], s[:, ~y]
    m, n = x.shape[1], z.shape[1]
    from scipy.stats import rankdata  # lazy: scipy.stats takes ~1 s to import

    tx = rankdata(x, axis=1)
    tz = rankdata(z, axis=1)
    t = rankdata(np.concatenate([x, z], axis=1), axis=1)
    v10 = (t[:, :m] - tx) / n
    v01 = 1.0 - (t[:, m:] - tz) / m
    aucs = v10.mean(axis=1)
    s10 = np.atleast_2d(np.cov(v10))
    s01 = np.atleast_2d(np.cov(v01))
    return aucs, s10 / m + s01 / n


@dataclass(frozen=True)
class DelongResult:
    """DeLong comparison of two paired AUCs: ``delta = auc_a - auc_b``."""

    auc_a: float
    auc_b: float
    delta: float
    se: float
    z: float
    p_value: float
    ci_low: float
    ci_high: float


def delong_test(y_true: Any, score_a: Any, score_b: Any, *, ci: float = 0.95) -> DelongResult:
    """Return DeLong's two-sided test of AUC(a) = AUC(b) on the same samples, with a normal CI of the difference.

    When both score vectors rank the samples identically the variance is 0: delta is 0 and p = 1.
    """
    if not 0.0 < ci < 1.0:
        raise CxrbenchError(f"ci must lie strictly between 0 and 1; got {ci}")
    aucs, cov = delong_covariance(y_true, np.vstack([np.ravel(score_a), np.ravel(score_b)]))
    delta = float(aucs[0] - aucs[1])
    var = float(cov[0, 0] + cov[1, 1] - 2.0 * cov[0, 1])
    se = float(np.sqrt(max(var, 0.0)))
    if se <= 1e-15 * max(1.0, abs(delta)):
        z = 0.0 if abs(delta) < 1e-15 else float("inf") * np.sign(delta)
        p = 1.0 if z == 0.0 else 0.0
    else:
        z = delta / se
        p = float(2.0 * _norm().sf(abs(z)))
    q = float(_norm().ppf(0.5 + ci / 2.0))
    return DelongResult(float(aucs[0]), float(aucs[1]), delta, se, float(z), p, delta - q * se, delta + q * se)


def delong_ci(y_true: Any, y_score: Any, *, ci: float = 0.95) -> tuple[float, float, float]:
    """Return (auc, low, high): DeLong's normal CI of one AUC, clipped to [0, 1] (pROC ``ci.auc``)."""
    if not 0.0 < ci < 1.0:
        raise CxrbenchError(f"ci must lie strictly between 0 and 1; got {ci}")
    aucs, cov = delong_covariance(y_true, np.ravel(y_score)[None, :])
    auc = float(aucs[0])
    half = float(_norm().ppf(0.5 + ci / 2.0)) * float(np.sqrt(max(cov[0, 0], 0.0)))
    return auc, max(0.0, auc - half), min(1.0, auc + half)
