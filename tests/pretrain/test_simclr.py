"""SimCLR's pieces: NT-Xent against its definition, reproducible views, views of batch slices."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from cxrbench.errors import CxrbenchError
from cxrbench.pretrain.loop import pretrain_loop
from cxrbench.pretrain.losses import nt_xent
from cxrbench.pretrain.simclr import Method
from cxrbench.pretrain.views import ViewSettings, part_views, random_views
from cxrbench.training import Device


def _nt_xent_by_definition(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> float:
    """Mean over the 2B anchors of -log(exp(sim(i, pos)/t) / sum_{k != i} exp(sim(i, k)/t))."""
    z = torch.cat([z1, z2]).double()
    n = z1.shape[0]
    total = 0.0
    for i in range(2 * n):
        pos = i + n if i < n else i - n
        sims = [float(torch.nn.functional.cosine_similarity(z[i], z[k], dim=0)) / temperature for k in range(2 * n)]
        denom = sum(math.exp(s) for k, s in enumerate(sims) if k != i)
        total += -(sims[pos] - math.log(denom))
    return total / (2 * n)


@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_nt_xent_matches_its_definition(temperature: float) -> None:
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g)
    got = float(nt_xent(z1, z2, temperature=temperature))
    assert got == pytest.approx(_nt_xent_by_definition(z1, z2, temperature), rel=1e-5)


def test_nt_xent_is_low_for_matching_views_and_rejects_mismatched_shapes() -> None:
    z = torch.randn(6, 4, generator=torch.Generator().manual_seed(1))
    assert float(nt_xent(z, z)) < float(nt_xent(z, z.flip(0)))
    with pytest.raises(ValueError, match="differ in shape"):
        nt_xent(z, z[:5])


def test_random_views_are_reproducible_from_the_generator_and_stay_in_range() -> None:
    x = torch.rand(4, 1, 32, 32, generator=torch.Generator().manual_seed(2))
    a = random_views(x, torch.Generator().manual_seed(7))
    b = random_views(x, torch.Generator().manual_seed(7))
    c = random_views(x, torch.Generator().manual_seed(8))
    assert a.shape == x.shape and float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)


@pytest.mark.parametrize(("bounds", "total"), [((0, 3), 7), ((3, 5), 7), ((5, 7), 7), ((0, 7), 7)])
def test_part_views_are_the_whole_batch_views_of_that_slice(bounds: tuple[int, int], total: int) -> None:
    # what lets DDP ranks holding slices of one batch reproduce the single-process views
    x = torch.rand(total, 1, 24, 24, generator=torch.Generator().manual_seed(3))
    settings = ViewSettings()
    whole = random_views(x, torch.Generator().manual_seed(11), settings)
    lo, hi = bounds
    part = part_views(x[lo:hi], torch.Generator().manual_seed(11), settings, bounds, total)
    torch.testing.assert_close(part, whole[lo:hi])


class _Tiny(nn.Module):
    """A BatchNorm-free stand-in encoder: 4x4-pooled pixels -> 8 features."""

    num_features = 8

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(16, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(torch.nn.functional.avg_pool2d(x, 4).flatten(1)[:, :16])


def _pretrain(directory, *, device=None, **kwargs):
    torch.manual_seed(0)
    method = Method(_Tiny(), projection_dim=4)
    images = np.random.default_rng(0).integers(0, 256, (14, 16, 16), dtype=np.uint8)
    history = pretrain_loop(method, images, np.arange(14), epochs=2, batch_size=4, lr=1e-2, seed=0,
                            device=device or Device.choose("cpu"), checkpoint_dir=directory, **kwargs)
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
        pretrain_loop(Method(_Tiny()), np.zeros((0, 16, 16), np.uint8), np.arange(0), epochs=1, batch_size=4,
                      lr=1e-3, seed=0, device=Device.choose("cpu"), checkpoint_dir=tmp_path)
