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
