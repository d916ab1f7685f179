"""Tests for the JSRT adapter: header-less CRLF table, original TXT lines, subtlety classes, raw images."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from cxrbench.data.adapters import jsrt
from cxrbench.errors import CxrbenchError

TABLE = (
    "JPCLN001.png,5,15,53,Male,1634,692,malignant,l.upper lobe,lung cancer\r\n"
    "JPCLN106.png,2,18,?,Male,1200,800,benign,r.lower lobe,organiging pneumonia\r\n"
    "JPCNN001.png,,,30,Female,,,non-nodule,,\r\n"
)


def test_table_subtlety_classes(tmp_path):
    (tmp_path / "jsrt_metadata.csv").write_bytes(TABLE.encode())
    (tmp_path / "All247images").mkdir()
    (tmp_path / "All247images" / "JPCLN001.IMG").write_bytes(b"")
    ds = jsrt.load(tmp_path)
    f = ds.frame
    assert ds.task == "multiclass" and ds.image_format == "jsrt-raw"
    assert ds.labels == [
        "non-nodule",
        "subtlety 1",
        "subtlety 2",
        "subtlety 3",
        "subtlety 4",
        "subtlety 5",
    ]
    np.testing.assert_array_equal(f[ds.labels].to_numpy(), [[0, 0, 0, 0, 0, 1], [0, 0, 1, 0, 0, 0], [1, 0, 0, 0, 0, 0]])
    assert list(f["patient_id"]) == ["JPCLN001", "JPCLN106", "JPCNN001"]
    assert f["path"].iloc[2] == str(tmp_path.resolve() / "All247images" / "JPCNN001.IMG")
    assert list(f["sample_id"]) == ["JPCLN001", "JPCLN106", "JPCNN001"]
    assert list(f["sex"]) == ["M", "M", "F"]
    assert f["age"].iloc[0] == 53.0 and math.isnan(f["age"].iloc[1])
    assert (f["view"] == "PA").all() and f["split"].isna().all()


def test_png_variant_and_binary_labels(tmp_path):
    (tmp_path / "jsrt_metadata.csv").write_bytes(TABLE.encode())
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "JPCLN001.png").write_bytes(b"")
    ds = jsrt.load(tmp_path, labels="nodule")
    assert ds.image_format is None and ds.labels == ["Nodule"]
    assert list(ds.frame["Nodule"]) == [1.0, 1.0, 0.0]
    assert ds.frame["path"].iloc[0].endswith("images/JPCLN001.png")


def test_original_txt_files(tmp_path):
    (tmp_path / "CLNDAT_EN.TXT").write_text(
        "JPCLN001.IMG, 5, 15, 53, male, 1634 692, malignant l.upper lobe, lung cancer\n"
    )
    (tmp_path / "CNNDAT_EN.TXT").write_text("JPCNN001.IMG\t30\tfemale\tnon-nodule\n")
    ds = jsrt.load(tmp_path)
    f = ds.frame
    assert list(f["patient_id"]) == ["JPCLN001", "JPCNN001"]
    assert f.loc[0, "subtlety 5"] == 1.0 and f.loc[1, "non-nodule"] == 1.0
    assert list(f["age"]) == [53.0, 30.0] and list(f["sex"]) == ["M", "F"]


def test_errors(tmp_path):
    with pytest.raises(CxrbenchError, match="jsrt_metadata.csv"):
        jsrt.load(tmp_path)
    with pytest.raises(CxrbenchError, match="labels must be"):
        jsrt.load(tmp_path, labels="size")
    (tmp_path / "jsrt_metadata.csv").write_text("JPCLN009.png,,12,40,Male,1,1,benign,x,y\n")
    with pytest.raises(CxrbenchError, match="JPCLN009 has no subtlety"):
        jsrt.load(tmp_path)


def test_real_table(realdata, tmp_path):
    real = realdata / "jsrt" / "jsrt_metadata.csv"
    (tmp_path / "jsrt_metadata.csv").symlink_to(real)
    ds = jsrt.load(tmp_path)
    counts = ds.frame[ds.labels].sum().to_dict()
    ref = pd.read_csv(real, header=None)
    expected = ref[1].fillna(0).astype(int).value_counts().to_dict()
    assert counts == {name: float(expected.get(k, 0)) for k, name in enumerate(ds.labels)}
    assert counts["non-nodule"] == 93 and sum(counts.values()) == 247
    assert ds.frame["age"].isna().sum() == (ref[3].astype(str) == "?").sum() == 2
