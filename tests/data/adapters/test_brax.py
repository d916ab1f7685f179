"""BRAX adapter: CheXpert-coded labels, views, ages, PngPath layout variants, errors."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from cxrbench.data.adapters import brax
from cxrbench.data.adapters.chexpert import LABELS
from cxrbench.errors import CxrbenchError

HEADER = [
    "DicomPath",
    "PngPath",
    "PatientID",
    "AccessionNumber",
    "ViewPosition",
    "PatientSex",
    "PatientAge",
    *LABELS,
]
P1 = "images/id_1a2b/Study_1.2.3/Series_4.5/image-6.7.png"
P2 = "images/id_1a2b/Study_1.2.3/Series_4.5/image-6.8.png"
P3 = "images/id_9f9f/Study_2.2.2/Series_3.3/image-4.4.png"


def _labels(**values: str) -> list[str]:
    return [values.get(label, "") for label in LABELS]


def _write(root: Path, suffix: str = "") -> None:
    rows = [
        ["d1", P1 + suffix, "1a2b", "A1", "PA", "F", "45", *_labels(**{"No Finding": "1"})],
        ["d2", P2 + suffix, "1a2b", "A1", "L", "F", "045Y", *_labels(Cardiomegaly="-1", Edema="0")],
        ["d3", P3 + suffix, "9f9f", "A2", "AP LLD", "M", "85 or more", *_labels(Pneumothorax="1")],
        ["d4", P3 + suffix, "9f9f", "A2", "", "", "", *_labels()],
    ]
    pd.DataFrame(rows, columns=HEADER).to_csv(root / "master_spreadsheet_update.csv", index=False)


def test_labels_views_ages(tmp_path: Path) -> None:
    _write(tmp_path)
    raw = brax.load(tmp_path)
    f = raw.frame
    assert raw.labels == list(LABELS)
    assert f["view"].iloc[:3].tolist() == ["PA", "LATERAL", "AP"] and pd.isna(f["view"].iloc[3])
    assert f.loc[0, "No Finding"] == 1.0 and pd.isna(f.loc[0, "Cardiomegaly"])
    assert f.loc[1, "Cardiomegaly"] == -1.0 and f.loc[1, "Edema"] == 0.0
    assert f.loc[3, list(LABELS)].isna().all()  # nothing mentioned: No Finding stays unknown
    assert f["No Finding"].iloc[1:3].tolist() == [0.0, 0.0]  # uncertain / positive finding
    assert f["age"].iloc[:3].tolist() == [45.0, 45.0, 85.0] and pd.isna(f["age"].iloc[3])
    assert f["sex"].iloc[:3].tolist() == ["F", "F", "M"] and pd.isna(f["sex"].iloc[3])
    assert f["patient_id"].tolist() == ["1a2b", "1a2b", "9f9f", "9f9f"]
    assert f["study_id"].iloc[0] == "Study_1.2.3"
    assert f["path"].iloc[0] == str(tmp_path / P1)
    assert f["sample_id"].tolist() == [P1, P2, P3, P3]  # PngPath as written
    assert f["split"].isna().all()


def test_trimmed_png_path_variant(tmp_path: Path) -> None:
    _write(tmp_path, suffix=".000000")  # 7 extra characters, as third-party loaders trim
    (tmp_path / P1).parent.mkdir(parents=True)
    (tmp_path / P1).write_bytes(b"")
    assert brax.load(tmp_path).frame["path"].iloc[1] == str(tmp_path / P2)


def test_errors(tmp_path: Path) -> None:
    with pytest.raises(CxrbenchError, match="master_spreadsheet_update.csv"):
        brax.load(tmp_path)
    _write(tmp_path)
    df = pd.read_csv(tmp_path / "master_spreadsheet_update.csv", dtype=str)
    df.loc[0, "Edema"] = "maybe"
    df.to_csv(tmp_path / "master_spreadsheet_update.csv", index=False)
    with pytest.raises(CxrbenchError, match="Edema.*maybe"):
        brax.load(tmp_path)
