"""Supervised pretraining: BCE over known labels only, the loss falls, exact resume with the label field."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cxrbench.engine.loop import TrainConfig
from cxrbench.errors import CxrbenchError
from cxrbench.pretrain.supervised import Method
from tests.pretrain.tiny import TinyEncoder, assert_resumes_exactly, images, losses_on_a_fixed_batch, step


def _targets(n: int, k: int = 3, seed: int = 0) -> np.ndarray:
    t = np.random.default_rng(seed).integers(0, 2, (n, k)).astype(np.float32)
    t[0, 1] = t[3, 2] = np.nan  # unknown
    return t


def test_loss_is_bce_over_the_known_labels_only() -> None:
    torch.manual_seed(0)
    method = Method(TinyEncoder(), num_labels=3, augment=False)
    x, t = torch.from_numpy(images(6)).unsqueeze(1).float() / 255, torch.from_numpy(_targets(6))
    out = method.loss({"images": x, "targets": t}, step(total=6))
    logits = method.head(method.encoder(x))
    known = ~torch.isnan(t)
    want = F.binary_cross_entropy_with_logits(logits[known], t[known])
    torch.testing.assert_close(out.backward, want)


def test_loss_is_finite_and_falls_on_a_fixed_batch() -> None:
    torch.manual_seed(0)
    batch = {"images": torch.from_numpy(images(8)).unsqueeze(1).float() / 255, "targets": torch.from_numpy(_targets(8))}
    losses = losses_on_a_fixed_batch(Method(TinyEncoder(), num_labels=3), batch, steps=8)
    assert losses[-1] < losses[0]


def test_the_stage_fills_in_labels_and_task_which_are_not_user_options() -> None:
    assert Method.fields == ("targets",)
    assert Method.options({"augment": "false"}, hidden=("num_labels", "task")) == {"augment": False}
    with pytest.raises(CxrbenchError, match="unknown option 'num_labels'.*known: augment"):
        Method.options({"num_labels": "3"}, hidden=("num_labels", "task"))


def test_a_killed_run_resumes_to_the_same_weights(tmp_path) -> None:
    config = TrainConfig(epochs=2, batch_size=5, lr=1e-2, drop_last=False)
    history = assert_resumes_exactly(
        tmp_path, lambda: Method(TinyEncoder(), num_labels=3), config, fields={"targets": _targets(12)}, kill_at=5
    )
    assert len(history) == 2
