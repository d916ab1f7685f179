"""Tests for the Montgomery TB adapter: readings parsed, "same pt as" images merged into one patient."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from cxrbench.data.adapters import montgomery
from cxrbench.errors import CxrbenchError

READINGS = {
    "MCUCXR_0001_0.txt": "Patient's Sex: F \nPatient's Age: 027Y\nnormal\n",
    "MCUCXR_0005_0.txt": "Patient's Sex: O \r\nPatient's Age: 005Y\r\nnormal\r\n",
    "MCUCXR_0162_1.txt": "Patient's Sex: M \nPatient's Age: 049Y\nleft upper lobe cavity, TB\n",
    "MCUCXR_0163_1.txt": "Patient's Sex: M \nPatient's Age: 049Y\nNO REPORT (same pt as MCUCXR_0162_1)\n",
    "MCUCXR_0200_1.txt": "Patient's Sex: M \nPatient's Age: \nright hilar adenopathy\n",
}


@pytest.fixture()
def root(tmp_path):
    folder = tmp_path / "MontgomerySet" / "ClinicalReadings"
    folder.mkdir(parents=True)
    for name, text in READINGS.items():
        (folder / name).write_bytes(text.encode())
    return tmp_path


def test_labels_patients_demographics(root):
    ds = montgomery.load(root)
    f = ds.frame.set_index(ds.frame["path"].str.rsplit("/", n=1).str[-1])
    assert ds.labels == ["Tuberculosis"]
    assert f["Tuberculosis"].to_dict() == {
        "MCUCXR_0001_0.png": 0.0,
        "MCUCXR_0005_0.png": 0.0,
        "MCUCXR_0162_1.png": 1.0,
        "MCUCXR_0163_1.png": 1.0,
        "MCUCXR_0200_1.png": 1.0,
    }
    assert f.loc["MCUCXR_0163_1.png", "patient_id"] == f.loc["MCUCXR_0162_1.png", "patient_id"] == "MCUCXR_0162"
    assert f["patient_id"].nunique() == 4
    assert f.loc["MCUCXR_0163_1.png", "sample_id"] == "MCUCXR_0163_1"
    assert f.loc["MCUCXR_0001_0.png", "sex"] == "F" and f.loc["MCUCXR_0001_0.png", "age"] == 27.0
    assert pd.isna(f.loc["MCUCXR_0005_0.png", "sex"]) and f.loc["MCUCXR_0005_0.png", "age"] == 5.0
    assert math.isnan(f.loc["MCUCXR_0200_1.png", "age"])
    assert f.loc["MCUCXR_0001_0.png", "path"] == str(root.resolve() / "MontgomerySet" / "CXR_png" / "MCUCXR_0001_0.png")
    assert (f["view"] == "PA").all() and f["split"].isna().all()


def test_root_may_be_the_set_folder(root):
    assert len(montgomery.load(root / "MontgomerySet").frame) == 5


def test_errors(tmp_path):
    with pytest.raises(CxrbenchError, match="MontgomerySet/ClinicalReadings"):
        montgomery.load(tmp_path)
    (tmp_path / "ClinicalReadings").mkdir()
    with pytest.raises(CxrbenchError, match="no MCUCXR"):
        montgomery.load(tmp_path)
