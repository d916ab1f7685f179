"""Benchmark: image–report pretraining on phantoms end to end, with the figures the issue asks for.

Run: python tests/perf/bench_text.py [--patients 300 --epochs 30] (about 1.2 min per epoch on 2 CPUs). On the phantom run (their reports
agree with the drawn findings) ConVIRT is pretrained with a tiny BERT built from the reports'
words (no download), then: image→report recall@5 on test against chance (5 / distinct reports), the
linear probe of ConVIRT vs a random init (paired bootstrap Δ macro AUC from `compare`), and zero-shot
macro AUC with its CI. Goals: recall@5 well above chance, Δ > 0 with a CI excluding 0, zero-shot
macro AUC CI above 0.5.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("CXRBENCH_QUIET", "1")


def cli(*args: str) -> None:
    from cxrbench.cli import main

    try:
        main(list(args))
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise SystemExit(f"cxrbench {' '.join(args)} exited {exc.code}") from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--patients", type=int, default=300)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--arch", default="resnet10t")
    parser.add_argument("--n-boot", type=int, default=500)
    args = parser.parse_args()
    import pandas as pd
    import torch

    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    from cxrbench.data.prepared import load_prepared
    from tests.models.tiny_text import tiny_bert

    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        r = ("--run", str(run))
        start = time.perf_counter()
        cli("prepare", "synthetic", "--n-patients", str(args.patients), "--size", str(args.size), "--seed", "0", *r)
        samples = load_prepared(run, "synthetic").samples
        words = sorted({w for t in samples["report"].dropna() for w in re.findall(r"[a-z]+", t.lower())})
        bert = tiny_bert(Path(tmp) / "bert", width=64, layers=2, extra_words=tuple(words))
        options = []
        # a from-scratch tiny BERT: mean-pooled (its max-pooled or class-token outputs hardly differ
        # between texts at initialisation), every layer trained, the short IMPRESSION sections
        for kv in ("projection_dim=64", "hidden_dim=128", "max_length=96", "train_layers=-1", "pool=mean"):
            options += ["--option", kv]
        cli("pretrain", "convirt", "--dataset", "synthetic", "--arch", args.arch, "--epochs", str(args.epochs),
            "--batch-size", "16", "--lr", "1e-3", "--text-model", str(bert), "--sections", "impression", *options, *r)  # fmt: skip
        pretrained = time.perf_counter() - start
        cli("probe", "--dataset", "synthetic", "--encoder", "random", "--arch", args.arch, *r)
        cli("probe", "--dataset", "synthetic", "--encoder", "convirt-synthetic", *r)
        cli("probe", "--dataset", "synthetic", "--encoder", "convirt-synthetic", "--adaptation", "zeroshot", *r)
        cli("evaluate", "--n-boot", str(args.n_boot), *r)
        cli("compare", "--baseline", "random", *r)
        retrieval = pd.read_parquet(run / "evaluation" / "retrieval.parquet")
        metrics = pd.read_parquet(run / "evaluation" / "metrics.parquet")
        comparison = pd.read_parquet(run / "comparisons" / "synthetic.parquet")
        at5 = retrieval[retrieval["metric"] == "recall@5"].iloc[0]
        chance = 5 / at5["n_reports"]
        print(f"phantoms: {args.patients} patients, {args.size} px, {args.arch}, {args.epochs} epochs "
              f"(prepare + pretrain {pretrained:.0f} s)")  # fmt: skip
        print(f"image->report recall@5 (test, {at5['n_images']} images, {at5['n_reports']} distinct reports): "
              f"{at5['value']:.3f} [{at5['ci_low']:.3f}, {at5['ci_high']:.3f}] vs chance {chance:.3f}")  # fmt: skip
        mean = metrics[(metrics["label"] == "mean") & (metrics["metric"] == "auc")]
        for _, row in mean.iterrows():
            print(f"  {row['encoder']:<20} {row['adaptation']:<9} macro AUC {row['value']:.3f} "
                  f"[{row['ci_low']:.3f}, {row['ci_high']:.3f}]")  # fmt: skip
        delta = comparison[(comparison["label"] == "mean") & (comparison["adaptation"].astype(str) == "probe")]
        for _, row in delta.iterrows():
            print(f"  probe Δ macro AUC {row['encoder']} vs random: {row['delta']:+.3f} "
                  f"[{row['delta_ci_low']:+.3f}, {row['delta_ci_high']:+.3f}] p={row['p_value']:.4f}")  # fmt: skip


if __name__ == "__main__":
    main()
