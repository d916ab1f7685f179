"""SSIM (Wang et al. 2004) per image, differentiable: the structural term of the chest CT study's
composite reconstruction losses (``masked``, ``denoise``).

A Gaussian window (sigma 1.5, truncated at 3.5 sigma: 11 taps) weighs local means, variances and
covariance; the SSIM map is averaged over the pixels whose window lies inside the image, which is
what ``skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
use_sample_covariance=False)`` computes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cxrbench.errors import CxrbenchError


def gaussian_taps(sigma: float = 1.5, truncate: float = 3.5) -> torch.Tensor:
    """The normalised 1-D Gaussian window of ``sigma`` cut at ``truncate`` sigmas (as scipy's filter)."""
    radius = int(truncate * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    taps = torch.exp(-0.5 * (x / sigma) ** 2)
    return taps / taps.sum()


def ssim(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    data_range: float = 1.0,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> torch.Tensor:
    """The mean SSIM of each image pair ``[B]`` of ``x``, ``y`` ``[B, C, H, W]`` (channels averaged),
    computed in float32 (or float64 for float64 input), also under autocast."""
    if x.shape != y.shape or x.ndim != 4:
        raise ValueError(f"ssim needs two [B, C, H, W] tensors of one shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    taps = gaussian_taps(sigma).to(device=x.device, dtype=dtype)
    side = len(taps)
    if min(x.shape[-2:]) < side:
        raise CxrbenchError(f"SSIM needs images of at least {side}x{side} pixels, got {tuple(x.shape[-2:])}")
    b, c = x.shape[:2]
    x, y = x.to(dtype).reshape(b * c, 1, *x.shape[-2:]), y.to(dtype).reshape(b * c, 1, *y.shape[-2:])

    def blur(t: torch.Tensor) -> torch.Tensor:
        # separable and 'valid' (only windows inside the image); every map a channel of one
        # depthwise convolution, many times faster on CPU than a one-channel convolution
        m = t.shape[0]
        t = F.conv2d(t.reshape(1, m, *t.shape[-2:]), taps.view(1, 1, side, 1).expand(m, 1, side, 1), groups=m)
        t = F.conv2d(t, taps.view(1, 1, 1, side).expand(m, 1, 1, side), groups=m)
        return t.reshape(m, 1, *t.shape[-2:])

    with torch.autocast(x.device.type, enabled=False):  # variances cancel badly in half precision
        stacked = blur(torch.cat([x, y, x * x, y * y, x * y]))
    mx, my, mxx, myy, mxy = stacked.chunk(5)
    vx, vy, cxy = mxx - mx * mx, myy - my * my, mxy - mx * my
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    smap = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return smap.flatten(1).mean(dim=1).view(b, c).mean(dim=1)


def ssim_loss(x: torch.Tensor, y: torch.Tensor, *, data_range: float = 1.0) -> torch.Tensor:
    """``1 - SSIM`` per image ``[B]``: 0 for identical images, a loss to minimise."""
    return 1 - ssim(x, y, data_range=data_range)
