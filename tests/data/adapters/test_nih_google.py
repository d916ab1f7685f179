"""NIH-Google adapter: the expert relabel file as distributed (CRLF, no final newline), splits, images."""

from __future__ import annotations

import csv
import gzip
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from cxrbench.data import adapters
from cxrbench.data.adapters import nih_google
from cxrbench.data.samples import LabelPolicy, build_samples
from cxrbench.errors import CxrbenchError

HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],"
    "Fracture,Pneumothorax,Airspace opacity,Nodule or mass,Set Id"
)
ROWS = [
    "00000013_008.png,No Finding,8,13,60,M,AP,3056,2544,0.139,0.139,NO,NO,YES,NO,test",
    "00000013_026.png,Cardiomegaly|Emphysema,26,13,57,M,AP,2500,2048,0.168,0.168,NO,YES,NO,NO,test",
    "00000032_001.png,Mass,1,32,55,F,PA,2992,2991,0.143,0.143,YES,NO,NO,YES,val",
    "00000040_003.png,No Finding,3,40,68,F,PA,2048,2500,0.168,0.168,NO,NO,NO,NO,val",
]


def _write(root: Path, rows: list[str] = ROWS, name: str = nih_google.FILES[0]) -> Path:
    # as distributed: CRLF, and no line end after the last row
    (root / name).write_bytes("\r\n".join([HEADER, *rows]).encode())
    return root


def test_labels_splits_and_nih_columns(tmp_path: Path) -> None:
    raw = nih_google.load(_write(tmp_path))
    f = raw.frame
    assert raw.labels == ["Fracture", "Pneumothorax", "Airspace opacity", "Nodule or mass"]
    assert raw.task == "multilabel" and len(f) == 4
    assert f["Fracture"].tolist() == [0.0, 0.0, 1.0, 0.0]
    assert f["Airspace opacity"].tolist() == [1.0, 0.0, 0.0, 0.0]
    assert f["Nodule or mass"].tolist() == [0.0, 0.0, 1.0, 0.0]
    assert f["split"].tolist() == ["test", "test", "val", "val"]
    assert f["sample_id"].tolist() == [r.split(",")[0] for r in ROWS]
    assert f["patient_id"].tolist() == ["13", "13", "32", "40"]
    assert f["view"].tolist() == ["AP", "AP", "PA", "PA"] and f["sex"].tolist() == ["M", "M", "F", "F"]
    assert f["age"].tolist() == [60.0, 57.0, 55.0, 68.0]
    assert f["path"].iloc[0] == str(tmp_path / "images" / "00000013_008.png")


def test_val_split_option_and_kaggle_images(tmp_path: Path) -> None:
    _write(tmp_path)
    (tmp_path / "images_001" / "images").mkdir(parents=True)
    (tmp_path / "images_001" / "images" / "00000013_008.png").write_bytes(b"")
    raw = adapters.load_dataset("nih-google", tmp_path, {"val_split": "trainval"})
    assert raw.frame["split"].tolist() == ["test", "test", "trainval", "trainval"]
    assert raw.frame["path"].iloc[0] == str(tmp_path / "images_001" / "images" / "00000013_008.png")
    samples, _ = build_samples(raw, LabelPolicy(), root=tmp_path)
    assert set(samples.loc[samples["sample_id"].str.startswith("00000013"), "split"]) == {"test"}
    assert set(samples["split"]) <= {"train", "val", "test"}
    with pytest.raises(CxrbenchError, match="val_split"):
        adapters.load_dataset("nih-google", tmp_path, {"val_split": "train"})


def test_errors(tmp_path: Path) -> None:
    with pytest.raises(CxrbenchError, match="google2019_nih-chest-xray-labels.csv"):
        nih_google.load(tmp_path)
    _write(tmp_path, [ROWS[0].replace(",YES,", ",MAYBE,")])
    with pytest.raises(CxrbenchError, match="'Airspace opacity' has value.*MAYBE"):
        nih_google.load(tmp_path)
    _write(tmp_path, [ROWS[0].replace(",test", ",holdout")])
    with pytest.raises(CxrbenchError, match="Set Id.*holdout"):
        nih_google.load(tmp_path)
    (tmp_path / nih_google.FILES[0]).write_text("Image Index,Patient ID\nx.png,1\n")
    with pytest.raises(CxrbenchError, match="lacks columns"):
        nih_google.load(tmp_path)


def test_real_file_and_images(realdata: Path, tmp_path: Path) -> None:
    name = nih_google.FILES[1]
    (tmp_path / name).symlink_to(realdata / "nih" / name)
    (tmp_path / "images").symlink_to(realdata / "nih" / "images")
    raw = nih_google.load(tmp_path)
    f = raw.frame
    # independent count with the csv module, from the bytes as distributed
    with gzip.open(realdata / "nih" / name, "rb") as fh:
        data = fh.read()
    assert b"\r\n" in data and not data.endswith(b"\n")
    rows = list(csv.DictReader(data.decode().splitlines()))
    assert len(f) == len(rows) == 4376 and f["sample_id"].is_unique
    for label in raw.labels:
        assert f[label].sum() == Counter(r[label] for r in rows)["YES"], label
    assert f[raw.labels].notna().all().all()
    assert Counter(f["split"]) == {"val": 2414, "test": 1962}
    assert f["patient_id"].nunique() == 1695
    assert f.groupby("patient_id")["split"].nunique().max() == 1
    assert Counter(f["view"]) == {"AP": 3244, "PA": 1132}
    # the images folder the nih adapter reads (root/images, found through the symlink)
    assert (f["path"] == [str(tmp_path / "images" / i) for i in f["sample_id"]]).all()
    samples, _ = build_samples(raw, LabelPolicy(views="all"), root=tmp_path)
    assert samples["sample_id"].tolist() == f["sample_id"].tolist()
    assert pd.Series(samples["split"]).isin(["val", "test"]).all()
