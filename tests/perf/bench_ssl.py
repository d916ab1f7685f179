"""Benchmark: every pretraining method against ``random`` init on synthetic phantoms (not a unit test).

Run: ``python tests/perf/bench_ssl.py [--methods simclr,moco] [--quick] [--run DIR]``, or
``pytest tests/perf/bench_ssl.py -m perf`` (the ``--quick`` budget on two methods).

The real pipeline, stage by stage (as ``cxrbench run`` does): ``prepare synthetic`` (phantoms),
``pretrain METHOD`` for each method with a fixed small CPU budget (``BUDGET`` below, per method from
``SETTINGS``; a method missing from the table gets the default), ``probe`` of every encoder and of
``random`` init of the same architecture at 100 % and 10 % of the train patients' labels (10 %: five
label subsets, probe seeds 0-4), ``evaluate`` and ``compare --baseline random`` (cxrbench's paired
bootstrap of the test AUCs; at 10 % its mean over the seeds, ``comparisons/seeds.parquet``). Prints
one row per method and label fraction: macro-mean test AUC, Δ vs random with its 95 % CI, the
bootstrap p and the BH-adjusted p over the table's rows, whether it is significant (adjusted
p < 0.05), and the range of the per-seed Δs; the goal is every method significant at 10 %.

Also prints each method's pretraining speed (images/s, median over the steps of its training log,
the first step left out) against ``supervised`` in the same run; ``bench_pretrain_speed.py`` is the
dedicated, device-aware speed benchmark.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Collection
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))

pytestmark = pytest.mark.perf

DATASET = "synthetic"
BASELINE = "random"
FRACTIONS = (1.0, 0.1)


@dataclass(frozen=True)
class Budget:
    """What every method gets unless ``SETTINGS`` says otherwise."""

    # 180 train and 60 val patients as at 300 x 60/20/20, and 360 test patients instead of 60: the
    # paired bootstrap resamples the test set, and 60 patients left +/-0.07 CIs at 10 % labels
    n_patients: int = 600
    split: str = "30/10/60"  # train/val/test % of the patients
    # label subsets at each fraction below 100 % (probe seeds 0..N-1), compared as their mean: one
    # subset of 18 patients can be lucky (denoise: +0.063 on one, -0.034 on average over five)
    seeds: int = 5
    size: int = 32
    arch: str = "resnet10t"
    epochs: int = 40  # 240 steps: at 10 (60 steps) only supervised learned enough to beat random
    batch_size: int = 64
    lr: float | None = None  # None: the method's own default
    options: dict[str, Any] = field(default_factory=dict)
    n_boot: int = 1000
    quick: bool = False  # a smoke check of the script: per-method epochs/batch sizes are not applied


BUDGET = Budget()
QUICK = Budget(
    n_patients=120,
    split="60/20/20",
    seeds=2,
    size=32,
    arch="resnet10t",
    epochs=1,
    batch_size=32,
    n_boot=200,
    quick=True,
)

#: The budget fields ``--set`` may change.
SETTABLE = ("n_patients", "split", "seeds", "size", "arch", "epochs", "batch_size", "lr", "n_boot")

#: Per-method departures from the budget (keys of ``Budget``: arch, size, epochs, batch_size, lr, options).
#: Methods not listed, such as ones added later, get the default budget.
SETTINGS: dict[str, dict[str, Any]] = {
    # MoCo v2's 65536-key queue and 0.999 momentum suit 200 ImageNet epochs; in a 60-step budget the
    # queue would hold random vectors and the key encoder would hardly move from its random start
    "moco": {"options": {"queue_size": 256, "momentum": 0.99}},
    # the same for the two methods built on MoCo (their InfoNCE rose 6.8 -> 7.7 and 8.0 -> 8.8 over
    # 60 steps as the default queue filled with real keys); medaug's entry is below
    "mean-teacher": {"options": {"queue_size": 256, "momentum": 0.99}},
    # supervised's 1e-4 suits its 30 epochs; in 70 steps it underfits (BCE 0.68 -> 0.53) and its
    # features were worse than random init (-0.064 at 100 % labels); 1e-3 as the SSL methods get
    "supervised": {"lr": 1e-3},
    # BYOL and MedAug were still learning at 240 steps (BYOL's loss 1.88 -> 1.68; Δ +0.031 and +0.054
    # at 10 % labels, not significant); at 480 steps both were (+0.066 and +0.096)
    "byol": {"epochs": 80},
    "medaug": {"epochs": 80, "options": {"queue_size": 256, "momentum": 0.99}},
    # MAE needs a ViT: patch 8 gives 4 x 4 patches at 32 px (4 visible at MAE's 75 % masking); it is
    # compared with random init of that ViT, in a run of its own (``RUN-ARCH`` beside the run)
    "mae": {"arch": "vit_small_patch8_224"},
    # DINO's 8 local crops (5-40 % of the image) mostly miss the phantoms' findings (a nodule, an
    # effusion at a base, a pneumothorax at an apex): -0.053 at 10 % labels with them, +0.003 (n.s.)
    # with the two global crops only; and its paper's lr (5e-4 x 64/256) suits 100 ImageNet epochs,
    # not 240 steps: at 1e-3, as the other SSL methods get, +0.023 (p 0.002; five subsets, session 10)
    "dino": {"lr": 1e-3, "options": {"local_crops": 0}},
    # at 32 px resnet10t's token map is 1 x 1, so the chest CT study's vector-quantised code is one of
    # 512 codes per image: masked -0.053 at 10 % labels (-0.012 with a continuous code); at 64 px
    # with a continuous code +0.044 (p 0.002; with the quantiser +0.002). Its own run, at 64 px
    "masked": {"size": 64, "options": {"quantize": False}},
    # denoise has the same 1 x 1 token map at 32 px: -0.037 at 10 % labels even with a continuous code
    # and 10 % noise. At 64 px with a continuous code the study's 50 % salt-and-pepper gave -0.003,
    # 25 % +0.029 and 10 % +0.042 (p 0.002, every subset positive; session 11): the share of pixels
    # corrupted, set for 512-px CT slices, is what failed on 64-px phantoms. Run beside masked's
    "denoise": {"size": 64, "options": {"quantize": False, "amount": 0.1}},
    # rotation and flip solve their task in ~20 steps at 32 px (cross entropy 0.01) and learn nothing
    # more: -0.010 and -0.012 (n.s.); random 20-100 % crops or a hidden layer in the head changed
    # nothing (-0.040, -0.014). At 64 px, with the methods' defaults: +0.056 and +0.059 (p 0.002).
    "rotation": {"size": 64},
    "flip": {"size": 64},
    "pretext": {"size": 64},  # rotation + flip
}


def image_methods() -> list[str]:
    """The image-only pretraining methods (the image–report ones have ``bench_text.py``)."""
    from cxrbench.pretrain import get_method, method_names
    from cxrbench.pretrain._image_text import ImageTextMethod

    return [m for m in method_names() if not issubclass(get_method(m), ImageTextMethod)]


def settings_for(method: str, budget: Budget) -> Budget:
    """The budget of one method: the default with its ``SETTINGS`` entry (arch, size, epochs,
    batch_size, lr, options) applied; quick runs take only its arch, size, lr and options."""
    own = dict(SETTINGS.get(method, {}))
    if budget.quick:
        own = {k: v for k, v in own.items() if k in ("arch", "size", "lr", "options")}
    return replace(budget, **own)


def with_changes(budget: Budget, sets: list[str], options: list[str]) -> Budget:
    """``budget`` with ``--set KEY=VALUE`` changes (typed like the field) and per-method ``--option``
    entries put into ``SETTINGS`` (for this process)."""
    changes: dict[str, Any] = {}
    for item in sets:
        key, sep, value = item.partition("=")
        if not sep or key not in SETTABLE:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE with KEY a budget field")
        changes[key] = value if key in ("arch", "split") else (float(value) if key == "lr" else int(value))
    for item in options:
        method, sep, pair = item.partition(":")
        key, eq, value = pair.partition("=")
        if not sep or not eq:
            raise ValueError(f"--option {item!r}: expected METHOD:KEY=VALUE")
        entry = SETTINGS.setdefault(method, {})
        entry["options"] = {**entry.get("options", {}), key: value}
    return replace(budget, **changes)


def run_bench(run: Path, methods: list[str], budget: Budget, *, device: str | None = "cpu") -> dict[str, Any]:
    """Every stage of the benchmark in ``run`` (reused where up to date); returns the macro-mean rows of
    the comparisons (``mean``), each method's images/s (``speeds``) and pretrain seconds (``seconds``).

    Methods on the budget's architecture and image size share ``run`` and its ``random`` baseline; a
    method with an architecture or size of its own (``SETTINGS``) is compared with random init of that
    architecture on phantoms of that size in a run beside it (``RUN-ARCH``, ``RUN-ARCH-SIZEpx``; BH
    then adjusts over that comparison's rows)."""
    import pandas as pd

    groups: dict[tuple[str, int], list[str]] = {}
    for method in methods:
        own = settings_for(method, budget)
        groups.setdefault((own.arch, own.size), []).append(method)
    parts = [
        _run_group(_group_run(run, budget, arch, size), group, replace(budget, arch=arch, size=size), device)
        for (arch, size), group in groups.items()
    ]
    return {
        "mean": pd.concat([part["mean"] for part in parts], ignore_index=True),
        "speeds": {k: v for part in parts for k, v in part["speeds"].items()},
        "seconds": {k: v for part in parts for k, v in part["seconds"].items()},
        "failed": {k: v for part in parts for k, v in part["failed"].items()},
        "arch": {m: arch for (arch, _), group in groups.items() for m in group},
        "size": {m: size for (_, size), group in groups.items() for m in group},
    }


def _group_run(run: Path, budget: Budget, arch: str, size: int) -> Path:
    """The run of the methods on architecture ``arch`` at ``size`` px: ``run`` for the budget's own,
    else a run directory beside it (``RUN-ARCH``, plus ``-SIZEpx`` for another image size) with its
    own prepared phantoms and ``random`` baseline."""
    if (arch, size) == (budget.arch, budget.size):
        return run
    return run.with_name(f"{run.name}-{arch}" + ("" if size == budget.size else f"-{size}px"))


def _run_group(run: Path, methods: list[str], budget: Budget, device: str | None) -> dict[str, Any]:
    """The benchmark of ``methods`` that share ``budget.arch``, in ``run``."""

    from cxrbench.data.samples import LabelPolicy
    from cxrbench.data.splits import parse_ratios
    from cxrbench.data.transforms import Preprocess
    from cxrbench.errors import CxrbenchError
    from cxrbench.rundir import RunLayout, safe_name
    from cxrbench.stages.compare import compare
    from cxrbench.stages.evaluate import evaluate
    from cxrbench.stages.prepare import prepare
    from cxrbench.stages.pretrain import pretrain
    from cxrbench.stages.probe import probe

    layout = RunLayout(run)
    prepare(
        layout,
        DATASET,
        root=None,
        options={"n_patients": budget.n_patients},
        image=Preprocess(size=budget.size),
        policy=LabelPolicy(seed=0, split=parse_ratios(budget.split)),
    )
    timings: dict[str, float] = {}
    failed: dict[str, str] = {}  # a method that cannot run at this budget (e.g. one that needs a ViT)
    encoders: dict[str, str] = {}
    for method in methods:
        own = settings_for(method, budget)
        started = time.perf_counter()
        try:
            manifest = pretrain(
                layout,
                method,
                dataset=DATASET,
                arch=own.arch,
                epochs=own.epochs,
                batch_size=own.batch_size,
                lr=own.lr,
                options=dict(own.options),
                device=device,
            )
        except CxrbenchError as exc:
            failed[method] = exc.message
            continue
        timings[method] = manifest.timings.get("seconds", time.perf_counter() - started)
        # the encoder's name: the method's, unless a published encoder has it (medaug -> medaug-synthetic)
        encoders[method] = next(k.split("/")[1] for k in manifest.outputs if k.startswith("encoders/"))
    methods = [m for m in methods if m not in failed]
    for encoder in [BASELINE, *(encoders[m] for m in methods)]:
        for fraction in FRACTIONS:
            for seed in range(budget.seeds if fraction < 1 else 1):  # 100 %: every train patient, one subset
                probe(
                    layout, dataset=DATASET, encoder=encoder, arch=budget.arch, fraction=fraction, seed=seed,
                    device=device,
                )  # fmt: skip
    evaluate(layout, n_boot=budget.n_boot)
    compare(layout, baseline=BASELINE, n_boot=budget.n_boot, plots=False)
    mean = bench_rows(layout.comparisons, safe_name(DATASET), encoders.values())
    mean["encoder"] = mean["encoder"].map({e: m for m, e in encoders.items()}).fillna(mean["encoder"])
    speeds = {m: images_per_second(layout.training_log("pretrain", encoders[m])) for m in methods}
    return {"mean": mean, "speeds": speeds, "seconds": timings, "failed": failed}


def bench_rows(comparisons: Path, stem: str, encoders: Collection[str]):
    """One macro-mean row per encoder of ``encoders`` and fraction: the mean over seeds
    (``seeds.parquet``) where a fraction ran with several, else the single comparison; with
    ``seed_deltas`` (each seed's Δ, for the spread) and ``p_adjusted`` / ``significant`` recomputed by
    BH over exactly these rows. Other encoders in the run (left by an earlier bench with other
    settings, e.g. a method since moved to a run of its own) are neither shown nor adjusted over."""
    import pandas as pd

    from cxrbench.stats.multiplicity import adjust_pvalues

    single = pd.read_parquet(comparisons / f"{stem}.parquet")
    single = single[(single["label"] == "mean") & single["encoder"].isin(list(encoders))].assign(
        fraction=lambda t: t["fraction"].astype(float).fillna(1.0)
    )
    seeds_file = comparisons / "seeds.parquet"
    pooled = pd.read_parquet(seeds_file) if seeds_file.exists() else pd.DataFrame(columns=["encoder", "fraction"])
    pooled = pooled.assign(fraction=pooled["fraction"].astype(float).fillna(1.0))
    rows = []
    for (encoder, fraction), group in single.groupby(["encoder", "fraction"], sort=False):
        hit = pooled[(pooled["encoder"] == encoder) & (pooled["fraction"] == fraction)]
        row = (hit.iloc[0] if len(hit) else group.iloc[0]).to_dict()
        row.update(encoder=encoder, fraction=fraction, seed_deltas=sorted(group["delta"].tolist()))
        rows.append(row)
    out = pd.DataFrame(rows)
    out["p_adjusted"] = adjust_pvalues(out["p_value"].to_numpy(dtype=float), method="bh")
    out["significant"] = out["p_adjusted"] < 0.05
    return out


def images_per_second(log: Path) -> float:
    """Median images/s over the steps of a per-step training log, the first (warm-up) step left out."""
    import pyarrow.parquet as pq

    rates = pq.read_table(log, columns=["images_per_s"]).column(0).to_numpy()
    return float(statistics.median(rates[1:] if len(rates) > 1 else rates))


def format_table(
    mean,
    speeds: dict[str, float],
    methods: list[str],
    arch: dict[str, str] | None = None,
    size: dict[str, int] | None = None,
) -> str:
    """The benchmark's table (Markdown): one row per method and label fraction; the speed ratio only
    for methods on the reference's (``supervised``) architecture and image size."""
    rows = [
        "| method | labels | AUC | random AUC | Δ vs random [95% CI] | p | p (BH) | significant | Δ per seed | img/s "
        "| vs supervised |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    reference = speeds.get("supervised")
    for method in methods:
        for fraction in FRACTIONS:
            hit = mean[(mean["encoder"] == method) & (mean["fraction"].astype(float).fillna(1.0) == fraction)]
            if hit.empty:  # failed to pretrain, or no baseline twin
                rows.append(f"| {method} | {fraction:.0%} | – | – | – | – | – | – | – | – | – |")
                continue
            r = hit.iloc[0]
            speed = f"{speeds[method]:.0f}" if fraction == FRACTIONS[0] and method in speeds else ""
            same = all(d is None or d.get(method) == d.get("supervised") for d in (arch, size))
            ratio = f"{speeds[method] / reference:.0%}" if reference and speed and same else ""
            deltas = r["seed_deltas"]
            seeds = f"{min(deltas):+.3f} … {max(deltas):+.3f} ({len(deltas)})" if len(deltas) > 1 else ""
            rows.append(
                f"| {method} | {fraction:.0%} | {r['auc']:.3f} | {r['baseline_auc']:.3f} | "
                f"{r['delta']:+.3f} [{r['delta_ci_low']:+.3f}, {r['delta_ci_high']:+.3f}] | "
                f"{r['p_value']:.3g} | {r['p_adjusted']:.3g} | {'yes' if r['significant'] else 'no'} | "
                f"{seeds} | {speed} | {ratio} |"
            )
    return "\n".join(rows)


def describe(budget: Budget, methods: list[str]) -> str:
    lines = [
        f"budget: {budget.n_patients} phantom patients at {budget.size} px (frontal views, {budget.split} split by patient), "
        f"{budget.seeds} label subsets (seeds) below 100 %, compared as their mean, "
        f"arch {budget.arch}, {budget.epochs} epochs, batch {budget.batch_size}, "
        f"lr {budget.lr if budget.lr is not None else 'of the method'}; "
        f"probe at {', '.join(f'{f:.0%}' for f in FRACTIONS)} of train patients; bootstrap n = {budget.n_boot}"
    ]
    for method in methods:
        own = settings_for(method, budget)
        if own != budget:
            changed = {
                k: getattr(own, k)
                for k in ("arch", "size", "epochs", "batch_size", "lr", "options")
                if getattr(own, k) != getattr(budget, k)
            }
            lines.append(f"  {method}: {changed}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    from cxrbench.pretrain import method_names

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--methods", help=f"comma-separated (default: the image-only ones: {','.join(image_methods())})"
    )
    parser.add_argument("--quick", action="store_true", help="tiny budget (a smoke check of the script, minutes)")
    parser.add_argument("--run", type=Path, help="run directory to keep (and reuse on a rerun); default: temporary")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-reference", action="store_true", help="do not add supervised (the speed reference)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared 2-core box)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="change the budget for this run (n_patients, split, seeds, size, arch, epochs, batch_size, lr, n_boot), repeatable",
    )
    parser.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="METHOD:KEY=VALUE",
        help="a method option for this run (as `cxrbench pretrain --option`), repeatable",
    )
    args = parser.parse_args(argv)
    known = method_names()
    methods = args.methods.split(",") if args.methods else image_methods()
    unknown = [m for m in methods if m not in known]
    if unknown:
        parser.error(f"unknown method(s) {', '.join(unknown)} (known: {', '.join(known)})")
    if "supervised" not in methods and not args.no_reference:  # the speed reference, trained in the same run
        methods.append("supervised")
    import torch

    torch.set_num_threads(args.threads)
    os.environ.setdefault("CXRBENCH_QUIET", "1")
    budget = QUICK if args.quick else BUDGET
    try:
        budget = with_changes(budget, args.set, args.option)
    except ValueError as exc:
        parser.error(str(exc))
    print(describe(budget, methods), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        run = args.run or Path(tmp) / "run"
        started = time.perf_counter()
        result = run_bench(run, methods, budget, device=args.device)
        print(format_table(result["mean"], result["speeds"], methods, result["arch"], result["size"]))
        print("pretrain seconds: " + ", ".join(f"{m} {s:.0f}" for m, s in result["seconds"].items()))
        for method, message in result["failed"].items():
            print(f"{method}: not run at this budget: {message}")
        print(f"total {time.perf_counter() - started:.0f} s")


def test_bench_quick(tmp_path, one_torch_thread, monkeypatch) -> None:
    """The quick budget on two methods: every stage runs and the table has their rows; a method that
    cannot run at the budget (here: an unknown option) is reported and the others still compared."""
    monkeypatch.setitem(SETTINGS, "flip", {"options": {"no_such_option": 1}})
    monkeypatch.setitem(SETTINGS, "rotation", {"size": 40})  # a size of its own: a run beside, at 40 px
    methods = ["rotation", "flip", "medaug", "mae", "supervised"]
    result = run_bench(tmp_path / "run", methods, QUICK)
    mean = result["mean"]
    # medaug's encoder is medaug-synthetic (a published encoder is called medaug): shown as medaug
    assert set(mean["encoder"]) == {"rotation", "medaug", "mae", "supervised"}
    assert len(mean) == 4 * len(FRACTIONS)
    assert all(v > 0 for v in result["speeds"].values())
    assert "no_such_option" in result["failed"]["flip"]
    # mae ran on its ViT against random init of that ViT, in a run of its own
    assert result["arch"]["mae"] == SETTINGS["mae"]["arch"] != result["arch"]["rotation"]
    assert (tmp_path / f"run-{SETTINGS['mae']['arch']}" / "comparisons").is_dir()
    assert (tmp_path / f"run-{QUICK.arch}-40px" / "comparisons").is_dir() and result["arch"]["rotation"] == QUICK.arch
    table = format_table(mean, result["speeds"], methods, result["arch"], result["size"])
    assert table.count("| flip |") == len(FRACTIONS) and "| rotation | 10% |" in table
    for other in ("mae", "rotation"):  # no speed ratio against a reference of another architecture or size
        row = next(line for line in table.splitlines() if line.startswith(f"| {other} | 100%"))
        assert row.endswith("|  |"), row


if __name__ == "__main__":
    main()
