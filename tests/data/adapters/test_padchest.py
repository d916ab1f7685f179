"""PadChest adapter: list-like Labels (padded, empty, blank), projections, ages, image layouts."""

from __future__ import annotations

import csv
import gzip
from pathlib import Path

import pandas as pd
import pytest

from cxrbench.data.adapters import padchest
from cxrbench.errors import CxrbenchError

# column names as the authors' notebook prints them (shared/realdata/LAYOUTS.md)
COLUMNS = (
    "ImageID,ImageDir,StudyDate_DICOM,StudyID,PatientID,PatientBirth,PatientSex_DICOM,"
    "ViewPosition_DICOM,Projection,MethodProjection,Pediatric,Modality_DICOM,Manufacturer_DICOM,"
    "PhotometricInterpretation_DICOM,PixelRepresentation_DICOM,PixelAspectRatio_DICOM,"
    "SpatialResolution_DICOM,BitsStored_DICOM,WindowCenter_DICOM,WindowWidth_DICOM,Rows_DICOM,"
    "Columns_DICOM,XRayTubeCurrent_DICOM,Exposure_DICOM,ExposureInuAs_DICOM,ExposureTime,"
    "RelativeXRayExposure_DICOM,ReportID,Report,MethodLabel,Labels,Localizations,"
    "LabelsLocalizationsBySentence,labelCUIS,LocalizationsCUIS"
).split(",")
ROWS = [
    # image id, dir, date, study, patient, birth, sex, viewpos, projection, labels, report
    (
        "20536686640136348236148679891455886468_k6ga29.png",
        0.0,
        "20140915",
        "20536686640136348236148679891455886468",
        "839860488694292331637988235681460987",
        1930.0,
        "F",
        "POSTEROANTERIOR",
        "PA",
        "['normal']",
        "sin hallazg patolog edad pacient .",
    ),
    (
        "135803415504923515076821959678074435083_fzis7d.png",
        0.0,
        "20150324",
        "135803415504923515076821959678074435083",
        "313572750430997347502932654319389875966",
        1929.0,
        "M",
        "LATERAL",
        "L",
        "['COPD signs', ' emphysema', '', 'heart insufficiency']",
        "torax hiperinsuflado .",
    ),
    (
        "216840111366964013686042548532013214135937247_02-002-109.png",
        13.0,
        "20090101",
        "216840111366964013686042548532013214135937247",
        "313572750430997347502932654319389875966",
        None,
        "M",
        "",
        "AP_horizontal",
        "['pneumothorax', 'pulmonary mass']",
        "",
    ),
    ("1111_empty.png", 13.0, "20100101", "1111", "4444", 1800.0, "", "", "AP", "[]", "x ."),
    ("2222_nan.png", None, "20100101", "2222", "5555", 2000.0, "F", "", "EXCLUDE", None, "y ."),
]


def write_padchest(path: Path, *, gz: bool = False) -> None:
    opener = gzip.open if gz else open
    with opener(path, "wt", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["", *COLUMNS])  # the authors' file has a leading unnamed index column
        for i, (img, d, date, study, pat, birth, sex, vp, proj, labels, report) in enumerate(ROWS):
            values = dict.fromkeys(COLUMNS, "")
            values.update(
                ImageID=img,
                ImageDir="" if d is None else d,
                StudyDate_DICOM=date,
                StudyID=study,
                PatientID=pat,
                PatientBirth="" if birth is None else birth,
                PatientSex_DICOM=sex,
                ViewPosition_DICOM=vp,
                Projection=proj,
                Labels="" if labels is None else labels,
                Report=report,
                labelCUIS="['C0034069' 'C0742362']",
                MethodLabel="Physician",
            )
            writer.writerow([i, *values.values()])


def test_labels_views_ages(tmp_path: Path) -> None:
    write_padchest(tmp_path / padchest.FILES[0])
    raw = padchest.load(tmp_path)
    f = raw.frame
    assert raw.labels == list(padchest.SSL13_LABELS)
    assert f["normal"].tolist()[:3] == [1.0, 0.0, 0.0]
    assert f.loc[1, ["COPD signs", "emphysema", "heart insufficiency"]].tolist() == [1.0, 1.0, 1.0]
    assert f.loc[1, "pneumonia"] == 0.0
    # '[]' and blank Labels: unknown, not negative
    assert f.loc[3, list(padchest.SSL13_LABELS)].isna().all()
    assert f.loc[4, list(padchest.SSL13_LABELS)].isna().all()
    assert f["view"].tolist() == ["PA", "LATERAL", "AP", "AP", "EXCLUDE"]
    assert f["patient_id"].iloc[0] == "839860488694292331637988235681460987"
    assert f["patient_id"].iloc[1] == f["patient_id"].iloc[2]
    assert f["age"].iloc[0] == 84.0 and f["age"].iloc[1] == 86.0
    assert pd.isna(f["age"].iloc[2]) and pd.isna(f["age"].iloc[3])  # no birth year; 210 years
    assert f["sex"].iloc[:3].tolist() == ["F", "M", "M"] and pd.isna(f["sex"].iloc[3])
    assert f["split"].isna().all()
    assert f["report"].iloc[0] == "sin hallazg patolog edad pacient ."
    assert f["path"].iloc[2] == str(tmp_path / "13" / ROWS[2][0])
    assert f["sample_id"].iloc[2] == ROWS[2][0]


def test_all_labels_option(tmp_path: Path) -> None:
    write_padchest(tmp_path / padchest.FILES[1], gz=True)
    raw = padchest.load(tmp_path, labels="all")
    expected = sorted(
        {
            "normal",
            "COPD signs",
            "emphysema",
            "heart insufficiency",
            "pneumothorax",
            "pulmonary mass",
        }
    )
    assert raw.labels == expected
    assert raw.frame["pulmonary mass"].tolist()[:3] == [0.0, 0.0, 1.0]


def test_flat_image_layout(tmp_path: Path) -> None:
    write_padchest(tmp_path / padchest.FILES[0])
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / ROWS[0][0]).write_bytes(b"")
    assert padchest.load(tmp_path).frame["path"].iloc[2] == str(tmp_path / "images" / ROWS[2][0])


def test_parse_labels() -> None:
    assert padchest.parse_labels("['', ' NSG tube', 'suboptimal study']") == [
        "NSG tube",
        "suboptimal study",
    ]
    assert padchest.parse_labels("[]") is None
    assert padchest.parse_labels(float("nan")) is None
    assert padchest.parse_labels("[\"heart's shadow\", 'normal']") == ["heart's shadow", "normal"]


def test_errors(tmp_path: Path) -> None:
    with pytest.raises(CxrbenchError, match="PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv"):
        padchest.load(tmp_path)
    with pytest.raises(CxrbenchError, match="labels must be one of"):
        padchest.load(tmp_path, labels="nine")
    (tmp_path / padchest.FILES[0]).write_text("ImageID,Labels\nx.png,['normal']\n")
    with pytest.raises(CxrbenchError, match="PatientID"):
        padchest.load(tmp_path)
