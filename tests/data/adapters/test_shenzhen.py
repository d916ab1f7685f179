"""Tests for the Shenzhen TB adapter: Kaggle metadata table and NLM clinical-reading layouts."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from cxrbench.data.adapters import shenzhen
from cxrbench.errors import CxrbenchError

TABLE = (
    "study_id,sex,age,findings\n"
    "CHNCXR_0001_0.png,Male,45,normal\n"
    'CHNCXR_0327_1.png,Female,3,"Bilateral secondary PTB , right pleural change after decortication"\n'
    "CHNCXR_0400_1.png,Male,,secondary PTB  in the right upper field\n"
)


def test_kaggle_table(tmp_path):
    (tmp_path / "shenzhen_metadata.csv").write_text(TABLE)
    (tmp_path / "images" / "images").mkdir(parents=True)
    (tmp_path / "images" / "images" / "CHNCXR_0001_0.png").write_bytes(b"")
    ds = shenzhen.load(tmp_path)
    f = ds.frame
    assert ds.labels == ["Tuberculosis"]
    assert list(f["Tuberculosis"]) == [0.0, 1.0, 1.0]
    assert list(f["patient_id"]) == ["CHNCXR_0001", "CHNCXR_0327", "CHNCXR_0400"]
    assert list(f["sex"]) == ["M", "F", "M"]
    assert f["age"].iloc[1] == 3.0 and math.isnan(f["age"].iloc[2])
    assert f["path"].iloc[2] == str(tmp_path.resolve() / "images" / "images" / "CHNCXR_0400_1.png")
    assert list(f["sample_id"]) == ["CHNCXR_0001_0", "CHNCXR_0327_1", "CHNCXR_0400_1"]
    assert (f["view"] == "PA").all() and f["split"].isna().all()


def test_nlm_clinical_readings(tmp_path):
    readings = tmp_path / "ChinaSet_AllFiles" / "ClinicalReadings"
    readings.mkdir(parents=True)
    texts = {
        "CHNCXR_0001_0.txt": "male 45yrs\nnormal\n",
        "CHNCXR_0002_0.txt": "female 64days\r\nnormal\r\n",
        "CHNCXR_0500_1.txt": "male , 29yrs  \t\nbilateral secondary PTB\n",
        "CHNCXR_0501_1.txt": "femal 32yrs\nSTB\n",
    }
    for name, text in texts.items():
        (readings / name).write_bytes(text.encode())
    f = shenzhen.load(tmp_path).frame
    assert list(f["Tuberculosis"]) == [0.0, 0.0, 1.0, 1.0]
    assert list(f["sex"]) == ["M", "F", "M", "F"]
    assert f["age"].to_list() == pytest.approx([45.0, 64 / 365.25, 29.0, 32.0])
    assert f["path"].iloc[0] == str(tmp_path.resolve() / "ChinaSet_AllFiles" / "CXR_png" / "CHNCXR_0001_0.png")


def test_parse_reading_variants():
    assert shenzhen.parse_reading("female24yrs\nnormal") == ("F", 24.0)
    assert shenzhen.parse_reading("male 16month\nnormal") == ("M", pytest.approx(16 / 12))
    sex, age = shenzhen.parse_reading("")
    assert sex is None and math.isnan(age)


def test_errors(tmp_path):
    with pytest.raises(CxrbenchError, match="shenzhen_metadata.csv"):
        shenzhen.load(tmp_path)
    (tmp_path / "shenzhen_metadata.csv").write_text("study_id,sex,age\nCHNCXR_0001.png,Male,4\n")
    with pytest.raises(CxrbenchError, match="does not end in _0"):
        shenzhen.load(tmp_path)


def test_real_table(realdata, tmp_path):
    real = realdata / "shenzhen" / "shenzhen_metadata.csv"
    (tmp_path / "shenzhen_metadata.csv").symlink_to(real)
    f = shenzhen.load(tmp_path).frame
    ref = pd.read_csv(real)
    assert len(f) == len(ref) == 662
    assert f["patient_id"].is_unique
    # TB iff the reading is not "normal": the two encodings must agree on every row.
    assert (f["Tuberculosis"].to_numpy() == (ref["findings"].str.strip() != "normal").to_numpy()).all()
    assert f["Tuberculosis"].sum() == 336
    assert (f["sex"] == "M").sum() == 460 and (f["sex"] == "F").sum() == 202
    assert f["age"].min() >= 1 and not f["age"].isna().any()
