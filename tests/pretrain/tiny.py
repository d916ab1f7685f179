"""Shared by the method tests: a tiny BatchNorm-free encoder, a one-process Step, and the check that a
run killed after a checkpoint resumes to bitwise the same weights (CPU)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from cxrbench.data.partners import Partners
from cxrbench.engine.device import Device
from cxrbench.engine.distributed import Dist
from cxrbench.engine.loop import Step, TrainConfig
from cxrbench.pretrain.base import Method, pretrain_loop


class TinyEncoder(nn.Module):
    """4x4 patches -> 8 channels (tokens); pooled features are their mean. No BatchNorm."""

    num_features = 8
    input_size = 16

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(1, 8, kernel_size=4, stride=4)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        return self.patch(x).flatten(2).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tokens(x).mean(dim=1)


def images(n: int = 12, size: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size), dtype=np.uint8)


def step(seed: int = 0, *, total: int, update: int = 0, updates: int = 10) -> Step:
    return Step(0, 0, total, torch.Generator().manual_seed(seed), Dist(), update, updates)


def losses_on_a_fixed_batch(method: Method, batch: dict, steps: int = 8, lr: float = 0.05) -> list[float]:
    """Train on one batch with the same views every step; the loss after each step."""
    optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=lr, momentum=0.9)
    out = []
    for i in range(steps):
        ctx = step(0, total=len(batch["images"]), update=i, updates=steps)
        loss = method.loss(batch, ctx)
        optimizer.zero_grad()
        loss.backward.backward()
        optimizer.step()
        method.after_step(ctx)
        out.append(float(loss.value.detach() if torch.is_tensor(loss.value) else loss.value))
    assert all(np.isfinite(out)), out
    return out


class _Stop(Exception):
    pass


def assert_resumes_exactly(
    tmp_path: Path,
    make: Callable[[], Method],
    config: TrainConfig,
    *,
    n: int = 12,
    fields: dict | None = None,
    partners: Partners | None = None,
    kill_at: int = 4,
) -> list[float]:
    """A run killed in step ``kill_at`` (after the checkpoint of the step before) and resumed ends with
    bitwise the weights, buffers (queues, teachers) and epoch losses of an uninterrupted run
    (``fields``: per-row batch fields; ``partners``: partner images, as for MedAug)."""
    pixels = images(n)

    def run(directory: Path, **kwargs) -> tuple[Method, list[float]]:
        torch.manual_seed(0)
        method = make()
        history, _ = pretrain_loop(
            method,
            pixels,
            np.arange(n),
            config,
            seed=0,
            device=Device.choose("cpu"),
            checkpoint_dir=directory,
            fields=fields,
            partners=partners,
            **kwargs,
        )
        return method, history

    reference, ref_history = run(tmp_path / "whole")
    calls = []

    def kill(k: int = 1) -> None:
        calls.append(k)
        if len(calls) == kill_at:
            raise _Stop

    with pytest.raises(_Stop):
        run(tmp_path / "cut", checkpoint_every=1, advance=kill)
    resumed, history = run(tmp_path / "cut", checkpoint_every=1)
    assert history == pytest.approx(ref_history, rel=1e-6)
    want, got = reference.state_dict(), resumed.state_dict()
    assert list(want) == list(got)
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=0, atol=0, msg=key)
    assert all(np.isfinite(ref_history)), ref_history
    return ref_history
