"""Tests for the SIIM-ACR adapter: leading-space header, several RLE rows per image, nested DICOMs."""

from __future__ import annotations

import gzip

import pandas as pd
import pytest

from cxrbench.data.adapters import siim_acr
from cxrbench.errors import CxrbenchError

REAL_ID = "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819"
POS_ID = "1.2.276.0.7230010.3.1.4.8323329.13666.1517875247.117800"
NEG_ID = "1.2.276.0.7230010.3.1.4.8323329.5597.1517875188.959090"
RLE = (
    f"ImageId, EncodedPixels\n{REAL_ID}, -1\n{POS_ID}, 557374 2 1015 8 1009 14\n{POS_ID}, 100 3 1021 5\n{NEG_ID}, -1\n"
)


def test_labels_paths_and_fallback_ids(tmp_path):
    (tmp_path / "train-rle.csv").write_text(RLE)
    ds = siim_acr.load(tmp_path)
    f = ds.frame
    assert ds.labels == ["Pneumothorax"]
    assert list(f["patient_id"]) == [REAL_ID, POS_ID, NEG_ID]  # no images: ImageId stands in
    assert list(f["Pneumothorax"]) == [0.0, 1.0, 0.0]
    assert f["path"].iloc[1] == str(tmp_path.resolve() / "dicom-images-train" / f"{POS_ID}.dcm")
    assert list(f["sample_id"]) == [REAL_ID, POS_ID, NEG_ID]
    assert f["split"].isna().all()


def test_nested_dicom_found_and_header_read(realdata, tmp_path):
    with gzip.open(tmp_path / "train-rle.csv.gz", "wt") as fh:
        fh.write(RLE)
    nested = tmp_path / "dicom-images-train" / "1.2.study" / "1.2.series"
    nested.mkdir(parents=True)
    (nested / f"{REAL_ID}.dcm").symlink_to(realdata / "siim" / "images" / f"{REAL_ID}.dcm")
    f = siim_acr.load(tmp_path).frame.set_index(pd.Index([REAL_ID, POS_ID, NEG_ID]))
    assert f.loc[REAL_ID, "path"] == str(nested.resolve() / f"{REAL_ID}.dcm")
    # Header values of the real file, checked with pydicom when the fixture was chosen (LAYOUTS.md).
    assert f.loc[REAL_ID, "patient_id"] == "16d7f894-55d7-4d95-8957-d18987f0e981"
    assert (f.loc[REAL_ID, "view"], f.loc[REAL_ID, "sex"], f.loc[REAL_ID, "age"]) == (
        "PA",
        "M",
        62.0,
    )
    assert f.loc[POS_ID, "patient_id"] == POS_ID and pd.isna(f.loc[POS_ID, "view"])


def test_missing_file_error(tmp_path):
    with pytest.raises(CxrbenchError, match="train-rle.csv"):
        siim_acr.load(tmp_path)
    (tmp_path / "train-rle.csv").write_text("Image,Mask\na,-1\n")
    with pytest.raises(CxrbenchError, match="lacks column"):
        siim_acr.load(tmp_path)


def test_real_rle_file(realdata, tmp_path):
    real = realdata / "siim" / "siim-pneumothorax-train-rle.csv.gz"
    (tmp_path / "train-rle.csv.gz").symlink_to(real)
    f = siim_acr.load(tmp_path).frame
    ref = pd.read_csv(real)
    positive_ids = set(ref.loc[ref[" EncodedPixels"].str.strip() != "-1", "ImageId"])
    assert len(f) == ref["ImageId"].nunique() == 12047
    assert f["Pneumothorax"].sum() == len(positive_ids)
    assert set(f.loc[f["Pneumothorax"] == 1, "patient_id"]) == positive_ids
