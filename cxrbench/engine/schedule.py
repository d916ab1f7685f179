"""Learning-rate schedules and the per-step values methods anneal (momentum, temperature, mask ratio)."""

from __future__ import annotations

import math
import re
import warnings

import torch


def warmup_cosine(
    optimizer: torch.optim.Optimizer, total_steps: int, *, warmup_steps: int = 0
) -> torch.optim.lr_scheduler.LRScheduler:
    """Linear warm-up over ``warmup_steps``, then cosine annealing of the learning rate to 0."""
    total = max(total_steps, 1)
    warmup = max(int(warmup_steps), 0)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if warmup:
            rest = max(total - warmup, 1)
            return 0.5 * (1 + math.cos(math.pi * min(step - warmup, rest) / rest))
        return 0.5 * (1 + math.cos(math.pi * min(step, total) / total))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def cosine_value(start: float, end: float, progress: float) -> float:
    """A value annealed from ``start`` to ``end`` along a half cosine; ``progress`` in [0, 1]
    (BYOL/DINO teacher momentum, DINO teacher temperature, ...)."""
    progress = min(max(progress, 0.0), 1.0)
    return end - (end - start) * 0.5 * (1 + math.cos(math.pi * progress))


def optimizer_step(
    scaler: torch.amp.GradScaler, optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler
) -> None:
    """Apply the (unscaled) gradients and advance the schedule by one step.

    With fp16 the scaler skips a step whose gradients overflowed (the first ones, while it finds
    its scale); the schedule still advances, so it stays aligned with the step plan that resuming
    relies on, and torch's warning about that order is silenced.
    """
    scaler.step(optimizer)
    scaler.update()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()` before"))
        scheduler.step()
