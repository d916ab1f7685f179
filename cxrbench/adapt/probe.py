"""Linear probe: L2 logistic regression on frozen features, every label and every C of the grid
fitted at once by the batched L-BFGS of ``cxrbench.adapt.lbfgs``, C chosen per label on validation AUC.

Objective per label and C, as scikit-learn's ``LogisticRegression(solver="lbfgs")``:
``C * sum(log-loss) + 0.5 * ||w||^2`` with an unpenalised intercept, on features standardised
with the training mean and (population) standard deviation.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from cxrbench.adapt.lbfgs import fit_logistic, matmul
from cxrbench.errors import CxrbenchError
from cxrbench.stats.auc import label_aucs

_TASKS = ("multilabel", "multiclass")
_DTYPES = {"float32": torch.float32, "float64": torch.float64}


class LinearProbe:
    """L2 logistic regression per label (``multilabel``) or one softmax model (``multiclass``),
    with C chosen on validation AUC; scikit-learn-like: ``LinearProbe(...).fit(...)`` returns the
    fitted probe.

    Y matrices are float [N, L] with NaN = unknown (left out of that label's loss and AUC);
    for ``multiclass`` they are one-hot, rows with a NaN are left out, and one C is chosen for
    the softmax model on the mean one-vs-rest validation AUC. Ties pick the smaller C.
    A label with a single class in train gets a constant score (zero weights, intercept at its
    log-odds) and C = NaN, with a warning; a label with a single class in val gets the C of the
    grid closest to 1 (log scale), with a warning. ``dtype`` sets the precision of the feature
    matrix products (the optimiser state is float64); ``device`` defaults to CUDA when present.
    Each problem stops as scikit-learn's does: when its largest gradient entry divided by
    C times its number of samples is below ``tol`` (scikit-learn's default 1e-4), or after
    ``max_iter`` iterations.

    Fitted attributes: ``weight_`` [D, L] and ``bias_`` [L] on standardised features (CPU
    tensors in ``dtype``), the standardisation ``mean_`` and ``std_`` [D], the chosen ``C_`` [L]
    (NaN where a label fell back to a constant), the validation AUC of every C ``val_auc_``
    [len(Cs), L] and the L-BFGS iterations ``n_iter_`` [len(Cs), L].
    """

    def __init__(
        self,
        *,
        Cs: Sequence[float] = (1e-3, 1e-2, 1e-1, 1.0, 10.0),
        max_iter: int = 200,
        task: Literal["multilabel", "multiclass"] = "multilabel",
        device: str | None = None,
        dtype: Literal["float32", "float64"] = "float32",
        tol: float = 1e-4,
    ) -> None:
        self.Cs, self.max_iter, self.task = Cs, max_iter, task
        self.device, self.dtype, self.tol = device, dtype, tol

    def fit(self, X_train: np.ndarray, Y_train: np.ndarray, X_val: np.ndarray, Y_val: np.ndarray) -> LinearProbe:
        """Fit on (X_train, Y_train), choose C per label on (X_val, Y_val); return self."""
        task, max_iter, tol = self.task, self.max_iter, self.tol
        X_train, Y_train, X_val, Y_val, Cs = _check_inputs(
            X_train, Y_train, X_val, Y_val, task, self.Cs, max_iter, self.dtype
        )
        if not (isinstance(tol, float) and tol > 0):
            raise CxrbenchError(f"tol must be a positive float, got {tol!r}")
        dev = torch.device(self.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        fdtype = _DTYPES[self.dtype]
        softmax = task == "multiclass"
        D = X_train.shape[1]
        L = Y_train.shape[1]
        nC = len(Cs)

        XT, scaler = _standardise(X_train, dev, fdtype)
        Yt = torch.as_tensor(Y_train, device=dev, dtype=torch.float64)
        if softmax:
            keep = torch.as_tensor(_multiclass_rows(Y_train, "train"), device=dev).double()
            Yt = torch.nan_to_num(Yt, nan=0.0) * keep[:, None]
            present = Yt.sum(0) > 0
            if int(present.sum()) < 2:
                raise CxrbenchError("multiclass training labels hold fewer than 2 classes")
            if not bool(present.all()):
                warnings.warn(
                    f"{int((~present).sum())} class(es) never occur in training; their scores will be low but defined",
                    stacklevel=2,
                )
            # problem k = c: one softmax model [G = L classes] per C
            Yk = Yt.T[None].expand(nC, -1, -1)
            Mk = keep[None, None].expand(nC, 1, -1)
            C = torch.tensor(Cs, dtype=torch.float64, device=dev)
            runs = None
        else:
            known = ~torch.isnan(Yt)
            Mt = known.double()
            Yt = torch.nan_to_num(Yt, nan=0.0)
            n_pos, n_known = (Yt * Mt).sum(0), Mt.sum(0)
            fits = (n_pos > 0) & (n_pos < n_known)
            # problem k = c * L + l, one sigmoid model each
            Yk = Yt.T.repeat(nC, 1)[:, None, :]
            Mk = Mt.T.repeat(nC, 1)[:, None, :]
            C = torch.tensor(Cs, dtype=torch.float64, device=dev).repeat_interleave(L)
            runs = fits.repeat(nC)
        theta, iters = fit_logistic(XT, Yk, Mk, C, softmax=softmax, runs=runs, max_iter=max_iter, tol=tol)
        del XT
        K, G = theta.shape[:2]
        theta = theta.permute(2, 0, 1)  # [D + 1, K, G]

        W = theta[:D].reshape(D, K * G)
        b = theta[D].reshape(K * G)
        Zv = (matmul(scaler.rows(X_val), W.to(fdtype)).double() + b).cpu().numpy().reshape(-1, K, G)
        if softmax:
            keep_v = _multiclass_rows(Y_val, "val")
            val_auc = np.empty((nC, L))
            for c in range(nC):
                val_auc[c] = label_aucs(Y_val[keep_v], _softmax(Zv[keep_v, c]))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows stay NaN
                score = np.nanmean(val_auc, axis=1)
            best = _pick(score, Cs, "the multiclass model")
            chosen_C = np.full(L, Cs[best])
            weight, bias = theta[:D, best, :], theta[D, best, :]
        else:
            val_auc = np.stack([label_aucs(Y_val, Zv[:, c * L : (c + 1) * L, 0]) for c in range(nC)])
            chosen_C = np.empty(L)
            cols = []
            for j in range(L):
                best = _pick(val_auc[:, j], Cs, f"label {j}")
                chosen_C[j] = Cs[best]
                cols.append(best * L + j)
            idx = torch.as_tensor(cols, device=dev)
            weight, bias = theta[:D, idx, 0].clone(), theta[D, idx, 0].clone()
            for j in np.flatnonzero(~fits.cpu().numpy()):
                pos, tot = float(n_pos[j]), float(n_known[j])
                warnings.warn(
                    f"label {j} has a single class in training ({int(pos)} positive of {int(tot)}); "
                    "it gets a constant score",
                    stacklevel=2,
                )
                weight[:, j] = 0.0
                bias[j] = math.log((pos + 0.5) / (tot - pos + 0.5))
                chosen_C[j] = np.nan
        out = torch.float32 if fdtype == torch.float32 else torch.float64
        self.weight_, self.bias_ = weight.to(out).cpu(), bias.to(out).cpu()
        self.mean_, self.std_ = scaler.mean.to(out).cpu(), scaler.std.to(out).cpu()
        self.C_ = chosen_C
        self.val_auc_ = val_auc
        self.n_iter_ = np.broadcast_to(iters.cpu().numpy().reshape(nC, -1), (nC, L)).copy()
        return self

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """Return the logits [N, L] of features X [N, D]."""
        if not hasattr(self, "weight_"):
            raise CxrbenchError("this LinearProbe is not fitted yet: call .fit first")
        X = _as_matrix(X, "X", self.mean_.shape[0])
        w, b = self.weight_.double().numpy(), self.bias_.double().numpy()
        mean, std = self.mean_.double().numpy(), self.std_.double().numpy()
        return ((X - mean) / std) @ w + b

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Return probabilities [N, L]: per-label sigmoid, or softmax rows for multiclass."""
        z = self.decision_function(X)
        if self.task == "multiclass":
            return _softmax(z)
        return 1.0 / (1.0 + np.exp(-z))


def fit_probe(
    X_train: np.ndarray,
    Y_train: np.ndarray,
    X_val: np.ndarray,
    Y_val: np.ndarray,
    *,
    task: Literal["multilabel", "multiclass"] = "multilabel",
    Cs: Sequence[float] = (1e-3, 1e-2, 1e-1, 1.0, 10.0),
    max_iter: int = 200,
    device: str | None = None,
    dtype: Literal["float32", "float64"] = "float32",
    tol: float = 1e-4,
) -> LinearProbe:
    """Return ``LinearProbe(...).fit(X_train, Y_train, X_val, Y_val)`` (see ``LinearProbe``)."""
    probe = LinearProbe(Cs=Cs, max_iter=max_iter, task=task, device=device, dtype=dtype, tol=tol)
    return probe.fit(X_train, Y_train, X_val, Y_val)


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _as_matrix(X, name: str, width: int | None = None) -> np.ndarray:
    X = np.asarray(X)
    if X.ndim != 2:
        raise CxrbenchError(f"{name} must be a 2-D array [N, D], got shape {X.shape}")
    if width is not None and X.shape[1] != width:
        raise CxrbenchError(f"{name} must have {width} columns, got {X.shape[1]}")
    return X


def _check_inputs(X_train, Y_train, X_val, Y_val, task, Cs, max_iter, dtype):
    if task not in _TASKS:
        raise CxrbenchError(f"task must be one of {', '.join(_TASKS)}, got {task!r}")
    if dtype not in _DTYPES:
        raise CxrbenchError(f"dtype must be one of {', '.join(_DTYPES)}, got {dtype!r}")
    Cs = tuple(float(c) for c in Cs)
    if not Cs or not all(math.isfinite(c) and c > 0 for c in Cs):
        raise CxrbenchError(f"Cs must be a non-empty sequence of positive numbers, got {Cs!r}")
    if not isinstance(max_iter, int) or max_iter < 1:
        raise CxrbenchError(f"max_iter must be a positive integer, got {max_iter!r}")
    X_train = _as_matrix(X_train, "X_train")
    X_val = _as_matrix(X_val, "X_val", X_train.shape[1])
    Y_train = _as_matrix(np.asarray(Y_train, dtype=np.float64), "Y_train")
    Y_val = _as_matrix(np.asarray(Y_val, dtype=np.float64), "Y_val", Y_train.shape[1])
    for X, Y, split in ((X_train, Y_train, "train"), (X_val, Y_val, "val")):
        if X.shape[0] != Y.shape[0]:
            raise CxrbenchError(f"X_{split} has {X.shape[0]} rows but Y_{split} has {Y.shape[0]}")
        if split == "val" and not np.isfinite(X).all():  # train: checked by _standardise
            raise CxrbenchError(f"X_{split} contains NaN or infinite features")
        known = Y[~np.isnan(Y)]
        if not np.isin(known, (0.0, 1.0)).all():
            raise CxrbenchError(f"Y_{split} must hold 0, 1 or NaN (unknown)")
    if task == "multiclass" and Y_train.shape[1] < 2:
        raise CxrbenchError("multiclass needs Y as one-hot with at least 2 columns")
    return X_train, Y_train, X_val, Y_val, Cs


def _multiclass_rows(Y: np.ndarray, split: str) -> np.ndarray:
    """Return the rows of a one-hot Y that are fully known; each must have exactly one 1."""
    keep = ~np.isnan(Y).any(axis=1)
    if not (Y[keep].sum(axis=1) == 1).all():
        raise CxrbenchError(f"multiclass Y_{split} rows must be one-hot (exactly one 1 per row)")
    return keep


@dataclass(frozen=True)
class _Scaler:
    """The training features' column mean and population std (float64; a constant column gets
    std 1), and the one way rows are standardised with them: from X minus the first training
    row, which is exact in the working dtype, so a large mean costs no precision."""

    mean: torch.Tensor
    std: torch.Tensor
    shift: torch.Tensor  # the first training row, in the working dtype
    centre: torch.Tensor  # mean - shift, in the working dtype

    def rows(self, X: np.ndarray) -> torch.Tensor:
        """Return the standardised rows of X, [n, D] in the working dtype on the fit's device."""
        c = torch.as_tensor(X, device=self.shift.device).to(self.shift.dtype)
        return ((c - self.shift) - self.centre) / self.std.to(self.shift.dtype)


def _standardise(
    X: np.ndarray, dev: torch.device, dtype: torch.dtype, chunk: int = 256
) -> tuple[torch.Tensor, _Scaler]:
    """Return the standardised features transposed, XT [D, N] in ``dtype``, and their scaler.

    Two passes over X in small row blocks (cache-sized, which makes the transposed write
    cheap): the moments, then the standardised copy. Both work on X minus its first row, so a
    constant column has a variance of exactly 0; block sums are added up in float64.
    """
    N, D = X.shape
    shift = torch.as_tensor(X[0], device=dev).to(dtype)
    s1 = torch.zeros(D, dtype=torch.float64, device=dev)
    s2 = torch.zeros_like(s1)
    for start in range(0, N, 4 * chunk):
        c = torch.as_tensor(X[start : start + 4 * chunk], device=dev).to(dtype) - shift
        s1 += c.sum(0)
        s2 += (c * c).sum(0)
    if not bool(torch.isfinite(s1).all() and torch.isfinite(s2).all()):
        raise CxrbenchError("X_train contains NaN or infinite features (or values too large to square)")
    mean_shifted = s1 / N
    std = (s2 / N - mean_shifted.pow(2)).clamp_min(0.0).sqrt()
    std = torch.where(std > 1e-12 * mean_shifted.abs().clamp_min(1.0), std, torch.ones_like(std))
    scaler = _Scaler(mean=shift.double() + mean_shifted, std=std, shift=shift, centre=mean_shifted.to(dtype))
    XT = torch.empty(D, N, dtype=dtype, device=dev)
    for start in range(0, N, chunk):
        XT[:, start : start + chunk] = scaler.rows(X[start : start + chunk]).T
    return XT, scaler


def _pick(scores: np.ndarray, Cs: tuple[float, ...], what: str) -> int:
    """Return the index of the best validation AUC (smallest C on ties)."""
    if np.isnan(scores).all():
        fallback = int(np.argmin([abs(math.log10(c)) for c in Cs]))
        warnings.warn(
            f"validation AUC undefined for {what} (one class in val); using C={Cs[fallback]}",
            stacklevel=3,
        )
        return fallback
    best = max(range(len(Cs)), key=lambda i: (np.nan_to_num(scores[i], nan=-np.inf), -Cs[i]))
    return int(best)
