"""BYOL: the loss falls, the target follows by EMA on a cosine momentum schedule, exact resume."""

from __future__ import annotations

import pytest
import torch

from cxrbench.engine.loop import TrainConfig
from cxrbench.pretrain.byol import Method
from tests.pretrain.tiny import TinyEncoder, assert_resumes_exactly, images, losses_on_a_fixed_batch, step


def _byol(**kwargs) -> Method:
    torch.manual_seed(0)
    return Method(TinyEncoder(), **{"hidden_dim": 16, "projection_dim": 4, "momentum": 0.9, **kwargs})


def test_loss_is_finite_and_falls_on_a_fixed_batch() -> None:
    batch = {"images": torch.from_numpy(images(6)).unsqueeze(1).float() / 255}
    losses = losses_on_a_fixed_batch(_byol(), batch, steps=10)
    assert losses[-1] < losses[0]
    assert 0 <= min(losses) and max(losses) <= 8  # two terms of 2 - 2 cos


@pytest.mark.parametrize(("update", "want"), [(0, 0.9), (5, 0.95), (10, 1.0)])
def test_target_momentum_rises_to_one_along_a_cosine(update: int, want: float) -> None:
    method = _byol()
    with torch.no_grad():
        for p in method.encoder.parameters():
            p.add_(1.0)
    before = [p.clone() for p in method.target_encoder.parameters()]
    ctx = step(total=4, update=update, updates=10)
    assert method.momentum(ctx) == pytest.approx(want)
    method.after_step(ctx)
    for old, new, online in zip(before, method.target_encoder.parameters(), method.encoder.parameters(), strict=True):
        torch.testing.assert_close(new, want * old + (1 - want) * online)
    assert not any(p.requires_grad for p in method.target_encoder.parameters())


def test_a_killed_run_resumes_to_the_same_online_and_target_weights(tmp_path) -> None:
    config = TrainConfig(epochs=2, batch_size=4, lr=1e-2, drop_last=True)
    assert len(assert_resumes_exactly(tmp_path, _byol, config)) == 2
