"""Shared adapter helpers: value normalisers, DICOM header reading, option coercion by annotation."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import pandas as pd
import pytest

from cxrbench.data import adapters
from cxrbench.data.adapters import base, indiana, jsrt, nih
from cxrbench.data.adapters import csv as csv_adapter
from cxrbench.data.adapters.base import (
    coerce_options,
    dicom_headers,
    normalise_sex,
    normalise_split,
    normalise_view,
    parse_age,
    parse_bool,
)
from cxrbench.errors import CxrbenchError


def test_normalise_view_spellings():
    assert normalise_view("POSTEROANTERIOR") == "PA"
    assert normalise_view("AP_horizontal") == "AP"  # PadChest
    assert normalise_view("ap erect") == "AP"
    assert normalise_view("AP AXIAL") == "AP"  # MIMIC
    assert normalise_view("PA LLD") == "PA"
    assert normalise_view("L") == "LATERAL"  # PadChest, BRAX
    assert normalise_view("lat") == "LATERAL"
    assert normalise_view("ll") == "LL"
    assert normalise_view("RL") == "RL"
    assert normalise_view("XTABLE LATERAL") == "XTABLE LATERAL"
    assert normalise_view("APPLE") == "APPLE"  # only a whole first word AP/PA folds
    for blank in (float("nan"), " ", "", None, pd.NA):
        assert normalise_view(blank) is None


def test_normalise_sex_and_split():
    assert normalise_sex("Male") == "M" and normalise_sex(" f ") == "F"
    assert normalise_sex("O") is None and normalise_sex(float("nan")) is None
    assert normalise_split("Validation", source="x") == "val"
    assert normalise_split("validate", source="x") == "val"  # MIMIC-CXR spelling
    assert normalise_split(None, source="x") is None and normalise_split(" ", source="x") is None
    with pytest.raises(CxrbenchError, match="meta.csv: unknown split value 'holdout'"):
        normalise_split("holdout", source="meta.csv")


def test_parse_age_units_and_bounds():
    assert parse_age("058Y") == 58.0
    assert parse_age("007M") == pytest.approx(7 / 12)
    assert parse_age("012W") == pytest.approx(12 * 7 / 365.25)
    assert parse_age("001D") == pytest.approx(1 / 365.25)
    assert parse_age(45) == 45.0 and parse_age(" 30.5 ") == 30.5
    for bad in ("?", "412Y", -3, "", None, float("nan"), "58 years", True):
        assert math.isnan(parse_age(bad))
    # the adapters that had their own copies now share this one
    assert nih.parse_age is parse_age


def test_dicom_headers_reads_tags_and_tolerates_missing(tmp_path: Path):
    import numpy as np
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(tmp_path / "a.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.PatientID, ds.ViewPosition, ds.PatientSex, ds.PatientAge = "P7", "AP", "F", "007M"
    ds.Rows = ds.Columns = 2
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.PixelData = np.zeros((2, 2), np.uint8).tobytes()
    ds.save_as(tmp_path / "a.dcm", enforce_file_format=True)
    out = dicom_headers([tmp_path / "a.dcm", tmp_path / "missing.dcm"])
    assert out.loc[0, ["patient_id", "view", "sex"]].tolist() == ["P7", "AP", "F"]
    assert out.loc[0, "age"] == pytest.approx(7 / 12)
    assert out.loc[1, ["patient_id", "view", "sex", "age"]].isna().all()


def test_parse_bool():
    for text in ("true", "TRUE", "1", "yes", "on", True):
        assert parse_bool(text, name="x") is True
    for text in ("false", "0", "No", "off", False):
        assert parse_bool(text, name="x") is False
    with pytest.raises(CxrbenchError, match="option 'x' must be true or false, got 'maybe'"):
        parse_bool("maybe", name="x")


def _load(
    root: Path,
    *,
    flag: bool = False,
    top: int | None = 20,
    rate: float = 0.5,
    names: list[str] | None = None,
    counts: list[int] | None = None,
    where: Path | None = None,
    mode: Literal["a", "b"] = "a",
    either: bool | str = False,
    text: str = "x",
):
    return None


def test_coerce_options_by_annotation():
    out = coerce_options(
        _load,
        {
            "flag": "Yes",
            "top": "5",
            "rate": "1e-3",
            "names": "Effusion, Nodule,",
            "counts": "1,2",
            "where": "/data/mimic",
            "mode": "b",
            "either": "drop",
            "text": "none",
        },
    )
    assert out == {
        "flag": True,
        "top": 5,
        "rate": 1e-3,
        "names": ["Effusion", "Nodule"],
        "counts": [1, 2],
        "where": Path("/data/mimic"),
        "mode": "b",
        "either": "drop",  # bool tried first, then str
        "text": "none",  # a plain str option keeps the word
    }
    assert coerce_options(_load, {"top": "none", "either": "0"}) == {"top": None, "either": False}
    # values that are already typed (from a TOML suite) pass unchanged
    assert coerce_options(_load, {"top": 3, "names": ["A"]}) == {"top": 3, "names": ["A"]}
    assert coerce_options(_load, {}) == {}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"top": "five"}, "option 'top' for dataset test-base: cannot read 'five' as"),
        ({"rate": "fast"}, "cannot read 'fast' as float"),
        ({"flag": "maybe"}, "cannot read 'maybe' as bool"),
        ({"mode": "c"}, "cannot read 'c' as 'a' or 'b'"),
        ({"counts": "1,x"}, "cannot read '1,x'"),
        (
            {"topp": "5"},
            r"unknown option 'topp' for dataset test-base \(known: counts, either, flag",
        ),
    ],
)
def test_coerce_options_errors_are_one_line(options, message):
    with pytest.raises(CxrbenchError, match=message) as err:
        coerce_options(_load, options)
    assert "\n" not in str(err.value)


def test_coerce_options_on_real_adapters():
    assert coerce_options(nih.load, {"no_finding": "true"}) == {"no_finding": True}
    assert coerce_options(indiana.load, {"top": "10", "read_headers": "false"}) == {
        "top": 10,
        "read_headers": False,
    }
    got = coerce_options(csv_adapter.load, {"csv": "m.csv", "label_columns": "A,B"})
    assert got == {"csv": "m.csv", "label_columns": ["A", "B"]}
    with pytest.raises(CxrbenchError, match=r"unknown option 'labels' for dataset nih \(known: no_finding\)"):
        coerce_options(nih.load, {"labels": "x"})
    with pytest.raises(CxrbenchError, match=r"dataset jsrt \(known: labels\)"):
        coerce_options(jsrt.load, {"label": "x"})


def test_every_adapter_annotates_options_coerce_options_understands():
    """Each registered adapter's load() lists its options with annotations coerce_options can read."""
    import inspect
    import typing

    for name in adapters.adapter_names():
        load = adapters.get_adapter(name).load
        hints = typing.get_type_hints(load)
        params = list(inspect.signature(load).parameters.values())
        assert params[0].name == "root", name
        for p in params[1:]:
            assert p.kind is p.KEYWORD_ONLY, (name, p.name)
            assert p.name in hints, (name, p.name)
            if p.default is not p.empty and p.default is not None:
                # the default, written as text, must read back as itself
                text = ",".join(map(str, p.default)) if isinstance(p.default, list) else str(p.default)
                assert coerce_options(load, {p.name: text})[p.name] == p.default, (name, p.name)


def test_load_dataset_coerces_then_loads(tmp_path: Path):
    (tmp_path / "m.csv").write_text("image,pid,A\na.png,1,1\nb.png,2,0\n")
    raw = adapters.load_dataset(
        "csv",
        tmp_path,
        {"csv": "m.csv", "path_column": "image", "patient_column": "pid", "label_columns": "A"},
    )
    assert raw.labels == ["A"] and len(raw.frame) == 2
    with pytest.raises(CxrbenchError, match="unknown option 'bogus' for dataset csv"):
        adapters.load_dataset("csv", tmp_path, {"bogus": "1"})
    assert base.MAX_AGE_YEARS == 120.0


def test_preview_bounds_lists():
    assert base.preview(["a", "b"]) == "'a', 'b'"
    assert base.preview([f"c{i}" for i in range(500)]) == "'c0', 'c1', 'c2' and 497 more"
    assert base.preview([1.5, 2.0], 1) == "1.5 and 1 more"


@pytest.mark.parametrize(
    ("module", "file_name"),
    [
        ("rsna_pneumonia", "stage_2_train_labels.csv"),
        ("shenzhen", "shenzhen_metadata.csv"),
        ("siim_acr", "train-rle.csv"),
    ],
)
def test_wrong_wide_file_is_a_short_error(tmp_path, module, file_name):
    # a 2,000-column file given by mistake: the message names a few columns, not all of them
    (tmp_path / file_name).write_text(",".join(f"column_{i}" for i in range(2000)) + "\n" + "1," * 1999 + "1\n")
    with pytest.raises(CxrbenchError) as info:
        adapters.get_adapter(module.replace("_", "-")).load(tmp_path)
    assert len(info.value.message) < 300 and "and 1995 more" in info.value.message


def test_unknown_official_splits_are_named_briefly():
    from cxrbench.data.splits import assign_splits

    with pytest.raises(CxrbenchError) as info:
        assign_splits([f"p{i}" for i in range(300)], [f"fold{i}" for i in range(300)])
    assert "and 297 more" in info.value.message and len(info.value.message) < 200
