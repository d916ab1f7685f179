"""SimCLR on the engine: a killed run resumes to the same weights, fp16 checkpoints its scaler."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from cxrbench.engine.device import Device
from cxrbench.engine.loop import TrainConfig
from cxrbench.errors import CxrbenchError
from cxrbench.pretrain.base import pretrain_loop
from cxrbench.pretrain.simclr import Method


class _Tiny(nn.Module):
    """A BatchNorm-free stand-in encoder: 4x4-pooled pixels -> 8 features."""

    num_features = 8

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(16, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(torch.nn.functional.avg_pool2d(x, 4).flatten(1)[:, :16])


CONFIG = TrainConfig(epochs=2, batch_size=4, lr=1e-2, weight_decay=1e-4, drop_last=True)


def _pretrain(directory, *, device=None, **kwargs):
    torch.manual_seed(0)
    method = Method(_Tiny(), projection_dim=4)
    images = np.random.default_rng(0).integers(0, 256, (14, 16, 16), dtype=np.uint8)
    history, _ = pretrain_loop(
        method,
        images,
        np.arange(14),
        CONFIG,
        seed=0,
        device=device or Device.choose("cpu"),
        checkpoint_dir=directory,
        **kwargs,
    )
    return method, history


class _Stop(Exception):
    pass


def test_pretrain_loop_killed_after_a_checkpoint_resumes_to_the_same_weights_with_any_worker_count(tmp_path):
    reference, ref_history = _pretrain(tmp_path / "whole")
    calls = []

    def kill_in_step_5(n: int = 1) -> None:
        calls.append(n)
        if len(calls) == 5:  # the checkpoint after step 4 (epoch 1, step 1) is on disk
            raise _Stop

    with pytest.raises(_Stop):
        _pretrain(tmp_path / "cut", checkpoint_every=1, advance=kill_in_step_5)
    saved = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)
    assert (saved["epoch"], saved["step"]) == (1, 1)
    resumed, history = _pretrain(tmp_path / "cut", checkpoint_every=1, num_workers=2)
    assert history == pytest.approx(ref_history, rel=1e-6)
    for (key, want), got in zip(reference.state_dict().items(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0, msg=key)


def test_pretrain_loop_in_fp16_checkpoints_its_grad_scaler(tmp_path) -> None:
    _, history = _pretrain(tmp_path, device=Device.choose("cpu", precision="fp16"))
    assert len(history) == 2 and all(math.isfinite(v) for v in history)
    saved = torch.load(tmp_path / "last.pt", weights_only=True)
    assert saved["epoch"] == 2 and saved["scaler"]["scale"] > 0


def test_pretrain_needs_training_images(tmp_path) -> None:
    with pytest.raises(CxrbenchError, match="needs images in the train split"):
        pretrain_loop(
            Method(_Tiny()),
            np.zeros((0, 16, 16), np.uint8),
            np.arange(0),
            CONFIG,
            seed=0,
            device=Device.choose("cpu"),
            checkpoint_dir=tmp_path,
        )
