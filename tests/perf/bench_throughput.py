"""Benchmark: feature-extraction and finetuning throughput (img/s) of cxrbench's loops against
plain-torch loops on the same model, device and batch, measured in the same run.

Run: python tests/perf/bench_throughput.py [--device cuda] [--archs resnet50,densenet121,
vit_base_patch16_224] [--batch 64] [--steps 20]. Goal on a GPU (bf16): pipeline >= 80 % of the plain
loop. CPU smoke: --device cpu --size 64 --archs resnet18 --steps 5 (about a minute on 2 cores).

Pipeline = ``extract_features`` / ``finetune_loop`` reading a synthetic uint8 memmap cache (batch
loading, host-to-device copy, grey-to-RGB and normalisation included). Plain = ``model(x)`` on a
ready [B, 3, H, W] tensor on the device (channels_last and bf16 autocast on CUDA); training adds
BCE, backward and an SGD step. Models are randomly initialised (no weights needed). Finetuning is
timed between step callbacks, so per-epoch validation and checkpointing are not counted.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

DEFAULT_ARCHS = "resnet50,densenet121,vit_base_patch16_224"
N_LABELS = 14
GOAL = 0.80


def make_cache(path: Path, n: int, size: int, *, seed: int = 0) -> np.ndarray:
    """Return a read-only uint8 memmap [n, size, size] of random images written to ``path``."""
    rng = np.random.default_rng(seed)
    cache = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(n, size, size))
    for start in range(0, n, 256):
        stop = min(start + 256, n)
        cache[start:stop] = rng.integers(0, 256, size=(stop - start, size, size), dtype=np.uint8)
    cache.flush()
    del cache
    return np.load(path, mmap_mode="r")


def _sync(device) -> None:
    import torch

    if device.device.type == "cuda":
        torch.cuda.synchronize(device.device)


def plain_extract(backbone, *, batch: int, size: int, warmup: int, steps: int, device) -> float:
    """Return img/s of ``backbone(x)`` under no_grad on a fixed device tensor."""
    import torch

    cuda = device.device.type == "cuda"
    model = backbone.eval().to(device.device)
    x = torch.rand(batch, 3, size, size, device=device.device)
    if cuda:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), device.autocast():
        for _ in range(warmup):
            model(x)
        _sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            model(x)
        _sync(device)
    return batch * steps / (time.perf_counter() - start)


def pipeline_extract(encoder, images: np.ndarray, *, batch: int, warmup: int, steps: int, device) -> float:
    """Return img/s of ``extract_features`` over ``steps`` batches read from the cache."""
    from cxrbench.adapt.features import extract_features

    rows = np.arange(batch * (warmup + steps))
    extract_features(encoder, images, rows[: batch * warmup], batch_size=batch, device=device)
    _sync(device)
    start = time.perf_counter()
    extract_features(encoder, images, rows[batch * warmup :], batch_size=batch, device=device)
    _sync(device)
    return batch * steps / (time.perf_counter() - start)


def plain_train(backbone, *, batch: int, size: int, warmup: int, steps: int, device) -> float:
    """Return img/s of forward + BCE + backward + SGD step on fixed device tensors."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    cuda = device.device.type == "cuda"
    model = nn.Sequential(backbone, nn.Linear(backbone.num_features, N_LABELS))
    model.train().to(device.device)
    x = torch.rand(batch, 3, size, size, device=device.device)
    y = (torch.rand(batch, N_LABELS, device=device.device) < 0.3).float()
    if cuda:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step() -> None:
        with device.autocast():
            logits = model(x)
        loss = F.binary_cross_entropy_with_logits(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(warmup):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return batch * steps / (time.perf_counter() - start)


def pipeline_train(
    encoder,
    images: np.ndarray,
    *,
    batch: int,
    warmup: int,
    steps: int,
    device,
    channels_last: bool = False,
) -> float:
    """Return img/s of ``finetune_loop`` steps ``warmup+1 .. warmup+steps`` of a one-epoch run."""
    import torch

    from cxrbench.adapt.finetune import Classifier, Recipe, finetune_loop

    n = batch * (warmup + steps)
    rng = np.random.default_rng(1)
    targets = (rng.random((n, N_LABELS)) < 0.3).astype(np.float32)
    model = Classifier(encoder, N_LABELS)
    if device.device.type == "cuda":  # the finetune stage gets a fresh (contiguous) encoder
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        model = model.to(memory_format=fmt)
    recipe = Recipe(optimizer="sgd", lr=1e-3, momentum=0.9, batch_size=batch, epochs=1)
    marks: dict[int, float] = {}
    done = 0

    def advance(k: int = 1) -> None:
        nonlocal done
        done += k
        if done in (warmup, warmup + steps):
            _sync(device)
            marks[done] = time.perf_counter()

    val_rows = np.arange(2)  # validation runs after the timed window; keep it tiny anyway
    with tempfile.TemporaryDirectory() as ckpt:  # fresh: a leftover checkpoint would resume
        finetune_loop(
            model,
            images,
            (np.arange(n), targets),
            (val_rows, targets[:2]),
            recipe=recipe,
            task="multilabel",
            seed=0,
            device=device,
            checkpoint_dir=Path(ckpt),
            advance=advance,
        )
    return batch * steps / (marks[warmup + steps] - marks[warmup])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    parser.add_argument("--archs", default=DEFAULT_ARCHS, help="comma-separated timm archs")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20, help="timed batches per measurement")
    parser.add_argument("--warmup", type=int, default=2, help="untimed batches before each")
    parser.add_argument("--size", type=int, default=224, help="image and model input size (px)")
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="alternating pipeline/plain measurements; the median is reported",
    )
    parser.add_argument("--threads", type=int, default=2, help="CPU threads")
    parser.add_argument("--skip-train", action="store_true", help="time feature extraction only")
    parser.add_argument(
        "--train-channels-last",
        action="store_true",
        help="also time finetune_loop with the model converted to channels_last beforehand (CUDA only)",
    )
    args = parser.parse_args()
    for name in ("batch", "steps", "warmup", "repeats", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.size < 16:
        parser.error(f"--size must be >= 16, got {args.size}")

    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    from cxrbench.engine.device import Device
    from cxrbench.models.encoders import create_encoder

    torch.set_num_threads(args.threads)
    if args.device not in (None, "cpu") and not args.device.startswith("cuda"):
        parser.error(f"--device must be cpu or cuda[:N], got {args.device!r}")
    if args.device and args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available here; use --device cpu")
    device = Device.choose(args.device)
    archs = [a.strip() for a in args.archs.split(",") if a.strip()]
    n = args.batch * (args.warmup + args.steps)
    what = (
        torch.cuda.get_device_name(device.device) if device.device.type == "cuda" else (f"CPU, {args.threads} threads")
    )
    print(
        f"device: {what}; {'bf16 autocast' if device.amp else 'fp32'}; torch {torch.__version__}; "
        f"batch {args.batch}, {args.size} px, {args.warmup} warm-up + {args.steps} timed "
        f"batches, median of {args.repeats}"
    )

    kinds = ["extract"] + ([] if args.skip_train else ["train"])
    if args.train_channels_last and device.device.type == "cuda" and not args.skip_train:
        kinds.append("train-cl")
    results: list[tuple[str, str, float, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        images = make_cache(Path(tmp) / "images.npy", n, args.size)
        print(f"cache: {n} x {args.size}² uint8 memmap, written in {time.perf_counter() - t0:.1f}s")
        for arch in archs:
            encoder = create_encoder("random", arch=arch, input_size=args.size)
            common = dict(batch=args.batch, warmup=args.warmup, steps=args.steps, device=device)
            for kind in kinds:
                pipe, plain = [], []
                for _ in range(args.repeats):
                    if kind == "extract":
                        pipe.append(pipeline_extract(encoder, images, **common))
                        plain.append(plain_extract(encoder.backbone, size=args.size, **common))
                    else:
                        pipe.append(pipeline_train(encoder, images, **common, channels_last=kind == "train-cl"))
                        plain.append(plain_train(encoder.backbone, size=args.size, **common))
                p, q = statistics.median(pipe), statistics.median(plain)
                results.append((arch, kind, p, q))
                print(
                    f"  {arch:<24} {kind:<8} pipeline {p:8.1f} img/s   plain {q:8.1f} img/s   "
                    f"ratio {p / q:5.2f}  [pipeline {min(pipe):.1f}-{max(pipe):.1f}, "
                    f"plain {min(plain):.1f}-{max(plain):.1f}]",
                    flush=True,
                )
            del encoder
            if device.device.type == "cuda":
                torch.cuda.empty_cache()
    worst = min(p / q for _, _, p, q in results)
    print(
        f"lowest pipeline/plain ratio: {worst:.2f} (goal >= {GOAL:.2f}"
        f"{', measured on GPU' if device.amp else '; the goal is stated for GPU bf16'})"
    )


if __name__ == "__main__":
    main()
