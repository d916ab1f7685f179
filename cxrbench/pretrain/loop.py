"""The training loop every pretraining method shares: AdamW + cosine, bf16 on GPU, resumable, DDP."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cxrbench.distributed import Dist
from cxrbench.errors import CxrbenchError
from cxrbench.training import (
    Device,
    EpochBatches,
    cosine_schedule,
    load_checkpoint,
    loader,
    optimizer_step,
    save_checkpoint,
    step_seed,
    to_device,
)


def pretrain_loop(
    method: nn.Module,
    images: np.ndarray,
    rows: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    device: Device,
    checkpoint_dir: Path,
    checkpoint_every: int = 0,
    advance: Callable[[int], None] = lambda n=1: None,
    dist: Dist | None = None,
    num_workers: int = 0,
) -> list[float]:
    """Train ``method`` (whose forward ``(batch, generator, dist, total)`` is the loss of a batch)
    on cached ``images[rows]``.

    Checkpoints after every epoch (and every ``checkpoint_every`` steps if > 0); a rerun with the same
    ``checkpoint_dir`` continues from the last one. Returns the mean loss per epoch.
    ``num_workers`` processes read batches from the cache ahead of the step.

    With ``dist`` (several ranks) each rank loads and encodes its slice of every batch under
    DistributedDataParallel and the method gathers what its loss needs from the whole batch, so
    the gradient is the single-process one (BatchNorm statistics stay per rank). Rank 0 alone
    writes checkpoints; every rank resumes from them.
    """
    dist = dist or Dist()
    if len(rows) == 0:
        raise CxrbenchError("pretraining needs images in the train split")
    batch_size = min(batch_size, len(rows))
    if dist.enabled and batch_size < dist.world_size:
        raise CxrbenchError(f"batch size {batch_size} is smaller than the {dist.world_size} processes")
    data = EpochBatches(images, rows, None, seed=seed, batch_size=batch_size, epochs=epochs, drop_last=True,
                        shard=dist.shard if dist.enabled else None)
    method.to(device.device)
    optimizer = torch.optim.AdamW(method.parameters(), lr=lr, weight_decay=1e-4)
    scheduler = cosine_schedule(optimizer, len(data))
    scaler = device.grad_scaler()
    history: list[float] = []
    start_epoch, start_step, running = 0, 0, 0.0
    state = dist.broadcast(load_checkpoint(checkpoint_dir) if dist.is_main else None)
    if state is not None:
        method.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state.get("scaler", {}))  # a disabled scaler ignores it
        start_epoch, start_step = int(state["epoch"]), int(state["step"])
        history, running = list(state["history"]), float(state["running"])
        advance(data.position(start_epoch, start_step))

    net: nn.Module = method
    if dist.enabled:
        ids = [device.device.index] if device.device.type == "cuda" else None
        net = nn.parallel.DistributedDataParallel(method, device_ids=ids)

    def checkpoint(epoch: int, step: int) -> None:
        if not dist.is_main:
            return
        save_checkpoint(checkpoint_dir, {
            "model": method.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "epoch": epoch, "step": step,
            "history": history, "running": running,
        })

    method.train()
    steps = data.steps_per_epoch
    for epoch, step, block, _ in loader(data, start=data.position(start_epoch, start_step),
                                        num_workers=num_workers, device=device.device):
        generator = torch.Generator().manual_seed(step_seed(seed, epoch, step))
        torch.manual_seed(step_seed(seed, epoch, step, 1))
        batch = to_device(block, device.device)
        with device.autocast():
            loss = net(batch, generator, dist, len(data.plan(epoch)[step]))
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss * dist.world_size).backward()  # DDP averages over ranks: x world_size
        optimizer_step(scaler, optimizer, scheduler)
        running += float(loss.detach())
        advance(1)
        if checkpoint_every and (step + 1) % checkpoint_every == 0 and step + 1 < steps:
            checkpoint(epoch, step + 1)
        if step + 1 == steps:
            history.append(running / steps)
            running = 0.0
            checkpoint(epoch + 1, 0)
    return history
