"""MoCo v2: the loss falls, the queue and momentum encoder update as defined, presets, exact resume."""

from __future__ import annotations

import pytest
import torch

from cxrbench.engine.loop import TrainConfig
from cxrbench.errors import CxrbenchError
from cxrbench.pretrain.base import train_config
from cxrbench.pretrain.moco import PRESETS, Method
from tests.pretrain.tiny import TinyEncoder, assert_resumes_exactly, images, losses_on_a_fixed_batch, step


def _moco(**kwargs) -> Method:
    torch.manual_seed(0)
    return Method(TinyEncoder(), **{"queue_size": 16, "projection_dim": 4, "momentum": 0.9, **kwargs})


def _batch(n: int = 6) -> dict:
    return {"images": torch.from_numpy(images(n)).unsqueeze(1).float() / 255}


def test_loss_is_finite_and_falls_on_a_fixed_batch() -> None:
    # the queue left as it is: on one batch it would fill with keys of the same images (negatives
    # that are the positives of earlier steps), which rightly raises the loss
    method = _moco(queue_size=64)
    method.enqueue = lambda keys: None
    losses = losses_on_a_fixed_batch(method, _batch(), steps=10)
    assert losses[-1] < losses[0]


def test_after_step_moves_the_key_encoder_by_ema_and_enqueues_the_batch_keys() -> None:
    method = _moco(queue_size=8)
    with torch.no_grad():  # the query encoder moves away from the key encoder
        for p in method.encoder.parameters():
            p.add_(1.0)
    before = [p.clone() for p in method.key_encoder.parameters()]
    queue = method.queue.clone()
    ctx = step(total=6)
    method.loss(_batch(6), ctx)
    keys = method._pending[0]
    method.after_step(ctx)
    for old, new, online in zip(before, method.key_encoder.parameters(), method.encoder.parameters(), strict=True):
        torch.testing.assert_close(new, 0.9 * old + 0.1 * online)
    torch.testing.assert_close(method.queue[:6], keys)
    torch.testing.assert_close(method.queue[6:], queue[6:])
    assert int(method.queue_ptr) == 6 and not method._pending
    method.enqueue(keys)  # wraps around: rows 6, 7, 0, 1, 2, 3
    torch.testing.assert_close(method.queue[[6, 7, 0, 1, 2, 3]], keys)
    assert int(method.queue_ptr) == 4
    assert torch.allclose(method.queue.norm(dim=1), torch.ones(8))


def test_moco_cxr_preset_sets_views_settings_and_training_defaults() -> None:
    method = _moco(preset="moco-cxr", queue_size=None, momentum=None)
    assert method.queue.shape[0] == 24576 and method.momentum == 0.999 and method.temperature == 0.2
    views = method.views
    assert views.brightness == views.contrast == views.noise == 0 and views.max_rotation_deg == 10 and views.flip
    config = train_config(Method, {"epochs": None, "batch_size": None, "lr": None}, {"preset": "moco-cxr"})
    assert (config.lr, config.batch_size, config.optimizer, config.epochs) == (1e-4, 16, "adamw", 20)
    assert train_config(Method, {"lr": 0.5}, {"preset": "moco-cxr"}).lr == 0.5  # the command line wins
    assert train_config(Method, {}, {}).optimizer == PRESETS["moco-v2"]["training"]["optimizer"] == "sgd"
    assert _moco(preset="moco-cxr", temperature=0.07).temperature == 0.07  # an explicit option wins
    assert Method.options({"preset": "moco-cxr", "queue_size": "32"}) == {"preset": "moco-cxr", "queue_size": 32}
    with pytest.raises(CxrbenchError, match="'moco-v2' or 'moco-cxr'"):
        Method.options({"preset": "mocov3"})


def test_a_killed_run_resumes_to_the_same_weights_and_queue(tmp_path) -> None:
    config = TrainConfig(epochs=2, batch_size=4, lr=1e-2, optimizer="sgd", drop_last=True)
    history = assert_resumes_exactly(tmp_path, lambda: _moco(queue_size=10), config)
    assert len(history) == 2
