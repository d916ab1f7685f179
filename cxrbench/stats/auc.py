"""Exact ROC AUC and average precision, for one score vector or for many bootstrap replicates at once.

Replicates are integer weights (multinomial counts) over the samples; after one sort per score vector,
every replicate reduces to grouped sums of its weights, so ties are handled exactly and the result
equals scikit-learn on the same resample.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

from cxrbench.errors import CxrbenchError

__all__ = [
    "roc_auc",
    "auc_or_nan",
    "label_aucs",
    "mean_auc",
    "average_precision",
    "macro_auc_ovr",
    "ScoreLayout",
    "replicate_metrics",
]


def _check_binary(y_true: Any, y_score: Any, *, name: str = "y_score") -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true, dtype=float).ravel()
    s = np.asarray(y_score, dtype=float).ravel()
    if y.shape != s.shape:
        raise CxrbenchError(f"y_true has {y.size} values but {name} has {s.size}")
    if y.size == 0:
        raise CxrbenchError("y_true is empty: no samples to score")
    if not np.isin(y, (0.0, 1.0)).all():
        raise CxrbenchError("y_true must hold only 0 and 1 (unknown labels must be dropped first)")
    if not np.isfinite(s).all():
        raise CxrbenchError(f"{name} holds {int((~np.isfinite(s)).sum())} NaN or infinite values")
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.size:
        only = "positives" if n_pos else "negatives"
        raise CxrbenchError(f"AUC is undefined: y_true has only {only} ({y.size} samples)")
    return y.astype(bool), s


def roc_auc(y_true: Any, y_score: Any) -> float:
    """Return the exact ROC AUC (Mann-Whitney U / (n_pos * n_neg), ties counted one half)."""
    from scipy.stats import rankdata  # lazy: scipy.stats takes ~1 s to import

    y, s = _check_binary(y_true, y_score)
    ranks = rankdata(s, method="average")
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def auc_or_nan(y_true: Any, y_score: Any) -> float:
    """Return the exact ROC AUC, or NaN when ``y_true`` is empty or holds a single class."""
    y = np.asarray(y_true, dtype=float).ravel()
    if y.size == 0 or y.min() == y.max():
        return float("nan")
    return roc_auc(y, y_score)


def label_aucs(Y: Any, S: Any) -> np.ndarray:
    """Return the AUC of each label column of scores S [N, L] against targets Y [N, L] (NaN =
    unknown, left out): [L], NaN where a column's known targets hold a single class."""
    Y, S = np.asarray(Y, dtype=float), np.asarray(S, dtype=float)
    if Y.ndim != 2 or Y.shape != S.shape:
        raise CxrbenchError(f"targets and scores must be 2-D arrays of one shape; got {Y.shape} and {S.shape}")
    out = np.empty(Y.shape[1])
    for j in range(Y.shape[1]):
        known = ~np.isnan(Y[:, j])
        out[j] = auc_or_nan(Y[known, j], S[known, j])
    return out


def mean_auc(Y: Any, S: Any) -> float:
    """Return the mean of ``label_aucs(Y, S)`` over the labels where it is defined; NaN if none is."""
    aucs = label_aucs(Y, S)
    aucs = aucs[~np.isnan(aucs)]
    return float(aucs.mean()) if aucs.size else float("nan")


def average_precision(y_true: Any, y_score: Any) -> float:
    """Return average precision: sum over score thresholds of (recall step) x precision."""
    y, s = _check_binary(y_true, y_score)
    layout = ScoreLayout(y, s)
    return float(replicate_metrics(layout, np.ones((y.size, 1)))["auprc"][0])


def macro_auc_ovr(y_true: Any, y_score: Any) -> float:
    """Return the one-vs-rest macro AUC of a multiclass problem (mean of per-class binary AUCs).

    ``y_true`` holds class indices 0..k-1, ``y_score`` is (n, k) with one column per class.
    """
    y = np.asarray(y_true).ravel()
    s = np.asarray(y_score, dtype=float)
    if s.ndim != 2 or s.shape[0] != y.size:
        raise CxrbenchError(f"y_score must be (n_samples, n_classes) = ({y.size}, k); got {s.shape}")
    k = s.shape[1]
    if k < 2:
        raise CxrbenchError(f"macro_auc_ovr needs at least 2 classes in y_score; got {k}")
    if not np.isin(y, np.arange(k)).all():
        raise CxrbenchError(f"y_true must hold class indices 0..{k - 1}")
    return float(np.mean([roc_auc(y == c, s[:, c]) for c in range(k)]))


class ScoreLayout:
    """One sort of one score vector: which group row each sample's weight is added to.

    Rows ``0..U-1`` hold positive weight per distinct positive score (ascending); rows
    ``U..2U`` hold negative weight in the gaps [below the first positive score, between first
    and second, ..., above the last]; rows ``2U+1..3U`` hold negative weight tied with each
    positive score; the last row holds the negative weight at or above ``threshold`` in the one
    gap that ``threshold`` falls in (the rest of the negative weight at or above it is whole gap
    and tie rows). Each block is contiguous so the reduction reads slices.
    """

    def __init__(
        self,
        y_true: np.ndarray,
        y_score: np.ndarray,
        *,
        cols: np.ndarray | None = None,
        threshold: float = np.inf,
    ) -> None:
        y = np.asarray(y_true, dtype=bool)
        s = np.asarray(y_score, dtype=float)
        pos_values = np.unique(s[y])
        u = pos_values.size
        rows = np.empty(y.size, dtype=np.int64)
        rows[y] = np.searchsorted(pos_values, s[y])
        neg = s[~y]
        k = np.searchsorted(pos_values, neg, side="left")
        tied = (k < u) & (pos_values[np.minimum(k, max(u - 1, 0))] == neg) if u else np.zeros(neg.size, bool)
        rows[~y] = np.where(tied, 2 * u + 1 + k, u + k)
        self.rows = rows  # group row of each sample
        self.cols = np.arange(y.size) if cols is None else np.asarray(cols, dtype=np.int64)
        self.n_groups = int(u)  # distinct positive scores
        self.threshold_at = int(np.searchsorted(pos_values, threshold, side="left"))
        # negatives of the threshold's gap (between the positive scores around it) at or above it
        self._thr_cols = self.cols[~y][(k == self.threshold_at) & ~tied & (neg >= threshold)]
        self._cache: dict[Any, Any] = {}

    @property
    def n_rows(self) -> int:
        return 3 * self.n_groups + 2

    def matrix(self, n_total: int, dtype: Any = np.float32) -> sp.csr_matrix:
        """Return the sparse (n_rows, n_total) indicator that sums weights into group rows."""
        key = ("csr", n_total, np.dtype(dtype).str)
        if key not in self._cache:
            self._cache[key] = self._matrix(n_total, dtype)
        return self._cache[key]

    def _matrix(self, n_total: int, dtype: Any) -> sp.csr_matrix:
        thr_cols = self._thr_cols
        r = np.concatenate([self.rows, np.full(thr_cols.size, self.n_rows - 1)])
        c = np.concatenate([self.cols, thr_cols])
        return sp.csr_matrix((np.ones(r.size, dtype), (r, c)), shape=(self.n_rows, n_total))

    def torch_index(self, device: Any) -> tuple[Any, Any]:
        """Return (rows, cols) as torch index tensors on ``device``, threshold row included."""
        import torch

        key = ("torch", str(device))
        if key in self._cache:
            return self._cache[key]
        thr_cols = self._thr_cols
        r = np.concatenate([self.rows, np.full(thr_cols.size, self.n_rows - 1)])
        c = np.concatenate([self.cols, thr_cols])
        self._cache[key] = (torch.as_tensor(r, device=device), torch.as_tensor(c, device=device))
        return self._cache[key]


def _rowdot(a: Any, b: Any, xp: Any) -> Any:
    """Return the float64 dot product of matching rows of two (B, m) arrays."""
    if xp is np:
        return np.einsum("ij,ij->i", a, b, dtype=np.float64)
    return xp.einsum("ij,ij->i", a.double(), b.double())


def _reduce(grouped: Any, layout: ScoreLayout, xp: Any) -> dict[str, Any]:
    """Turn grouped weights (B, n_rows) into per-replicate metrics; works for numpy and torch.

    Sums of weights stay in the dtype of ``grouped`` (float32 is exact for integer weights
    totalling under 2**23, as bootstrap counts do); products and ratios are taken in float64.
    """
    u = layout.n_groups
    pp = grouped[:, :u]
    gaps = grouped[:, u : 2 * u + 1]
    tied = grouped[:, 2 * u + 1 : 3 * u + 1]
    thr = grouped[:, 3 * u + 1]
    below = gaps[:, :u] + 0  # becomes negative weight strictly below each positive score
    below[:, 1:] += tied[:, : u - 1]
    below = xp.cumsum(below, 1, out=below) if xp is np else xp.cumsum(below, 1)
    wp = pp.sum(1, keepdims=True)
    wn = gaps.sum(1, keepdims=True) + tied.sum(1, keepdims=True)
    at = layout.threshold_at  # negative weight strictly below the threshold's gap, before below changes
    below_thr = below[:, at] + 0 if at < u else None  # a copy: below is overwritten below
    x = tied * 0.5
    x += below
    num = _rowdot(pp, x, xp)
    del x
    # positive weight at or above each positive score (a cumulative sum from the top), then all
    # weight at or above it (at least 1); whole numbers, so exact in any order
    if xp is np:
        tp_u = np.cumsum(pp[:, ::-1], 1)[:, ::-1]
        fp_u = np.subtract(wn, below, out=below)
        fp_u += tp_u
        np.maximum(fp_u, 1, out=fp_u)
        ratio = np.divide(tp_u, fp_u, dtype=np.float64)
    else:
        tp_u = xp.flip(xp.cumsum(xp.flip(pp, [1]), 1), [1])
        fp_u = (wn - below + tp_u).clamp_(min=1)
        ratio = tp_u / fp_u
    ap_num = _rowdot(pp, ratio, xp)
    wp, wn = (
        wp[:, 0].double() if xp is not np else wp[:, 0].astype(np.float64),
        (wn[:, 0].double() if xp is not np else wn[:, 0].astype(np.float64)),
    )
    denom = wp * wn
    valid = denom > 0
    ones = xp.ones_like(denom)
    auc = num / xp.where(valid, denom, ones)
    ap = ap_num / xp.where(wp > 0, wp, ones)
    thr = thr.double() if xp is not np else thr.astype(np.float64)
    fp_t = thr  # negative weight at or above the threshold: in its gap, then all gaps and ties above
    if below_thr is not None:
        fp_t = wn - (below_thr.double() if xp is not np else below_thr.astype(np.float64)) + thr
    tp_t = pp[:, layout.threshold_at :].sum(1)
    tp_t = tp_t.double() if xp is not np else tp_t.astype(np.float64)
    nan = xp.full_like(auc, float("nan"))
    return {
        "auc": xp.where(valid, auc, nan),
        "auprc": xp.where(valid, ap, nan),
        "n_pos": wp,
        "n_neg": wn,
        "tp": tp_t,
        "fp": fp_t,
    }


def transpose_contiguous(a: np.ndarray, step: int = 256) -> np.ndarray:
    """``np.ascontiguousarray(a.T)`` of a C-contiguous 2-D array, a band of rows at a time (cache-sized
    pieces: several times faster than numpy's copy of a tall transposed array)."""
    out = np.empty(a.shape[::-1], dtype=a.dtype)
    for r in range(0, a.shape[0], step):
        out[:, r : r + step] = a[r : r + step].T
    return out


def replicate_metrics(layout: ScoreLayout, weights: Any, *, device: Any = None) -> dict[str, np.ndarray]:
    """Return per-replicate ``auc``, ``auprc``, ``n_pos``, ``n_neg``, ``tp``, ``fp`` (arrays of length B).

    ``weights`` is (n_total, B): column b holds how often each sample appears in replicate b
    (all ones = the original sample). Replicates with no positive or no negative weight get NaN
    AUC/AUPRC. ``tp``/``fp`` count weight with score >= the layout's threshold. With ``device``
    (e.g. ``"cpu"``, ``"cuda"``) the sums run in torch on that device; ``weights`` may then be a
    torch tensor already there.
    """
    if device is None:
        w = np.asarray(weights)
        dtype = np.float32 if w.dtype == np.float32 else np.float64
        grouped = layout.matrix(w.shape[0], dtype) @ w.astype(dtype, copy=False)
        return _reduce(transpose_contiguous(grouped), layout, np)
    import torch

    w = torch.as_tensor(weights, device=device)
    rows, cols = layout.torch_index(w.device)
    grouped = torch.zeros((layout.n_rows, w.shape[1]), dtype=w.dtype, device=w.device)
    grouped.index_add_(0, rows, w.index_select(0, cols))
    out = _reduce(grouped.double().T.contiguous(), layout, torch)
    return {k: v.cpu().numpy() for k, v in out.items()}
