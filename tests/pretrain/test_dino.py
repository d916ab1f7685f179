"""DINO: the loss falls, the head, centring and temperature/momentum schedules as defined, multi-crop
with ResNets and ViTs (local crops at their own size), exact resume, and an encoder that probes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from cxrbench.engine.loop import TrainConfig
from cxrbench.errors import CxrbenchError
from cxrbench.models.encoders import create_encoder
from cxrbench.pretrain import dino as dino_module
from cxrbench.pretrain.dino import DinoHead, Method, local_crop_size
from cxrbench.pretrain.losses.dino import sinkhorn_targets
from tests.pretrain.tiny import TinyEncoder, assert_resumes_exactly, images, losses_on_a_fixed_batch, step
from tests.stages.conftest import ARCH, cli, phantom_run, run_copy  # noqa: F401  (fixtures)

SMALL = {"out_dim": 32, "hidden_dim": 16, "bottleneck_dim": 8}


def _dino(**kwargs) -> Method:
    torch.manual_seed(0)
    return Method(TinyEncoder(), **{**SMALL, "local_crops": 2, "local_size": 8, "momentum": 0.9, **kwargs})


def _batch(n: int = 6, size: int = 16) -> dict:
    return {"images": torch.from_numpy(images(n, size)).unsqueeze(1).float() / 255}


def test_loss_is_finite_and_falls_on_a_fixed_batch() -> None:
    # a constant teacher temperature: its warm-up raises the targets' entropy, and so the loss
    losses = losses_on_a_fixed_batch(_dino(teacher_temp_start=0.04, teacher_temp=0.04), _batch(), steps=10)
    assert losses[-1] < 0.5 * losses[0]


def test_head_is_an_mlp_to_a_normalised_bottleneck_then_a_weight_normed_layer() -> None:
    torch.manual_seed(0)
    head = DinoHead(6, 10, hidden_dim=12, bottleneck_dim=4, norm_last_layer=True)
    x = torch.randn(3, 6)
    h = x
    for layer in head.mlp:
        h = layer(h)
    assert [type(m).__name__ for m in head.mlp] == ["Linear", "GELU", "Linear", "GELU", "Linear"]
    v = head.last_layer.parametrizations.weight.original1
    want = F.normalize(h, dim=-1) @ F.normalize(v, dim=1).T  # unit-norm prototypes (g = 1)
    torch.testing.assert_close(head(x), want)
    assert not head.last_layer.parametrizations.weight.original0.requires_grad
    free = DinoHead(6, 10, hidden_dim=12, bottleneck_dim=4, norm_last_layer=False)
    assert free.last_layer.parametrizations.weight.original0.requires_grad


def test_last_layer_is_frozen_over_the_first_part_of_training() -> None:
    # SGD without weight decay: a zero gradient (and zero momentum) leaves a weight where it is
    method = _dino(freeze_last_layer=0.5)
    last, first = method.head.last_layer.parametrizations.weight.original1, method.head.mlp[0].weight
    seen = [(last.detach().clone(), first.detach().clone())]
    optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
    for update in range(4):
        optimizer.zero_grad()
        method.loss(_batch(), step(total=6, update=update, updates=4)).backward.backward()
        optimizer.step()
        seen.append((last.detach().clone(), first.detach().clone()))
    moved = [
        (not torch.equal(a[0], b[0]), not torch.equal(a[1], b[1])) for a, b in zip(seen[:-1], seen[1:], strict=True)
    ]
    assert moved == [(False, True), (False, True), (True, True), (True, True)]  # progress 0, .25 | .5, .75


@pytest.mark.parametrize(("update", "temp"), [(0, 0.04), (15, 0.055), (30, 0.07), (70, 0.07), (100, 0.07)])
def test_teacher_temperature_warms_up_linearly_then_stays(update: int, temp: float) -> None:
    method = _dino(teacher_temp=0.07)  # the ViT-S recipe's warm-up, 0.04 -> 0.07 over 30 % of training
    assert method.teacher_temperature(step(total=4, update=update, updates=100)) == pytest.approx(temp)
    assert _dino().teacher_temperature(step(total=4, update=update, updates=100)) == 0.04  # the default


def test_crops_are_only_boxed_and_flipped_unless_radiograph_views_are_asked_for() -> None:
    flat = {"images": torch.full((4, 1, 16, 16), 0.5)}  # any box or flip of it is the same grey
    big, small = _dino().crops(flat["images"], step(total=4))
    assert all(torch.allclose(c, torch.full_like(c, 0.5), atol=1e-6) for c in [*big, *small])
    big, small = _dino(views="radiograph").crops(flat["images"], step(total=4))
    assert not any(torch.allclose(c, torch.full_like(c, 0.5), atol=1e-3) for c in [*big, *small])  # brightness, noise
    with pytest.raises(CxrbenchError, match="views 'colour'"):
        _dino(views="colour")


@pytest.mark.parametrize(("update", "want"), [(0, 0.9), (5, 0.95), (10, 1.0)])
def test_teacher_follows_by_ema_with_momentum_rising_to_one(update: int, want: float) -> None:
    method = _dino()
    with torch.no_grad():
        for p in [*method.encoder.parameters(), *method.head.parameters()]:
            p.add_(0.5)
    before = [p.clone() for p in method.teacher_head.parameters()]
    ctx = step(total=4, update=update, updates=10)
    assert method.momentum(ctx) == pytest.approx(want)
    method.after_step(ctx)
    for old, new, online in zip(before, method.teacher_head.parameters(), method.head.parameters(), strict=True):
        torch.testing.assert_close(new, want * old + (1 - want) * online)
    assert not any(p.requires_grad for p in method.teacher_encoder.parameters())


def test_centre_is_an_ema_of_the_teacher_outputs_of_both_global_crops() -> None:
    method = _dino(center_momentum=0.8)
    with torch.no_grad():
        method.center.fill_(0.25)
    batch = _batch(5)
    big, small = method.crops(batch["images"], step(3, total=5))
    assert [c.shape[-1] for c in big] == [16, 16] and [c.shape[-1] for c in small] == [8, 8]
    with torch.no_grad():
        outputs = torch.cat([method.teacher_head(method.teacher_encoder(c)) for c in big])  # [10, K]
    method.loss(batch, step(3, total=5))
    method.after_step(step(3, total=5))
    torch.testing.assert_close(method.center, 0.8 * 0.25 + 0.2 * outputs.mean(dim=0))
    assert not method._pending


def test_sinkhorn_centring_takes_the_targets_from_the_whole_batch_and_leaves_the_centre(monkeypatch) -> None:
    method = _dino(centering="sinkhorn", teacher_temp_start=0.05, teacher_temp=0.05)
    batch = _batch(5)
    big, _ = method.crops(batch["images"], step(3, total=5))
    with torch.no_grad():
        outputs = torch.cat([method.teacher_head(method.teacher_encoder(c)) for c in big])  # [10, K]
    want = sinkhorn_targets(outputs, 0.05)
    seen = []
    real = dino_module.dino_loss

    def spy(student, targets, *, temperature):
        seen.append(targets)
        return real(student, targets, temperature=temperature)

    monkeypatch.setattr(dino_module, "dino_loss", spy)
    method.loss(batch, step(3, total=5))
    torch.testing.assert_close(seen[0], want.view(2, 5, -1))
    method.after_step(step(3, total=5))
    assert not method.center.any() and not method._pending
    losses = losses_on_a_fixed_batch(_dino(centering="sinkhorn"), _batch(), steps=10)
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]


def test_local_crop_size_is_96_of_224_in_whole_patches() -> None:
    assert local_crop_size(224, 16) == 96 and local_crop_size(224, None) == 96
    assert local_crop_size(64, 16) == 32 and local_crop_size(32, 16) == 16 and local_crop_size(64, None) == 27


@pytest.mark.parametrize("arch", ["resnet18", "vit_tiny_patch16_224"])
def test_resnets_and_vits_train_on_global_and_smaller_local_crops(arch: str) -> None:
    torch.manual_seed(0)
    encoder = create_encoder("random", arch=arch, input_size=32, seed=0)
    method = Method(encoder, out_dim=64, hidden_dim=32, bottleneck_dim=16, local_crops=2, momentum=0.9)
    assert encoder.any_size and method.local_size == (16 if "vit" in arch else 14)
    big, small = method.crops(_batch(4, 24)["images"], step(total=4))
    assert big[0].shape[-2:] == (32, 32) and small[0].shape[-2:] == (method.local_size,) * 2
    losses = losses_on_a_fixed_batch(method, _batch(4, 24), steps=2, lr=0.01)
    assert len(losses) == 2
    assert method.teacher_encoder.any_size  # the teacher only ever sees global crops, at input size


def test_bad_options_are_one_line_errors() -> None:
    with pytest.raises(CxrbenchError, match="local_min_scale < global_min_scale"):
        _dino(local_min_scale=0.5)
    with pytest.raises(CxrbenchError, match="temperatures"):
        _dino(teacher_temp=0)
    with pytest.raises(CxrbenchError, match="centering 'mean'"):
        _dino(centering="mean")
    assert Method.options({"out_dim": "64", "norm_last_layer": "false"}) == {"out_dim": 64, "norm_last_layer": False}


def test_a_killed_run_resumes_to_the_same_student_teacher_and_centre(tmp_path) -> None:
    config = TrainConfig(epochs=2, batch_size=4, lr=1e-2, drop_last=True)
    history = assert_resumes_exactly(tmp_path, _dino, config)
    assert len(history) == 2


def test_pretrains_through_the_cli_and_the_encoder_probes(run_copy: Path, one_torch_thread) -> None:  # noqa: F811
    r = ("--run", str(run_copy))
    options = ("--option", "out_dim=256", "--option", "hidden_dim=64", "--option", "local_crops=2")
    cli(
        "pretrain",
        "dino",
        "--dataset",
        "synthetic",
        "--epochs",
        "1",
        "--arch",
        ARCH,
        "--batch-size",
        "32",
        *options,
        *r,
    )
    manifest = json.loads((run_copy / "encoders/dino/manifest.json").read_text())
    assert manifest["settings"]["options"] == {"out_dim": 256, "hidden_dim": 64, "local_crops": 2}
    assert all(v == v for v in manifest["extra"]["loss_per_epoch"])
    cli("probe", "--dataset", "synthetic", "--encoder", "dino", *r)
