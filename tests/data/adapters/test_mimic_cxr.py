"""MIMIC-CXR-JPG adapter: metadata x study labels join, views, official split, paths, errors."""

from __future__ import annotations

import gzip
from pathlib import Path

import pandas as pd
import pytest

from cxrbench.data.adapters import mimic_cxr
from cxrbench.data.adapters.base import normalise_view
from cxrbench.errors import CxrbenchError

META_HEADER = (
    "dicom_id,subject_id,study_id,PerformedProcedureStepDescription,ViewPosition,Rows,Columns,"
    "StudyDate,StudyTime,ProcedureCodeSequence_CodeMeaning,ViewCodeSequence_CodeMeaning,"
    "PatientOrientationCodeSequence_CodeMeaning"
)
META = [
    "02aa804e-bde0afdd-112c0b34-7bc16630-4e384014,10000032,50414267,CHEST (PA AND LAT),PA,3056,2544,21800506,213014.531,CHEST (PA AND LAT),postero-anterior,Erect",
    "174413ec-4ec4c1f7-34ea26b7-c5f994f8-79ef1962,10000032,50414267,CHEST (PA AND LAT),LATERAL,3056,2544,21800506,213014.531,CHEST (PA AND LAT),lateral,Erect",
    "2a2277a9-b0ded155-c0de8eb9-c124d10e-82c5caab,10000032,53189527,CHEST (PORTABLE AP),AP AXIAL,2705,2539,21800626,165500.312,CHEST (PORTABLE AP),antero-posterior,Erect",
    "5b8f4e5f-074a3958-ca8e7fc2-100ffa07-6f553e72,10062617,55170181,,,2544,3056,21520301,101010.000,,,",
    "8d2c9e3b-11111111-22222222-33333333-44444444,10999999,59999999,CHEST (PORTABLE AP),AP,2544,3056,21520301,101010.000,,antero-posterior,",
]
LABEL_HEADER = (
    "subject_id,study_id,Atelectasis,Cardiomegaly,Consolidation,Edema,Enlarged Cardiomediastinum,"
    "Fracture,Lung Lesion,Lung Opacity,No Finding,Pleural Effusion,Pleural Other,Pneumonia,"
    "Pneumothorax,Support Devices"
)
CHEXPERT = [
    "10000032,50414267,,,,,,,,,1.0,,,,,",
    "10000032,53189527,-1.0,1.0,0.0,,,,,,,1.0,,,,",
    "10062617,55170181,1.0,,,1.0,,,,,,0.0,,-1.0,,",
]
NEGBIO = [
    "10000032,50414267,,,,,,,,,1.0,,,,,",
    "10000032,53189527,1.0,1.0,0.0,,,,,,,1.0,,,,",
    "10062617,55170181,1.0,,,1.0,,,,,,0.0,,,,",
]
SPLIT = [
    "02aa804e-bde0afdd-112c0b34-7bc16630-4e384014,50414267,10000032,train",
    "174413ec-4ec4c1f7-34ea26b7-c5f994f8-79ef1962,50414267,10000032,train",
    "2a2277a9-b0ded155-c0de8eb9-c124d10e-82c5caab,53189527,10000032,train",
    "5b8f4e5f-074a3958-ca8e7fc2-100ffa07-6f553e72,55170181,10062617,validate",
    "8d2c9e3b-11111111-22222222-33333333-44444444,59999999,10999999,test",
]


def _gz(path: Path, lines: list[str]) -> None:
    with gzip.open(path, "wt") as fh:
        fh.write("\n".join(lines) + "\n")


def write_mimic(root: Path, *, split: bool = True) -> None:
    """Write a tiny MIMIC-CXR-JPG metadata set (gzipped as PhysioNet ships it) into ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    _gz(root / "mimic-cxr-2.0.0-metadata.csv.gz", [META_HEADER, *META])
    _gz(root / "mimic-cxr-2.0.0-chexpert.csv.gz", [LABEL_HEADER, *CHEXPERT])
    _gz(root / "mimic-cxr-2.0.0-negbio.csv.gz", [LABEL_HEADER, *NEGBIO])
    if split:
        _gz(root / "mimic-cxr-2.0.0-split.csv.gz", ["dicom_id,study_id,subject_id,split", *SPLIT])


def test_join_labels_views_split_paths(tmp_path: Path) -> None:
    write_mimic(tmp_path)
    raw = mimic_cxr.load(tmp_path)
    f = raw.frame
    assert raw.labels == list(mimic_cxr.LABELS)
    assert len(f) == 5
    assert f["patient_id"].tolist() == ["10000032", "10000032", "10000032", "10062617", "10999999"]
    assert f["study_id"].iloc[2] == "53189527"
    assert f["view"].iloc[:3].tolist() == ["PA", "LATERAL", "AP"] and pd.isna(f["view"].iloc[3])
    assert f["split"].tolist() == ["train", "train", "train", "val", "test"]
    # both images of a study carry the study's labels
    assert f["No Finding"].iloc[:2].tolist() == [1.0, 1.0]
    assert f.loc[2, "Atelectasis"] == -1.0 and f.loc[2, "Cardiomegaly"] == 1.0
    assert f.loc[2, "Consolidation"] == 0.0 and pd.isna(f.loc[2, "Edema"])
    assert f.loc[3, "Pneumonia"] == -1.0
    # blank No Finding next to a positive or uncertain finding is negative
    assert f["No Finding"].iloc[2:4].tolist() == [0.0, 0.0]
    # a study missing from the label file: unknown everywhere, not negative
    assert f.loc[4, list(mimic_cxr.LABELS)].isna().all()
    assert f["sample_id"].iloc[0] == "02aa804e-bde0afdd-112c0b34-7bc16630-4e384014"
    assert f["path"].iloc[0] == str(
        tmp_path / "files/p10/p10000032/s50414267/02aa804e-bde0afdd-112c0b34-7bc16630-4e384014.jpg"
    )
    assert f["sex"].isna().all() and f["age"].isna().all()


def test_negbio_labeler_and_unpacked_csv(tmp_path: Path) -> None:
    write_mimic(tmp_path, split=False)
    (tmp_path / "mimic-cxr-2.0.0-metadata.csv").write_text("\n".join([META_HEADER, *META]) + "\n")
    (tmp_path / "mimic-cxr-2.0.0-metadata.csv.gz").unlink()
    raw = mimic_cxr.load(tmp_path, labeler="negbio")
    assert raw.frame.loc[2, "Atelectasis"] == 1.0
    assert pd.isna(raw.frame.loc[3, "Pneumonia"])
    assert raw.frame["split"].isna().all() and "split" in raw.notes


def test_bad_options_and_files(tmp_path: Path) -> None:
    with pytest.raises(CxrbenchError, match="labeler"):
        mimic_cxr.load(tmp_path, labeler="chexbert")
    with pytest.raises(CxrbenchError, match="mimic-cxr-2.0.0-metadata.csv.gz"):
        mimic_cxr.load(tmp_path)
    write_mimic(tmp_path)
    (tmp_path / "mimic-cxr-2.0.0-chexpert.csv.gz").unlink()
    with pytest.raises(CxrbenchError, match="mimic-cxr-2.0.0-chexpert.csv"):
        mimic_cxr.load(tmp_path)


def test_bad_label_value_and_split(tmp_path: Path) -> None:
    write_mimic(tmp_path)
    _gz(
        tmp_path / "mimic-cxr-2.0.0-chexpert.csv.gz",
        [LABEL_HEADER, CHEXPERT[0].replace("1.0", "2")],
    )
    with pytest.raises(CxrbenchError, match="No Finding"):
        mimic_cxr.load(tmp_path)
    write_mimic(tmp_path)
    _gz(
        tmp_path / "mimic-cxr-2.0.0-split.csv.gz",
        ["dicom_id,study_id,subject_id,split", SPLIT[0] + "x"],
    )
    with pytest.raises(CxrbenchError, match="trainx"):
        mimic_cxr.load(tmp_path)


def test_mimic_view_positions_use_the_shared_normaliser() -> None:
    views = pd.Series(["PA", "AP AXIAL", "PA LLD", "LL", "lateral", "", None, "XTABLE LATERAL"])
    out = views.map(normalise_view).tolist()
    assert out[:5] == ["PA", "AP", "PA", "LL", "LATERAL"]
    assert pd.isna(out[5]) and pd.isna(out[6]) and out[7] == "XTABLE LATERAL"
