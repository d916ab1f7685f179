"""The one training loop, shared by pretraining and finetuning: precision, DDP, gradient
accumulation, warm-up + cosine, checkpoints every epoch (and every N steps) that resume bitwise,
and the per-step log. What a method or recipe differs in comes through ``Task`` hooks."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cxrbench.engine.checkpoint import load_checkpoint, save_checkpoint
from cxrbench.engine.data import IMAGE_KEYS, Batch, EpochBatches, loader, step_seed, to_device
from cxrbench.engine.device import Device
from cxrbench.engine.distributed import Dist
from cxrbench.engine.log import StepLog
from cxrbench.engine.schedule import optimizer_step, warmup_cosine
from cxrbench.errors import CxrbenchError

OPTIMIZERS = ("sgd", "adamw")


@dataclass(frozen=True)
class TrainConfig:
    """How long and how fast: epochs, global batch, optimizer, schedule, accumulation."""

    epochs: int
    batch_size: int
    lr: float
    optimizer: str = "adamw"
    weight_decay: float = 0.0
    momentum: float = 0.9
    warmup_steps: int = 0
    accumulate: int = 1
    drop_last: bool = False

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise CxrbenchError(f"optimizer {self.optimizer!r}: choose one of {', '.join(OPTIMIZERS)}")
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise CxrbenchError("epochs, batch size and lr must be positive")
        if self.accumulate < 1 or self.warmup_steps < 0:
            raise CxrbenchError("gradient accumulation must be >= 1 and warm-up steps >= 0")


@dataclass
class Step:
    """Where the loop is, handed to every hook: position, the step's generator, the group."""

    epoch: int
    step: int
    total: int  # images in the whole (global) batch of this step
    generator: torch.Generator  # seeded by (seed, epoch, step): reproducible views and masks
    dist: Dist
    update: int  # optimizer steps taken before this one
    updates: int  # optimizer steps of the whole run

    @property
    def progress(self) -> float:
        """Fraction of training done, for schedules of a method's own (momentum, temperature)."""
        return self.update / max(self.updates, 1)


@dataclass
class Loss:
    """What a task's ``loss`` returns: ``backward`` is differentiated; ``value`` and ``terms`` are logged.

    Under DDP gradients are averaged over ranks, so a loss normalised over the whole (gathered)
    batch is returned multiplied by ``step.dist.world_size``.
    """

    backward: torch.Tensor
    value: torch.Tensor | float
    terms: dict[str, torch.Tensor | float] = field(default_factory=dict)


class Task:
    """The hooks of one training run; defaults are plain training of ``model``.

    ``loss`` is required. ``parameter_groups``/``optimizer`` for per-group settings or another
    optimizer; ``after_step`` for EMA teachers and queues; ``end_epoch`` for validation and
    selection; ``should_stop`` for early stopping (called on every rank); ``state_dict`` for what
    must survive a resume beyond the model, optimizer and schedule.
    """

    model: nn.Module

    def parameter_groups(self) -> list[dict[str, Any]]:
        return [{"params": [p for p in self.model.parameters() if p.requires_grad]}]

    def optimizer(self, config: TrainConfig) -> torch.optim.Optimizer:
        groups = self.parameter_groups()
        if config.optimizer == "sgd":
            return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
        return torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)

    def loss(self, net: nn.Module, batch: Batch, step: Step) -> Loss:
        raise NotImplementedError

    def after_step(self, step: Step) -> None:
        """After each optimizer step."""

    def end_epoch(self, epoch: int, *, mean_loss: float, last_loss: float) -> None:
        """After the last step of ``epoch``, before its checkpoint."""

    def should_stop(self, epoch: int) -> bool:
        return False

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""


def _to_device(batch: Batch, device: torch.device) -> Batch:
    moved: Batch = {}
    for name, value in batch.items():
        if name in IMAGE_KEYS:
            moved[name] = to_device(value, device)
        elif isinstance(value, torch.Tensor):
            moved[name] = value.to(device, non_blocking=True)
        else:
            moved[name] = value
    return moved


def fit(
    task: Task,
    data: EpochBatches,
    config: TrainConfig,
    *,
    seed: int,
    device: Device,
    checkpoint_dir: Path,
    checkpoint_every: int = 0,
    advance: Callable[[int], None] = lambda n=1: None,
    dist: Dist | None = None,
    num_workers: int = 0,
) -> StepLog:
    """Train ``task.model`` over ``data``'s steps; returns the per-step log.

    Checkpoints after every epoch (and every ``checkpoint_every`` steps if > 0); a rerun with the
    same ``checkpoint_dir`` continues from the last one bitwise (CPU). With ``dist`` (several ranks)
    each rank holds its slice of every batch under DistributedDataParallel; rank 0 alone writes
    checkpoints and every rank resumes from them. BatchNorm statistics stay per rank.
    """
    dist = dist or Dist()
    if checkpoint_every < 0:
        raise CxrbenchError(f"checkpoint_every must be >= 0, got {checkpoint_every}")
    if checkpoint_every % config.accumulate:
        raise CxrbenchError(
            f"checkpoint every {checkpoint_every} steps is not a multiple of the {config.accumulate} accumulated steps"
        )
    model = device.prepare(task.model)
    optimizer = task.optimizer(config)
    per_epoch = -(-data.steps_per_epoch // config.accumulate)
    updates = per_epoch * data.epochs
    scheduler = warmup_cosine(optimizer, updates, warmup_steps=config.warmup_steps)
    scaler = device.grad_scaler()
    epoch0, step0, update, running, log = 0, 0, 0, 0.0, StepLog()
    saved = dist.broadcast(load_checkpoint(checkpoint_dir) if dist.is_main else None)
    if saved is not None:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        scaler.load_state_dict(saved.get("scaler", {}))  # a disabled scaler ignores it
        task.load_state_dict(saved.get("task", {}))
        epoch0, step0, update = int(saved["epoch"]), int(saved["step"]), int(saved["update"])
        running, log = float(saved["running"]), StepLog(saved.get("log"))
        advance(data.position(epoch0, step0))

    net: nn.Module = model
    if dist.enabled:
        ids = [device.device.index] if device.device.type == "cuda" else None
        net = nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def checkpoint(epoch: int, step: int) -> None:
        if dist.is_main:
            save_checkpoint(
                checkpoint_dir,
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict(),
                    "epoch": epoch,
                    "step": step,
                    "update": update,
                    "running": running,
                    "log": log.rows,
                    "task": task.state_dict(),
                },
            )

    first, steps = True, data.steps_per_epoch
    for epoch, step, batch in loader(
        data, start=data.position(epoch0, step0), num_workers=num_workers, device=device.device
    ):
        if step == 0 or first:
            if task.should_stop(epoch):
                break
            net.train()
            first = False
        generator = torch.Generator().manual_seed(step_seed(seed, epoch, step))
        torch.manual_seed(step_seed(seed, epoch, step, 1))
        batch = _to_device(batch, device.device)
        ctx = Step(epoch, step, len(data.plan(epoch)[step]), generator, dist, update, updates)
        last = step + 1 == steps
        apply = last or (step + 1) % config.accumulate == 0
        if step % config.accumulate == 0:
            optimizer.zero_grad(set_to_none=True)
        sync = net.no_sync() if dist.enabled and not apply else contextlib.nullcontext()
        with sync:
            with device.autocast():
                out = task.loss(net, batch, ctx)
            backward = out.backward if config.accumulate == 1 else out.backward / config.accumulate
            scaler.scale(backward).backward()
        log.tick(len(batch["images"]))
        value = float(out.value.detach() if isinstance(out.value, torch.Tensor) else out.value)
        if apply:
            lr = optimizer.param_groups[0]["lr"]
            optimizer_step(scaler, optimizer, scheduler)
            update += 1
            task.after_step(ctx)
            terms = {k: float(v.detach() if isinstance(v, torch.Tensor) else v) for k, v in out.terms.items()}
            log.add(step=update, epoch=epoch, lr=lr, terms={"loss": value, **terms})
        running += value
        advance(1)
        if checkpoint_every and (step + 1) % checkpoint_every == 0 and not last:
            checkpoint(epoch, step + 1)
        if last:
            task.end_epoch(epoch, mean_loss=running / steps, last_loss=value)
            running = 0.0
            checkpoint(epoch + 1, 0)
    return log
