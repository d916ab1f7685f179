"""Batched, preconditioned L-BFGS for L2-penalised logistic regression in torch (CPU or GPU):
K independent problems on one shared feature matrix (the probe's labels x C values) solved at once,
each stopping by scikit-learn's rule so the solutions agree with ``LogisticRegression(solver="lbfgs")``.

Problem k minimises ``C_k * sum(masked log-loss) + 0.5 * ||w_k||^2`` with an unpenalised
intercept: binary (sigmoid) or softmax over G classes. Each iteration starts from a preconditioner
built on the features' correlation (``Preconditioner``), which halves the iterations on correlated
CNN features.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch

__all__ = ["Preconditioner", "fit_logistic", "matmul"]


def fit_logistic(
    XT: torch.Tensor,
    Y: torch.Tensor,
    M: torch.Tensor,
    C: torch.Tensor,
    *,
    softmax: bool,
    runs: torch.Tensor | None = None,
    max_iter: int = 200,
    tol: float = 1e-4,
    sample: int = 4096,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fit K L2 logistic regressions on the standardised features ``XT`` [D, N] (transposed; its
    dtype sets the precision of the products, the optimiser state is float64).

    ``Y`` [K, G, N]: targets, 0/1 with G = 1 (sigmoid), or one-hot over G classes (``softmax``);
    ``M`` [K, 1, N]: 1 where a row counts for the problem (its Y must still be finite);
    ``C`` [K]: the inverse penalty. ``runs`` [K] (default all) says which problems to fit; the
    others stay at the start: zero weights and the intercept at the smoothed prior log-odds.
    Returns theta [K, G, D + 1] (weights, then the intercept) and the iterations each ran [K].
    A problem stops, as scikit-learn's, when its largest gradient entry divided by C_k times its
    number of rows falls below ``tol``, when no step decreases it, or after ``max_iter``
    iterations. The preconditioner is built on ``sample`` fixed random rows (all if fewer).
    """
    dev = XT.device
    K, G, N = Y.shape
    D = XT.shape[0]
    counts = (Y * M).sum(-1)  # [K, G]
    n_rows = M.sum(-1)  # [K, 1]
    prior = (counts + 0.5) / (n_rows + 0.5 * max(G, 2))  # [K, G]
    if softmax:
        start = prior.log() - prior.log().mean(1, keepdim=True)  # logits sum to 0, as sklearn's
    else:
        start = prior.logit()
    scale = C * n_rows[:, 0].clamp_min(1)
    theta = torch.zeros(K, G, D + 1, dtype=torch.float64, device=dev)
    theta[..., D] = start  # the intercept at the prior log-odds saves a few iterations
    curvature = scale[:, None] * prior * (1.0 - prior)  # [K, G]
    idx = np.sort(np.random.default_rng(0).permutation(N)[: min(N, sample)])
    rows = XT[:, torch.as_tensor(idx, device=dev)].T.contiguous()
    if runs is None:
        runs = torch.ones(K, dtype=torch.bool, device=dev)
    with _blas_owns_the_cores(dev):
        # softmax problems share one intercept curvature over classes (see Preconditioner)
        precond = Preconditioner(rows, curvature, curvature.mean(1, keepdim=True).expand_as(curvature))
        return _lbfgs(
            _Objective(XT, Y, M, C, softmax),
            theta,
            scale=scale,
            max_iter=max_iter,
            tol=tol,
            precond=precond,
            runs=runs,
        )


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
        z = matmul(w, self.XT, pad_rows=True).to(theta.dtype)
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
        rx = matmul(self.XT, rT)[:, :kG].T  # [kG, D]
        grad[..., :D] = rx.to(theta.dtype).reshape(k, G, D) + theta[..., :D]
        grad[..., D] = r.sum(2)
        return grad


class Preconditioner:
    """Initial inverse-Hessian guess for L-BFGS, one per problem and class.

    At the start, the Hessian of problem k is about ``I + a_k X^T X / n`` on the weights, with
    ``a_k = C_k n_k pi_k (1 - pi_k)`` (pi: prevalence), and ``a_k`` on the intercept. The Gram
    ``X^T X / n`` is estimated from a fixed row sample; its top ``rank`` eigenpairs (the
    ill-conditioned directions of correlated features) are kept and the rest of the spectrum
    is replaced by its mean, which keeps the guess well-conditioned even when the sample is
    small. A sample of at most ``4 rank`` rows (small training sets) gives all its eigenpairs
    exactly, through the rows' kernel matrix. L-BFGS then needs about half the iterations, to
    the same stopping rule. Softmax problems pass one ``a_bias`` for all classes, so that the
    intercepts keep summing to 0 (the direction in which their loss is flat), as in scikit-learn.
    """

    def __init__(self, sample: torch.Tensor, a: torch.Tensor, a_bias: torch.Tensor, *, rank: int = 256):
        m, D = sample.shape  # standardised rows
        if m <= 4 * rank:  # few rows: every nonzero eigenpair, exactly, from the m x m kernel
            lam, U = torch.linalg.eigh(matmul(sample, sample.T.contiguous()).double() / m)
            keep = lam > 1e-10 * lam.max().clamp_min(1e-300)
            lam, U = lam[keep], U[:, keep]
            V = (sample.T.double() @ U) / (m * lam).sqrt()
            lam_rest = lam.new_zeros(())  # the rest is the sample's null space
        else:
            gram = matmul(sample.T.contiguous(), sample).double() / m
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


def matmul(a: torch.Tensor, b: torch.Tensor, *, pad_rows: bool = False) -> torch.Tensor:
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
    precond: Preconditioner,
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
    z = fun.logits(theta) if bool(theta[..., :-1].any()) else theta[..., -1:].expand(-1, -1, fun.XT.shape[1]).clone()
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
