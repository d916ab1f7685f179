"""Segmentation metrics from per-case tables: mean Dice and IoU on test with percentile bootstrap CIs,
and paired bootstrap differences against a baseline encoder over the same cases.

One set of resamples (``cxrbench.stats.bootstrap``) is drawn over the union of the dataset's test
cases (or their patients) and shared by every model, so differences are paired; a model's mean in a
replicate is the count-weighted mean over the cases it scored.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from cxrbench.errors import CxrbenchError
from cxrbench.stats.bootstrap import bootstrap_pvalue, iter_count_blocks, percentile_ci
from cxrbench.stats.multiplicity import adjust_pvalues

MODEL_KEYS = ["encoder", "adaptation", "fraction", "seed"]
METRICS = ("dice", "iou")
CASE_REQUIRED = (*MODEL_KEYS, "case_id", "patient_id", "split", "tp", "fp", "fn", "dice", "iou")
#: Columns of ``compare_segmentation``'s table.
SEGMENT_COMPARE_COLUMNS = [
    *MODEL_KEYS, "metric", "n_cases", "value", "ci_low", "ci_high", "baseline_value",
    "delta", "delta_ci_low", "delta_ci_high", "p_value", "p_adjusted", "significant",
]  # fmt: skip


class _Aligned:
    """Test cases of every model on one grid: ``values[metric]`` and ``present`` are [cases, models]."""

    def __init__(self, cases: pd.DataFrame, *, cluster: str) -> None:
        missing = [c for c in CASE_REQUIRED if c not in cases.columns]
        if missing:
            raise CxrbenchError(f"segmentation cases lack column(s) {', '.join(missing)}")
        if cluster not in ("image", "patient"):
            raise CxrbenchError(f"cluster must be 'image' or 'patient'; got {cluster!r}")
        test = cases[cases["split"].astype(str) == "test"]
        if test.empty:
            raise CxrbenchError("segmentation cases hold no test rows")
        test = test.assign(case_id=test["case_id"].astype(str))
        if test.duplicated([*MODEL_KEYS, "case_id"]).any():
            raise CxrbenchError("segmentation cases hold duplicate rows for the same model and case_id")
        for metric in METRICS:
            v = pd.to_numeric(test[metric], errors="coerce")
            if not (np.isfinite(v) & (v >= 0) & (v <= 1)).all():
                raise CxrbenchError(f"segmentation column {metric!r} must hold numbers in [0, 1]")
        self.models = sorted({tuple(k) for k in test[MODEL_KEYS].itertuples(index=False, name=None)})
        self.case_ids = np.array(sorted(test["case_id"].unique()), dtype=object)
        row = pd.Index(self.case_ids).get_indexer(test["case_id"])
        col = pd.MultiIndex.from_tuples(self.models).get_indexer(pd.MultiIndex.from_frame(test[MODEL_KEYS]))
        shape = (len(self.case_ids), len(self.models))
        self.present = np.zeros(shape, dtype=bool)
        self.present[row, col] = True
        self.values = {}
        for metric in METRICS:
            grid = np.zeros(shape)
            grid[row, col] = test[metric].to_numpy(dtype=np.float64)
            self.values[metric] = grid
        truth = np.zeros(len(self.case_ids), dtype=bool)
        truth[row] = (test["tp"].to_numpy() + test["fn"].to_numpy()) > 0
        self.has_truth = truth
        self.clusters = None
        if cluster == "patient":
            if test["patient_id"].isna().any():
                raise CxrbenchError("cluster='patient' needs a patient_id for every test case; some are missing")
            patients = test.groupby("case_id")["patient_id"].agg(lambda s: s.astype(str).unique().tolist())
            two = patients[patients.map(len) > 1]
            if len(two):
                raise CxrbenchError(f"case_id {two.index[0]!r} has more than one patient_id")
            self.clusters = np.array([patients[c][0] for c in self.case_ids], dtype=object)

    def replicates(self, weights: np.ndarray, *, n_boot: int, seed: int) -> dict[str, np.ndarray]:
        """Per metric, the [models, n_boot] replicate means of ``values`` weighted by ``weights``
        ([cases, models]: which cases count for each column), NaN where a replicate drew none."""
        out = {m: np.empty((weights.shape[1], n_boot)) for m in METRICS}
        done = 0
        n = len(self.case_ids)
        for block in iter_count_blocks(n, n_boot=n_boot, seed=seed, clusters=self.clusters, dtype=np.float64):
            b = block.shape[1]
            denom = weights.T @ block  # [models, b]
            for m in METRICS:
                with np.errstate(invalid="ignore", divide="ignore"):
                    out[m][:, done : done + b] = ((self.values[m] * weights).T @ block) / denom
            done += b
        return out


def _point(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return (values * weights).sum(0) / weights.sum(0)


def evaluate_segmentation(
    cases: pd.DataFrame, *, n_boot: int = 1000, seed: int = 0, cluster: str = "image", ci: float = 0.95
) -> pd.DataFrame:
    """Mean test Dice and IoU of every model with percentile bootstrap CIs (cases, or patients with
    ``cluster="patient"``, resampled), as rows of the metrics table: ``label`` is ``mean``,
    ``n_pos``/``n_neg`` count the test cases with and without a mask."""
    if int(n_boot) < 1:
        raise CxrbenchError(f"n_boot must be a positive integer; got {n_boot!r}")
    grid = _Aligned(cases, cluster=cluster)
    weights = grid.present.astype(np.float64)
    reps = grid.replicates(weights, n_boot=n_boot, seed=seed)
    rows = []
    for j, model in enumerate(grid.models):
        scored = grid.present[:, j]
        n_pos, n_neg = int((scored & grid.has_truth).sum()), int((scored & ~grid.has_truth).sum())
        for metric in METRICS:
            value = float(_point(grid.values[metric][:, [j]], weights[:, [j]])[0])
            lo, hi = percentile_ci(reps[metric][j], ci=ci)
            rows.append((*model, "mean", metric, value, lo, hi, n_pos, n_neg))
    columns = [*MODEL_KEYS, "label", "metric", "value", "ci_low", "ci_high", "n_pos", "n_neg"]
    return pd.DataFrame(rows, columns=columns).astype({"n_pos": "int64", "n_neg": "int64"})


def compare_segmentation(
    cases: pd.DataFrame,
    *,
    baseline: str,
    n_boot: int = 1000,
    seed: int = 0,
    cluster: str = "image",
    correction: str = "bh",
    alpha: float = 0.05,
    ci: float = 0.95,
) -> tuple[pd.DataFrame, list[str]]:
    """(table, warnings): paired bootstrap Δ mean Dice and Δ mean IoU of every model vs the baseline
    encoder's twin (same adaptation, fraction, seed) over the test cases both scored.

    The resamples are ``evaluate_segmentation``'s; the Δ CI is the percentile interval of the
    replicate differences, the p-value the two-sided bootstrap p-value; ``p_adjusted`` corrects the
    Dice rows as one family and the IoU rows as another.
    """
    grid = _Aligned(cases, cluster=cluster)
    encoders = sorted({m[0] for m in grid.models})
    if baseline not in encoders:
        raise CxrbenchError(f"baseline encoder {baseline!r} has no segmentation; encoders: {', '.join(encoders)}")
    pairs, warnings = [], []
    index = {m: j for j, m in enumerate(grid.models)}
    for model in grid.models:
        if model[0] == baseline:
            continue
        twin = (baseline, *model[1:])
        if twin not in index:
            warnings.append(
                f"{'/'.join(map(str, model[:2]))}: no baseline segmentation {twin[1]} of {baseline}; skipped"
            )
            continue
        pairs.append((model, twin))
    if not pairs:
        return pd.DataFrame(columns=SEGMENT_COMPARE_COLUMNS), warnings
    # one column per model and one per its twin, each weighted by the cases both scored
    both = np.stack([grid.present[:, index[a]] & grid.present[:, index[b]] for a, b in pairs], axis=1)
    weights = np.concatenate([both, both], axis=1).astype(np.float64)
    cols = [index[a] for a, _ in pairs] + [index[b] for _, b in pairs]
    sub = _Aligned.__new__(_Aligned)
    sub.case_ids, sub.clusters = grid.case_ids, grid.clusters
    sub.values = {m: grid.values[m][:, cols] for m in METRICS}
    reps = sub.replicates(weights, n_boot=n_boot, seed=seed)
    k = len(pairs)
    rows = []
    for i, (model, _) in enumerate(pairs):
        for metric in METRICS:
            va = float(_point(sub.values[metric][:, [i]], weights[:, [i]])[0])
            vb = float(_point(sub.values[metric][:, [k + i]], weights[:, [k + i]])[0])
            ra, rb = reps[metric][i], reps[metric][k + i]
            lo, hi = percentile_ci(ra, ci=ci)
            dlo, dhi = percentile_ci(ra - rb, ci=ci)
            rows.append(
                (*model, metric, int(both[:, i].sum()), va, lo, hi, vb, va - vb, dlo, dhi, bootstrap_pvalue(ra - rb))
            )
    out = pd.DataFrame(rows, columns=SEGMENT_COMPARE_COLUMNS[:-2])
    out["p_adjusted"] = np.nan
    for metric in METRICS:
        fam = out["metric"] == metric
        out.loc[fam, "p_adjusted"] = adjust_pvalues(out.loc[fam, "p_value"].to_numpy(), method=correction)
    out["significant"] = (out["p_adjusted"] < alpha).astype(bool)
    return out, warnings
