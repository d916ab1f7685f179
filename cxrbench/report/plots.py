"""Report figures: ROC curves with bootstrap bands, forest plots of delta AUC, label-efficiency curves.

Each plot function writes ``<stem>.png`` and ``<stem>.pdf`` with the Agg backend (no display needed)
and returns the paths; the numerical parts (weighted ROC, ROC band) are plain numpy, tested alone.
With ``cache=FOLDER`` a plot whose inputs did not change since it was last drawn is copied from
``FOLDER`` instead of drawn again (see ``_cached``).
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from cxrbench.errors import CxrbenchError  # noqa: E402
from cxrbench.report.tables import (  # noqa: E402
    COMPARISON_COLUMNS,
    MEAN_LABEL,
    METRICS_COLUMNS,
    fmt_ci,
    require_columns,
)
from cxrbench.stats.auc import ScoreLayout, transpose_contiguous  # noqa: E402

PREDS_COLUMNS = ("encoder", "adaptation", "label", "y_true", "y_score")
BASELINE_COLOR = "0.25"
_CHUNK = 64  # bootstrap replicates drawn at once (bounds the int64 draws at _CHUNK x n)


# --------------------------------------------------------------------------- numerics


def _as_binary(y_true: np.ndarray, y_score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true, dtype=float).ravel()
    s = np.asarray(y_score, dtype=float).ravel()
    if y.shape != s.shape:
        raise CxrbenchError(f"y_true and y_score differ in length ({y.size} vs {s.size})")
    if not np.isin(y, (0.0, 1.0)).all():
        raise CxrbenchError("y_true must hold only 0 and 1 (drop unknown labels first)")
    if not np.isfinite(s).all():
        raise CxrbenchError("y_score holds NaN or infinite values")
    return y, s


def _sorted_blocks(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (sort order by descending score, labels in that order, last index of each tie block)."""
    order = np.argsort(-s, kind="mergesort")
    s_sorted = s[order]
    ends = np.r_[np.flatnonzero(np.diff(s_sorted) != 0), s_sorted.size - 1]
    return order, y[order], ends


def _rates(weights: np.ndarray, y_sorted: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, ...]:
    """Return (fpr, tpr) rows, each starting at 0, for a (B, n) matrix of weights in sorted order."""
    tps_all = np.cumsum(weights * y_sorted, axis=1)
    fps = np.cumsum(weights, axis=1)[:, ends] - tps_all[:, ends]
    tps = tps_all[:, ends]
    zero = np.zeros((weights.shape[0], 1))
    tps, fps = np.hstack([zero, tps]), np.hstack([zero, fps])
    with np.errstate(invalid="ignore", divide="ignore"):
        return fps / fps[:, -1:], tps / tps[:, -1:]


def roc_points(
    y_true: np.ndarray, y_score: np.ndarray, *, sample_weight: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Return (fpr, tpr) at every distinct threshold, from (0, 0) to (1, 1), ties as diagonals."""
    y, s = _as_binary(y_true, y_score)
    w = np.ones_like(y) if sample_weight is None else np.asarray(sample_weight, dtype=float).ravel()
    if w.shape != y.shape or (w < 0).any():
        raise CxrbenchError("sample_weight must be non-negative and as long as y_true")
    if not (w * y).sum() > 0 or not (w * (1 - y)).sum() > 0:
        raise CxrbenchError("ROC needs at least one positive and one negative example")
    order, y_sorted, ends = _sorted_blocks(y, s)
    fpr, tpr = _rates(w[order][None, :], y_sorted, ends)
    return fpr[0], tpr[0]


def _corners(fpr: np.ndarray, tpr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return the curve without the points inside straight horizontal or vertical runs (same line)."""
    keep = np.ones(fpr.size, dtype=bool)
    flat = (fpr[:-2] == fpr[1:-1]) & (fpr[1:-1] == fpr[2:])
    flat |= (tpr[:-2] == tpr[1:-1]) & (tpr[1:-1] == tpr[2:])
    keep[1:-1] = ~flat
    return fpr[keep], tpr[keep]


def _tpr_on_grid(fpr: np.ndarray, tpr: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Return the ROC curve's TPR at each ``grid`` FPR (top of vertical steps, linear on diagonals)."""
    idx = np.searchsorted(fpr, grid, side="right") - 1
    nxt = np.minimum(idx + 1, fpr.size - 1)
    span = fpr[nxt] - fpr[idx]
    with np.errstate(invalid="ignore", divide="ignore"):
        slope = np.where(span > 0, (tpr[nxt] - tpr[idx]) / span, 0.0)
    return tpr[idx] + slope * (grid - fpr[idx])


_WEIGHTS: dict[str, object] = {}  # the last replicate weights made, reused by the next band


def _groups_digest(groups: np.ndarray | None) -> str | None:
    """Return a content hash of the group labels (None without groups)."""
    if groups is None:
        return None
    digest = hashlib.blake2b(pd.util.hash_array(np.asarray(groups, dtype=object)).tobytes(), digest_size=16)
    return digest.hexdigest()


def _replicate_weights(n: int, n_boot: int, seed: int, groups: np.ndarray | None) -> np.ndarray:
    """Return (n, n_boot) float32 resampling counts; with ``groups`` whole groups are drawn together.

    Replicate b draws ``rng.integers(0, n_groups, n_groups)`` from ``default_rng(seed)`` (groups in
    sorted order), so every model and label of the same test samples shares the same resamples; the
    last matrix made is kept and reused (plot_roc draws every model and label with the same one).
    """
    key = (n, n_boot, seed, _groups_digest(groups))
    if _WEIGHTS.get("key") == key:
        return _WEIGHTS["weights"]  # type: ignore[return-value]
    if groups is None:
        inverse, n_groups = None, n
    else:
        _, inverse = np.unique(groups, return_inverse=True)
        n_groups = int(inverse.max()) + 1
    rng = np.random.default_rng(seed)
    weights = np.empty((n, n_boot), dtype=np.float32)
    for start in range(0, n_boot, _CHUNK):  # the draws' stream does not depend on the chunking
        b = min(_CHUNK, n_boot - start)
        draws = rng.integers(0, n_groups, size=(b, n_groups))
        flat = (np.arange(b)[:, None] * n_groups + draws).ravel()
        counts = np.bincount(flat, minlength=b * n_groups).reshape(b, n_groups).T
        weights[:, start : start + b] = counts if inverse is None else counts[inverse]
    _WEIGHTS.clear()
    _WEIGHTS.update(key=key, weights=weights)
    return weights


def _replicate_curves(
    y: np.ndarray, s: np.ndarray, weights: np.ndarray, grid: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Return (curves (B, grid), aucs (B,)) of every replicate at once; NaN rows lack a class.

    One sort of the scores and one sparse product give, per replicate and distinct positive score
    u, the positive weight P at u, the negative weight T tied with it and the weights strictly
    above it; u's piece of the ROC curve runs from (FP above, TP above) to (FP above + T, TP above
    + P) (a diagonal when T > 0, else vertical), and horizontal runs join the pieces. The TPR at
    FPR g is then read from the last piece starting at or before g: linear along it, its top
    beyond it, exactly as the curve drawn through every threshold (``_tpr_on_grid``).
    """
    layout = ScoreLayout(y.astype(bool), s)
    # weights stay float32 while they are whole numbers (sums exact under 2**23), float64 from
    # the first division on
    grouped = layout.matrix(y.size, np.float32) @ weights.astype(np.float32, copy=False)
    u, n_boot, k = layout.n_groups, weights.shape[1], grid.size
    pp, gaps, tied = grouped[:u], grouped[u : 2 * u + 1], grouped[2 * u + 1 : 3 * u + 1]
    below = gaps[:u].copy()  # negative weight strictly below each positive score (rows: ascending)
    below[1:] += tied[: u - 1]
    np.cumsum(below, axis=0, out=below)
    wp = pp.sum(0, dtype=np.float64)
    wn = gaps.sum(0, dtype=np.float64) + tied.sum(0, dtype=np.float64)
    valid = (wp > 0) & (wn > 0)
    safe_wp, safe_wn = np.where(valid, wp, 1.0), np.where(valid, wn, 1.0)
    num = np.einsum("ub,ub->b", pp, below + 0.5 * tied, dtype=np.float64)  # exact: halves of whole numbers
    aucs = np.where(valid, num / (safe_wp * safe_wn), np.nan)
    fp0 = wn.astype(np.float32) - below
    fp0 -= tied  # negative weight strictly above each positive score
    f0 = fp0 / safe_wn  # FPR where each piece starts; falls as the score rises
    # pieces starting at or before g: a replicate's starts fall as u rises, so per replicate one
    # search of the grid in its starts (ascending when read from the top score down)
    starts = transpose_contiguous(f0[::-1])  # (B, u), each row ascending
    n_started = np.empty((n_boot, k), dtype=np.int64)  # (B, grid)
    for b in range(n_boot):
        n_started[b] = np.searchsorted(starts[b], grid, side="right")
    # the last of them, in descending score order, is the one with the lowest score among them
    at = np.minimum(u - n_started, u - 1) * n_boot + np.arange(n_boot)[:, None]  # flat (u, B) index
    a0 = f0.ravel()[at]
    a1 = (fp0.ravel()[at] + tied.ravel()[at]) / safe_wn[:, None]
    tp0 = wp[:, None] - np.cumsum(pp, axis=0).ravel()[at]  # positive weight strictly above the piece
    b0 = tp0 / safe_wp[:, None]
    b1 = (tp0 + pp.ravel()[at]) / safe_wp[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        inside = np.where(grid < a1, b0 + (b1 - b0) / (a1 - a0) * (grid - a0), b1)
    curves = np.where(n_started > 0, inside, 0.0)
    curves[~valid] = np.nan
    return curves, aucs


def roc_band(
    y_true: np.ndarray,
    y_score: np.ndarray,
    *,
    groups: np.ndarray | None = None,
    n_boot: int = 200,
    seed: int = 0,
    level: float = 0.95,
    grid: np.ndarray | None = None,
) -> dict[str, np.ndarray | float]:
    """Return the ROC curve and its pointwise percentile bootstrap band on an FPR grid.

    Keys: ``fpr``/``tpr`` (exact curve), ``grid``, ``tpr_grid`` (curve on the grid), ``low``,
    ``high`` (band), ``auc``, ``auc_low``, ``auc_high`` (percentile CI of the replicate AUCs).
    ``groups`` (e.g. patient ids) makes the bootstrap resample whole groups.
    """
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise CxrbenchError(f"n_boot must be a positive integer, got {n_boot!r}")
    if not 0.0 < float(level) < 1.0:
        raise CxrbenchError(f"level must lie strictly between 0 and 1, got {level!r}")
    y, s = _as_binary(y_true, y_score)
    if groups is not None:
        groups = np.asarray(groups).ravel()
        if groups.shape != y.shape:
            raise CxrbenchError("groups must be as long as y_true")
    fpr, tpr = roc_points(y, s)
    grid = np.linspace(0.0, 1.0, 201) if grid is None else np.asarray(grid, dtype=float)
    weights = _replicate_weights(y.size, int(n_boot), seed, groups)
    curves, aucs = _replicate_curves(y, s, weights, grid)
    if np.isnan(aucs).all():
        raise CxrbenchError("every bootstrap replicate lacked positives or negatives")
    tail = (1.0 - float(level)) / 2.0
    low, high = np.quantile(curves[~np.isnan(aucs)], [tail, 1.0 - tail], axis=0)  # rows: whole or NaN
    auc_low, auc_high = np.nanquantile(aucs, [tail, 1.0 - tail])
    return {
        "fpr": fpr,
        "tpr": tpr,
        "grid": grid,
        "tpr_grid": _tpr_on_grid(fpr, tpr, grid),
        "low": low,
        "high": high,
        "auc": float(np.trapezoid(tpr, fpr)),
        "auc_low": float(auc_low),
        "auc_high": float(auc_high),
    }


# --------------------------------------------------------------------------- helpers


PLOTS_VERSION = 2  # bump when a figure's files change, so cached figures are drawn again (2: no PDF dates)
_KEEP_CACHED = 256  # newest files kept in a plot cache folder


def _digest_value(h: Any, value: Any) -> None:
    """Feed one argument into the hash: frames by content (columns, dtypes, rows), others by repr.

    Numeric columns go in as their bytes and categorical ones as their categories and codes (no
    per-row hashing); other columns through ``hash_pandas_object``.
    """
    if not isinstance(value, pd.DataFrame):
        h.update(repr(value).encode())
        return
    h.update(repr([(str(c), str(t)) for c, t in value.dtypes.items()] + [len(value)]).encode())
    for _, col in value.items():
        if isinstance(col.dtype, pd.CategoricalDtype):
            h.update(pd.util.hash_array(np.asarray(col.cat.categories, dtype=object)).tobytes())
            h.update(np.ascontiguousarray(col.cat.codes.to_numpy()).tobytes())
        elif isinstance(col.dtype, np.dtype) and col.dtype.kind in "biuf":
            h.update(np.ascontiguousarray(col.to_numpy()).tobytes())
        else:
            h.update(pd.util.hash_pandas_object(col, index=False).to_numpy().tobytes())


def _copy_atomic(src: Path, dst: Path) -> None:
    from cxrbench.rundir import atomic_path

    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def _cache_entry(fn: Callable[..., list[Path]], args: tuple, kwargs: dict) -> tuple[str, Path]:
    """Return (key, out_stem) of a call of the undecorated plot function ``fn`` (see ``_cached``)."""
    bound = inspect.signature(fn).bind(*args, **kwargs)
    bound.apply_defaults()
    h = hashlib.blake2b(digest_size=20)
    h.update(repr((fn.__name__, PLOTS_VERSION, matplotlib.__version__)).encode())
    for name, value in bound.arguments.items():
        if name != "out_stem":
            h.update(name.encode())
            _digest_value(h, value)
    return h.hexdigest(), Path(bound.arguments["out_stem"])


def _paths(stem: Path) -> list[Path]:
    return [stem.with_name(stem.name + ext) for ext in (".png", ".pdf")]


def _copy_from_cache(folder: Path, key: str, stem: Path) -> list[Path] | None:
    """Copy ``folder/<key>.png|.pdf`` to the stem's paths and return them; None when not stored."""
    stored = [folder / f"{key}{ext}" for ext in (".png", ".pdf")]
    if not all(p.is_file() for p in stored):
        return None
    paths = _paths(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    for src, dst in zip(stored, paths, strict=True):
        _copy_atomic(src, dst)
    return paths


def _store_in_cache(folder: Path, key: str, written: list[Path]) -> None:
    """Keep copies of freshly drawn files as ``folder/<key>.png|.pdf`` (the newest files are kept)."""
    if not written:
        return
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for src, ext in zip(written, (".png", ".pdf"), strict=True):
            _copy_atomic(src, folder / f"{key}{ext}")
        old = sorted(folder.iterdir(), key=lambda p: p.stat().st_mtime, reverse=True)[_KEEP_CACHED:]
        for stale in old:
            stale.unlink(missing_ok=True)
    except OSError:
        pass  # a cache: failing to fill it only costs drawing the plot next time


def _cached(fn: Callable[..., list[Path]]) -> Callable[..., list[Path]]:
    """Let ``fn`` take ``cache=FOLDER``: reuse the files drawn before from the same inputs.

    The key hashes the function name, ``PLOTS_VERSION``, matplotlib's version and every argument
    but ``out_stem`` (frames by content); a hit copies ``FOLDER/<key>.png|.pdf`` to the stem's
    paths, a miss draws and then stores copies there (atomically; the newest files are kept).
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, cache: str | os.PathLike | None = None, **kwargs: Any) -> list[Path]:
        if cache is None:
            return fn(*args, **kwargs)
        key, stem = _cache_entry(fn, args, kwargs)
        hit = _copy_from_cache(Path(cache), key, stem)
        if hit is not None:
            return hit
        written = fn(*args, **kwargs)
        _store_in_cache(Path(cache), key, written)
        return written

    return wrapper


_JOBS: list[tuple[Callable[..., list[Path]], tuple, dict]] = []  # what forked workers draw, by index


def _draw_job(i: int) -> list[Path]:
    fn, args, kwargs = _JOBS[i]
    return fn(*args, **kwargs)


def _fork_context() -> Any:
    import multiprocessing

    return multiprocessing.get_context("fork") if "fork" in multiprocessing.get_all_start_methods() else None


def render(
    jobs: list[tuple[Callable[..., list[Path]], tuple, dict]],
    *,
    cache: str | os.PathLike | None = None,
    workers: int | None = None,
) -> list[list[Path]]:
    """Draw every ``(plot function, args, kwargs)`` job; return each one's paths, in job order.

    The same as calling ``fn(*args, cache=cache, **kwargs)`` for each job in turn (same files, same
    bytes), but the figures that are not in ``cache`` are drawn side by side in up to ``workers``
    forked processes (default: one per CPU; one, or no ``fork`` on this platform, draws here).
    A job's error is raised here, as the serial calls would have raised the first one.
    """
    results: list[list[Path] | None] = [None] * len(jobs)
    todo: list[tuple[int, str | None]] = []
    raw = [(getattr(fn, "__wrapped__", fn), args, kwargs) for fn, args, kwargs in jobs]
    for i, (fn, args, kwargs) in enumerate(raw):
        key = None
        if cache is not None:
            key, stem = _cache_entry(fn, args, kwargs)
            results[i] = _copy_from_cache(Path(cache), key, stem)
        if results[i] is None:
            todo.append((i, key))
    n_workers = min(len(todo), workers if workers is not None else (os.cpu_count() or 1))
    context = _fork_context() if n_workers > 1 else None
    if context is None:
        for i, key in todo:
            fn, args, kwargs = raw[i]
            results[i] = fn(*args, **kwargs)
            if key is not None:
                _store_in_cache(Path(cache), key, results[i])  # type: ignore[arg-type]
    else:
        from concurrent.futures import ProcessPoolExecutor

        from cxrbench.processes import die_with_parent  # a killed compare takes its figure workers with it

        _JOBS[:] = raw
        try:
            with ProcessPoolExecutor(
                n_workers, mp_context=context, initializer=die_with_parent, initargs=(os.getpid(),)
            ) as pool:
                futures = [(i, key, pool.submit(_draw_job, i)) for i, key in todo]
                try:
                    for i, key, future in futures:
                        results[i] = future.result()
                        if key is not None:
                            _store_in_cache(Path(cache), key, results[i])  # type: ignore[arg-type]
                except BaseException:
                    for _, _, future in futures:
                        future.cancel()
                    raise
        finally:
            _JOBS.clear()
    return results  # type: ignore[return-value]


@contextmanager
def _figure(figsize: tuple[float, float]) -> Iterator[tuple[plt.Figure, plt.Axes]]:
    """Yield a new figure and axes, closed on leaving the block whatever happens."""
    fig, ax = plt.subplots(figsize=figsize)
    try:
        yield fig, ax
    finally:
        plt.close(fig)


#: what the files say about their making: no dates, so the same inputs give the same bytes (the
#: PDF backend would write CreationDate, or SOURCE_DATE_EPOCH, otherwise; PNG's Software is fixed)
_PDF_METADATA = {"CreationDate": None, "ModDate": None}


def _save(fig: plt.Figure, out_stem: Path) -> list[Path]:
    """Return the PNG and PDF paths after writing ``fig`` to both (atomically: a killed compare never
    leaves a truncated plot), byte-identical for the same figure."""
    from cxrbench.rundir import atomic_path

    stem = Path(out_stem)
    paths = [stem.with_name(stem.name + ".png"), stem.with_name(stem.name + ".pdf")]
    with atomic_path(paths[0]) as tmp:
        fig.savefig(tmp, format="png", dpi=150, bbox_inches="tight")
    with atomic_path(paths[1]) as tmp:
        fig.savefig(tmp, format="pdf", bbox_inches="tight", metadata=_PDF_METADATA)
    return paths


def _full_fraction(values: pd.Series) -> pd.Series:
    return pd.to_numeric(values, errors="coerce").astype(float).fillna(1.0)


def _largest_fraction(frame: pd.DataFrame) -> pd.DataFrame:
    """Return the rows with the largest label fraction (missing = full data); all rows if no column."""
    if "fraction" not in frame.columns or frame.empty:
        return frame
    frac = _full_fraction(frame["fraction"])
    return frame[np.isclose(frac, frac.max())]


def _text(values: pd.Series) -> pd.Series:
    """``values.astype(str)``; for a categorical column only its categories are converted (same values)."""
    if isinstance(values.dtype, pd.CategoricalDtype):
        text = values.cat.categories.astype(str)
        if text.is_unique:
            return values.cat.rename_categories(text)
    return values.astype(str)


def _lexical(values: pd.Series) -> pd.Series:
    """A categorical column with its categories sorted, so ``factorize(sort=True)`` sorts by value."""
    if isinstance(values.dtype, pd.CategoricalDtype) and not values.cat.categories.is_monotonic_increasing:
        return values.cat.reorder_categories(values.cat.categories.sort_values())
    return values


def _model_names(frame: pd.DataFrame) -> pd.Series:
    """Return ``encoder / adaptation`` per row, with ``seed N`` appended when seeds vary.

    The names are made once per distinct model and spread to the rows (categorical when distinct).
    """
    with_seed = "seed" in frame.columns and frame["seed"].nunique(dropna=False) > 1
    keys = frame[["encoder", "adaptation", *(["seed"] if with_seed else [])]]
    ids = keys.groupby(list(keys.columns), sort=False, dropna=False, observed=True).ngroup().to_numpy()
    first = keys.iloc[np.unique(ids, return_index=True)[1]]
    names = first["encoder"].astype(str) + " / " + first["adaptation"].astype(str)
    if with_seed:
        seeds = first["seed"].astype(object).where(first["seed"].notna(), "-").astype(str)
        names = names + " (seed " + seeds + ")"
    if names.is_unique:
        return pd.Series(pd.Categorical.from_codes(ids, categories=names.to_numpy()), index=frame.index)
    return pd.Series(names.to_numpy(dtype=object)[ids], index=frame.index)


def _unique_in_order(values: pd.Series) -> list[str]:
    return [str(v) for v in pd.unique(values.astype(str))]


def _palette(models: list[str], baseline_models: set[str]) -> dict[str, object]:
    """Return a colour per model: greys for the baseline's (darkest first), tab10 for the others."""
    cmap = plt.get_cmap("tab10")
    others = [m for m in models if m not in baseline_models]
    greys = [BASELINE_COLOR, "0.55", "0.72", "0.82"]
    ordered = [m for m in models if m in baseline_models]
    colors: dict[str, object] = {m: greys[min(i, len(greys) - 1)] for i, m in enumerate(ordered)}
    colors.update({m: cmap(i % 10) for i, m in enumerate(others)})
    return colors


# --------------------------------------------------------------------------- forest plot


@_cached
def plot_forest(comparison: pd.DataFrame, out_stem: Path, *, title: str = "") -> list[Path]:
    """Return [png, pdf] of a forest plot: delta AUC with CI per label (mean last), one marker per model.

    Filled markers are significant after correction, open ones are not; full-data rows only.
    """
    require_columns(comparison, COMPARISON_COLUMNS, name="comparison")
    data = _largest_fraction(comparison)
    if data.empty:
        raise CxrbenchError("comparison has no rows to plot")
    data = data.assign(_model=_model_names(data), _label=data["label"].astype(str))
    labels = [lab for lab in _unique_in_order(data["_label"]) if lab != MEAN_LABEL]
    if (data["_label"] == MEAN_LABEL).any():
        labels.append(MEAN_LABEL)
    models = _unique_in_order(data["_model"])
    n_lab, n_mod = len(labels), len(models)
    step = 0.8 / max(n_mod, 1)
    offsets = (np.arange(n_mod) - (n_mod - 1) / 2) * step
    colors = plt.get_cmap("tab10")

    with _figure((7.0, 0.9 + 0.28 * n_lab * max(n_mod, 2))) as (fig, ax):
        for j, model in enumerate(models):
            sub = data[data["_model"] == model]
            color = colors(j % 10)
            for _, row in sub.iterrows():
                y = n_lab - 1 - labels.index(row["_label"]) + offsets[j]
                delta, low, high = (float(row[c]) for c in ("delta", "delta_ci_low", "delta_ci_high"))
                sig = bool(row["significant"]) if pd.notna(row["significant"]) else False
                if np.isfinite(low) and np.isfinite(high):
                    ax.plot([low, high], [y, y], color=color, lw=1.4, solid_capstyle="butt")
                ax.plot(
                    [delta],
                    [y],
                    marker="D" if row["_label"] == MEAN_LABEL else "o",
                    ms=6,
                    color=color,
                    mfc=color if sig else "white",
                    mew=1.4,
                    ls="none",
                )
        ax.axvline(0.0, color="0.3", lw=0.9, ls="--")
        if MEAN_LABEL in labels and n_lab > 1:
            ax.axhline(0.5, color="0.75", lw=0.8)
        ax.set_yticks(range(n_lab))
        ax.set_yticklabels([("mean (macro)" if lab == MEAN_LABEL else lab) for lab in reversed(labels)])
        ax.set_ylim(-0.6, n_lab - 0.4)
        ax.set_xlabel("Δ AUC vs baseline (CI); filled = significant after correction")
        ax.grid(axis="x", color="0.9")
        ax.set_axisbelow(True)
        if title:
            ax.set_title(title)
        handles = [
            Line2D([], [], color=colors(j % 10), marker="o", mfc=colors(j % 10), lw=1.4, label=m)
            for j, m in enumerate(models)
        ]
        ax.legend(
            handles=handles,
            loc="upper left",
            bbox_to_anchor=(1.01, 1.0),
            frameon=False,
            fontsize=8,
            title="open marker: not significant",
            title_fontsize=7,
        )
        return _save(fig, out_stem)


# --------------------------------------------------------------------------- ROC curves


@_cached
def plot_roc(
    preds: pd.DataFrame,
    *,
    label: str,
    out_stem: Path,
    n_boot: int = 200,
    seed: int = 0,
    baseline: str | None = None,
) -> list[Path]:
    """Return [png, pdf] of test-set ROC curves for ``label``, one per model, with bootstrap bands.

    Bands are pointwise percentile intervals of TPR over the same resamples for every model
    (whole patients when ``patient_id`` is present); the legend gives AUC with its CI. The
    ``baseline`` encoder, when named, is drawn in dark grey.
    """
    require_columns(preds, PREDS_COLUMNS, name="preds")
    data = preds[(_text(preds["label"]) == str(label)).to_numpy()]
    if "split" in data.columns and (is_test := (_text(data["split"]) == "test").to_numpy()).any():
        data = data[is_test]
    data = _largest_fraction(data[data["y_true"].notna()])
    if data.empty:
        raise CxrbenchError(f"preds has no test rows with a known y_true for label {label!r}")
    data = data.assign(_model=_model_names(data))

    codes, uniques = pd.factorize(data["_model"])  # models in order of appearance
    models = [str(m) for m in uniques]
    colors = _palette(models, set(data.loc[(_text(data["encoder"]) == baseline).to_numpy(), "_model"]))
    # rows of each model, by sample_id when there is one (the same resample weights then mean the
    # same images for every model)
    keys = [codes]
    if "sample_id" in data.columns:
        sample = pd.factorize(_lexical(data["sample_id"]), sort=True)[0]
        keys.insert(0, np.where(sample < 0, sample.max() + 1, sample))  # missing ids last
    order = np.lexsort(keys)
    bounds = np.searchsorted(codes[order], np.arange(len(models) + 1))
    y_all, s_all = data["y_true"].to_numpy(dtype=float), data["y_score"].to_numpy(dtype=float)
    patients, known = None, None
    if "patient_id" in data.columns:
        known = data["patient_id"].notna().to_numpy()
        patients = _text(data["patient_id"]).to_numpy(dtype=object)
    bands = {}
    for m, model in enumerate(models):
        rows = order[bounds[m] : bounds[m + 1]]
        groups = None  # whole patients when every row of the model has one
        if patients is not None and known[rows].all():
            groups = patients[rows]
        try:
            band = roc_band(
                y_all[rows],
                s_all[rows],
                groups=groups,
                n_boot=n_boot,
                seed=seed,
            )
        except CxrbenchError as err:
            raise CxrbenchError(f"ROC for {model}, label {label!r}: {err.message}") from None
        bands[model] = band

    with _figure((5.6, 5.2)) as (fig, ax):
        for model, band in bands.items():
            color = colors[model]
            auc_text = fmt_ci(band["auc"], band["auc_low"], band["auc_high"])
            ax.fill_between(band["grid"], band["low"], band["high"], color=color, alpha=0.18, lw=0)
            ax.plot(*_corners(band["fpr"], band["tpr"]), color=color, lw=1.6, label=f"{model}: {auc_text}")
        ax.plot([0, 1], [0, 1], color="0.6", lw=0.8, ls=":")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.01)
        ax.set_aspect("equal")
        ax.set_xlabel("False positive rate (1 - specificity)")
        ax.set_ylabel("True positive rate (sensitivity)")
        ax.set_title(f"ROC: {label}")
        ax.legend(loc="lower right", fontsize=7.5, title="AUC [CI]", title_fontsize=8)
        return _save(fig, out_stem)


# --------------------------------------------------------------------------- label efficiency


@_cached
def plot_label_efficiency(
    metrics: pd.DataFrame,
    *,
    dataset: str,
    out_stem: Path,
    metric: str = "auc",
    baseline: str | None = None,
) -> list[Path]:
    """Return [png, pdf] of mean AUC vs label fraction per model with CI bands; [] if one fraction.

    With several seeds per fraction the line is the seed average, the band the average of the
    seeds' bootstrap CIs, and each seed is drawn as a small dot. Missing fraction = 1 (all labels).
    The ``baseline`` encoder, when named, is drawn in dark grey.
    """
    require_columns(metrics, METRICS_COLUMNS, name="metrics")
    data = metrics[
        (metrics["dataset"].astype(str) == str(dataset))
        & (metrics["metric"].astype(str) == metric)
        & (metrics["label"].astype(str) == MEAN_LABEL)
    ]
    if data.empty:
        raise CxrbenchError(f"metrics has no {metric!r} rows for label 'mean' of dataset {dataset!r}")
    data = data.assign(_fraction=_full_fraction(data["fraction"]))
    if data["_fraction"].nunique() < 2:
        return []
    data = data.assign(_model=data["encoder"].astype(str) + " / " + data["adaptation"].astype(str))

    models = _unique_in_order(data["_model"])
    colors = _palette(models, set(data.loc[data["encoder"].astype(str) == baseline, "_model"]))
    with _figure((6.4, 4.4)) as (fig, ax):
        for model in models:
            sub = data[data["_model"] == model]
            agg = sub.groupby("_fraction")[["value", "ci_low", "ci_high"]].mean().sort_index().reset_index()
            color = colors[model]
            ax.fill_between(agg["_fraction"], agg["ci_low"], agg["ci_high"], color=color, alpha=0.18, lw=0)
            ax.plot(agg["_fraction"], agg["value"], color=color, marker="o", ms=4, lw=1.6, label=model)
            if sub.groupby("_fraction").size().max() > 1:
                ax.plot(
                    sub["_fraction"],
                    sub["value"],
                    color=color,
                    marker=".",
                    ms=3,
                    ls="none",
                    alpha=0.6,
                )
        fractions = np.sort(data["_fraction"].unique())
        if fractions[0] > 0 and fractions[-1] / fractions[0] >= 10:
            ax.set_xscale("log")
        ax.set_xticks(fractions)
        ax.set_xticklabels([f"{f:g}" for f in fractions])
        ax.minorticks_off()
        ax.set_xlabel("Fraction of training labels")
        ax.set_ylabel(f"Mean {metric.upper()} (CI band)")
        ax.set_title(f"Label efficiency: {dataset}")
        ax.grid(color="0.92")
        ax.legend(loc="lower right", fontsize=8, frameon=False)
        return _save(fig, out_stem)


# --------------------------------------------------------------------------- training loss


#: columns of a per-step training log that are not loss terms
_LOG_COLUMNS = ("step", "epoch", "lr", "images_per_s")


def plot_training_loss(log: pd.DataFrame, out_stem: Path, *, title: str = "") -> list[Path]:
    """Return [png, pdf] of the loss at every optimizer step of a per-step training log (``StepLog``),
    one point per row, with the method's other logged terms as thinner lines and epoch starts marked."""
    require_columns(log, ("step", "epoch", "loss"), name="training log")
    terms = [c for c in log.columns if c not in _LOG_COLUMNS and c != "loss"]
    with _figure((6.4, 4.0)) as (fig, ax):
        ax.plot(log["step"], log["loss"], color="C0", marker=".", ms=3, lw=1.4, label="loss")
        for i, term in enumerate(terms, start=1):
            ax.plot(log["step"], log[term], color=f"C{i % 10}", lw=0.9, alpha=0.8, label=term)
        starts = log.loc[log["epoch"].diff().fillna(0) != 0, "step"]
        for step in starts:
            ax.axvline(step, color="0.85", lw=0.8, zorder=0)
        ax.set_xlabel("Optimizer step (grey lines: epoch starts)")
        ax.set_ylabel("Training loss")
        ax.set_title(title or "Training loss per step")
        ax.grid(color="0.92")
        if terms:
            ax.legend(loc="upper right", fontsize=8, frameon=False)
        return _save(fig, out_stem)
