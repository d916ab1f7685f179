"""Masks: polygon rasterisation and holes, reader consensus, RLE round trip, and resizing that keeps
a mask on its image (hand-computed cases)."""

from __future__ import annotations

import numpy as np
import pytest

from cxrbench.data.masks import cached_mask, consensus, decode_rle, encode_rle, rasterise
from cxrbench.data.transforms import Preprocess, preprocess
from cxrbench.errors import CxrbenchError


def test_a_square_contour_fills_its_inside_and_boundary_and_a_hole_is_removed() -> None:
    square = [(1, 1), (4, 1), (4, 4), (1, 4)]
    mask = rasterise((6, 6), [(True, square)])
    want = np.zeros((6, 6), dtype=bool)
    want[1:5, 1:5] = True
    np.testing.assert_array_equal(mask, want)
    holed = rasterise((6, 6), [(True, square), (False, [(2, 2), (3, 2), (3, 3), (2, 3)])])
    want[2:4, 2:4] = False
    np.testing.assert_array_equal(holed, want)
    point = rasterise((4, 4), [(True, [(2, 1)])])  # x = column 2, y = row 1
    assert point.sum() == 1 and point[1, 2]


def test_consensus_counts_readers_including_those_who_marked_nothing() -> None:
    a, b, c = (np.zeros((1, 4), dtype=bool) for _ in range(3))
    a[0, :3] = b[0, 1:3] = c[0, 2] = True
    masks = [a, b, c]
    assert consensus(masks, level=0.5, readers=4).tolist() == [[False, True, True, False]]  # >= 2 of 4
    assert consensus(masks, level=1.0).tolist() == [[False, False, True, False]]  # all 3
    assert consensus(masks, level=0.01).tolist() == [[True, True, True, False]]  # any
    with pytest.raises(CxrbenchError):
        consensus(masks, level=0)


def test_rle_round_trip_and_malformed_strings() -> None:
    rng = np.random.default_rng(0)
    mask = rng.random((7, 5)) < 0.3
    text = encode_rle(mask)
    assert text.startswith("7 5 ")
    np.testing.assert_array_equal(decode_rle(text), mask)
    assert encode_rle(np.zeros((2, 3), dtype=bool)) == "2 3"
    assert encode_rle(np.array([[0, 1, 1], [1, 0, 0]], dtype=bool)) == "2 3 1 3"
    for bad in ("x", "2 3 1", "2 3 5 4"):
        with pytest.raises(CxrbenchError):
            decode_rle(bad)


@pytest.mark.parametrize("aspect", ["pad", "crop", "stretch"])
def test_a_cached_mask_stays_on_its_image(aspect: str) -> None:
    # a bright rectangle in a 40x24 image and its mask must land on the same cache pixels
    image = np.zeros((40, 24), dtype=np.float32)
    image[10:30, 6:18] = 1.0
    settings = Preprocess(size=16, aspect=aspect, scaling="fixed")
    cached = cached_mask(encode_rle(image > 0), settings)
    bright = preprocess(image, settings) >= 128
    assert cached.dtype == np.uint8 and set(np.unique(cached)) <= {0, 1}
    np.testing.assert_array_equal(cached.astype(bool), bright)
    assert cached_mask("", settings).sum() == 0
