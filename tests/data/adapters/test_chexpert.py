"""CheXpert adapter: label codes incl. uncertain/blank, views, splits, root variants, real train.csv."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

from cxrbench.data.adapters import chexpert
from cxrbench.errors import CxrbenchError

HEADER = (
    "Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Enlarged Cardiomediastinum,Cardiomegaly,"
    "Lung Opacity,Lung Lesion,Edema,Consolidation,Pneumonia,Atelectasis,Pneumothorax,"
    "Pleural Effusion,Pleural Other,Fracture,Support Devices"
)
TRAIN = [
    "CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg,Female,68,Frontal,AP,1.0,,,,,,,,,0.0,,,,1.0",
    "CheXpert-v1.0-small/train/patient00002/study2/view1_frontal.jpg,Female,87,Frontal,AP,,,-1.0,1.0,,-1.0,-1.0,,-1.0,,-1.0,,1.0,",
    "CheXpert-v1.0-small/train/patient00002/study2/view2_lateral.jpg,Female,87,Lateral,,,,-1.0,1.0,,-1.0,-1.0,,-1.0,,-1.0,,1.0,",
    "CheXpert-v1.0-small/train/patient00003/study1/view1_frontal.jpg,Unknown,0,Frontal,PA,,,,,,1.0,,,,,,,,",
    "CheXpert-v1.0-small/train/patient00004/study1/view1_frontal.jpg,Male,33,Frontal,LL,,,,,,,,,,,,,,",
]
VALID = [
    "CheXpert-v1.0-small/valid/patient64541/study1/view1_frontal.jpg,Male,73,Frontal,AP,0.0,1.0,1.0,1.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0",
    "CheXpert-v1.0-small/valid/patient64541/study1/view2_lateral.jpg,Male,73,Lateral,,0.0,1.0,1.0,1.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0",
]


def _write(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.csv").write_text("\n".join([HEADER, *TRAIN]) + "\n")
    (folder / "valid.csv").write_text("\n".join([HEADER, *VALID]) + "\n")


def test_labels_views_splits(tmp_path: Path) -> None:
    _write(tmp_path / "CheXpert-v1.0-small")
    raw = chexpert.load(tmp_path)
    f = raw.frame
    assert raw.labels == list(chexpert.LABELS) and len(raw.labels) == 14
    assert len(f) == 7
    assert f["split"].tolist() == ["trainval"] * 5 + ["test"] * 2
    assert f["view"].tolist()[:5] == ["AP", "AP", "LATERAL", "PA", "LL"]
    assert f["view"].iloc[6] == "LATERAL"
    assert f["patient_id"].tolist()[:3] == ["patient00001", "patient00002", "patient00002"]
    assert f["study_id"].iloc[1] == "patient00002/study2"
    # row 2: uncertain, positive, blank (unknown, not negative)
    assert f.loc[1, "Cardiomegaly"] == -1.0
    assert f.loc[1, "Lung Opacity"] == 1.0
    assert pd.isna(f.loc[1, "Lung Lesion"])
    # blank No Finding: 0 where another finding is positive/uncertain, else unknown
    assert f["No Finding"].iloc[:4].tolist() == [1.0, 0.0, 0.0, 0.0]
    assert pd.isna(f.loc[4, "No Finding"])
    assert f.loc[0, "Pneumothorax"] == 0.0 and f.loc[0, "Support Devices"] == 1.0
    assert f.loc[5, "Cardiomegaly"] == 1.0 and f.loc[5, "No Finding"] == 0.0
    assert f["sex"].iloc[:3].tolist() == ["F", "F", "F"] and pd.isna(f["sex"].iloc[3])
    assert f["age"].iloc[0] == 68.0 and pd.isna(f["age"].iloc[3])
    # the Path column as written, so ids match other tools whatever the folder is called
    assert f["sample_id"].tolist() == [r.split(",")[0] for r in TRAIN + VALID]


def test_blank_no_finding_rule(tmp_path: Path) -> None:
    # one finding at a time: positive, uncertain, negative, Support Devices only, nothing at all
    def row(i: int, **codes: str) -> str:
        values = [codes.get(label.replace(" ", "_"), "") for label in chexpert.LABELS]
        return f"train/patient{i:05d}/study1/view1_frontal.jpg,Male,50,Frontal,PA," + ",".join(values)

    rows = [
        row(1, Edema="1.0"),
        row(2, Pleural_Other="-1.0"),
        row(3, Edema="0.0", Fracture="0.0"),
        row(4, Support_Devices="1.0"),
        row(5, Support_Devices="-1.0", Cardiomegaly="0.0"),
        row(6),
        row(7, No_Finding="1.0", Support_Devices="1.0"),
    ]
    (tmp_path / "train.csv").write_text("\n".join([HEADER, *rows]) + "\n")
    (tmp_path / "valid.csv").write_text("\n".join([HEADER, *VALID]) + "\n")
    no_finding = chexpert.load(tmp_path).frame["No Finding"].iloc[:7].tolist()
    assert no_finding[:2] == [0.0, 0.0]
    assert all(pd.isna(v) for v in no_finding[2:6])  # nothing contradicts "no finding": unknown
    assert no_finding[6] == 1.0


def test_root_is_parent_or_dataset_folder(tmp_path: Path) -> None:
    _write(tmp_path / "CheXpert-v1.0-small")
    expected = str(tmp_path / "CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg")
    assert chexpert.load(tmp_path).frame["path"].iloc[0] == expected
    assert chexpert.load(tmp_path / "CheXpert-v1.0-small").frame["path"].iloc[0] == expected
    # renamed dataset folder: the Path prefix is resolved against wherever train.csv is
    (tmp_path / "CheXpert-v1.0-small").rename(tmp_path / "chexpert")
    moved = chexpert.load(tmp_path / "chexpert").frame["path"].iloc[6]
    assert moved == str(tmp_path / "chexpert/valid/patient64541/study1/view2_lateral.jpg")


def test_missing_files(tmp_path: Path) -> None:
    with pytest.raises(CxrbenchError, match="train.csv"):
        chexpert.load(tmp_path)
    (tmp_path / "train.csv").write_text(HEADER + "\n" + TRAIN[0] + "\n")
    with pytest.raises(CxrbenchError, match="valid.csv"):
        chexpert.load(tmp_path)


def test_bad_label_code(tmp_path: Path) -> None:
    _write(tmp_path)
    (tmp_path / "train.csv").write_text(HEADER + "\n" + TRAIN[0].replace(",1.0,,,,", ",2.0,,,,", 1) + "\n")
    with pytest.raises(CxrbenchError, match="No Finding"):
        chexpert.load(tmp_path)


def test_real_train_csv(realdata: Path, tmp_path: Path) -> None:
    data = tmp_path / "CheXpert-v1.0-small"
    data.mkdir()
    (data / "train.csv.gz").symlink_to(realdata / "chexpert" / "chexpert_train.csv.gz")
    # the only real valid.csv copy had its Path rewritten; restore the documented form in tmp
    valid = pd.read_csv(realdata / "chexpert" / "valid.thoraxnet_modified_paths.csv", dtype=str)
    valid["Path"] = valid["Path"].map(
        lambda p: re.sub(
            r"^chexpert/valid/(patient\d+)_(study\d+)_(view.+)$",
            r"CheXpert-v1.0-small/valid/\1/\2/\3",
            p,
        )
    )
    valid.to_csv(data / "valid.csv", index=False)
    f = chexpert.load(tmp_path).frame
    # independent reference: the raw strings, compared as text
    rows = pd.read_csv(realdata / "chexpert" / "chexpert_train.csv.gz", dtype=str, keep_default_na=False)
    train = f[f["split"] == "trainval"]
    assert len(train) == len(rows) == 223_414
    assert (f["split"] == "test").sum() == 234
    for label in ("Edema", "Pleural Effusion"):
        for code, value in (("1.0", 1.0), ("0.0", 0.0), ("-1.0", -1.0)):
            assert (train[label] == value).sum() == (rows[label] == code).sum(), (label, code)
        assert train[label].isna().sum() == (rows[label] == "").sum()
    # No Finding is 1.0 or blank in the file; blank is negative where a finding other than
    # Support Devices is 1.0 or -1.0, and stays unknown where none is
    findings = [c for c in chexpert.LABELS if c not in ("No Finding", "Support Devices")]
    contradicted = rows[findings].isin(["1.0", "-1.0"]).any(axis=1).to_numpy()
    blank = (rows["No Finding"] == "").to_numpy()
    assert set(rows["No Finding"]) == {"1.0", ""}
    assert (train["No Finding"] == 1.0).sum() == 22_381
    assert (train["No Finding"] == 0.0).sum() == (blank & contradicted).sum() == 194_934
    assert train["No Finding"].isna().sum() == (blank & ~contradicted).sum() == 6_099
    assert (train["view"] == "LATERAL").sum() == 32_387
    assert (train["view"] == "AP").sum() == 161_590 and (train["view"] == "PA").sum() == 29_420
    assert train["sex"].isna().sum() == 1
    assert train["patient_id"].nunique() == rows["Path"].str.split("/").str[2].nunique()
    test = f[f["split"] == "test"]
    assert test[list(chexpert.LABELS)].isin([0.0, 1.0]).all().all()
    assert set(test["patient_id"]).isdisjoint(train["patient_id"])
