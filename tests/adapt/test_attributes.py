"""Attribute targets (age bins, sex, race) and the middle-slice selection against hand-made tables,
and the study-level aggregation of slice predictions against a hand-computed case."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cxrbench.adapt.attributes import attribute_targets, middle_slices
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
