"""VinDr-CXR adapter: reader majority (incl. ties), Kaggle box rows, PhysioNet test split, real file."""

from __future__ import annotations

import csv
import gzip
from collections import defaultdict
from pathlib import Path

import pandas as pd
import pytest

from cxrbench.data.adapters import vindr_cxr
from cxrbench.errors import CxrbenchError

KAGGLE_HEADER = "image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max"
A, B, C = (
    "9a5094b2563a1ef3ff50dc5c7ff71345",
    "051132a778e61a86eb147c7c6f564dfe",
    "1c32170b4af4ce1a3030eb8167753b06",
)
KAGGLE = [
    f"{A},Cardiomegaly,3,R10,691.0,1375.0,1653.0,1831.0",
    f"{A},Cardiomegaly,3,R10,700.0,1380.0,1650.0,1830.0",  # second box, same reader: one vote
    f"{A},Cardiomegaly,3,R9,720.0,1300.0,1600.0,1800.0",
    f"{A},No finding,14,R8,,,,",
    f"{B},No finding,14,R11,,,,",
    f"{B},No finding,14,R7,,,,",
    f"{B},Aortic enlargement,0,R9,1264.0,743.0,1611.0,1019.0",
    f"{C},Nodule/Mass,8,R1,100.0,100.0,200.0,200.0",
    f"{C},No finding,14,R2,,,,",
]


def test_kaggle_majority_and_ties(tmp_path: Path) -> None:
    (tmp_path / "train.csv").write_text("\n".join([KAGGLE_HEADER, *KAGGLE]) + "\n")
    raw = vindr_cxr.load(tmp_path)
    f = raw.frame.set_index("patient_id")
    assert raw.labels == ["Aortic enlargement", "Cardiomegaly", "Nodule/Mass", "No finding"]
    assert list(f.index) == [A, B, C]
    assert f.loc[A, "Cardiomegaly"] == 1.0 and f.loc[A, "No finding"] == 0.0
    assert f.loc[B, "No finding"] == 1.0 and f.loc[B, "Aortic enlargement"] == 0.0
    assert f.loc[C, "Nodule/Mass"] == -1.0 and f.loc[C, "No finding"] == -1.0  # 1 of 2 readers
    assert f.loc[C, "Cardiomegaly"] == 0.0
    assert (f["view"] == "PA").all() and f["split"].isna().all()
    assert f.loc[A, "path"] == str(tmp_path / "train" / f"{A}.dicom")
    assert f.loc[A, "sample_id"] == A


def _physionet(root: Path) -> None:
    (root / "annotations").mkdir(parents=True)
    cols = "image_id,rad_id,Aortic enlargement,Lung tumor,Other diseases,No finding"
    train = [
        f"{A},R8,0,1,1,0",
        f"{A},R9,0,1,0,0",
        f"{A},R10,0,0,0,1",
        f"{B},R1,1,0,0,0",
        f"{B},R2,0,0,0,1",
    ]
    test = [f"{C},1,0,0,0"]
    (root / "annotations/image_labels_train.csv").write_text("\n".join([cols, *train]) + "\n")
    test_cols = cols.replace("rad_id,", "")
    (root / "annotations/image_labels_test.csv").write_text("\n".join([test_cols, *test]) + "\n")


def test_physionet_layout_and_test_split(tmp_path: Path) -> None:
    _physionet(tmp_path)
    raw = vindr_cxr.load(tmp_path)
    f = raw.frame.set_index("patient_id")
    assert raw.labels == ["Aortic enlargement", "Lung tumor", "Other diseases", "No finding"]
    assert f.loc[A].loc[raw.labels].tolist() == [0.0, 1.0, 0.0, 0.0]
    assert f.loc[B].loc[raw.labels].tolist() == [-1.0, 0.0, 0.0, -1.0]
    assert f.loc[C].loc[raw.labels].tolist() == [1.0, 0.0, 0.0, 0.0]
    assert f["split"].tolist() == ["trainval", "trainval", "test"]
    assert f.loc[C, "path"] == str(tmp_path / "test" / f"{C}.dicom")


def test_errors(tmp_path: Path) -> None:
    with pytest.raises(CxrbenchError, match="image_labels_train.csv.*train.csv"):
        vindr_cxr.load(tmp_path)
    _physionet(tmp_path)
    (tmp_path / "annotations/image_labels_test.csv").unlink()
    with pytest.raises(CxrbenchError, match="image_labels_test.csv"):
        vindr_cxr.load(tmp_path)
    _ = (tmp_path / "annotations/image_labels_test.csv").write_text(
        "image_id,Aortic enlargement,Lung tumor,Other diseases,No finding\n" + f"{C},2,0,0,0\n"
    )
    with pytest.raises(CxrbenchError, match="Aortic enlargement"):
        vindr_cxr.load(tmp_path)


def test_real_kaggle_file(realdata: Path, tmp_path: Path) -> None:
    (tmp_path / "train.csv.gz").symlink_to(realdata / "vindr" / "vinbigdata-train.csv.gz")
    raw = vindr_cxr.load(tmp_path)
    f = raw.frame.set_index("patient_id")
    assert len(f) == 15_000 and len(raw.labels) == 15
    # independent majority: readers and marks per image with plain dicts
    readers: dict[str, set[str]] = defaultdict(set)
    marks: dict[tuple[str, str], set[str]] = defaultdict(set)
    with gzip.open(realdata / "vindr" / "vinbigdata-train.csv.gz", "rt", newline="") as fh:
        for row in csv.DictReader(fh):
            readers[row["image_id"]].add(row["rad_id"])
            marks[(row["image_id"], row["class_name"])].add(row["rad_id"])
    for label in ("No finding", "Cardiomegaly", "Aortic enlargement", "Nodule/Mass"):
        pos = sum(2 * len(marks[(i, label)]) > len(r) for i, r in readers.items())
        ties = sum(2 * len(marks[(i, label)]) == len(r) for i, r in readers.items())
        assert (f[label] == 1.0).sum() == pos, label
        assert (f[label] == -1.0).sum() == ties, label
    assert {len(r) for r in readers.values()} == {3}  # three readers per training image
    assert not (f[raw.labels] == -1.0).any().any()
    assert pd.Series(raw.labels).is_unique
