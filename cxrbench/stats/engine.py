"""Evaluate and compare the test predictions of several models on one dataset with one paired bootstrap.

Resamples are drawn once over the dataset's test images (or patients) and shared by every model and
label, so AUC differences against the baseline are paired; thresholds come from validation only.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from cxrbench.errors import CxrbenchError
from cxrbench.stats.auc import ScoreLayout, replicate_metrics
from cxrbench.stats.bootstrap import bootstrap_pvalue, iter_count_blocks, percentile_ci
from cxrbench.stats.delong import delong_test
from cxrbench.stats.multiplicity import METHODS, adjust_pvalues
from cxrbench.stats.thresholds import metrics_from_counts, youden_threshold

__all__ = [
    "evaluate", "compare", "validate_predictions", "CheckedPredictions", "replicate_key",
    "MODEL_KEYS", "METRIC_COLUMNS", "COMPARE_COLUMNS",
]  # fmt: skip

MODEL_KEYS = ["encoder", "adaptation", "fraction", "seed"]
REQUIRED = [*MODEL_KEYS, "sample_id", "patient_id", "split", "label", "y_true", "y_score"]
METRIC_COLUMNS = [*MODEL_KEYS, "label", "metric", "value", "ci_low", "ci_high", "n_pos", "n_neg"]
COMPARE_COLUMNS = [
    *MODEL_KEYS, "label", "n_pos", "n_neg", "auc", "auc_ci_low", "auc_ci_high", "baseline_auc",
    "delta", "delta_ci_low", "delta_ci_high", "p_value", "p_adjusted", "significant",
]  # fmt: skip
THRESHOLD_METRICS = ["accuracy", "sensitivity", "specificity", "f1"]
MEAN = "mean"


@dataclass
class _Cell:
    """One (model, label): aligned test scores, validation threshold, point and replicate metrics."""

    score: np.ndarray
    threshold: float
    layout: ScoreLayout | None  # None when the metrics came from the replicate cache
    point: dict[str, float] = field(default_factory=dict)
    reps: dict[str, list[np.ndarray]] = field(default_factory=dict)


@dataclass
class _Run:
    models: list[tuple]
    labels: list[str]
    label_y: dict[str, np.ndarray]  # label -> y_true (bool) of its known test samples
    cells: dict[tuple[tuple, str], _Cell]
    degenerate: set[str]
    dropped: dict[str, np.ndarray]  # label -> bool mask of dropped replicates
    n_boot: int
    warnings: list[tuple[str, str]]  # (kind, text); kind "threshold" only concerns evaluate

    def texts(self, *, thresholds: bool) -> list[str]:
        """Return the warnings' texts, without the threshold ones unless ``thresholds``."""
        return [text for kind, text in self.warnings if thresholds or kind != "threshold"]


def _check_options(n_boot: int, ci: float, cluster: str) -> None:
    if not isinstance(n_boot, (int, np.integer)) or isinstance(n_boot, bool) or n_boot < 1:
        raise CxrbenchError(f"n_boot must be a positive integer; got {n_boot!r}")
    if not 0.0 < float(ci) < 1.0:
        raise CxrbenchError(f"ci must lie strictly between 0 and 1; got {ci!r}")
    if cluster not in ("image", "patient"):
        raise CxrbenchError(f"cluster must be 'image' or 'patient'; got {cluster!r}")


def _name(model: tuple) -> str:
    enc, adapt, frac, seed = model
    return f"{enc}/{adapt} (fraction {frac:g}, seed {seed})"


def _resolve_device(device: str | None) -> str | None:
    """Return the torch device to use, or None for the numpy path (default: CUDA when available)."""
    from cxrbench.engine.device import cuda_available

    if device is not None:
        return str(device)
    return "cuda" if cuda_available() else None


def _codes(col: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Return (integer code per row, distinct values in order of appearance); NaN is a value.

    The same as ``pd.factorize(col, use_na_sentinel=False)``; a categorical column is coded from
    its category codes (a few categories, no hashing of the rows' values).
    """
    if isinstance(col.dtype, pd.CategoricalDtype):
        cat_codes = col.cat.codes.to_numpy()
        seen = pd.unique(cat_codes)  # category codes in order of appearance, -1 for NaN
        remap = np.zeros(len(col.cat.categories) + 1, dtype=np.int64)  # -1 reads the last slot
        remap[seen] = np.arange(seen.size)
        uniques = pd.Categorical.from_codes(seen, dtype=col.dtype)
        return remap[cat_codes], np.asarray(uniques, dtype=object)
    codes, uniques = pd.factorize(col, use_na_sentinel=False)
    return codes.astype(np.int64, copy=False), np.asarray(uniques, dtype=object)


def _numeric(col: pd.Series) -> np.ndarray:
    """Return a column as float64, non-numeric entries as NaN (no copy through pandas when numeric)."""
    if pd.api.types.is_numeric_dtype(col.dtype):
        return col.to_numpy(dtype=np.float64, na_value=np.nan)
    return pd.to_numeric(col, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)


@dataclass
class _Table:
    """Known-y_true rows as integer codes, sorted by (model, label, split, sample), with slice bounds."""

    models: list[tuple]  # model tuples in sorted order; code m refers to models[m]
    labels: list[str]  # labels in order of appearance in the test rows
    samples: np.ndarray  # test sample_ids in order of appearance; code i refers to samples[i]
    sample: np.ndarray  # per sorted row: test sample code (or val row position)
    y: np.ndarray
    score: np.ndarray
    slices: dict[tuple[int, int, int], tuple[int, int]]  # (model, label, is_test) -> row range
    patient_rows: np.ndarray  # original row index of each sorted row


@dataclass(frozen=True)
class CheckedPredictions:
    """Predictions that passed ``validate_predictions``, with their integer-coded table.

    ``evaluate`` and ``compare`` take it in place of the frame and do not check the rows again;
    ``frame`` must not be modified afterwards.
    """

    frame: pd.DataFrame
    table: _Table


def validate_predictions(preds: pd.DataFrame) -> CheckedPredictions:
    """Check predictions as ``evaluate``/``compare`` will (one-line CxrbenchError naming the problem)."""
    return CheckedPredictions(preds, _validate(preds))


def _validate(preds: pd.DataFrame) -> _Table:
    """Check the predictions and return them as sorted integer codes (no per-group DataFrames)."""
    if not isinstance(preds, pd.DataFrame):
        raise CxrbenchError(f"predictions must be a pandas DataFrame; got {type(preds).__name__}")
    missing = [c for c in REQUIRED if c not in preds.columns]
    if missing:
        raise CxrbenchError(f"predictions lack column(s) {', '.join(missing)}")
    split_code, split_vals = _codes(preds["split"])
    bad_split = sorted({str(v) for v in split_vals} - {"val", "test"})
    if bad_split or any(not isinstance(v, str) for v in split_vals):
        raise CxrbenchError(f"predictions column 'split' must be 'val' or 'test'; found {bad_split[:5]}")
    is_test_val = np.array([v == "test" for v in split_vals], dtype=bool)
    raw_y = preds["y_true"]
    y = _numeric(raw_y)
    known = ~np.isnan(y)
    plain_float = isinstance(raw_y.dtype, np.dtype) and raw_y.dtype.kind == "f"  # missing = NaN already
    if (not plain_float and (known != raw_y.notna().to_numpy()).any()) or not ((y == 0) | (y == 1) | ~known).all():
        raise CxrbenchError("predictions column 'y_true' must hold 0, 1 or NaN (unknown)")
    s = _numeric(preds["y_score"])
    bad = known & ~np.isfinite(s)
    if bad.any():
        row = preds.iloc[int(np.flatnonzero(bad)[0])]
        raise CxrbenchError(
            f"y_score is NaN or infinite in {int(bad.sum())} row(s), e.g. encoder {row['encoder']!r}, "
            f"adaptation {row['adaptation']!r}, label {row['label']!r}, sample {row['sample_id']!r}"
        )
    every_row = bool(known.all())
    rows = np.arange(len(preds)) if every_row else np.flatnonzero(known)
    is_test = is_test_val[split_code if every_row else split_code[rows]]
    if not is_test.any():
        raise CxrbenchError("predictions hold no test rows with a known y_true")

    # one integer per model: combine the factorised key columns, keep only models with test rows
    model = np.zeros(rows.size, dtype=np.int64)
    key_vals = []
    for col in MODEL_KEYS:
        codes, vals = _codes(preds[col].iloc[rows] if rows.size < len(preds) else preds[col])
        model = model * len(vals) + codes
        key_vals.append(vals)
    model_ids, model = _unique_inverse(model)
    tuples = []
    for mid in model_ids.tolist():
        parts = []
        for vals in reversed(key_vals):
            mid, c = divmod(mid, len(vals))
            parts.append(vals[c])
        tuples.append(tuple(np.asarray(parts[::-1], dtype=object).tolist()))
    tested = np.zeros(len(tuples), dtype=bool)
    tested[model[is_test]] = True
    order = sorted((t, i) for i, t in enumerate(tuples) if tested[i])
    rank = np.full(len(tuples), len(order), dtype=np.int64)  # models without test rows sort last
    rank[[i for _, i in order]] = np.arange(len(order))
    model = rank[model]
    models = [t for t, _ in order]

    label_code, label_vals = _codes(preds["label"].iloc[rows] if rows.size < len(preds) else preds["label"])
    first_test_label = pd.unique(label_code[is_test])
    labels = [label_vals[c] for c in first_test_label]
    label_rank = np.full(len(label_vals), len(labels), dtype=np.int64)  # val-only labels sort last
    label_rank[first_test_label] = np.arange(len(labels))
    label = label_rank[label_code]

    sample_code, sample_vals = _codes(preds["sample_id"].iloc[rows] if rows.size < len(preds) else preds["sample_id"])
    test_codes = pd.unique(sample_code[is_test])  # order of first appearance among test rows
    sample = np.empty(len(sample_vals), dtype=np.int64)
    sample[test_codes] = np.arange(test_codes.size)
    tested_sample = np.zeros(len(sample_vals), dtype=bool)
    tested_sample[test_codes] = True
    val_only = np.flatnonzero(~tested_sample)
    sample[val_only] = test_codes.size + np.arange(val_only.size)
    sample = sample[sample_code]

    n_s = len(sample_vals)
    group = (model * (len(labels) + 1) + label) * 2 + is_test
    perm, group, sample = _stable_order(group, sample, n_s)
    if ((group[1:] == group[:-1]) & (sample[1:] == sample[:-1])).any():
        raise CxrbenchError("predictions hold duplicate rows for the same model, label, split and sample_id")
    starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
    ends = np.r_[starts[1:], group.size]
    slices = {}
    for a, b, g in zip(starts.tolist(), ends.tolist(), group[starts].tolist(), strict=True):
        ml, t = divmod(g, 2)
        m, lab = divmod(ml, len(labels) + 1)
        if m < len(models) and lab < len(labels):
            slices[(m, lab, t)] = (a, b)
    at = perm if every_row else rows[perm]
    return _Table(
        models=models, labels=labels, samples=np.asarray(sample_vals[test_codes], dtype=object),
        sample=sample, y=y[at], score=s[at], slices=slices, patient_rows=at,
    )  # fmt: skip


def _unique_inverse(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(values, return_inverse=True)`` of integers, by hashing (few distinct values, many rows)."""
    codes, uniques = pd.factorize(values)
    order = np.argsort(uniques)
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    return uniques[order], rank[codes]


def _stable_order(group: np.ndarray, sample: np.ndarray, n_s: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return ``perm = np.argsort(group * n_s + sample, kind="stable")`` (non-negative codes,
    ``sample < n_s``), ``group[perm]`` and ``sample[perm]``.

    When the groups fit in 16 bits they are sorted alone by numpy's linear-time radix sort; when
    the samples of each group then come in order (as when the files list them in the order of the
    first one) that is the answer, else the samples are sorted first (by 16-bit radix passes too
    when they fit), which gives the same order as the comparison sort of the 64-bit key.
    """
    limit = np.iinfo(np.uint16).max
    if group.size and int(group.max()) <= limit:
        group16 = group.astype(np.uint16)
        perm = np.argsort(group16, kind="stable")
        g, smp = group[perm], sample[perm]
        if not ((g[1:] == g[:-1]) & (smp[1:] < smp[:-1])).any():
            return perm, g, smp
        if n_s - 1 <= limit:
            perm = np.argsort(sample.astype(np.uint16), kind="stable")
            perm = perm[np.argsort(group16[perm], kind="stable")]
            return perm, group[perm], sample[perm]
    perm = np.argsort(group * n_s + sample, kind="stable")
    return perm, group[perm], sample[perm]


def _patients(preds: pd.DataFrame, t: _Table) -> np.ndarray:
    """Return the patient_id of each test sample; raise when one is missing or a sample has two."""
    test_rows = [slice(a, b) for (_, _, is_test), (a, b) in t.slices.items() if is_test]
    idx = np.concatenate([t.patient_rows[r] for r in test_rows])
    samp = np.concatenate([t.sample[r] for r in test_rows])
    pat = preds["patient_id"].iloc[idx] if idx.size < len(preds) else preds["patient_id"]
    if pat.isna().any():
        raise CxrbenchError("cluster='patient' needs a patient_id for every test row; some are missing")
    codes, vals = _codes(pat)
    first = np.full(len(t.samples), -1, dtype=np.int64)
    first[samp[::-1]] = codes[::-1]  # the first row of each sample wins
    multi = np.flatnonzero(np.bincount(samp, weights=(codes != first[samp]), minlength=len(t.samples)))
    if multi.size:
        raise CxrbenchError(f"sample_id {t.samples[multi[0]]!r} has more than one patient_id")
    return vals[first]


def _run(
    preds: pd.DataFrame | CheckedPredictions,
    *,
    n_boot: int,
    seed: int,
    cluster: str,
    ci: float,
    device: str | None,
    thresholds: bool,
    cache: str | os.PathLike | None = None,
) -> _Run:
    """Align every model and label on shared test samples and bootstrap all their metrics together.

    With ``cache`` (a folder) the replicates are read from ``cache/<key>.npz`` when a previous call
    stored them for the same aligned predictions and bootstrap settings (see ``replicate_key``),
    and stored there otherwise; a cached run always holds the validation thresholds, and callers
    that did not ask for them drop their warnings (see ``_Run.texts``).
    """
    _check_options(n_boot, ci, cluster)
    if isinstance(preds, CheckedPredictions):
        preds, t = preds.frame, preds.table
    else:
        t = _validate(preds)
    clusters = _patients(preds, t) if cluster == "patient" else None
    dev = _resolve_device(device)
    key = None
    if cache is not None:
        key = replicate_key(t, clusters, n_boot=n_boot, seed=seed, cluster=cluster, device=dev)
        hit = _load_replicates(Path(cache), key, t, n_boot)
        if hit is not None:
            return hit
        thresholds = True  # the stored run serves evaluate and compare alike
    run = _align(t, n_boot=n_boot, thresholds=thresholds)
    _bootstrap(run, n_samples=len(t.samples), n_boot=n_boot, seed=seed, clusters=clusters, device=dev)
    if key is not None:
        _store_replicates(Path(cache), key, run)
    return run


def _align(t: _Table, *, n_boot: int, thresholds: bool, build: bool = True) -> _Run:
    """Check that every model pairs with the first one on every label; build their cells.

    ``build=False`` skips the score layouts and validation thresholds (a cached run has them).
    """
    warnings: list[tuple[str, str]] = []
    models, labels = t.models, t.labels
    label_y: dict[str, np.ndarray] = {}
    cells: dict[tuple[tuple, str], _Cell] = {}
    degenerate: set[str] = set()
    for j, label in enumerate(labels):
        ref = None
        for m, model in enumerate(models):
            bounds = t.slices.get((m, j, 1))
            if bounds is None:
                raise CxrbenchError(f"{_name(model)} has no test predictions for label {label!r}")
            cols, y, s = (a[slice(*bounds)] for a in (t.sample, t.y, t.score))
            if ref is None:
                ref = (model, cols, y)
                label_y[label] = y.astype(bool)
                n_pos = int(y.sum())
                if n_pos == 0 or n_pos == y.size:
                    degenerate.add(label)
                    only = "positives" if n_pos else "negatives"
                    warnings.append((
                        "data",
                        f"label {label!r}: test set has only {only} ({y.size} samples); "
                        "AUC and threshold metrics are undefined and it is left out of the mean",
                    ))  # fmt: skip
            elif not np.array_equal(cols, ref[1]):
                raise CxrbenchError(
                    f"label {label!r}: {_name(model)} and {_name(ref[0])} were tested on different "
                    "sample_ids, so they cannot be paired"
                )
            elif not np.array_equal(y, ref[2]):
                raise CxrbenchError(f"label {label!r}: {_name(model)} and {_name(ref[0])} disagree on y_true")
            if np.ptp(s) == 0 and label not in degenerate:
                warnings.append(("data", f"label {label!r}: {_name(model)} gives every test sample the same score"))
            thr = float("nan")
            if build and thresholds and label not in degenerate:
                val = t.slices.get((m, j, 0))
                yv, sv = (None, None) if val is None else (t.y[slice(*val)], t.score[slice(*val)])
                notes: list[str] = []
                thr = _val_threshold(yv, sv, model, label, notes)
                warnings += [("threshold", n) for n in notes]
            layout = None
            if build:
                layout = ScoreLayout(y.astype(bool), s, cols=cols, threshold=np.inf if np.isnan(thr) else thr)
            cells[(model, label)] = _Cell(score=s, threshold=thr, layout=layout)
    return _Run(models, labels, label_y, cells, degenerate, {}, n_boot, warnings)


def _bootstrap(
    run: _Run, *, n_samples: int, n_boot: int, seed: int, clusters: np.ndarray | None, device: str | None
) -> None:
    """Fill every non-degenerate cell's point and replicate metrics, and the dropped replicates."""
    active = [(key, c) for key, c in run.cells.items() if key[1] not in run.degenerate]
    ones = np.ones((n_samples, 1), dtype=np.float32)
    for _, cell in active:
        cell.point = {k: float(v[0]) for k, v in replicate_metrics(cell.layout, ones).items()}
    threads = _threads(len(active)) if device is None else 1
    with ThreadPoolExecutor(threads) if threads > 1 else contextlib.nullcontext() as pool:
        for block in iter_count_blocks(n_samples, n_boot=n_boot, seed=seed, clusters=clusters):
            if device is not None:
                import torch

                block = torch.as_tensor(block, device=device)

            def metrics(cell: _Cell, block: Any = block) -> dict[str, np.ndarray]:
                return replicate_metrics(cell.layout, block, device=device)

            cells = [cell for _, cell in active]
            for cell, out in zip(cells, pool.map(metrics, cells) if pool else map(metrics, cells), strict=True):
                for k, v in out.items():
                    cell.reps.setdefault(k, []).append(v)
    for _, cell in active:
        cell.reps = {k: np.concatenate(v) for k, v in cell.reps.items()}  # type: ignore[assignment]
    _drop(run)


def _threads(n_tasks: int) -> int:
    """Threads for the numpy bootstrap: one per CPU this process may use (its sums and reductions
    release the GIL), at most one per task. Each cell is computed alone, so the results do not
    depend on the number of threads."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, n_tasks))


def _drop(run: _Run) -> None:
    """Record per label the replicates with one class (NaN AUC) and warn about them."""
    for (_, label), cell in run.cells.items():
        if label in run.degenerate or label in run.dropped:
            continue
        run.dropped[label] = np.isnan(cell.reps["auc"])
        k = int(run.dropped[label].sum())
        if k:
            run.warnings.append((
                "data",
                f"label {label!r}: {k} of {run.n_boot} bootstrap replicates had only one class and "
                "were dropped for this label",
            ))  # fmt: skip
    any_dropped = np.zeros(run.n_boot, bool)
    for mask in run.dropped.values():
        any_dropped |= mask
    if any_dropped.any() and len(run.dropped) > 1:
        run.warnings.append((
            "data",
            f"label 'mean': {int(any_dropped.sum())} of {run.n_boot} bootstrap replicates were dropped "
            "because a label in them had only one class",
        ))  # fmt: skip


# --------------------------------------------------------------------------- shared replicates

CACHE_VERSION = 1  # bump when the replicate metrics change for the same inputs
_POINT_KEYS = ("auc", "auprc", "n_pos", "n_neg", "tp", "fp")
_KEEP_CACHED = 4  # newest replicate files kept per cache folder


def replicate_key(
    t: _Table, clusters: np.ndarray | None, *, n_boot: int, seed: int, cluster: str, device: str | None
) -> str:
    """Return the hex key of a bootstrap: a hash of the aligned predictions and the settings.

    Covers every number the replicates depend on (models, labels, test sample order, the y_true
    and y_score of every test and validation row, patients when resampling them), ``n_boot``,
    ``seed``, ``cluster``, the device kind (numpy, CPU or CUDA sums may round differently), the
    numpy version and ``CACHE_VERSION``; not ``ci``, which only reads the replicates.
    """
    h = hashlib.blake2b(digest_size=20)
    meta = {
        "version": CACHE_VERSION, "numpy": np.__version__, "n_boot": int(n_boot), "seed": int(seed),
        "cluster": cluster, "device": "numpy" if device is None else str(device).split(":")[0],
        "models": [[repr(v) for v in m] for m in t.models], "labels": [repr(v) for v in t.labels],
        "slices": sorted([*k, *v] for k, v in t.slices.items()),
    }  # fmt: skip
    h.update(json.dumps(meta, sort_keys=True).encode())
    h.update("\0".join(map(repr, t.samples.tolist())).encode())
    if clusters is not None:
        h.update(b"\1" + "\0".join(map(repr, np.asarray(clusters, dtype=object).tolist())).encode())
    for arr in (t.sample, t.y, t.score):
        h.update(np.ascontiguousarray(arr).view(np.uint8))
    return h.hexdigest()


def _store_replicates(folder: Path, key: str, run: _Run) -> None:
    """Write the run's thresholds, point and replicate metrics to ``folder/<key>.npz`` atomically."""
    cells = [run.cells[(m, lab)] for lab in run.labels for m in run.models]
    active = [c for (m, lab), c in run.cells.items() if lab not in run.degenerate]
    meta = {
        "key": key,
        "warnings": run.warnings,
        "degenerate": [i for i, lab in enumerate(run.labels) if lab in run.degenerate],
    }
    arrays = {
        "meta": np.array(json.dumps(meta)),
        "threshold": np.array([c.threshold for c in cells], dtype=np.float64),
        "point": np.array([[c.point[k] for k in _POINT_KEYS] for c in active], dtype=np.float64).reshape(-1, 6),
        "reps": np.array(
            [[np.asarray(c.reps[k], dtype=np.float64) for k in _POINT_KEYS] for c in active], dtype=np.float64
        ).reshape(-1, 6, run.n_boot),
    }
    from cxrbench.rundir import atomic_path

    try:
        with atomic_path(folder / f"{key}.npz") as tmp, open(tmp, "wb") as handle:
            np.savez(handle, **arrays)
    except OSError:
        return  # a cache: failing to write it only costs the next caller the recomputation
    old = sorted(folder.glob("*.npz"), key=lambda p: p.stat().st_mtime, reverse=True)[_KEEP_CACHED:]
    for stale in old:
        stale.unlink(missing_ok=True)


def _load_replicates(folder: Path, key: str, t: _Table, n_boot: int) -> _Run | None:
    """Return the run stored under ``key`` (cells rebuilt from ``t``), or None when absent or unreadable."""
    path = folder / f"{key}.npz"
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            threshold, point, reps = data["threshold"], data["point"], data["reps"]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return None
    if meta.get("key") != key:
        return None
    degenerate = {t.labels[i] for i in meta["degenerate"]}
    run = _align(t, n_boot=n_boot, thresholds=True, build=False)
    n_active = sum(1 for (_, lab) in run.cells if lab not in degenerate)
    if run.degenerate != degenerate or threshold.shape != (len(run.cells),) or point.shape != (n_active, 6) \
            or reps.shape != (n_active, 6, n_boot):  # fmt: skip
        return None
    run.warnings = [tuple(w) for w in meta["warnings"]]  # type: ignore[misc]
    i = 0
    for n, (lab, m) in enumerate((lab, m) for lab in run.labels for m in run.models):
        cell = run.cells[(m, lab)]
        cell.threshold = float(threshold[n])
        if lab in degenerate:
            continue
        cell.point = {k: float(v) for k, v in zip(_POINT_KEYS, point[i], strict=True)}
        cell.reps = {k: reps[i, j] for j, k in enumerate(_POINT_KEYS)}  # type: ignore[misc]
        i += 1
    for (_, label), cell in run.cells.items():
        if label not in degenerate and label not in run.dropped:
            run.dropped[label] = np.isnan(cell.reps["auc"])
    return run


def _val_threshold(
    y: np.ndarray | None, score: np.ndarray | None, model: tuple, label: str, warnings: list[str]
) -> float:
    """Return the Youden threshold on validation, or NaN with a warning when val cannot give one."""
    if y is None or score is None or y.size == 0:
        warnings.append(f"label {label!r}: {_name(model)} has no validation predictions; no threshold")
        return float("nan")
    if y.min() == y.max():
        warnings.append(f"label {label!r}: {_name(model)} validation set has one class; no threshold")
        return float("nan")
    return youden_threshold(y, score)


def _metric_reps(cell: _Cell, dropped: np.ndarray) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Return point values and replicate arrays of every reported metric (dropped replicates NaN)."""
    point = {"auc": cell.point["auc"], "auprc": cell.point["auprc"]}
    reps = {"auc": cell.reps["auc"], "auprc": cell.reps["auprc"]}
    if not np.isnan(cell.threshold):
        p = cell.point
        point.update({k: float(v) for k, v in metrics_from_counts(p["tp"], p["fp"], p["n_pos"], p["n_neg"]).items()})
        r = cell.reps
        for k, v in metrics_from_counts(r["tp"], r["fp"], r["n_pos"], r["n_neg"]).items():
            reps[k] = np.where(dropped, np.nan, v)
    else:
        point.update({k: float("nan") for k in THRESHOLD_METRICS})
        reps.update({k: np.full(cell.reps["auc"].shape, np.nan) for k in THRESHOLD_METRICS})
    return point, reps


def _testable_labels(run: _Run) -> set[str]:
    """The labels with both classes in test and at least ``MIN_TEST_CASES`` of each: those whose
    differences get a CI and a p-value."""
    return {
        label
        for label in run.labels
        if label not in run.degenerate
        and min(int(run.label_y[label].sum()), int((~run.label_y[label]).sum())) >= MIN_TEST_CASES
    }


def _model_macro(run: _Run, model: tuple) -> tuple[float, np.ndarray, list[str]]:
    """``_macro`` of one model's test AUCs over the labels with both classes in test."""
    return _macro(
        {
            label: (run.cells[(model, label)].point["auc"], run.cells[(model, label)].reps["auc"])
            for label in run.labels
            if label not in run.degenerate
        }
    )


def _macro(per_label: dict[str, tuple[float, np.ndarray]]) -> tuple[float, np.ndarray, list[str]]:
    """Return the macro mean, its per-replicate means (NaN where any label dropped) and the labels used."""
    used = [lab for lab, (v, _) in per_label.items() if not np.isnan(v)]
    if not used:
        return float("nan"), np.array([np.nan]), []
    value = float(np.mean([per_label[lab][0] for lab in used]))
    reps = np.mean(np.vstack([per_label[lab][1] for lab in used]), axis=0)
    return value, reps, used


def evaluate(
    preds: pd.DataFrame | CheckedPredictions,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    cluster: Literal["image", "patient"] = "image",
    ci: float = 0.95,
    device: str | None = None,
    cache: str | os.PathLike | None = None,
) -> tuple[pd.DataFrame, list[str]]:
    """Return (metrics, warnings): test metrics of every model and label with paired bootstrap CIs.

    Metrics: ``auc``, ``auprc`` and, at the Youden threshold chosen on each model's validation
    predictions, ``threshold`` (no CI), ``accuracy``, ``sensitivity``, ``specificity``, ``f1``.
    ``label == "mean"`` rows are macro means over the labels with a defined value; their CI comes
    from the per-replicate means (a replicate is dropped when any of those labels dropped it), and
    their ``n_pos``/``n_neg`` are sums over those labels. Percentile CIs at level ``ci``;
    ``cluster="patient"`` resamples patients. ``device`` runs the bootstrap sums in torch there
    (default: CUDA when available, else numpy). ``cache`` (a folder) shares the bootstrap
    replicates with ``compare`` (and later calls) on the same predictions and settings: they are
    stored there as ``<replicate_key>.npz`` and read back instead of recomputed; the results are
    the same with or without it. ``preds`` may be the ``CheckedPredictions`` that
    ``validate_predictions`` returned for it (then it is not checked again).
    """
    run = _run(preds, n_boot=n_boot, seed=seed, cluster=cluster, ci=ci, device=device, thresholds=True, cache=cache)
    rows: list[tuple] = []
    for model in run.models:
        per_metric: dict[str, dict[str, tuple[float, np.ndarray]]] = {}
        counts: dict[str, tuple[int, int]] = {}
        for label in run.labels:
            cell = run.cells[(model, label)]
            y = run.label_y[label]
            n_pos, n_neg = int(y.sum()), int((~y).sum())
            counts[label] = (n_pos, n_neg)
            rows.append((*model, label, "threshold", cell.threshold, np.nan, np.nan, n_pos, n_neg))
            if label in run.degenerate:
                for m in ["auc", "auprc", *THRESHOLD_METRICS]:
                    rows.append((*model, label, m, np.nan, np.nan, np.nan, n_pos, n_neg))
                continue
            point, reps = _metric_reps(cell, run.dropped[label])
            for m, v in point.items():
                lo, hi = percentile_ci(reps[m], ci=ci)
                rows.append((*model, label, m, v, lo, hi, n_pos, n_neg))
                per_metric.setdefault(m, {})[label] = (v, reps[m])
        for m in ["auc", "auprc", *THRESHOLD_METRICS]:
            value, reps, used = _macro(per_metric.get(m, {}))
            lo, hi = percentile_ci(reps, ci=ci)
            n_pos = sum(counts[lab][0] for lab in used)
            n_neg = sum(counts[lab][1] for lab in used)
            rows.append((*model, MEAN, m, value, lo, hi, n_pos, n_neg))
    out = pd.DataFrame(rows, columns=METRIC_COLUMNS)
    return out.astype({"n_pos": "int64", "n_neg": "int64"}), run.texts(thresholds=True)


#: Fewer test positives or negatives than this for a label: its difference gets no CI or p-value
#: (a paired bootstrap of one positive and one negative resamples the same pair: no variance to see).
MIN_TEST_CASES = 2


def compare(
    preds: pd.DataFrame | CheckedPredictions,
    *,
    baseline: str,
    n_boot: int = 1000,
    seed: int = 0,
    cluster: Literal["image", "patient"] = "image",
    test: Literal["bootstrap", "delong"] = "bootstrap",
    correction: Literal["bh", "holm", "none"] = "bh",
    alpha: float = 0.05,
    ci: float = 0.95,
    device: str | None = None,
    cache: str | os.PathLike | None = None,
) -> tuple[pd.DataFrame, list[str]]:
    """Return (comparison, warnings): test AUC of every model against the baseline encoder's twin model.

    The twin has the same adaptation, fraction and seed (missing twins are skipped with a warning).
    ``delta = auc - baseline_auc``; AUC CIs are paired percentile bootstrap intervals. With
    ``test="bootstrap"`` the delta CI is the percentile interval of the replicate differences and
    the p-value is the two-sided bootstrap p-value; with ``test="delong"`` both come from DeLong's
    test (normal CI of the difference, as pROC's ``roc.test``). ``mean`` rows compare macro-mean
    AUCs and always use the bootstrap (CI and p-value), whatever ``test`` says. ``p_adjusted``
    corrects the per-label rows as one family and the ``mean`` rows as another (labels with fewer
    than ``MIN_TEST_CASES`` test positives or negatives get no CI of the difference nor p-value, and
    a mean of only such labels none either)
    (``correction``: bh, holm, none); ``significant`` is ``p_adjusted < alpha``. ``cache`` reuses
    (or stores) the replicates of ``evaluate`` with the same predictions, ``n_boot``, ``seed``,
    ``cluster`` and device: pass the folder ``evaluate`` got.
    """
    if test not in ("bootstrap", "delong"):
        raise CxrbenchError(f"test must be 'bootstrap' or 'delong'; got {test!r}")
    if correction not in METHODS:
        raise CxrbenchError(f"correction must be one of {', '.join(METHODS)}; got {correction!r}")
    if not 0.0 < float(alpha) < 1.0:
        raise CxrbenchError(f"alpha must lie strictly between 0 and 1; got {alpha!r}")
    frame = preds.frame if isinstance(preds, CheckedPredictions) else preds
    if isinstance(frame, pd.DataFrame) and "encoder" in frame.columns:
        encoders = sorted(map(str, pd.unique(frame["encoder"])))
        if baseline not in encoders:
            raise CxrbenchError(
                f"baseline encoder {baseline!r} is not in the predictions; encoders: {', '.join(encoders)}"
            )
    run = _run(preds, n_boot=n_boot, seed=seed, cluster=cluster, ci=ci, device=device, thresholds=False, cache=cache)
    warnings = run.texts(thresholds=False)
    present = set(run.models)
    testable = _testable_labels(run)
    rows: list[dict[str, Any]] = []
    untested: dict[str, str] = {}  # label -> its test counts, when too few for a test
    for model in run.models:
        if model[0] == baseline:
            continue
        twin = (baseline, *model[1:])
        if twin not in present:
            warnings.append(f"{_name(model)}: no baseline model {_name(twin)}; skipped")
            continue
        for label in run.labels:
            y = run.label_y[label]
            row = dict(zip(MODEL_KEYS, model, strict=True))
            row.update(label=label, n_pos=int(y.sum()), n_neg=int((~y).sum()))
            if label in run.degenerate:
                rows.append(row)
                continue
            a, b = run.cells[(model, label)], run.cells[(twin, label)]
            ra, rb = a.reps["auc"], b.reps["auc"]
            diff = ra - rb
            lo, hi = percentile_ci(ra, ci=ci)
            row.update(
                auc=a.point["auc"], auc_ci_low=lo, auc_ci_high=hi, baseline_auc=b.point["auc"],
                delta=a.point["auc"] - b.point["auc"],
            )  # fmt: skip
            if label not in testable:
                untested[label] = f"{row['n_pos']} positive(s) and {row['n_neg']} negative(s)"
            elif test == "delong":
                res = delong_test(y, a.score, b.score, ci=ci)
                row.update(delta_ci_low=res.ci_low, delta_ci_high=res.ci_high, p_value=res.p_value)
            else:
                dlo, dhi = percentile_ci(diff, ci=ci)
                row.update(delta_ci_low=dlo, delta_ci_high=dhi, p_value=bootstrap_pvalue(diff))
            rows.append(row)
        value, reps, used = _model_macro(run, model)
        base_value, base_reps, _ = _model_macro(run, twin)
        row = dict(zip(MODEL_KEYS, model, strict=True))
        row.update(
            label=MEAN,
            n_pos=sum(int(run.label_y[lab].sum()) for lab in used),
            n_neg=sum(int((~run.label_y[lab]).sum()) for lab in used),
        )
        if used:
            lo, hi = percentile_ci(reps, ci=ci)
            row.update(auc=value, auc_ci_low=lo, auc_ci_high=hi, baseline_auc=base_value, delta=value - base_value)
        if any(lab not in untested for lab in used):  # a mean of only untestable labels: no test either
            diff = reps - base_reps
            dlo, dhi = percentile_ci(diff, ci=ci)
            row.update(delta_ci_low=dlo, delta_ci_high=dhi, p_value=bootstrap_pvalue(diff))
        rows.append(row)
    warnings += [
        f"label {label!r}: {counts} in test, too few for a CI of the difference or a p-value (none given)"
        for label, counts in untested.items()
    ]
    out = pd.DataFrame(rows, columns=COMPARE_COLUMNS)
    for col in COMPARE_COLUMNS[7:-1]:
        out[col] = out[col].astype(float)
    out["p_adjusted"] = np.nan
    for is_mean in (False, True):
        fam = (out["label"] == MEAN) == is_mean
        out.loc[fam, "p_adjusted"] = adjust_pvalues(out.loc[fam, "p_value"].to_numpy(), method=correction)
    out["significant"] = (out["p_adjusted"] < alpha).astype(bool)
    return out.astype({"n_pos": "int64", "n_neg": "int64"}), warnings


SEEDS_COLUMNS = [
    "encoder", "adaptation", "fraction", "seeds", "label", "auc", "auc_ci_low", "auc_ci_high", "baseline_auc",
    "delta", "delta_ci_low", "delta_ci_high", "p_value", "p_adjusted", "significant",
]  # fmt: skip


def compare_over_seeds(
    preds: pd.DataFrame | CheckedPredictions,
    *,
    baseline: str,
    n_boot: int = 1000,
    seed: int = 0,
    cluster: Literal["image", "patient"] = "image",
    correction: Literal["bh", "holm", "none"] = "bh",
    alpha: float = 0.05,
    ci: float = 0.95,
    device: str | None = None,
    cache: str | os.PathLike | None = None,
) -> pd.DataFrame:
    """Macro-mean test AUC of every encoder x adaptation x fraction that ran with several seeds
    (label subsets of a label-efficiency run), averaged over those seeds, against the baseline's
    twins (same adaptation, fraction and seed) averaged over the same seeds.

    One test can be lucky in which few patients it labels; the mean over subsets is what a
    label-efficiency claim is about. Its CI and p-value come from the same paired bootstrap
    replicates as ``compare`` (each replicate's macro means averaged over the seeds, so the test set
    is resampled and the seeds are held fixed); ``p_adjusted`` corrects these rows as one family.
    Groups with fewer than two seeds that have twins get no row (an empty frame when none has)."""
    if correction not in METHODS:
        raise CxrbenchError(f"correction must be one of {', '.join(METHODS)}; got {correction!r}")
    if not isinstance(preds, CheckedPredictions):
        preds = validate_predictions(preds)
    groups = _seed_groups(preds.table.models, baseline)
    if not groups:  # the common case: no second bootstrap pass, no replicates read again
        return _seeds_frame([], correction=correction, alpha=alpha)
    run = _run(preds, n_boot=n_boot, seed=seed, cluster=cluster, ci=ci, device=device, thresholds=False, cache=cache)
    testable = _testable_labels(run)
    rows = []
    for (encoder, adaptation, fraction), pairs in groups.items():
        ours = [_model_macro(run, model) for model, _ in pairs]
        theirs = [_model_macro(run, twin) for _, twin in pairs]
        if not all(used for *_, used in ours + theirs):
            continue
        reps = np.mean(np.vstack([r for _, r, _ in ours]), axis=0)
        base_reps = np.mean(np.vstack([r for _, r, _ in theirs]), axis=0)
        value = float(np.mean([v for v, _, _ in ours]))
        base_value = float(np.mean([v for v, _, _ in theirs]))
        lo, hi = percentile_ci(reps, ci=ci)
        row = {
            "encoder": encoder, "adaptation": adaptation, "fraction": fraction, "seeds": len(pairs), "label": MEAN,
            "auc": value, "auc_ci_low": lo, "auc_ci_high": hi, "baseline_auc": base_value, "delta": value - base_value,
        }  # fmt: skip
        if any(testable.intersection(used) for *_, used in ours):
            diff = reps - base_reps
            dlo, dhi = percentile_ci(diff, ci=ci)
            row.update(delta_ci_low=dlo, delta_ci_high=dhi, p_value=bootstrap_pvalue(diff))
        rows.append(row)
    return _seeds_frame(rows, correction=correction, alpha=alpha)


def _seed_groups(models: list[tuple], baseline: str) -> dict[tuple, list[tuple[tuple, tuple]]]:
    """(model, baseline twin) pairs by encoder x adaptation x fraction, for the groups with two or
    more seeds that have twins."""
    present = set(models)
    groups: dict[tuple, list[tuple[tuple, tuple]]] = {}
    for model in models:
        twin = (baseline, *model[1:])
        if model[0] != baseline and twin in present:
            groups.setdefault(model[:3], []).append((model, twin))
    return {key: pairs for key, pairs in groups.items() if len(pairs) >= 2}


def _seeds_frame(rows: list[dict[str, Any]], *, correction: str, alpha: float) -> pd.DataFrame:
    """``compare_over_seeds``'s rows as a typed frame, adjusted over its rows."""
    out = pd.DataFrame(rows, columns=SEEDS_COLUMNS)
    for col in SEEDS_COLUMNS[5:-1]:
        out[col] = out[col].astype(float)
    out["p_adjusted"] = adjust_pvalues(out["p_value"].to_numpy(), method=correction) if len(out) else np.nan
    out["significant"] = (out["p_adjusted"] < alpha).astype(bool)
    return out.astype({"seeds": "int64"})
