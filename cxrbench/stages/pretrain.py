"""`cxrbench pretrain`: train an encoder with a self-supervised method on a prepared dataset's train split."""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cxrbench import distributed
from cxrbench.console import progress
from cxrbench.data.prepared import load_prepared
from cxrbench.models.encoders import create_encoder, save_encoder
from cxrbench.pretrain import get_method
from cxrbench.pretrain.loop import pretrain_loop
from cxrbench.rundir import Manifest, Stage
from cxrbench.training import Device, batch_workers

DEFAULT_ARCH = "resnet50"


def encoder_dir(run: Path, name: str) -> Path:
    """``RUN/encoders/NAME``: where a pretrain output lives (encoder.safetensors + encoder.json)."""
    return Path(run) / "encoders" / name


def pretrain(
    run: Path,
    method: str,
    *,
    dataset: str,
    name: str | None = None,
    arch: str | None = None,
    init: str = "random",
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    seed: int = 0,
    options: dict[str, Any] | None = None,
    device: str | None = None,
    precision: str | None = None,
    num_workers: int | None = None,
    force: bool = False,
) -> Manifest:
    """Pretrain ``method`` on ``dataset``'s train split; the encoder is saved as ``RUN/encoders/NAME``.

    Under ``torchrun`` (WORLD_SIZE > 1) every rank trains its part of each batch; rank 0 alone holds
    the stage lock and writes checkpoints and the encoder. The manifest returned on other ranks is
    not complete. ``num_workers``: cache-reading processes (None: 4 on CUDA, 0 on CPU).
    """
    method_cls = get_method(method)
    dist, device = distributed.setup(device)
    hw = Device.choose(device, precision=precision)
    workers = batch_workers(num_workers, hw)
    name = name or method
    options = dict(options or {})
    settings = {
        "method": method, "dataset": dataset, "arch": arch or DEFAULT_ARCH, "init": init,
        "epochs": epochs or method_cls.defaults["epochs"],
        "batch_size": batch_size or method_cls.defaults["batch_size"],
        "lr": lr or method_cls.defaults["lr"], "options": options,
    }
    prepared = load_prepared(run, dataset)
    home = encoder_dir(run, name)
    stage = Stage(run, "pretrain", home / "manifest.json", settings=settings, inputs=[prepared.manifest],
                  seed=seed, what=f"pretrained encoder '{name}'")
    encoder = None

    def train() -> list[float]:
        nonlocal encoder
        size = int(prepared.manifest.settings["image"]["size"])
        encoder = create_encoder(init, arch=settings["arch"], run_dir=run, input_size=size, seed=seed)
        torch.manual_seed(seed)  # the method's own layers (projection head) start the same in every run
        model = method_cls(encoder, **options)
        rows = prepared.split("train")["cache_index"].to_numpy(dtype=np.int64)
        steps = settings["epochs"] * (len(rows) // min(settings["batch_size"], len(rows)))
        bar = progress(steps, f"pretrain {name}") if dist.is_main else None
        with bar if bar is not None else contextlib.nullcontext(lambda n=1: None) as advance:
            return pretrain_loop(
                model, prepared.images(), rows, epochs=settings["epochs"], batch_size=settings["batch_size"],
                lr=settings["lr"], seed=seed, device=hw,
                checkpoint_dir=home / "checkpoints" / stage.key[:16], advance=advance, dist=dist,
                num_workers=workers,
            )

    def write(history: list[float]) -> None:
        for path in save_encoder(encoder, home, extra={"method": method, "dataset": dataset}):
            stage.record(path)
        stage.extra["loss_per_epoch"] = [round(v, 6) for v in history]
        stage.extra["world_size"] = dist.world_size
        stage.extra["precision"] = hw.precision
        shutil.rmtree(home / "checkpoints", ignore_errors=True)

    distributed.stage_on_rank0(dist, stage, force=force, work=train, write=write)
    return stage.manifest
