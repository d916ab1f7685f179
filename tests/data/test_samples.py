"""The generic path from adapter rows to samples: label names, uncertain policy, views, splits, rare labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from cxrbench.data.adapters.base import RawDataset
from cxrbench.data.samples import (
    BASE_COLUMNS,
    LabelPolicy,
    build_samples,
    drop_rare_labels,
    label_columns,
    normalise_label,
    prevalence_table,
)
from cxrbench.data.splits import assign_splits
from cxrbench.errors import CxrbenchError

NAN = float("nan")
ROOT = Path("/data/ds")


def _raw(rows: list[dict], labels: list[str], **kw) -> RawDataset:
    frame = pd.DataFrame(rows)
    for column in ("path", "patient_id", "view"):
        if column not in frame:
            frame[column] = None
    return RawDataset(frame=frame, labels=labels, **kw)


def _row(i: int, *, patient=None, view="PA", **labels) -> dict:
    return {"path": f"{ROOT}/img/{i}.png", "patient_id": patient or f"p{i}", "view": view, **labels}


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Pleural Effusion", "pleural_effusion"),
        ("Support Devices", "support_devices"),
        ("Pleural_Thickening", "pleural_thickening"),
        ("  No Finding ", "no_finding"),
        ("Enlarged Cardiomediastinum", "enlarged_cardiomediastinum"),
        ("COPD signs", "copd_signs"),
        ("air-trapping", "air_trapping"),
        ("Lung Lesion (mass/nodule)", "lung_lesion_mass_nodule"),
        ("Infiltration", "infiltration"),
    ],
)
def test_normalise_label(name, expected):
    assert normalise_label(name) == expected


def test_normalise_label_without_letters_is_an_error():
    with pytest.raises(CxrbenchError, match="'--'"):
        normalise_label("--")


def test_label_names_normalised_and_mapping_stored():
    raw = _raw(
        [_row(i, **{"Pleural Effusion": 1.0, "No Finding": 0.0}) for i in range(4)],
        ["Pleural Effusion", "No Finding"],
    )
    samples, summary = build_samples(raw, LabelPolicy(), root=ROOT)
    assert label_columns(samples) == ["label:pleural_effusion", "label:no_finding"]
    assert summary["label_mapping"] == {
        "Pleural Effusion": "pleural_effusion",
        "No Finding": "no_finding",
    }
    assert summary["dropped_labels"] == []
    assert list(samples.columns[: len(BASE_COLUMNS)]) == list(BASE_COLUMNS)


def test_colliding_label_names_are_an_error():
    raw = _raw([_row(0, **{"Lung Opacity": 1.0, "lung_opacity": 0.0})], ["Lung Opacity", "lung_opacity"])
    with pytest.raises(CxrbenchError, match="collide"):
        build_samples(raw, LabelPolicy(), root=ROOT)


def test_collision_message_names_only_the_colliding_labels():
    names = [f"Finding number {i}" for i in range(300)] + ["Lung  Opacity", "lung opacity"]
    raw = _raw([_row(0, **dict.fromkeys(names, 1.0))], names)
    with pytest.raises(CxrbenchError) as info:
        build_samples(raw, LabelPolicy(), root=ROOT)
    assert info.value.message == "label names collide after normalisation: 'Lung  Opacity', 'lung opacity'"


def test_hundreds_of_labels_without_pandas_warnings():
    import warnings

    names = [f"Heading {i}" for i in range(300)]
    raw = _raw([_row(i, **dict.fromkeys(names, float(i % 2))) for i in range(4)], names)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        samples, _ = build_samples(raw, LabelPolicy(), root=ROOT)
    assert len(label_columns(samples)) == 300


# --- uncertain policy: blanks stay unknown ------------------------------------------------------

RAW_VALUES = [1.0, 0.0, -1.0, NAN, 1.0, -1.0]


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("negative", [1.0, 0.0, 0.0, NAN, 1.0, 0.0]),
        ("positive", [1.0, 0.0, 1.0, NAN, 1.0, 1.0]),
        ("ignore", [1.0, 0.0, NAN, NAN, 1.0, NAN]),
    ],
)
def test_uncertain_policy_and_blanks_are_unknown(policy, expected):
    raw = _raw([_row(i, Edema=v) for i, v in enumerate(RAW_VALUES)], ["Edema"])
    samples, _ = build_samples(raw, LabelPolicy(uncertain=policy), root=ROOT)
    np.testing.assert_array_equal(samples["label:edema"].to_numpy(), np.array(expected))


def test_default_policy_is_negative():
    assert LabelPolicy().uncertain == "negative" and LabelPolicy().views == "frontal"


def test_text_blanks_are_unknown():
    raw = _raw([_row(0, Edema=""), _row(1, Edema="1"), _row(2, Edema=None)], ["Edema"])
    samples, _ = build_samples(raw, LabelPolicy(), root=ROOT)
    np.testing.assert_array_equal(samples["label:edema"].to_numpy(), [NAN, 1.0, NAN])


def test_label_values_outside_the_code_are_named():
    raw = _raw([_row(0, Edema=2.0), _row(1, Edema=1.0)], ["Edema"])
    with pytest.raises(CxrbenchError, match=r"'Edema'.*2\.0"):
        build_samples(raw, LabelPolicy(), root=ROOT)


@pytest.mark.parametrize(
    ("field", "value", "named"),
    [
        ("uncertain", "maybe", "--uncertain 'maybe'"),
        ("views", "lateral", "--views 'lateral'"),
        ("views", "unknown", "--views 'unknown'"),
        ("min_positives", -1, "--min-positives -1"),
    ],
)
def test_policy_rejects_bad_options(field, value, named):
    with pytest.raises(CxrbenchError) as info:
        LabelPolicy(**{field: value})
    assert info.value.message.startswith(named)


# --- views -----------------------------------------------------------------------------------


def test_frontal_filter_leaves_out_unknown_views_and_counts_them():
    views = ["PA", "AP", "LATERAL", "LL", None]
    raw = _raw([_row(i, view=v, Edema=1.0) for i, v in enumerate(views)], ["Edema"])
    frontal, summary = build_samples(raw, LabelPolicy(views="frontal"), root=ROOT)
    assert frontal["sample_id"].tolist() == ["img/0.png", "img/1.png"]
    assert summary["excluded_unknown_view"] == 1 and summary["excluded_non_frontal"] == 2
    kept, summary = build_samples(raw, LabelPolicy(views="frontal+unknown"), root=ROOT)
    assert kept["sample_id"].tolist() == ["img/0.png", "img/1.png", "img/4.png"]
    assert summary["excluded_unknown_view"] == 0 and summary["excluded_non_frontal"] == 2
    everything, summary = build_samples(raw, LabelPolicy(views="all"), root=ROOT)
    assert len(everything) == 5 and summary["excluded_unknown_view"] == 0
    assert pa.Table.from_pandas(everything, preserve_index=False).column("view").to_pylist() == views


def test_frontal_without_projection_counts_as_frontal():
    raw = _raw([_row(i, view=v, Edema=1.0) for i, v in enumerate(["FRONTAL", "LATERAL"])], ["Edema"])
    samples, summary = build_samples(raw, LabelPolicy(views="frontal"), root=ROOT)
    assert samples["view"].tolist() == ["FRONTAL"] and summary["excluded_non_frontal"] == 1


def test_only_lateral_images_with_frontal_filter_is_an_error():
    raw = _raw([_row(0, view="LATERAL", Edema=1.0)], ["Edema"])
    with pytest.raises(CxrbenchError, match="--views all"):
        build_samples(raw, LabelPolicy(), root=ROOT)


def test_dataset_without_views_needs_frontal_plus_unknown():
    raw = _raw([_row(i, view=None, Edema=1.0) for i in range(3)], ["Edema"])
    with pytest.raises(CxrbenchError) as info:
        build_samples(raw, LabelPolicy(), root=ROOT)
    assert "3 image(s) have no recorded view" in info.value.message
    assert "--views frontal+unknown" in info.value.message
    samples, _ = build_samples(raw, LabelPolicy(views="frontal+unknown"), root=ROOT)
    assert len(samples) == 3


# --- splits and ids ----------------------------------------------------------------------------


def test_splits_are_by_patient_and_match_assign_splits():
    rows = [_row(i, patient=f"p{i % 7}", Edema=float(i % 2)) for i in range(40)]
    policy = LabelPolicy(split=(0.5, 0.25, 0.25), seed=4)
    samples, _ = build_samples(_raw(rows, ["Edema"]), policy, root=ROOT)
    expected = assign_splits([r["patient_id"] for r in rows], ratios=(0.5, 0.25, 0.25), seed=4)
    assert samples["split"].tolist() == list(expected)
    assert samples.groupby("patient_id")["split"].nunique().max() == 1


def test_official_split_with_trainval():
    rows = [dict(_row(i, Edema=1.0), split=s) for i, s in enumerate(["trainval"] * 30 + ["test"] * 5)]
    samples, _ = build_samples(_raw(rows, ["Edema"]), LabelPolicy(), root=ROOT)
    assert set(samples["split"].iloc[:30]) == {"train", "val"}
    assert set(samples["split"].iloc[30:]) == {"test"}


def test_sample_ids_relative_to_root_and_duplicates_rejected():
    rows = [
        _row(0, Edema=1.0),
        {"path": "/elsewhere/x.png", "patient_id": "q", "view": "PA", "Edema": 0.0},
    ]
    samples, _ = build_samples(_raw(rows, ["Edema"]), LabelPolicy(), root=ROOT)
    assert samples["sample_id"].tolist() == ["img/0.png", "/elsewhere/x.png"]
    with pytest.raises(CxrbenchError, match="img/0.png"):
        build_samples(_raw([_row(0, Edema=1.0), _row(0, Edema=0.0)], ["Edema"]), LabelPolicy(), root=ROOT)


def test_adapter_sample_ids_win_over_paths():
    rows = [dict(_row(i, Edema=1.0), sample_id=sid) for i, sid in enumerate(["00000001_000.png", None])]
    samples, _ = build_samples(_raw(rows, ["Edema"]), LabelPolicy(), root=ROOT)
    assert samples["sample_id"].tolist() == ["00000001_000.png", "img/1.png"]
    assert samples["path"].tolist() == [f"{ROOT}/img/0.png", f"{ROOT}/img/1.png"]


def test_duplicate_adapter_ids_are_one_short_line_naming_two():
    rows = [dict(_row(i, Edema=1.0), sample_id=f"id{i % 40}") for i in range(200)]
    with pytest.raises(CxrbenchError) as info:
        build_samples(_raw(rows, ["Edema"]), LabelPolicy(), root=ROOT)
    message = info.value.message
    assert message.startswith("40 sample id(s) are listed more than once")
    assert "'id0', 'id1' and 38 more" in message and "\n" not in message and len(message) < 200


def test_empty_dataset_names_the_root():
    raw = RawDataset(frame=pd.DataFrame(columns=["path", "patient_id", "view", "Edema"]), labels=["Edema"])
    with pytest.raises(CxrbenchError, match="/data/ds"):
        build_samples(raw, LabelPolicy(), root=ROOT)


def test_optional_columns_carried_over():
    rows = [
        dict(_row(i, Edema=1.0), sex=s, age=a, study_id=f"s{i}")
        for i, (s, a) in enumerate([("M", 40.0), (None, NAN), ("F", "55")])
    ]
    samples, _ = build_samples(_raw(rows, ["Edema"]), LabelPolicy(), root=ROOT)
    sex = pa.Table.from_pandas(samples, preserve_index=False).column("sex").to_pylist()
    assert sex == ["M", None, "F"]  # missing is null in the Parquet contract, not the text "nan"
    np.testing.assert_array_equal(samples["age"].to_numpy(), [40.0, NAN, 55.0])
    assert samples["study_id"].tolist() == ["s0", "s1", "s2"]


# --- min positives -----------------------------------------------------------------------------


def _split_frame() -> pd.DataFrame:
    split = ["train"] * 4 + ["val"] * 3 + ["test"] * 3
    return pd.DataFrame(
        {
            "split": split,
            # positives per split: common 3/2/2, rare 3/1/2, missing-in-test 2/2/0
            "label:common": [1, 1, 1, 0, 1, 1, 0, 1, 1, 0],
            "label:rare": [1, 1, 1, NAN, 1, 0, NAN, 1, 1, 0],
            "label:notest": [1, 1, 0, 0, 1, 1, 0, 0, NAN, 0],
        }
    ).astype({"label:common": float})


@pytest.mark.parametrize(
    ("threshold", "dropped"),
    [(0, []), (1, ["notest"]), (2, ["rare", "notest"])],
)
def test_min_positives_drops_labels_rare_in_any_split(threshold, dropped):
    kept, gone = drop_rare_labels(_split_frame(), threshold)
    assert gone == dropped
    assert label_columns(kept) == [c for c in label_columns(_split_frame()) if c[6:] not in dropped]


def test_min_positives_dropping_every_label_is_an_error():
    with pytest.raises(CxrbenchError, match="--min-positives 3"):
        drop_rare_labels(_split_frame(), 3)


def test_min_positives_recorded_in_summary():
    rows = [dict(_row(i, Common=1.0, Rare=float(i == 0)), split=s) for i, s in enumerate(["train", "val", "test"] * 3)]
    samples, summary = build_samples(_raw(rows, ["Common", "Rare"]), LabelPolicy(min_positives=2), root=ROOT)
    assert label_columns(samples) == ["label:common"]
    assert summary["dropped_labels"] == ["rare"]
    assert summary["label_mapping"] == {"Common": "common"}


def test_prevalence_table_counts_positives_over_known():
    table = prevalence_table(_split_frame()).set_index("label")
    assert table.loc["rare"].to_dict() == {"train": "3/3", "val": "1/2", "test": "2/3"}
    assert table.loc["notest"].to_dict() == {"train": "2/4", "val": "2/3", "test": "0/2"}
