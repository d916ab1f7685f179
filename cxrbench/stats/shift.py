"""Internal vs external AUC: the drop when a model meets another site, with a bootstrap CI.

The two test sets hold different images, so each is resampled on its own (independent bootstraps)
and the drop's replicates are the differences of the two replicate means.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cxrbench.errors import CxrbenchError
from cxrbench.stats.auc import ScoreLayout, replicate_metrics
from cxrbench.stats.bootstrap import bootstrap_counts, percentile_ci


@dataclass(frozen=True)
class Shift:
    """Mean AUC over the labels defined on both sets, internally and externally, and their drop."""

    internal: float
    internal_ci: tuple[float, float]
    external: float
    external_ci: tuple[float, float]
    drop: float
    drop_ci: tuple[float, float]
    labels: tuple[int, ...]


def _label_reps(Y: np.ndarray, S: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per label: point AUC [L] and replicate AUCs [L, B] (NaN where a label has one class)."""
    points, reps = [], []
    for j in range(Y.shape[1]):
        known = ~np.isnan(Y[:, j])
        y, s = Y[known, j].astype(bool), S[known, j]
        if y.size == 0 or y.all() or not y.any():
            points.append(np.nan)
            reps.append(np.full(counts.shape[0], np.nan))
            continue
        layout = ScoreLayout(y, s)
        points.append(float(replicate_metrics(layout, np.ones((y.size, 1)))["auc"][0]))
        reps.append(replicate_metrics(layout, counts[:, known].T.astype(np.float64))["auc"])
    return np.asarray(points), np.vstack(reps)


def auc_shift(
    internal: tuple[np.ndarray, np.ndarray],
    external: tuple[np.ndarray, np.ndarray],
    *,
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
    clusters: tuple[np.ndarray | None, np.ndarray | None] = (None, None),
) -> Shift:
    """Mean AUC on the internal and the external test set (``(Y, S)`` each, ``[N, L]``, NaN = unknown,
    the same labels in the same order), and ``drop = internal - external`` with percentile CIs.

    Only labels with both classes on both sets count; a replicate where a label has one class is
    left out of the CIs (as the evaluation's mean rows do). ``clusters``: per-sample patient ids of
    each set, to resample patients rather than images.
    """
    (Yi, Si), (Ye, Se) = (tuple(np.asarray(a, dtype=float) for a in pair) for pair in (internal, external))
    if Yi.ndim != 2 or Yi.shape != Si.shape or Ye.shape != Se.shape or Yi.shape[1] != Ye.shape[1]:
        raise CxrbenchError("auc_shift: internal and external need [N, L] targets and scores with the same labels")
    counts_i = bootstrap_counts(Yi.shape[0], n_boot=n_boot, seed=seed, clusters=clusters[0])
    counts_e = bootstrap_counts(Ye.shape[0], n_boot=n_boot, seed=seed + 1, clusters=clusters[1])
    pi, ri = _label_reps(Yi, Si, counts_i)
    pe, re = _label_reps(Ye, Se, counts_e)
    used = np.flatnonzero(~np.isnan(pi) & ~np.isnan(pe))
    if used.size == 0:
        nan = (float("nan"), float("nan"))
        return Shift(float("nan"), nan, float("nan"), nan, float("nan"), nan, ())
    mi, me = ri[used].mean(axis=0), re[used].mean(axis=0)  # NaN where any label dropped a replicate
    internal_auc, external_auc = float(pi[used].mean()), float(pe[used].mean())
    return Shift(
        internal=internal_auc,
        internal_ci=percentile_ci(mi, ci=ci),
        external=external_auc,
        external_ci=percentile_ci(me, ci=ci),
        drop=internal_auc - external_auc,
        drop_ci=percentile_ci(mi - me, ci=ci),
        labels=tuple(int(u) for u in used),
    )
