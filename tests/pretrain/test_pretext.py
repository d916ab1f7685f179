"""Pretext tasks (rotation, flip, denoise, and their sum): what each feeds the encoder, that each
rank's slice reproduces the single-process draw, that the losses fall, and exact resume."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cxrbench.engine.loop import TrainConfig
from cxrbench.errors import CxrbenchError
from cxrbench.models.decoder import token_grid
from cxrbench.pretrain import denoise, flip, pretext, rotation
from cxrbench.pretrain._pretext import Denoise, Flip, Rotation, salt_and_pepper
from tests.pretrain.tiny import TinyEncoder, assert_resumes_exactly, images, losses_on_a_fixed_batch, step


def _x(n: int = 6) -> torch.Tensor:
    return torch.from_numpy(images(n)).unsqueeze(1).float() / 255


def _gen(seed: int = 3) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_rotation_classifies_the_quarter_turns_it_drew() -> None:
    torch.manual_seed(0)
    encoder, task, x = TinyEncoder(), Rotation(8), _x()
    got = task(encoder, x, _gen(), (0, 6), 6)
    k = torch.randint(0, 4, (6,), generator=_gen())
    turned = torch.stack([torch.rot90(x[i], int(k[i]), dims=(1, 2)) for i in range(6)])
    torch.testing.assert_close(got, F.cross_entropy(task.head(encoder(turned)), k, reduction="none"))


@pytest.mark.parametrize("vertical", [True, False])
def test_flip_classifies_the_flips_it_drew(vertical: bool) -> None:
    torch.manual_seed(0)
    encoder, task, x = TinyEncoder(), Flip(8, vertical=vertical), _x()
    got = task(encoder, x, _gen(), (0, 6), 6)
    k = torch.randint(0, 3 if vertical else 2, (6,), generator=_gen())
    flipped = torch.stack([x[i] if k[i] == 0 else x[i].flip(-1 if k[i] == 1 else -2) for i in range(6)])
    torch.testing.assert_close(got, F.cross_entropy(task.head(encoder(flipped)), k, reduction="none"))
    assert task.head.out_features == (3 if vertical else 2)


def test_salt_and_pepper_whitens_or_blackens_the_chosen_share_of_pixels() -> None:
    x = torch.full((4, 1, 32, 32), 0.5)
    noisy = salt_and_pepper(x, torch.rand(4, 1, 32, 32, 2, generator=_gen()), 0.5)
    hit = noisy != 0.5
    assert set(noisy[hit].unique().tolist()) == {0.0, 1.0}
    assert 0.45 < hit.float().mean() < 0.55 and 0.4 < noisy[hit].mean() < 0.6


def test_denoise_corrupts_the_same_pixels_in_every_channel() -> None:
    """CT in three windows: one HU value per pixel, so a corrupted pixel is white (or black) in all."""
    from cxrbench.models.decoder import upsample_steps
    from cxrbench.models.encoders import create_encoder

    encoder = create_encoder("random", arch="resnet10t", input_size=32)
    task = Denoise(encoder.num_features, steps=upsample_steps(encoder, 32), hidden=8, channels=3)
    x = torch.rand(2, 3, 32, 32, generator=_gen()) * 0.8 + 0.1  # never exactly 0 or 1
    seen = []
    task.decoder.reconstruct = lambda enc, noisy: (
        seen.append(noisy) or type("Out", (), {"image": noisy, "quantization": None})()
    )
    task(encoder, x, _gen(), (0, 2), 2)
    hit = (seen[0] == 0) | (seen[0] == 1)
    assert hit.float().mean() > 0.4 and (hit == hit[:, :1]).all() and (seen[0] == seen[0][:, :1])[hit].all()


def test_the_masked_term_of_a_one_channel_mask_covers_every_channel() -> None:
    from cxrbench.pretrain.losses.reconstruction import Weights, reconstruction_terms

    out, target = torch.rand(2, 3, 8, 8, generator=_gen()), torch.rand(2, 3, 8, 8, generator=_gen())
    mask = torch.rand(2, 1, 8, 8, generator=_gen()) < 0.3
    got = reconstruction_terms(out, target, Weights(mse=0, ssim=0, quantization=0, masked=1.0), mask=mask)
    want = [((out[i] - target[i]) ** 2)[mask[i].expand(3, -1, -1)].mean() for i in range(2)]
    torch.testing.assert_close(got["masked_mse"], torch.stack(want))


def test_token_grid_drops_class_tokens_and_keeps_the_patch_layout() -> None:
    patches = torch.arange(2 * 9 * 3, dtype=torch.float).view(2, 9, 3)
    with_cls = torch.cat([torch.full((2, 1, 3), -1.0), patches], dim=1)
    grid = token_grid(with_cls)
    assert grid.shape == (2, 3, 3, 3)
    torch.testing.assert_close(grid[:, :, 1, 2], patches[:, 5])


@pytest.mark.parametrize("make", [lambda: Rotation(8), lambda: Flip(8), lambda: Denoise(8, steps=2, hidden=8)])
def test_a_ranks_slice_reproduces_the_single_process_draw(make) -> None:
    torch.manual_seed(0)
    encoder, task, x = TinyEncoder(), make(), _x()
    whole = task(encoder, x, _gen(), (0, 6), 6)
    torch.testing.assert_close(task(encoder, x[2:5], _gen(), (2, 5), 6), whole[2:5])


@pytest.mark.parametrize(
    "make",
    [
        lambda e: rotation.Method(e),
        lambda e: flip.Method(e),
        lambda e: denoise.Method(e, decoder_width=8),
        lambda e: pretext.Method(e, tasks=["rotation", "flip", "denoise"], decoder_width=8),
    ],
    ids=["rotation", "flip", "denoise", "pretext"],
)
def test_loss_is_finite_and_falls_on_a_fixed_batch(make) -> None:
    torch.manual_seed(0)
    losses = losses_on_a_fixed_batch(make(TinyEncoder()), {"images": _x(8)}, steps=8, lr=0.05)
    assert losses[-1] < losses[0]


def test_pretext_logs_each_task_and_checks_its_task_names() -> None:
    torch.manual_seed(0)
    method = pretext.Method(TinyEncoder(), tasks=["flip", "rotation"])
    out = method.loss({"images": _x()}, step(total=6))
    assert list(out.terms) == ["flip", "rotation"]
    assert float(out.value) == pytest.approx(sum(float(v) for v in out.terms.values()))
    assert pretext.Method.options({"tasks": "rotation,denoise"}) == {"tasks": ["rotation", "denoise"]}
    for bad in (["rotation", "rotation"], ["jigsaw"], []):
        with pytest.raises(CxrbenchError):
            pretext.Method(TinyEncoder(), tasks=bad)


def test_denoise_decodes_from_a_timm_cnn_feature_map() -> None:
    from cxrbench.models.encoders import create_encoder

    encoder = create_encoder("random", arch="resnet10t", input_size=32)
    method = denoise.Method(encoder, decoder_width=8)
    out = method.loss({"images": _x(2)}, step(total=2))
    out.backward.backward()
    assert torch.isfinite(out.backward) and encoder.backbone.conv1[0].weight.grad is not None


def test_a_killed_run_resumes_to_the_same_weights(tmp_path) -> None:
    config = TrainConfig(epochs=2, batch_size=5, lr=1e-2, drop_last=False)  # 12 images: a short last batch

    def make():
        return pretext.Method(TinyEncoder(), tasks=["rotation", "flip", "denoise"], decoder_width=8)

    assert len(assert_resumes_exactly(tmp_path, make, config, kill_at=5)) == 2
