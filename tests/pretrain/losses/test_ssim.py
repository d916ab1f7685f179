"""SSIM against scikit-image's ``structural_similarity`` with the same Gaussian window (sigma 1.5,
population covariances), and the properties the losses rely on."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from cxrbench.errors import CxrbenchError
from cxrbench.pretrain.losses.ssim import gaussian_taps, ssim, ssim_loss


def _reference(a: np.ndarray, b: np.ndarray, data_range: float) -> float:
    return structural_similarity(
        a, b, data_range=data_range, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
    )


@pytest.mark.parametrize(
    ("shape", "noise", "data_range"), [((16, 16), 0.05, 1.0), ((23, 31), 0.3, 1.0), ((40, 24), 0.1, 2.0)]
)
def test_ssim_equals_skimage_on_random_images(shape, noise, data_range) -> None:
    rng = np.random.default_rng(sum(shape))
    a = rng.random((3, *shape)) * data_range
    b = np.clip(a + noise * data_range * rng.standard_normal(a.shape), 0, data_range)
    got = ssim(torch.from_numpy(a).unsqueeze(1), torch.from_numpy(b).unsqueeze(1), data_range=data_range)
    want = [_reference(a[i], b[i], data_range) for i in range(3)]
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-10, atol=1e-12)


def test_channels_are_averaged_as_skimage_does() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.random((2, 20, 20)), rng.random((2, 20, 20))
    want = structural_similarity(
        a, b, data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, channel_axis=0
    )
    got = ssim(torch.from_numpy(a)[None], torch.from_numpy(b)[None])
    assert float(got) == pytest.approx(want, rel=1e-10)


def test_window_is_scipys_eleven_tap_gaussian() -> None:
    from scipy.ndimage import gaussian_filter1d

    impulse = np.zeros(21)
    impulse[10] = 1
    np.testing.assert_allclose(gaussian_taps().numpy(), gaussian_filter1d(impulse, 1.5, truncate=3.5)[5:16], atol=1e-15)


def test_float32_loss_is_zero_for_identical_images_and_has_finite_gradients() -> None:
    x = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(ssim_loss(x, x), torch.zeros(2), atol=1e-6)
    y = x.clone().requires_grad_(True)
    ssim_loss(y + 0.1 * torch.rand_like(y), x).sum().backward()
    assert torch.isfinite(y.grad).all() and y.grad.abs().sum() > 0


def test_images_smaller_than_the_window_are_a_one_line_error() -> None:
    with pytest.raises(CxrbenchError, match="at least 11x11"):
        ssim(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8))


def test_ssim_stays_float32_under_bfloat16_autocast() -> None:
    g = torch.Generator().manual_seed(2)
    x, y = torch.rand(2, 1, 24, 24, generator=g), torch.rand(2, 1, 24, 24, generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = ssim(x.bfloat16(), y.bfloat16())
    want = ssim(x.bfloat16().float(), y.bfloat16().float())
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
