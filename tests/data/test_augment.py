"""Batched random views: reproducible from their generator, in range, and the same for a slice of a
batch as for the whole batch (what lets DDP ranks reproduce single-process views)."""

from __future__ import annotations

import pytest
import torch

from cxrbench.data.augment import ViewSettings, part_views, random_views


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


_GEOMETRY_ONLY = {"max_rotation_deg": 0.0, "flip": False, "brightness": 0.0, "contrast": 0.0, "noise": 0.0}


def test_views_at_a_size_are_sampled_at_that_resolution() -> None:
    # the whole image, no other transform: a bilinear resize (torch's own) to the asked side
    x = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(4))
    whole = ViewSettings(min_scale=1.0, max_scale=1.0, **_GEOMETRY_ONLY)
    got = random_views(x, torch.Generator().manual_seed(0), whole, size=12)
    want = torch.nn.functional.interpolate(x, size=(12, 12), mode="bilinear", align_corners=False)
    torch.testing.assert_close(got, want.clamp(0, 1))
    part = part_views(x[1:], torch.Generator().manual_seed(5), ViewSettings(), (1, 3), 3, size=8)
    torch.testing.assert_close(part, random_views(x, torch.Generator().manual_seed(5), ViewSettings(), size=8)[1:])


def test_crop_areas_are_drawn_between_min_and_max_scale() -> None:
    # a horizontal ramp: a crop of area fraction a spans sqrt(a) of the width, so the ramp's slope
    # in the view is sqrt(a) times the whole image's
    ramp = torch.linspace(0, 1, 32).expand(2, 1, 32, 32).contiguous()

    def slope(area: float) -> torch.Tensor:
        settings = ViewSettings(min_scale=area, max_scale=area, **_GEOMETRY_ONLY)
        view = random_views(ramp, torch.Generator().manual_seed(1), settings, size=16)
        return view[..., 4:12].diff(dim=-1).mean(dim=(1, 2, 3))

    torch.testing.assert_close(slope(0.25) / slope(1.0), torch.full((2,), 0.5))
