"""Attribute targets (age bins, sex, race) and the CT slice selection (largest body cross-section)
against hand-made tables and images, and the study-level aggregation of slice predictions against
a hand-computed case."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cxrbench.adapt.attributes import attribute_targets, body_area, middle_slices
from cxrbench.errors import CxrbenchError
from cxrbench.stages.study import aggregate_studies


def test_age_falls_in_ten_year_bins_one_hot_with_unknown_rows_nan() -> None:
    samples = pd.DataFrame({"age": [18.0, 29.9, 30.0, np.nan, 71.0], "sex": ["M", "F", None, "F", "X"]})
    labels, y, task = attribute_targets(samples, "age", dataset="d")
    assert task == "multiclass" and labels == ["age_10-19", "age_20-29", "age_30-39", "age_70-79"]
    want = [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [np.nan] * 4, [0, 0, 0, 1]]
    np.testing.assert_array_equal(y, np.array(want, dtype=float))
    labels, y, task = attribute_targets(samples, "sex", dataset="d")
    assert (labels, task) == (["female"], "multilabel")
    np.testing.assert_array_equal(y[:, 0], [0.0, 1.0, np.nan, 1.0, np.nan])


def test_race_where_recorded_and_one_line_errors_otherwise() -> None:
    samples = pd.DataFrame({"age": [50.0, 51.0], "race": ["White", "Black or African American"]})
    labels, y, _ = attribute_targets(samples, "race", dataset="d")
    assert labels == ["race_black_or_african_american", "race_white"]
    np.testing.assert_array_equal(y, [[0.0, 1.0], [1.0, 0.0]])
    with pytest.raises(CxrbenchError, match=r"records no sex \(it has: age, race\)"):
        attribute_targets(samples, "sex", dataset="d")
    with pytest.raises(CxrbenchError, match="one class"):
        attribute_targets(samples, "age", dataset="d")


def test_middle_slice_of_the_first_series_of_each_study() -> None:
    samples = pd.DataFrame(
        {
            "sample_id": list("abcdefgh"),
            "study_id": ["s1"] * 5 + ["s2"] * 3,
            "series_id": ["x", "x", "x", "x", "y", "z", "z", "z"],
            "slice_index": [3, 0, 2, 1, 0, 0, 1, 2],
        }
    )
    # s1: series x (first by id) has 4 slices -> index 2 ('c'); s2: series z, 3 slices -> index 1 ('g')
    assert middle_slices(samples)["sample_id"].tolist() == ["c", "g"]
    plain = pd.DataFrame({"sample_id": ["a", "b"], "age": [1.0, 2.0]})
    assert middle_slices(plain) is plain


def test_study_scores_are_the_max_or_mean_of_their_slices() -> None:
    preds = pd.DataFrame(
        {
            "sample_id": ["a", "b", "c", "d"],
            "patient_id": ["p", "p", "q", "q"],
            "split": ["test", "test", "val", "val"],
            "label": "pe",
            "y_true": [0.0, 1.0, 0.0, np.nan],
            "y_score": [0.2, 0.6, 0.1, 0.5],
        }
    )
    studies = pd.Series(["s1", "s1", "s2", "s2"], index=list("abcd"))
    out = aggregate_studies(preds, studies, aggregate="max").to_pandas().set_index("sample_id")
    assert out.loc["s1", ["y_true", "y_score"]].tolist() == [1.0, 0.6]
    assert out.loc["s2", ["y_true", "y_score"]].tolist() == [0.0, 0.5] and out.loc["s2", "split"] == "val"
    mean = aggregate_studies(preds, studies, aggregate="mean").to_pandas().set_index("sample_id")
    assert mean["y_score"].tolist() == pytest.approx([0.4, 0.3])
    with pytest.raises(CxrbenchError, match="not a slice"):
        aggregate_studies(preds, studies.iloc[:3])
    with pytest.raises(CxrbenchError, match="two splits"):
        aggregate_studies(preds.assign(split=["test", "val", "val", "val"]), studies)


def _disk(radius: float, *, hole: float = 0.0, size: int = 48) -> np.ndarray:
    """A windowed CT slice: tissue (200) in a disk of ``radius`` px, a 0 "lung" of radius ``hole`` inside."""
    yy, xx = np.mgrid[0:size, 0:size] - (size - 1) / 2
    r2 = xx**2 + yy**2
    return np.where((r2 <= radius**2) & (r2 > hole**2), 200, 0).astype(np.uint8)


def test_body_area_counts_the_outline_with_the_lungs_inside() -> None:
    solid = _disk(10.0)
    inside = int(((np.mgrid[0:48, 0:48] - 23.5) ** 2).sum(axis=0).__le__(10.0**2).sum())  # pixels of the disk
    assert body_area(solid) == inside
    assert body_area(_disk(10.0, hole=7.0)) == inside  # the hole is enclosed: filled
    open_ring = _disk(10.0, hole=7.0)
    open_ring[:24, 20:28] = 0  # a gap through the ring to the outside: the hole is no longer enclosed
    assert body_area(open_ring) == int((open_ring > 0).sum())
    lung_window = np.full((48, 48), 60, np.uint8)  # air around the body is above a lung window's floor
    assert body_area(np.stack([lung_window, solid, solid])) == inside  # several windows: above every floor


def _series(radii: list[float], holes: list[float] | None = None) -> tuple[pd.DataFrame, np.ndarray]:
    n = len(radii)
    rng = np.random.default_rng(0)
    cache = rng.permutation(n)  # cache rows in no particular order
    images = np.zeros((n, 48, 48), dtype=np.uint8)
    for k, (radius, hole) in enumerate(zip(radii, holes or [0.0] * n, strict=True)):
        images[cache[k]] = _disk(radius, hole=hole)
    order = rng.permutation(n)  # sample rows in no particular order either
    samples = pd.DataFrame(
        {
            "sample_id": [f"k{k}" for k in order],
            "study_id": "s",
            "series_id": "x",
            "slice_index": order,
            "cache_index": cache[order],
        }
    )
    return samples, images


def test_ct_slice_probed_is_the_one_with_the_largest_body_cross_section() -> None:
    samples, images = _series([6, 9, 14, 12, 10, 8, 7, 6, 5])  # widest at index 2, middle is 4
    assert middle_slices(samples, images)["sample_id"].tolist() == ["k2"]
    assert middle_slices(samples)["sample_id"].tolist() == ["k4"]  # without the images: by order
    # a slice with a wide outline but hollow (lungs) beats a narrower solid one: the outline counts
    samples, images = _series([10, 10, 13, 11, 10], holes=[0, 0, 11, 0, 0])
    assert middle_slices(samples, images)["sample_id"].tolist() == ["k2"]
    samples, images = _series([8.0] * 7)  # all alike (the phantoms): the middle one
    assert middle_slices(samples, images)["sample_id"].tolist() == ["k3"]


def test_a_long_series_is_searched_coarsely_then_around_the_best_slice() -> None:
    n, peak = 200, 38  # step 3 over 200 slices; 38 is not on the coarse grid (starting at 100 % 3 = 1)
    radii = [20.0 - 0.1 * abs(k - peak) for k in range(n)]
    samples, images = _series(radii)
    assert middle_slices(samples, images)["sample_id"].tolist() == [f"k{peak}"]
