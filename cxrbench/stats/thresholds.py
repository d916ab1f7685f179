"""Operating points: the Youden threshold chosen on validation predictions, and the metrics it gives on test."""

from __future__ import annotations

from typing import Any

import numpy as np

from cxrbench.errors import CxrbenchError
from cxrbench.stats.auc import _check_binary

__all__ = ["youden_threshold", "threshold_metrics", "metrics_from_counts"]


def youden_threshold(y_true: Any, y_score: Any) -> float:
    """Return the score threshold maximising Youden's J = sensitivity + specificity - 1.

    A sample is called positive when ``score >= threshold``; candidates are the distinct scores.
    Among equal J the highest threshold wins (the first maximum of sklearn's ``roc_curve``); as
    there, ``inf`` (call nothing positive, J = 0) is a candidate, chosen when no score beats it.
    """
    y, s = _check_binary(y_true, y_score)
    order = np.argsort(-s, kind="stable")
    s_sorted, y_sorted = s[order], y[order]
    last = np.r_[s_sorted[1:] != s_sorted[:-1], True]  # last index of each distinct score
    tp = np.cumsum(y_sorted)[last]
    fp = np.cumsum(~y_sorted)[last]
    j = np.r_[0.0, tp / y.sum() - fp / (~y).sum()]
    return float(np.r_[np.inf, s_sorted[last]][int(np.argmax(j))])


def metrics_from_counts(tp: Any, fp: Any, n_pos: Any, n_neg: Any) -> dict[str, np.ndarray]:
    """Return accuracy, sensitivity, specificity and F1 from (weighted) confusion counts; NaN where undefined."""
    tp, fp, n_pos, n_neg = (np.asarray(a, dtype=float) for a in (tp, fp, n_pos, n_neg))
    with np.errstate(divide="ignore", invalid="ignore"):
        tn = n_neg - fp
        return {
            "accuracy": (tp + tn) / (n_pos + n_neg),
            "sensitivity": tp / n_pos,
            "specificity": tn / n_neg,
            "f1": 2.0 * tp / (tp + fp + n_pos),
        }


def threshold_metrics(y_true: Any, y_score: Any, threshold: float) -> dict[str, float]:
    """Return accuracy, sensitivity, specificity and F1 of calling ``score >= threshold`` positive."""
    y = np.asarray(y_true, dtype=float).ravel()
    s = np.asarray(y_score, dtype=float).ravel()
    if y.shape != s.shape or y.size == 0:
        raise CxrbenchError(f"y_true ({y.size}) and y_score ({s.size}) must be non-empty and equal in length")
    if not np.isfinite(s).all():
        raise CxrbenchError("y_score holds NaN or infinite values")
    if np.isnan(threshold):
        raise CxrbenchError("threshold is NaN")
    pred = s >= threshold
    pos = y == 1
    out = metrics_from_counts((pred & pos).sum(), (pred & ~pos).sum(), pos.sum(), (~pos).sum())
    return {k: float(v) for k, v in out.items()}


def mean_f1(y_true: Any, y_score: Any, *, task: str = "multilabel", threshold: float = 0.5) -> float:
    """Mean F1 over labels (columns of ``[N, L]``): ``score >= threshold`` called positive over the known
    (non-NaN) targets, labels without positives left out; for ``multiclass`` the macro F1 of the
    arg-max class (targets one-hot). NaN when no label has a positive. Model selection on validation F1
    (the report-sections paper)."""
    y = np.asarray(y_true, dtype=float)
    s = np.asarray(y_score, dtype=float)
    if y.shape != s.shape or y.ndim != 2:
        raise CxrbenchError(f"targets {y.shape} and scores {s.shape} must be equal [N, L] matrices")
    if task == "multiclass":
        truth, pred = np.nan_to_num(y).argmax(1), s.argmax(1)
        known = ~np.isnan(y).any(1)
        y = np.eye(y.shape[1])[truth]
        y[~known] = np.nan
        s = np.eye(s.shape[1])[pred]
        threshold = 0.5
    scores = []
    for j in range(y.shape[1]):
        known = ~np.isnan(y[:, j])
        pos = y[known, j] == 1
        if pos.any():
            called = s[known, j] >= threshold
            scores.append(float(metrics_from_counts((called & pos).sum(), (called & ~pos).sum(), pos.sum(), 0)["f1"]))
    return float(np.mean(scores)) if scores else float("nan")
