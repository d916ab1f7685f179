"""Benchmark: pretraining speed (images/s) of every method against plain ``supervised`` training of the
same architecture, on the same device, batch and images, in the same run (not a unit test).

Run: ``python tests/perf/bench_pretrain_speed.py [--device cuda] [--arch resnet50] [--size 224]
[--batch 64] [--steps 20] [--methods simclr,moco]``. CPU smoke: the defaults (resnet18, 64 px,
batch 32, 6 steps; a few minutes on 2 cores). Goal: two-view methods >= 70 % of supervised.

Each method trains through the engine's real loop (``pretrain_loop``: views, heads, teachers,
queues, the optimizer step and the per-step log) on random uint8 images; images/s is the median of
the per-step log's ``images_per_s`` after ``--warmup`` steps; each method is measured ``--rounds``
times, the rounds in alternating order, and the median is reported. A two-view method does two forward
and backward passes (or one plus a teacher's forward) per image, so its compute per image is about
twice supervised's: the ``per view`` column (img/s x views) shows the overhead apart from that.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

GOAL = 0.70
#: views each image is encoded in with gradients or by a teacher (methods not listed: one); the goal
#: is stated for methods with two or more
VIEWS = {"simclr": 2, "moco": 2, "byol": 2, "medaug": 2, "mean-teacher": 2, "dino": 2}
N_LABELS = 5


def measure(
    method_name: str,
    *,
    arch: str,
    size: int,
    batch: int,
    steps: int,
    warmup: int,
    device: str,
    precision: str | None,
    workdir: Path,
) -> float:
    """Median images/s of ``method_name`` over ``steps`` logged steps after ``warmup`` ones."""
    import numpy as np
    import torch

    from cxrbench.engine.device import Device
    from cxrbench.models.sources import resolve_encoder
    from cxrbench.pretrain import get_method
    from cxrbench.pretrain.base import pretrain_loop, train_config

    cls = get_method(method_name)
    n = batch * (warmup + steps)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
    encoder = resolve_encoder("random", arch=arch).require().build(input_size=size, seed=0)
    torch.manual_seed(0)
    # per-image columns a method may declare (``Method.fields``), as the stage passes them: two images
    # per patient and study, frontal views, a short report
    columns = {
        "targets": rng.integers(0, 2, (n, N_LABELS)).astype(np.float32),
        "patient_id": np.array([f"p{i // 2}" for i in range(n)], dtype=object),
        "study_id": np.array([f"s{i // 2}" for i in range(n)], dtype=object),
        "view": np.array(["PA"] * n, dtype=object),
        "report": np.array(["No acute cardiopulmonary process."] * n, dtype=object),
    }
    missing = [f for f in cls.fields if f not in columns]
    if missing:
        raise SystemExit(f"{method_name}: no synthetic values for its fields {missing}; add them to measure()")
    fields = {f: columns[f] for f in cls.fields} or None
    if "targets" in cls.fields:  # the supervised reference: random multi-label targets
        method = cls(encoder, num_labels=N_LABELS, task="multilabel")
    else:
        method = cls(encoder)
    config = train_config(cls, {"epochs": 1, "batch_size": batch})
    _, log = pretrain_loop(
        method,
        images,
        np.arange(n),
        config,
        seed=0,
        device=Device.choose(device, precision=precision),
        checkpoint_dir=workdir / method_name,
        fields=fields,
    )
    rates = [row["images_per_s"] for row in log.rows[warmup:]]
    return float(np.median(rates))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N")
    parser.add_argument("--precision", default=None, help="fp32, bf16, fp16 (default: the device's)")
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per method")
    parser.add_argument("--warmup", type=int, default=2, help="untimed first steps")
    parser.add_argument("--rounds", type=int, default=3, help="measurements per method (median reported)")
    parser.add_argument("--methods", help="comma-separated (default: every method)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)

    import torch

    from cxrbench.pretrain import method_names

    known = method_names()
    methods = args.methods.split(",") if args.methods else known
    unknown = [m for m in methods if m not in known]
    if unknown:
        parser.error(f"unknown method(s) {', '.join(unknown)} (known: {', '.join(known)})")
    methods = ["supervised", *[m for m in methods if m != "supervised"]]
    torch.set_num_threads(args.threads)
    if args.device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True
    print(
        f"device {args.device} ({torch.cuda.get_device_name(args.device) if args.device.startswith('cuda') else 'cpu'},"
        f" {args.threads} threads), arch {args.arch}, {args.size} px, batch {args.batch}, "
        f"{args.steps} timed steps after {args.warmup}",
        flush=True,
    )
    runs: dict[str, list[float]] = {name: [] for name in methods}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):  # rounds in alternating order: a shared machine's drift hits all alike
            for name in methods if round_ % 2 == 0 else methods[::-1]:
                runs[name].append(
                    measure(
                        name, arch=args.arch, size=args.size, batch=args.batch, steps=args.steps,
                        warmup=args.warmup, device=args.device, precision=args.precision,
                        workdir=Path(tmp) / str(round_),
                    )
                )  # fmt: skip
                print(f"  round {round_ + 1}: {name}: {runs[name][-1]:.1f} img/s", flush=True)
    rates = {name: float(statistics.median(values)) for name, values in runs.items()}
    reference = rates["supervised"]
    print("| method | views | img/s | vs supervised | per view vs supervised | goal |")
    print("|---|---|---|---|---|---|")
    for name in methods:
        views = VIEWS.get(name, 1)
        ratio = rates[name] / reference
        goal = ""
        if views >= 2:
            goal = "met" if ratio >= GOAL else f"missed (< {GOAL:.0%})"
        print(f"| {name} | {views} | {rates[name]:.1f} | {ratio:.0%} | {ratio * views:.0%} | {goal} |")


if __name__ == "__main__":
    main()
