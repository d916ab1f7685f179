"""NIH ChestX-ray14 adapter: both Data_Entry layouts, official split lists, image folders, real file."""

from __future__ import annotations

import csv
import gzip
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxrbench.data.adapters import nih
from cxrbench.errors import CxrbenchError

HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"
)
ROWS_2017 = [
    "00000001_000.png,Cardiomegaly,000,00000001,058Y,M,PA,2682,2749,0.143,0.143",
    "00000001_001.png,Cardiomegaly|Emphysema,001,00000001,058Y,M,PA,2894,2729,0.143,0.143",
    "00000002_000.png,No Finding,000,00000002,081Y,F,AP,2500,2048,0.171,0.171",
    "00000003_000.png,Hernia|Pleural_Thickening,000,00000003,412Y,F,PA,2500,2048,0.168,0.168",
    "00000004_000.png,Mass,000,00000004,006M,M,AP,2048,2500,0.168,0.168",
]


def _write_2017(root: Path) -> None:
    # the original file: CRLF, trailing comma on the header line only
    text = "\r\n".join([HEADER + ",", *ROWS_2017]) + "\r\n"
    (root / "Data_Entry_2017.csv").write_bytes(text.encode())


def test_2017_layout_labels_ages_ids(tmp_path: Path) -> None:
    _write_2017(tmp_path)
    raw = nih.load(tmp_path)
    f = raw.frame
    assert raw.labels == list(nih.FINDINGS)
    assert "Unnamed: 11" not in f.columns
    assert list(f["patient_id"]) == ["1", "1", "2", "3", "4"]
    assert list(f["view"]) == ["PA", "PA", "AP", "PA", "AP"]
    assert list(f["sex"]) == ["M", "M", "F", "F", "M"]
    assert f["age"].iloc[0] == 58.0
    assert math.isnan(f["age"].iloc[3])  # 412Y is impossible
    assert f["age"].iloc[4] == pytest.approx(0.5)
    assert f["Cardiomegaly"].tolist() == [1.0, 1.0, 0.0, 0.0, 0.0]
    assert f["Emphysema"].tolist() == [0.0, 1.0, 0.0, 0.0, 0.0]
    assert f["Pleural_Thickening"].tolist() == [0.0, 0.0, 0.0, 1.0, 0.0]
    # No Finding row is negative for every finding, never unknown
    assert (f.loc[2, list(nih.FINDINGS)] == 0.0).all()
    assert not f[list(nih.FINDINGS)].isna().any().any()
    assert f["split"].isna().all()
    assert f["path"].iloc[0] == str(tmp_path / "images" / "00000001_000.png")
    assert f["sample_id"].tolist() == [r.split(",")[0] for r in ROWS_2017]


def test_no_finding_option_and_gz_v2020(tmp_path: Path) -> None:
    rows = [r.replace(",000,", ",0,").replace(",001,", ",1,") for r in ROWS_2017]
    rows = [r.replace("00000001,058Y", "1,58").replace("00000002,081Y", "2,81") for r in rows]
    with gzip.open(tmp_path / "Data_Entry_2017_v2020.csv.gz", "wt") as fh:
        fh.write("\n".join([HEADER, *rows]) + "\n")
    raw = nih.load(tmp_path, no_finding=True)
    assert raw.labels[-1] == "No Finding"
    assert raw.frame["No Finding"].tolist() == [0.0, 0.0, 1.0, 0.0, 0.0]
    assert raw.frame["age"].iloc[0] == 58.0


def test_official_split_lists(tmp_path: Path) -> None:
    _write_2017(tmp_path)
    (tmp_path / "test_list.txt").write_text("00000002_000.png\n00000003_000.png\n")
    (tmp_path / "train_val_list.txt").write_text("00000001_000.png\n00000001_001.png\n")
    split = nih.load(tmp_path).frame["split"].tolist()
    assert split[:4] == ["trainval", "trainval", "test", "test"] and pd.isna(split[4])


def test_kaggle_image_folders(tmp_path: Path) -> None:
    _write_2017(tmp_path)
    for folder, name in [("images_001", "00000001_000.png"), ("images_002", "00000003_000.png")]:
        (tmp_path / folder / "images").mkdir(parents=True)
        (tmp_path / folder / "images" / name).write_bytes(b"")
    paths = nih.load(tmp_path).frame["path"].tolist()
    assert paths[0] == str(tmp_path / "images_001" / "images" / "00000001_000.png")
    assert paths[3] == str(tmp_path / "images_002" / "images" / "00000003_000.png")


def test_sample_id_is_the_image_index_in_every_layout(tmp_path: Path) -> None:
    from cxrbench.data.samples import LabelPolicy, build_samples

    ids = {}
    for i, layout in enumerate(("images", "images_001/images")):
        root = tmp_path / f"variant{i}"
        (root / layout).mkdir(parents=True)
        _write_2017(root)
        (root / layout / "00000001_000.png").write_bytes(b"")
        samples, _ = build_samples(nih.load(root), LabelPolicy(views="all"), root=root)
        ids[layout] = samples["sample_id"].tolist()
    assert ids["images"] == ids["images_001/images"] == [r.split(",")[0] for r in ROWS_2017]


def test_parse_age_units() -> None:
    assert nih.parse_age("058Y") == 58.0
    assert nih.parse_age("010D") == pytest.approx(10 / 365.25)
    assert math.isnan(nih.parse_age("150Y"))
    assert math.isnan(nih.parse_age(""))
    assert nih.parse_age(7) == 7.0


def test_missing_file_names_expected_file(tmp_path: Path) -> None:
    with pytest.raises(CxrbenchError, match="Data_Entry_2017_v2020.csv"):
        nih.load(tmp_path)


def test_unknown_label_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "Data_Entry_2017.csv").write_text(HEADER + "\n" + ROWS_2017[0].replace("Cardiomegaly", "Cardio") + "\n")
    with pytest.raises(CxrbenchError, match="Cardio"):
        nih.load(tmp_path)


def _link(realdata: Path, tmp_path: Path, name: str) -> Path:
    (tmp_path / name).symlink_to(realdata / "nih" / name)
    return tmp_path


def test_real_v2020_file(realdata: Path, tmp_path: Path) -> None:
    raw = nih.load(_link(realdata, tmp_path, "Data_Entry_2017_v2020.csv.gz"), no_finding=True)
    f = raw.frame
    # independent count with the csv module
    with gzip.open(realdata / "nih" / "Data_Entry_2017_v2020.csv.gz", "rt", newline="") as fh:
        rows = list(csv.reader(fh))[1:]
    assert len(f) == len(rows) == 112_120
    counts = Counter(t for r in rows for t in r[1].split("|"))
    for label in raw.labels:
        assert f[label].sum() == counts[label], label
    assert f["No Finding"].sum() == 60_361
    assert (f["view"] == "PA").sum() == 67_310 and (f["view"] == "AP").sum() == 44_810
    assert f["patient_id"].nunique() == 30_805
    assert f["age"].between(0, 95).all()


def test_real_2017_file_matches_v2020_ids(realdata: Path, tmp_path: Path) -> None:
    old = nih.load(_link(realdata, tmp_path, "Data_Entry_2017.csv.gz")).frame
    new_df = pd.read_csv(realdata / "nih" / "Data_Entry_2017_v2020.csv.gz")
    assert old["patient_id"].tolist() == new_df["Patient ID"].astype(str).tolist()
    raw_ages = pd.read_csv(realdata / "nih" / "Data_Entry_2017.csv.gz", dtype=str)["Patient Age"]
    impossible = raw_ages.str[:-1].astype(int).gt(120) & raw_ages.str.endswith("Y")
    assert old["age"].isna().sum() == impossible.sum() > 0
    assert np.isclose(old.loc[raw_ages.str.endswith("M"), "age"].max(), 1.0, atol=1.0)


def test_no_finding_option_as_text(tmp_path: Path) -> None:
    _write_2017(tmp_path)
    assert "No Finding" not in nih.load(tmp_path, no_finding="false").labels
    assert nih.load(tmp_path, no_finding="True").labels[-1] == "No Finding"
    with pytest.raises(CxrbenchError, match="no_finding"):
        nih.load(tmp_path, no_finding="maybe")
