"""S2MTS2's mean teacher: the JCL loss of the student's view against the teacher's key views, the
teacher and queue updates, the covariance-weight ramp, exact resume, and the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cxrbench.cli import main
from cxrbench.data.augment import random_views
from cxrbench.engine.loop import TrainConfig
from cxrbench.pretrain.base import train_config
from cxrbench.pretrain.losses.jcl import jcl_loss
from cxrbench.pretrain.mean_teacher import Method
from tests.pretrain.tiny import TinyEncoder, assert_resumes_exactly, images, losses_on_a_fixed_batch, step


def _teacher(**kwargs) -> Method:
    torch.manual_seed(0)
    return Method(TinyEncoder(), **{"queue_size": 16, "projection_dim": 4, "momentum": 0.9, "key_views": 3, **kwargs})


def _batch(n: int = 6) -> dict:
    return {"images": torch.from_numpy(images(n)).unsqueeze(1).float() / 255}


def test_loss_is_jcl_of_the_student_view_against_the_teachers_key_views() -> None:
    method, batch = _teacher(covariance_weight=3.0), _batch()
    with torch.no_grad():  # the student moves away from the teacher
        for p in method.encoder.parameters():
            p.add_(0.5)
    ctx = step(5, total=6, update=4, updates=10)
    got = method.loss(batch, ctx)
    generator = torch.Generator().manual_seed(5)  # the views, drawn in the method's order
    query = random_views(batch["images"], generator, method.views)
    views = [random_views(batch["images"], generator, method.views) for _ in range(3)]
    q = method.projector(method.encoder(query))
    with torch.no_grad():
        keys = torch.stack([method.key_projector(method.key_encoder(v)) for v in views], dim=1)  # [B, M, D]
    want = jcl_loss(q, keys, method.queue, temperature=0.2, covariance_weight=3.0 * 5 / 10)
    torch.testing.assert_close(got.value, want)
    assert got.terms["covariance_weight"] == pytest.approx(1.5)
    torch.testing.assert_close(method._pending[0], F.normalize(F.normalize(keys, dim=2).mean(dim=1), dim=1))


def test_after_step_moves_the_teacher_by_ema_and_enqueues_the_mean_keys() -> None:
    method = _teacher(queue_size=8)
    with torch.no_grad():
        for p in method.encoder.parameters():
            p.add_(1.0)
    before = [p.clone() for p in method.key_encoder.parameters()]
    ctx = step(total=6)
    method.loss(_batch(), ctx)
    keys = method._pending[0]
    method.after_step(ctx)
    for old, new, student in zip(before, method.key_encoder.parameters(), method.encoder.parameters(), strict=True):
        torch.testing.assert_close(new, 0.9 * old + 0.1 * student)
    torch.testing.assert_close(method.queue[:6], keys)
    assert int(method.queue_ptr) == 6 and not method._pending


def test_covariance_weight_rises_linearly_to_its_value() -> None:
    method = _teacher(covariance_weight=2.0)
    weights = [method.covariance_weight_at(step(total=2, update=u, updates=4)) for u in range(4)]
    assert weights == pytest.approx([0.5, 1.0, 1.5, 2.0])


def test_loss_is_finite_and_falls_on_a_fixed_batch() -> None:
    method = _teacher(queue_size=64)
    method.enqueue = lambda keys: None  # as for MoCo: the queue would fill with this batch's own keys
    losses = losses_on_a_fixed_batch(method, _batch(), steps=10)
    assert losses[-1] < losses[0]


def test_defaults_follow_jcl_and_bad_options_are_refused() -> None:
    method = Method(TinyEncoder())
    assert (method.key_views, method.temperature, method.momentum, method.queue.shape[0]) == (5, 0.2, 0.999, 65536)
    config = train_config(Method, {}, {})
    assert (config.lr, config.batch_size, config.optimizer, config.epochs) == (0.03, 256, "sgd", 200)
    assert Method.options({"key_views": "2", "queue_size": "64"}) == {"key_views": 2, "queue_size": 64}


def test_a_killed_run_resumes_to_the_same_weights_teacher_and_queue(tmp_path) -> None:
    config = TrainConfig(epochs=2, batch_size=4, lr=1e-2, optimizer="sgd", drop_last=True)
    history = assert_resumes_exactly(tmp_path, lambda: _teacher(queue_size=10, key_views=2), config)
    assert len(history) == 2


@pytest.fixture
def quiet(monkeypatch):
    monkeypatch.setenv("CXRBENCH_QUIET", "1")
    monkeypatch.delenv("CXRBENCH_DEBUG", raising=False)


def _cli(*argv: str) -> None:
    try:
        main(list(argv))
    except SystemExit as exc:
        assert exc.code in (0, None), f"cxrbench {' '.join(argv)} exited {exc.code}"


def test_pretrains_on_phantoms_and_the_encoder_probes(phantom_run: Path, tmp_path: Path, capsys, quiet) -> None:
    run = tmp_path / "run"
    shutil.copytree(phantom_run, run)
    r = ("--run", str(run))
    base = ["pretrain", "mean-teacher", "--dataset", "synthetic", "--epochs", "1", "--batch-size", "16"]
    base += ["--arch", "resnet10t", "--option", "queue_size=32"]
    with pytest.raises(SystemExit) as exit_info:
        main([*base, "--option", "key_views=1", *r])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1 and "key_views >= 2" in err, err
    _cli(*base, "--option", "key_views=2", *r)
    manifest = json.loads((run / "encoders/mean-teacher/manifest.json").read_text())
    assert manifest["settings"]["options"] == {"queue_size": 32, "key_views": 2}
    assert all(np.isfinite(manifest["extra"]["loss_per_epoch"]))
    _cli("probe", "--dataset", "synthetic", "--encoder", "mean-teacher", *r)
    assert (run / "predictions/synthetic/mean-teacher/probe.parquet").is_file()
