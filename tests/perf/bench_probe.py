"""Benchmark: batched torch L-BFGS probe vs per-label scikit-learn LogisticRegression(lbfgs).

Not a unit test: run ``python tests/perf/bench_probe.py`` (defaults: 86k x 2048 features,
14 labels, 2 threads). Prints fit times, the speed-up and the largest test-AUC difference.
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

import numpy as np


def make_features(n: int, d: int, labels: int, *, seed: int = 0, kind: str = "lowrank"):
    """Return non-negative pooled-CNN-like features X [n, d] (float32) and labels Y [n, L] with
    10 % unknown (NaN), prevalences 2-30 %.

    ``lowrank``: a rank-64 signal plus isotropic noise, each label driven by a sparse direction of
    the signal. ``powerlaw``: a covariance whose eigenvalues decay as i^-1.6 in a random basis (as
    pooled CNN features' do), each label driven by a random direction.
    """
    if kind == "powerlaw":
        return _powerlaw_features(n, d, labels, seed=seed)
    rng = np.random.default_rng(seed)
    rank = 64
    Z = rng.standard_normal((n, rank), dtype=np.float32)
    A = rng.standard_normal((rank, d), dtype=np.float32) / rank**0.5
    X = Z @ A
    X += 0.5 * rng.standard_normal((n, d), dtype=np.float32)
    np.maximum(X, 0.0, out=X)
    Y = np.empty((n, labels), dtype=np.float64)
    for j in range(labels):
        w = np.zeros(rank, dtype=np.float32)
        idx = rng.choice(rank, size=6, replace=False)
        w[idx] = rng.standard_normal(6)
        score = Z @ w + rng.standard_normal(n).astype(np.float32) * 1.5
        prevalence = rng.uniform(0.02, 0.3)
        Y[:, j] = score > np.quantile(score, 1 - prevalence)
    Y[rng.random(Y.shape) < 0.1] = np.nan
    return X, Y


def _powerlaw_features(n: int, d: int, labels: int, *, seed: int):
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.standard_normal((d, d)))[0].astype(np.float32)
    X = rng.standard_normal((n, d), dtype=np.float32) * (np.arange(1, d + 1, dtype=np.float32) ** -0.8)
    X = X @ basis
    np.maximum(X + 0.02, 0.0, out=X)
    Xs = (X - X.mean(0)) / np.maximum(X.std(0), 1e-12)
    Y = np.empty((n, labels), dtype=np.float64)
    for j in range(labels):
        score = Xs @ rng.standard_normal(d).astype(np.float32) / d**0.5 + 0.5 * rng.standard_normal(n)
        prevalence = rng.uniform(0.02, 0.3)
        Y[:, j] = score > np.quantile(score, 1 - prevalence)
    Y[rng.random(Y.shape) < 0.1] = np.nan
    return X, Y


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n-train", type=int, default=86_000)
    parser.add_argument("--n-val", type=int, default=10_000)
    parser.add_argument("--n-test", type=int, default=20_000)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--labels", type=int, default=14)
    parser.add_argument("--C", type=float, default=0.01, help="C for the equal-C comparison")
    parser.add_argument("--sk-labels", type=int, default=3, help="labels timed with sklearn (scaled to all labels)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-iter", type=int, default=200)
    parser.add_argument("--grid", action="store_true", help="also time the default 5-C grid")
    parser.add_argument(
        "--features",
        choices=("lowrank", "powerlaw"),
        default="lowrank",
        help="synthetic feature spectrum (see make_features)",
    )
    parser.add_argument("--device", default="cpu", help="device of the torch fit (cuda: the GPU goal is < 1 s)")
    args = parser.parse_args()

    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    from cxrbench.adapt.probe import fit_probe

    torch.set_num_threads(args.threads)
    n = args.n_train + args.n_val + args.n_test
    t0 = time.perf_counter()
    X, Y = make_features(n, args.dim, args.labels, kind=args.features)
    a, b = args.n_train, args.n_train + args.n_val
    Xtr, Ytr, Xva, Yva, Xte, Yte = X[:a], Y[:a], X[a:b], Y[a:b], X[b:], Y[b:]
    print(
        f"data: train {Xtr.shape}, val {Xva.shape[0]}, test {Xte.shape[0]}, "
        f"{args.labels} labels ({args.features}), made in {time.perf_counter() - t0:.1f}s; "
        f"{args.threads} threads, torch {torch.__version__}"
    )

    if args.device.startswith("cuda"):  # start the CUDA context outside the timed fit
        torch.zeros(1, device=args.device)
    t0 = time.perf_counter()
    probe = fit_probe(Xtr, Ytr, Xva, Yva, Cs=[args.C], max_iter=args.max_iter, device=args.device)
    t_torch = time.perf_counter() - t0
    p_torch = probe.predict_proba(Xte)
    print(
        f"torch L-BFGS on {args.device}, all {args.labels} labels at C={args.C}: {t_torch:.2f}s, "
        f"iterations per label {probe.n_iter_[0].tolist()}"
    )

    # the reference standardises once for all labels, as fit_probe does inside its timed call
    t0 = time.perf_counter()
    with threadpool_limits(limits=args.threads):
        scaler = StandardScaler().fit(Xtr)
        Ztr = scaler.transform(Xtr)
    t_scale = time.perf_counter() - t0
    Zte = scaler.transform(Xte)
    print(f"sklearn StandardScaler on train: {t_scale:.1f}s")
    k = min(args.sk_labels, args.labels)
    deltas, t_sk = [], 0.0
    with threadpool_limits(limits=args.threads):
        for j in range(k):
            m, t = ~np.isnan(Ytr[:, j]), ~np.isnan(Yte[:, j])
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                lr = LogisticRegression(C=args.C, solver="lbfgs", max_iter=args.max_iter)
                lr.fit(Ztr[m], Ytr[m, j])
            t_sk += time.perf_counter() - t0
            auc_sk = roc_auc_score(Yte[t, j], lr.decision_function(Zte[t]))
            auc_torch = roc_auc_score(Yte[t, j], p_torch[t, j])
            deltas.append(abs(auc_sk - auc_torch))
            print(
                f"  label {j}: sklearn {time.perf_counter() - t0:.1f}s ({lr.n_iter_[0]} iter), "
                f"test AUC sklearn {auc_sk:.4f} torch {auc_torch:.4f}"
            )
    scaled = t_scale + t_sk * args.labels / k
    note = f" (sklearn timed on {k} of {args.labels} labels and scaled)" if k < args.labels else ""
    print(f"sklearn scaler + per label, all {args.labels} labels: {scaled:.1f}s{note}")
    print(
        f"speed-up: {scaled / t_torch:.1f}x (goal >= 10x); max |test AUC difference|: {max(deltas):.4f} (goal <= 0.002)"
    )

    if args.grid:
        Cs = (1e-3, 1e-2, 1e-1, 1.0, 10.0)
        t0 = time.perf_counter()
        probe = fit_probe(Xtr, Ytr, Xva, Yva, Cs=Cs, max_iter=args.max_iter, device=args.device)
        t_grid = time.perf_counter() - t0
        p_torch = probe.predict_proba(Xte)
        print(
            f"torch grid of {len(Cs)} C x {args.labels} labels with val-AUC choice: "
            f"{t_grid:.1f}s; iterations per C (max over labels): "
            f"{probe.n_iter_.max(1).tolist()}"
        )
        Zva = scaler.transform(Xva)
        t_sk, deltas = 0.0, []
        with threadpool_limits(limits=args.threads):
            for j in range(k):
                m, v, t = ~np.isnan(Ytr[:, j]), ~np.isnan(Yva[:, j]), ~np.isnan(Yte[:, j])
                best = (-np.inf, None, None)
                iters = []
                for C in Cs:
                    t0 = time.perf_counter()
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        lr = LogisticRegression(C=C, solver="lbfgs", max_iter=args.max_iter)
                        lr.fit(Ztr[m], Ytr[m, j])
                    t_sk += time.perf_counter() - t0
                    iters.append(int(lr.n_iter_[0]))
                    auc_v = roc_auc_score(Yva[v, j], lr.decision_function(Zva[v]))
                    if auc_v > best[0]:
                        best = (auc_v, C, lr)
                auc_sk = roc_auc_score(Yte[t, j], best[2].decision_function(Zte[t]))
                auc_torch = roc_auc_score(Yte[t, j], p_torch[t, j])
                deltas.append(abs(auc_sk - auc_torch))
                print(
                    f"  label {j}: sklearn iterations per C {iters}, chosen C sklearn "
                    f"{best[1]} torch {probe.C_[j]}; test AUC sklearn {auc_sk:.4f} "
                    f"torch {auc_torch:.4f}"
                )
        scaled = t_scale + t_sk * args.labels / k
        print(
            f"sklearn grid per label per C, all {args.labels} labels: {scaled:.1f}s{note}; "
            f"speed-up {scaled / t_grid:.1f}x; max |test AUC difference| {max(deltas):.4f}"
        )


if __name__ == "__main__":
    main()
