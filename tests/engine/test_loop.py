"""The one training loop: gradient accumulation equals the large batch, warm-up + cosine by hand,
the per-step log, hooks, and a killed accumulated run resuming bitwise."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from cxrbench.engine.data import EpochBatches
from cxrbench.engine.device import Device
from cxrbench.engine.loop import Loss, Step, Task, TrainConfig, fit
from cxrbench.engine.schedule import cosine_value, warmup_cosine
from cxrbench.errors import CxrbenchError

pytestmark = pytest.mark.usefixtures("one_torch_thread")
N, SIDE = 16, 4


class _Regression(Task):
    """Mean squared error of a linear map of the pixels onto a per-image target."""

    def __init__(self) -> None:
        torch.manual_seed(0)
        self.model = nn.Linear(SIDE * SIDE, 1)
        self.steps: list[tuple[int, int, int]] = []
        self.epochs: list[float] = []

    def loss(self, net: nn.Module, batch, step: Step) -> Loss:
        pred = net(batch["images"].flatten(1)).squeeze(1)
        loss = ((pred - batch["y"]) ** 2).mean()
        return Loss(loss, loss, {"mse": loss})

    def after_step(self, step: Step) -> None:
        self.steps.append((step.epoch, step.step, step.update))

    def end_epoch(self, epoch: int, *, mean_loss: float, last_loss: float) -> None:
        self.epochs.append(mean_loss)

    def state_dict(self):
        return {"epochs": list(self.epochs)}

    def load_state_dict(self, state) -> None:
        self.epochs = list(state["epochs"])


def _data(batch_size: int, epochs: int = 2) -> EpochBatches:
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (N, SIDE, SIDE), dtype=np.uint8)
    y = rng.normal(size=N).astype(np.float32)
    return EpochBatches(images, np.arange(N), {"y": y}, seed=3, batch_size=batch_size, epochs=epochs)


def _fit(tmp_path: Path, *, batch_size: int, accumulate: int = 1, name: str = "ck", **kwargs):
    task = _Regression()
    config = TrainConfig(
        epochs=2,
        batch_size=batch_size,
        lr=0.05,
        optimizer="sgd",
        momentum=0.0,
        accumulate=accumulate,
        warmup_steps=kwargs.pop("warmup_steps", 0),
    )
    log = fit(
        task, _data(batch_size), config, seed=0, device=Device.choose("cpu"), checkpoint_dir=tmp_path / name, **kwargs
    )
    return task, log


def test_accumulating_two_half_batches_equals_the_whole_batch(tmp_path: Path) -> None:
    # batches() slices one permutation: two consecutive batches of 4 are one batch of 8
    whole, whole_log = _fit(tmp_path, batch_size=8, name="whole")
    halves, halves_log = _fit(tmp_path, batch_size=4, accumulate=2, name="halves")
    for a, b in zip(whole.model.parameters(), halves.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert len(whole_log.rows) == len(halves_log.rows) == 4  # optimizer steps, not micro-batches
    assert [r["lr"] for r in whole_log.rows] == pytest.approx([r["lr"] for r in halves_log.rows])
    assert [u for _, _, u in halves.steps] == [0, 1, 2, 3]


def test_warmup_then_cosine_by_hand() -> None:
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = warmup_cosine(opt, 10, warmup_steps=2)
    got = []
    for _ in range(10):
        got.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    want = [0.5, 1.0] + [0.5 * (1 + math.cos(math.pi * k / 8)) for k in range(8)]
    assert got == pytest.approx(want)
    plain = warmup_cosine(torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=2.0), 4)
    assert plain.get_last_lr() == [2.0]
    assert cosine_value(0.996, 1.0, 0.0) == pytest.approx(0.996) and cosine_value(0.996, 1.0, 1.0) == 1.0
    assert cosine_value(0.0, 1.0, 0.5) == pytest.approx(0.5)


def test_step_log_has_one_row_per_update_with_the_schedule_lr(tmp_path: Path) -> None:
    task, log = _fit(tmp_path, batch_size=4, warmup_steps=2)
    table = log.table().to_pandas()
    assert list(table.columns) == ["step", "epoch", "loss", "mse", "lr", "images_per_s"]
    assert table["step"].tolist() == list(range(1, 9)) and table["epoch"].tolist() == [0] * 4 + [1] * 4
    assert table["lr"].tolist()[:4] == pytest.approx([0.025, 0.05, 0.05, 0.05 * 0.5 * (1 + math.cos(math.pi / 6))])
    assert (table["images_per_s"] > 0).all()
    assert task.epochs == pytest.approx([table["loss"][:4].mean(), table["loss"][4:].mean()])
    written = log.write(tmp_path / "log.parquet")
    assert len(__import__("pandas").read_parquet(written)) == 8


class _Stop(Exception):
    pass


def test_a_killed_accumulated_run_resumes_bitwise(tmp_path: Path) -> None:
    reference, ref_log = _fit(tmp_path, batch_size=4, accumulate=2, name="whole")
    calls = []

    def kill(n: int = 1) -> None:
        calls.append(n)
        if len(calls) == 5:  # micro-step 5 ran; the checkpoint after micro-step 4 is on disk
            raise _Stop

    with pytest.raises(_Stop):
        _fit(tmp_path, batch_size=4, accumulate=2, name="cut", checkpoint_every=2, advance=kill)
    resumed, log = _fit(tmp_path, batch_size=4, accumulate=2, name="cut", checkpoint_every=2)
    for a, b in zip(reference.model.parameters(), resumed.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert resumed.epochs == reference.epochs
    assert [r["loss"] for r in log.rows] == [r["loss"] for r in ref_log.rows]


def test_early_stop_hook_and_bad_settings(tmp_path: Path) -> None:
    class _StopsAtOne(_Regression):
        def should_stop(self, epoch: int) -> bool:
            return epoch >= 1

    task = _StopsAtOne()
    fit(
        task,
        _data(8),
        TrainConfig(epochs=2, batch_size=8, lr=0.1),
        seed=0,
        device=Device.choose("cpu"),
        checkpoint_dir=tmp_path / "s",
    )
    assert len(task.epochs) == 1
    with pytest.raises(CxrbenchError, match="not a multiple"):
        _fit(tmp_path, batch_size=4, accumulate=2, checkpoint_every=3)
    with pytest.raises(CxrbenchError, match="optimizer 'lamb'"):
        TrainConfig(epochs=1, batch_size=1, lr=1.0, optimizer="lamb")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_the_loop_on_cuda_matches_the_cpu(tmp_path: Path, precision: str) -> None:
    # what tests/perf/device_checks.sh runs where a GPU is lent: the same task on CUDA (autocast,
    # loss scaling, channels-last preparation, accumulation) ends near the CPU fp32 weights
    cpu, _ = _fit(tmp_path, batch_size=4, accumulate=2, name="cpu")
    task = _Regression()
    config = TrainConfig(epochs=2, batch_size=4, lr=0.05, optimizer="sgd", momentum=0.0, accumulate=2)
    fit(
        task,
        _data(4),
        config,
        seed=0,
        device=Device.choose("cuda", precision=precision),
        checkpoint_dir=tmp_path / precision,
    )
    tolerance = 1e-5 if precision == "fp32" else 5e-2
    for a, b in zip(cpu.model.parameters(), task.model.parameters(), strict=True):
        torch.testing.assert_close(b.detach().cpu(), a.detach(), rtol=tolerance, atol=tolerance)
