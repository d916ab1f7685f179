"""The `evaluate` and `compare` commands end to end (plots included) at NIH size, against a naive loop.

Run as ``python tests/perf/bench_stats_stages.py [--n-boot 1000] [--naive-reps 2] [--quick] [--profile DIR]``.
It writes a run directory of prediction Parquets (25,596 test + 8,000 val images x 14 labels x 8
encoders, as `cxrbench probe` writes them), then times, each as the command in a fresh process
(``python -m cxrbench ...``, so interpreter start-up and imports count):

* ``cxrbench evaluate --force`` (read the Parquets, bootstrap, write ``evaluation/metrics.parquet``);
* ``cxrbench compare --force`` (tables, forest, one ROC figure per label, efficiency), with the
  replicate and plot caches of the run empty except for what ``evaluate`` just stored;
* ``compare`` again (forced, so it redoes its work; plots whose inputs did not change are reused).

Each line gives the process's wall time and, inside it, the stage's (and the plots').

The naive reference is the one of issue 11, for both commands: for each of ``--n-boot`` resamples of
the test rows, ``roc_auc_score`` per encoder and label (evaluate's CIs), and again per label for
the baseline and every other encoder, giving the paired differences (compare's). It is linear in
replicates, so it is timed on ``--naive-reps`` replicates and scaled; the output says so. It leaves
out everything else the commands do (AUPRC and threshold metrics, reading, tables, ROC bands,
drawing), so the ratio naive / (evaluate + compare) is conservative.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

N_TEST, N_VAL, N_LABELS, N_MODELS = 25_596, 8_000, 14, 8
QUICK = dict(N_TEST=4000, N_VAL=1000, N_LABELS=6, N_MODELS=4)
ROC_BOOT = 200  # replicates of each ROC band (plot_roc's default)


def make_problem(seed: int = 0):
    """Return y (labels x n) and scores (models x labels x n), n = test + val, NIH-like prevalences."""
    rng = np.random.default_rng(seed)
    n = N_TEST + N_VAL
    prev = np.geomspace(0.002, 0.2, N_LABELS)
    y = rng.random((N_LABELS, n)) < prev[:, None]
    y[:, :2] = [False, True]  # every label has both classes in test and val
    y[:, N_TEST : N_TEST + 2] = [False, True]
    skill = rng.uniform(0.5, 1.5, (N_MODELS, N_LABELS, 1))
    scores = skill * y[None] + rng.normal(size=(N_MODELS, N_LABELS, n))
    return y, np.round(scores, 4).astype(np.float32).astype(np.float64)  # ties, as float32 outputs


def encoders() -> list[str]:
    return ["imagenet", *[f"enc{m}" for m in range(1, N_MODELS)]]


def write_run(run: Path) -> None:
    """Write ``RUN/predictions/nih/ENCODER/probe.parquet`` for every encoder (no manifests)."""
    import pandas as pd

    from cxrbench.adapt.predictions import predictions_table
    from cxrbench.rundir import RunLayout, write_parquet

    y, scores = make_problem()
    n = N_TEST + N_VAL
    rows = pd.DataFrame({
        "sample_id": [f"img{i:06d}.png" for i in range(n)],
        "patient_id": [f"p{i // 3:06d}" for i in range(n)],
        "split": ["test"] * N_TEST + ["val"] * N_VAL,
    })  # fmt: skip
    labels = [f"Label{j:02d}" for j in range(N_LABELS)]
    for m, enc in enumerate(encoders()):
        table = predictions_table(rows, labels, y.T.astype(float), scores[m].T)
        write_parquet(RunLayout(run).predictions("nih", enc, "probe"), table)


def naive(reps: int) -> tuple[float, float]:
    """Return seconds per replicate of the naive loops of evaluate and of compare (``roc_auc_score``)."""
    from sklearn.metrics import roc_auc_score

    from cxrbench.stats.bootstrap import bootstrap_counts

    y, scores = make_problem()
    y, scores = y[:, :N_TEST], scores[..., :N_TEST]
    counts = bootstrap_counts(N_TEST, n_boot=reps, seed=0)
    t = time.perf_counter()
    for r in range(reps):  # evaluate: the AUC of every encoder and label on the resample
        idx = np.repeat(np.arange(N_TEST), counts[r])
        for m in range(N_MODELS):
            for j in range(N_LABELS):
                roc_auc_score(y[j, idx], scores[m, j, idx])
    t_eval = time.perf_counter() - t
    t = time.perf_counter()
    for r in range(reps):  # compare: paired difference of every encoder vs the baseline (model 0)
        idx = np.repeat(np.arange(N_TEST), counts[r])
        for j in range(N_LABELS):
            base = roc_auc_score(y[j, idx], scores[0, j, idx])
            for m in range(1, N_MODELS):
                _ = roc_auc_score(y[j, idx], scores[m, j, idx]) - base
    return t_eval / reps, (time.perf_counter() - t) / reps


def phase(name: str, run: Path, n_boot: int, profile: str | None) -> None:
    """Run one command as the CLI does; print its stage and plotting seconds on the last line."""
    import atexit

    from cxrbench.cli import main as cli
    from cxrbench.stages import compare as compare_stage

    seconds = {"stage": 0.0, "plots": 0.0}

    def timed(fn, key):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                seconds[key] += time.perf_counter() - t0

        return wrapper

    compare_stage._plots = timed(compare_stage._plots, "plots")
    args = [name, "--run", str(run), "--n-boot", str(n_boot), "--force"]
    if name == "compare":
        args += ["--baseline", "imagenet"]
    prof = cProfile.Profile() if profile else None
    atexit.register(lambda: print(f"\n{seconds['stage']} {seconds['plots']}"))
    if prof:
        prof.enable()
    try:
        timed(cli, "stage")(args)
    finally:
        if prof:
            prof.disable()
            prof.dump_stats(profile)


def _subprocess(name: str, run: Path, args: argparse.Namespace) -> tuple[float, float, float]:
    """Return (process wall seconds, stage seconds, plot seconds) of one command in a fresh process."""
    cmd = [sys.executable, __file__, "--phase", name, "--run", str(run), "--n-boot", str(args.n_boot)]
    if args.quick:
        cmd.append("--quick")
    if args.profile:
        cmd += ["--profile-out", f"{args.profile}/{name}.prof"]
    t = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if done.returncode:
        sys.exit(f"{name} failed:\n{done.stdout}\n{done.stderr}")
    out = done.stdout.split()
    return wall, float(out[-2]), float(out[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--naive-reps", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help=f"smaller problem {QUICK}")
    ap.add_argument("--profile", metavar="DIR", help="write cProfile stats of each stage to DIR/<stage>.prof")
    ap.add_argument("--run", type=Path, help="run directory to use (default: a temporary one)")
    ap.add_argument("--phase", choices=["evaluate", "compare"], help=argparse.SUPPRESS)
    ap.add_argument("--profile-out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.quick:
        globals().update(QUICK)
    if args.phase:
        phase(args.phase, args.run, args.n_boot, args.profile_out)
        return
    if args.profile:
        Path(args.profile).mkdir(parents=True, exist_ok=True)
    tmp = None
    run = args.run
    if run is None:
        tmp = tempfile.mkdtemp(prefix="bench-stats-")
        run = Path(tmp) / "run"
    try:
        for old in ("evaluation", "comparisons"):  # no replicates or plots from an earlier run
            shutil.rmtree(run / old, ignore_errors=True)
        write_run(run)
        print(f"problem: {N_TEST} test + {N_VAL} val images x {N_LABELS} labels x {N_MODELS} encoders "
              f"x {args.n_boot} replicates; ROC bands {ROC_BOOT} replicates")  # fmt: skip
        k_before = args.naive_reps // 2  # the machine's load changes: time half before, half after
        k_after = args.naive_reps - k_before
        before = naive(k_before) if k_before else (0.0, 0.0)
        e, es, _ = _subprocess("evaluate", run, args)
        c, cs, p = _subprocess("compare", run, args)
        c2, cs2, p2 = _subprocess("compare", run, args)
        after = naive(k_after)
        n_eval, n_cmp = (
            (x * k_before + y * k_after) / args.naive_reps * args.n_boot for x, y in zip(before, after, strict=True)
        )
        t_naive = n_eval + n_cmp
        print(
            f"naive roc_auc_score loops: evaluate {n_eval:.1f} s + compare {n_cmp:.1f} s = {t_naive:.1f} s "
            f"(timed on {args.naive_reps} replicates, {k_before} before the commands and {k_after} after, "
            f"scaled linearly to {args.n_boot}; before {sum(before) * args.n_boot:.1f} s, "
            f"after {sum(after) * args.n_boot:.1f} s)"
        )
        print(f"evaluate: {e:8.2f} s (stage {es:.2f} s)")
        print(f"compare:  {c:8.2f} s (stage {cs:.2f} s, plots {p:.2f} s); rerun {c2:.2f} s (plots {p2:.2f} s)")
        total = e + c
        print(f"evaluate + compare: {total:.2f} s = {t_naive / total:.1f}x naive "
              f"(stages alone {es + cs:.2f} s = {t_naive / (es + cs):.1f}x)")  # fmt: skip
        if args.profile:
            for name in ("evaluate", "compare"):
                print(f"--- {name}")
                pstats.Stats(f"{args.profile}/{name}.prof").sort_stats("cumulative").print_stats(25)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
