"""Linear probe: L2 logistic regression on frozen features, every label and every C of the grid
fitted at once by one batched L-BFGS in torch (CPU or GPU), C chosen per label on validation AUC.

Objective per label and C, as scikit-learn's ``LogisticRegression(solver="lbfgs")``:
``C * sum(log-loss) + 0.5 * ||w||^2`` with an unpenalised intercept, on features standardised
with the training mean and (population) standard deviation. The L-BFGS starts each iteration
from a preconditioner built on the features' correlation (``_Preconditioner``), which halves the
iterations on correlated CNN features; it stops by scikit-learn's rule, so the solutions agree.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from cxrbench.errors import CxrbenchError
from cxrbench.stats.auc import roc_auc

_TASKS = ("multilabel", "multiclass")
_DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass
class Probe:
    """A fitted probe: weights on standardised features, the standardisation, and the chosen C."""

    weight: torch.Tensor  # [D, L]
    bias: torch.Tensor  # [L]
    mean: torch.Tensor  # [D]
    std: torch.Tensor  # [D]
    C: np.ndarray  # [L]; NaN where a label fell back to a constant (one class in train)
    task: str
    val_auc: np.ndarray = field(default_factory=lambda: np.empty((0, 0)))  # [len(Cs), L]
    Cs: tuple[float, ...] = ()
    n_iter: np.ndarray = field(default_factory=lambda: np.empty((0, 0), dtype=int))  # [len(Cs), L]

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """Return the logits [N, L] of features X [N, D]."""
        X = _as_matrix(X, "X", self.mean.shape[0])
        w, b = self.weight.double().cpu().numpy(), self.bias.double().cpu().numpy()
        mean, std = self.mean.double().cpu().numpy(), self.std.double().cpu().numpy()
        return ((X - mean) / std) @ w + b

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Return probabilities [N, L]: per-label sigmoid, or softmax rows for multiclass."""
        z = self.decision_function(X)
        if self.task == "multiclass":
            z = z - z.max(axis=1, keepdims=True)
            e = np.exp(z)
            return e / e.sum(axis=1, keepdims=True)
        return 1.0 / (1.0 + np.exp(-z))


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


class _Objective:
    """Sum over K independent problems of C_k * sum(masked log-loss) + 0.5 * ||w_k||^2.

    Problem-major layout, so that a subset of problems is a block of rows: parameters are
    ``theta`` [K, G, D + 1] (last entry: intercept), targets and logits [K, G, N]. G = 1 for
    binary problems (sigmoid), G = number of classes for softmax problems. The features are
    held transposed, ``XT`` [D, N], the layout in which both products below are fastest. The
    loss depends on theta only through the logits z = w X^T + b, so a line search along d
    needs one product with X and then only elementwise work per trial step.
    """

    def __init__(self, XT, Y, M, C, softmax):
        self.XT, self.C, self.softmax = XT, C, softmax  # XT [D, N]; C [K]
        self.M = M  # [K, 1, N]: 1 where the row counts for the problem
        if softmax:
            self.Y = Y  # [K, G, N] one-hot
        else:
            self.sign = (1.0 - 2.0 * Y) * M  # loss = softplus(sign * z) where M = 1
            self.sign_C = self.sign * C[:, None, None]

    def logits(self, theta: torch.Tensor) -> torch.Tensor:
        """Return w X^T + b as [k, G, N] in theta's dtype (the product in X's dtype)."""
        D = self.XT.shape[0]
        k, G, _ = theta.shape
        w = theta[..., :D].reshape(k * G, D).to(self.XT.dtype)
        z = _matmul(w, self.XT, pad_rows=True).to(theta.dtype)
        return z.reshape(k, G, -1) + theta[..., D:]

    def loss(self, z: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
        """Return C * sum(masked log-loss) [k] at logits z [k, G, N] of problems ``rows``
        (None: all)."""
        C, M = _take(self.C, rows), _take(self.M, rows)[:, 0]
        if self.softmax:
            lse = torch.logsumexp(z, dim=1, keepdim=True)
            per = ((lse - z) * _take(self.Y, rows)).sum(1)
            return C * torch.linalg.vecdot(per, M)
        sp = torch.nn.functional.softplus(z[:, 0] * _take(self.sign, rows)[:, 0])
        return C * torch.linalg.vecdot(sp, M)

    def resid(self, z: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
        """Return dLoss/dz scaled by C, [k, G, N], at logits z of problems ``rows``."""
        if self.softmax:
            C = _take(self.C, rows)[:, None, None]
            p = torch.softmax(z, dim=1)
            return (p - _take(self.Y, rows)) * (_take(self.M, rows) * C)
        s = _take(self.sign, rows)
        # y=0: sigmoid(z); y=1: sigmoid(z) - 1
        return torch.sigmoid(z * s).mul_(_take(self.sign_C, rows))

    def grad(self, theta: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        """Return the gradient [k, G, D + 1] from the residuals ``r`` [k, G, N]."""
        D = self.XT.shape[0]
        k, G, _ = theta.shape
        grad = torch.empty_like(theta)
        kG = k * G
        rT = torch.zeros(r.shape[-1], kG + _pad16(kG), dtype=self.XT.dtype, device=self.XT.device)
        rT[:, :kG] = r.reshape(kG, -1).T
        rx = _matmul(self.XT, rT)[:, :kG].T  # [kG, D]
        grad[..., :D] = rx.to(theta.dtype).reshape(k, G, D) + theta[..., :D]
        grad[..., D] = r.sum(2)
        return grad


class _Preconditioner:
    """Initial inverse-Hessian guess for L-BFGS, one per problem and class.

    At the start, the Hessian of problem k is about ``I + a_k X^T X / n`` on the weights, with
    ``a_k = C_k n_k pi_k (1 - pi_k)`` (pi: prevalence), and ``a_k`` on the intercept. The Gram
    ``X^T X / n`` is estimated from a fixed row sample; its top ``rank`` eigenpairs (the
    ill-conditioned directions of correlated features) are kept and the rest of the spectrum
    is replaced by its mean, which keeps the guess well-conditioned even when the sample is
    small. A sample of at most ``4 rank`` rows (small training sets) gives all its eigenpairs
    exactly, through the rows' kernel matrix. L-BFGS then needs about half the iterations, to the same stopping rule. Softmax
    problems pass one ``a_bias`` for all classes, so that the intercepts keep summing to 0 (the
    direction in which their loss is flat), as in scikit-learn.
    """

    def __init__(self, sample: torch.Tensor, a: torch.Tensor, a_bias: torch.Tensor, *, rank: int = 256):
        m, D = sample.shape  # standardised rows
        if m <= 4 * rank:  # few rows: every nonzero eigenpair, exactly, from the m x m kernel
            lam, U = torch.linalg.eigh(_matmul(sample, sample.T.contiguous()).double() / m)
            keep = lam > 1e-10 * lam.max().clamp_min(1e-300)
            lam, U = lam[keep], U[:, keep]
            V = (sample.T.double() @ U) / (m * lam).sqrt()
            lam_rest = lam.new_zeros(())  # the rest is the sample's null space
        else:
            gram = _matmul(sample.T.contiguous(), sample).double() / m
            if D <= 2 * rank:
                lam, V = torch.linalg.eigh(gram)
                lam_rest = lam.new_zeros(())
            else:
                lam, V = _top_eigen(gram, rank)
                lam_rest = ((gram.diagonal().sum() - lam.sum()) / (D - rank)).clamp_min(0.0)
        lam = lam.clamp_min(0.0).to(a.dtype)
        self.V = V.to(a.dtype)  # [D, r]
        self.coef_rest = 1.0 / (a * lam_rest.to(a.dtype) + 1.0)  # [K, G]
        self.coef = 1.0 / (a[..., None] * lam + 1.0) - self.coef_rest[..., None]  # [K, G, r]
        self.inv_a = 1.0 / a_bias  # [K, G]: the intercept

    def __call__(self, x: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Return M x for x [k, G, D + 1] of problems ``rows`` (None: all)."""
        w = x[..., :-1]
        out = torch.empty_like(x)
        coef = _take(self.coef, rows)
        out[..., :-1] = _take(self.coef_rest, rows)[..., None] * w + ((w @ self.V) * coef) @ self.V.T
        out[..., -1] = x[..., -1] * _take(self.inv_a, rows)
        return out


def _sample_rows(X: np.ndarray, scaler: _Scaler, sample: int = 4096) -> torch.Tensor:
    """Return ``sample`` fixed random rows of the standardised X (all rows if fewer), [m, D]."""
    N = X.shape[0]
    idx = np.sort(np.random.default_rng(0).permutation(N)[: min(N, sample)])
    return scaler.rows(X[idx])


def _top_eigen(gram: torch.Tensor, rank: int, iters: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the top ``rank`` eigenvalues and eigenvectors of a symmetric PSD matrix by
    randomised subspace iteration (Halko, Martinsson and Tropp 2011, algorithm 4.4)."""
    gen = torch.Generator(device=gram.device).manual_seed(0)
    Q = torch.randn(gram.shape[0], rank, generator=gen, device=gram.device, dtype=gram.dtype)
    for _ in range(iters + 1):
        Q = torch.linalg.qr(gram @ Q).Q
    lam, U = torch.linalg.eigh(Q.T @ gram @ Q)
    return lam, Q @ U


@contextlib.contextmanager
def _blas_owns_the_cores(dev: torch.device) -> Iterator[None]:
    """On the CPU, run torch's own (small, elementwise) work on one thread while the products
    go through numpy's BLAS: torch's idle OpenMP workers spin and would take cores from it."""
    if dev.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _take(x: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
    return x if rows is None else x[rows]


def _matmul(a: torch.Tensor, b: torch.Tensor, *, pad_rows: bool = False) -> torch.Tensor:
    """Return a @ b. On the CPU through numpy's BLAS, which runs these thin products (16-64
    columns) 1.5-2x faster than torch's on the machines we measured; ``pad_rows`` pads a's
    rows to a multiple of 16, which the thin product likes."""
    k = a.shape[0]
    pad = _pad16(k) if pad_rows else 0
    if pad:
        a = torch.cat([a, a.new_zeros(pad, a.shape[1])])
    if a.device.type == "cpu":
        out = torch.from_numpy(np.matmul(a.numpy(), b.numpy()))
    else:
        out = a @ b
    return out[:k] if pad else out


def _pad16(k: int) -> int:
    """How many zero rows (columns) bring a thin product's k rows to a multiple of 16, which the
    BLAS kernels run markedly faster (measured: 14 -> 16 columns saves a quarter of the time)."""
    return -k % 16 if k >= 8 else 0


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vecdot(a.flatten(1), b.flatten(1))


def _lbfgs(
    fun: _Objective,
    theta: torch.Tensor,
    *,
    scale: torch.Tensor,
    max_iter: int,
    tol: float,
    precond: _Preconditioner,
    runs: torch.Tensor,
    history: int = 10,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimise K independent problems at once; each has its own L-BFGS memory and step.

    ``theta`` is [K, G, D + 1]; ``runs`` [K] says which problems to fit at all. Returns theta
    and the number of iterations each problem ran. A problem stops when its largest gradient
    entry, divided by ``scale`` (C_k times its number of samples, as in scikit-learn's
    normalised objective), falls below ``tol``, or when no step decreases it. The initial
    inverse Hessian of each iteration is ``precond`` scaled by s'y / y'My (the usual L-BFGS
    scaling, measured in the preconditioner's metric). Each iteration costs two products with
    X (for the logits of the direction and for the gradient), restricted to the problems still
    running; the line search evaluates only the problems whose step is still pending.
    """
    K = theta.shape[0]
    everyone = torch.arange(K, device=theta.device)
    z = (
        fun.logits(theta)
        if bool(theta[..., :-1].any())
        else theta[..., -1:].expand(-1, -1, fun.XT.shape[1]).clone()
    )
    f = fun.loss(z, None) + 0.5 * theta[..., :-1].pow(2).sum((1, 2))
    g = fun.grad(theta, fun.resid(z, None))
    S: list[torch.Tensor] = []
    Yh: list[torch.Tensor] = []
    rho: list[torch.Tensor] = []
    gamma = torch.ones(K, dtype=theta.dtype, device=theta.device)  # first step: -M g
    active = runs & ((g.abs().amax((1, 2)) / scale) > tol)
    iters = torch.zeros(K, dtype=torch.long, device=theta.device)
    c1 = 1e-4
    for _ in range(max_iter):
        if not bool(active.any()):
            break
        everyone_runs = bool(active.all())
        idx = everyone if everyone_runs else active.nonzero().squeeze(1)
        # two-loop recursion over every problem (inactive ones are masked out after):
        # few, large operations rather than many gathers
        q = g.clone()
        alphas = []
        for s, y, rh in zip(reversed(S), reversed(Yh), reversed(rho), strict=True):
            a = rh * _dot(s, q)
            q.addcmul_(a[:, None, None], y, value=-1.0)
            alphas.append(a)
        d = gamma[:, None, None] * precond(q)
        for s, y, rh, a in zip(S, Yh, rho, reversed(alphas), strict=True):
            d.addcmul_((a - rh * _dot(y, d))[:, None, None], s)
        if everyone_runs:
            gi, d = g, d.neg_()
        else:
            gi, d = g[idx], -d[idx]
        gd = _dot(gi, d)
        bad = gd >= 0  # not a descent direction: steepest descent for that problem
        if bool(bad.any()):
            d[bad] = -precond(gi[bad], idx[bad]) * gamma[idx][bad][:, None, None]
            gd = _dot(gi, d)
        # backtracking Armijo line search on the logits: z(t) = z + t dz
        if everyone_runs:
            th, zi, fi = theta, z, f
        else:
            th, zi, fi = theta[idx], z[idx], f[idx]
        dz = fun.logits(d)
        ka = idx.shape[0]
        t = torch.ones(ka, dtype=theta.dtype, device=theta.device)
        step = torch.zeros_like(t)
        f_new = fi.clone()
        pend = torch.arange(ka, device=theta.device)
        rows = None if everyone_runs else idx
        z_unit = None
        for trial in range(40):
            if trial == 0:  # every problem tries t = 1: no gathers
                z_unit = zt = zi + dz
                wt, rows_t = th[..., :-1] + d[..., :-1], rows
            else:
                tp = t[pend][:, None, None]
                zt = zi[pend] + tp * dz[pend]
                wt = th[pend][..., :-1] + tp * d[pend][..., :-1]
                rows_t = idx[pend]
            ft = fun.loss(zt, rows_t) + 0.5 * wt.pow(2).sum((1, 2))
            ok = ft <= fi[pend] + c1 * t[pend] * gd[pend]
            step[pend[ok]] = t[pend[ok]]
            f_new[pend[ok]] = ft[ok]
            pend = pend[~ok]
            if pend.numel() == 0:
                break
            t[pend] *= 0.5
        stalled = torch.zeros(ka, dtype=torch.bool, device=theta.device)
        stalled[pend] = True  # no decrease found: converged to working precision
        st = step[:, None, None]
        s_new = st * d
        th = th + s_new
        zi = z_unit if bool((step == 1.0).all()) else zi + st * dz
        g_new = fun.grad(th, fun.resid(zi, rows))
        y_new = g_new - gi
        if everyone_runs:
            theta, z, f, g = th, zi, f_new, g_new
        else:
            theta[idx], z[idx], f[idx], g[idx] = th, zi, f_new, g_new
        sy = _dot(s_new, y_new)
        yy = _dot(y_new, precond(y_new, rows))
        useful = ~stalled & (sy > 1e-12 * _dot(s_new, s_new).clamp_min(1e-300)) & (yy > 0)
        gamma[idx] = torch.where(useful, sy / yy.clamp_min(1e-300), gamma[idx])
        s_new = torch.where(useful[:, None, None], s_new, 0.0)
        y_new = torch.where(useful[:, None, None], y_new, 0.0)
        r_new = torch.where(useful, 1.0 / sy.clamp_min(1e-300), 0.0)
        if everyone_runs:
            s_full, y_full, r_full = s_new, y_new, r_new
        else:
            s_full, y_full = torch.zeros_like(theta), torch.zeros_like(theta)
            r_full = torch.zeros(K, dtype=theta.dtype, device=theta.device)
            s_full[idx], y_full[idx], r_full[idx] = s_new, y_new, r_new
        S.append(s_full), Yh.append(y_full), rho.append(r_full)
        if len(S) > history:
            S.pop(0), Yh.pop(0), rho.pop(0)
        iters[idx] += 1
        still = ~stalled & ((g_new.abs().amax((1, 2)) / scale[idx]) > tol)
        active[idx] = still
    return theta, iters


def _auc(y: np.ndarray, s: np.ndarray) -> float:
    """Return the exact ROC AUC, or NaN when y holds a single class."""
    if y.size == 0 or y.min() == y.max():
        return float("nan")
    return roc_auc(y, s)


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
) -> Probe:
    """Return a linear probe fitted on (X_train, Y_train), with C chosen per label on val AUC.

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
    """
    X_train, Y_train, X_val, Y_val, Cs = _check_inputs(
        X_train, Y_train, X_val, Y_val, task, Cs, max_iter, dtype
    )
    if not (isinstance(tol, float) and tol > 0):
        raise CxrbenchError(f"tol must be a positive float, got {tol!r}")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    fdtype = _DTYPES[dtype]
    softmax = task == "multiclass"
    N, D = X_train.shape
    L = Y_train.shape[1]
    nC = len(Cs)

    XT, scaler = _standardise(X_train, dev, fdtype)
    mean, std = scaler.mean, scaler.std

    Yt = torch.as_tensor(Y_train, device=dev, dtype=torch.float64)
    if softmax:
        keep = torch.as_tensor(_multiclass_rows(Y_train, "train"), device=dev).double()
        Yt = torch.nan_to_num(Yt, nan=0.0) * keep[:, None]
        counts, n = Yt.sum(0), keep.sum()
        present = counts > 0
        if int(present.sum()) < 2:
            raise CxrbenchError("multiclass training labels hold fewer than 2 classes")
        if not bool(present.all()):
            warnings.warn(
                f"{int((~present).sum())} class(es) never occur in training; their scores "
                "will be low but defined",
                stacklevel=2,
            )
        Yk = Yt.T[None].expand(nC, -1, -1)  # [K=nC, G=L, N]
        Mk = keep[None, None].expand(nC, 1, -1)
        C = torch.tensor(Cs, dtype=torch.float64, device=dev)
        scale = C * n
        prior = ((counts + 0.5) / (n + 0.5 * L)).expand(nC, L)  # [K, G]
        start = prior.log() - prior.log().mean(1, keepdim=True)  # logits sum to 0, as sklearn's
        runs = torch.ones(nC, dtype=torch.bool, device=dev)
        G = L
    else:
        known = ~torch.isnan(Yt)
        Mt = known.double()
        Yt = torch.nan_to_num(Yt, nan=0.0)
        n_pos, n_known = (Yt * Mt).sum(0), Mt.sum(0)
        fits = (n_pos > 0) & (n_pos < n_known)
        # problem k = c * L + l
        Yk = Yt.T.repeat(nC, 1)[:, None, :]  # [K, 1, N]
        Mk = Mt.T.repeat(nC, 1)[:, None, :]
        C = torch.tensor(Cs, dtype=torch.float64, device=dev).repeat_interleave(L)
        n = n_known.repeat(nC).clamp_min(1)
        scale = C * n
        prior = ((n_pos + 0.5) / (n_known + 1.0)).repeat(nC)[:, None]  # [K, 1]
        start = prior.logit()
        runs = fits.repeat(nC)
        G = 1
    K = C.shape[0]
    theta = torch.zeros(K, G, D + 1, dtype=torch.float64, device=dev)
    theta[..., D] = start  # the intercept at the prior log-odds saves a few iterations
    curvature = (C * n)[:, None] * prior * (1.0 - prior)  # [K, G]
    with _blas_owns_the_cores(dev):
        theta, iters = _lbfgs(
            _Objective(XT, Yk, Mk, C, softmax),
            theta,
            scale=scale,
            max_iter=max_iter,
            tol=tol,
            precond=_Preconditioner(
                _sample_rows(X_train, scaler),
                curvature,
                curvature.mean(1, keepdim=True).expand_as(curvature),
            ),
            runs=runs,
        )
    theta = theta.permute(2, 0, 1)  # [D + 1, K, G]
    del XT

    W = theta[:D].reshape(D, K * G)
    b = theta[D].reshape(K * G)
    Zv = (_matmul(scaler.rows(X_val), W.to(fdtype)).double() + b).cpu().numpy().reshape(-1, K, G)
    if softmax:
        keep_v = _multiclass_rows(Y_val, "val")
        yv = Y_val[keep_v].argmax(1)
        val_auc = np.full((nC, L), np.nan)
        for c in range(nC):
            z = Zv[keep_v, c]
            p = np.exp(z - z.max(1, keepdims=True))
            p /= p.sum(1, keepdims=True)
            for j in range(L):
                val_auc[c, j] = _auc((yv == j).astype(float), p[:, j])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows stay NaN
            score = np.nanmean(val_auc, axis=1)
        best = _pick(score, Cs, "the multiclass model")
        chosen_C = np.full(L, Cs[best])
        weight, bias = theta[:D, best, :], theta[D, best, :]
    else:
        val_auc = np.full((nC, L), np.nan)
        for c in range(nC):
            for j in range(L):
                m = ~np.isnan(Y_val[:, j])
                val_auc[c, j] = _auc(Y_val[m, j], Zv[m, c * L + j, 0])
        chosen_C = np.empty(L)
        cols = []
        fits_np = fits.cpu().numpy()
        for j in range(L):
            best = _pick(val_auc[:, j], Cs, f"label {j}")
            chosen_C[j] = Cs[best]
            cols.append(best * L + j)
        idx = torch.as_tensor(cols, device=dev)
        weight, bias = theta[:D, idx, 0].clone(), theta[D, idx, 0].clone()
        for j in np.flatnonzero(~fits_np):
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
    return Probe(
        weight=weight.to(out).cpu(),
        bias=bias.to(out).cpu(),
        mean=mean.to(out).cpu(),
        std=std.to(out).cpu(),
        C=chosen_C,
        task=task,
        val_auc=val_auc,
        Cs=Cs,
        n_iter=np.broadcast_to(iters.cpu().numpy().reshape(nC, -1), (nC, L)).copy(),
    )


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
