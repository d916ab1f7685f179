"""VinDr-CXR adapter: PhysioNet image-level labels (official test split) or the Kaggle VinBigData boxes.

VinDr-CXR (Nguyen et al., Scientific Data 2022; PhysioNet ``vindr-cxr`` 1.0.0) is 18,000 PA chest
DICOMs from two Vietnamese hospitals: 15,000 training images each read independently by three of
17 radiologists, and 3,000 test images labelled by consensus of five. Files read, first found wins:

- PhysioNet: ``annotations/image_labels_train.csv`` (one row per image *and reader*: ``image_id``,
  ``rad_id``, then one 0/1 column per finding or diagnosis) and ``annotations/image_labels_test.csv``
  (one consensus row per image, no ``rad_id``) → splits ``trainval`` and ``test`` (the creators'
  test set, kept as in the 13-dataset benchmark). Images ``train/<image_id>.dicom`` and
  ``test/<image_id>.dicom``. Label names are the file's own column names.
- Kaggle (VinBigData competition): ``train.csv`` with one row per reader *per box*
  (``image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max``; ``No finding`` rows have blank
  boxes). Labels are the 15 ``class_name`` values (``No finding`` included); no labelled test set, so
  the split is None. Images ``train/<image_id>.dicom``.

Readers are combined per image by majority: a label is 1.0 when more than half of the image's
readers marked it, 0.0 when fewer than half did, and -1.0 (uncertain, resolved later by the
``--uncertain`` policy) on an exact tie, which three readers cannot produce but a missing reader
can. The release has no patient ids, so ``patient_id`` is the ``image_id``; all images are PA per
the dataset paper. Layout source: ``shared/realdata/LAYOUTS.md`` and the PhysioNet project page.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from cxrbench.data.adapters.base import RawDataset, preview, require_file
from cxrbench.errors import CxrbenchError

PHYSIONET_TRAIN = ("annotations/image_labels_train.csv", "image_labels_train.csv")
PHYSIONET_TEST = ("annotations/image_labels_test.csv", "image_labels_test.csv")
KAGGLE_TRAIN = ("train.csv", "train.csv.gz")


def majority(votes: pd.DataFrame, by: pd.Series) -> pd.DataFrame:
    """Return one row per ``by`` value: 1.0 if most readers voted 1, 0.0 if most voted 0, -1.0 on a tie."""
    grouped = votes.astype(float).groupby(by.to_numpy(), sort=False)
    share = grouped.mean()
    out = np.where(share > 0.5, 1.0, np.where(share < 0.5, 0.0, -1.0))
    return pd.DataFrame(out, index=share.index, columns=votes.columns)


def _frame(root: Path, labels: pd.DataFrame, split: str | None, folder: str) -> pd.DataFrame:
    ids = pd.Series(labels.index.astype(str), index=labels.index)
    out = pd.DataFrame(
        {
            "path": str(root / folder) + os.sep + ids + ".dicom",
            "sample_id": ids,
            "patient_id": ids,
            "view": "PA",
            "sex": None,
            "age": np.nan,
            "split": split,
        },
        index=labels.index,
    )
    return pd.concat([out, labels], axis=1).reset_index(drop=True)


def _check_votes(df: pd.DataFrame, cols: list[str], source: Path) -> pd.DataFrame:
    votes = df[cols].apply(pd.to_numeric, errors="coerce")
    bad = ~votes.isin([0, 1])
    if bad.any().any():
        col = bad.any()[lambda s: s].index[0]
        raise CxrbenchError(f"{source}: column '{col}' has value '{df.loc[bad[col], col].iloc[0]}'; expected 0 or 1")
    return votes


def _load_physionet(root: Path, train_path: Path) -> RawDataset:
    test_path = require_file(root, *PHYSIONET_TEST)
    train = pd.read_csv(train_path, dtype={"image_id": str, "rad_id": str})
    test = pd.read_csv(test_path, dtype={"image_id": str})
    for df, path in ((train, train_path), (test, test_path)):
        df.columns = [c.strip() for c in df.columns]
        if "image_id" not in df.columns:
            raise CxrbenchError(f"{path} lacks column 'image_id'")
    labels = [c for c in train.columns if c not in ("image_id", "rad_id")]
    missing = [c for c in labels if c not in test.columns]
    if missing:
        raise CxrbenchError(f"{test_path} lacks label columns {preview(missing)} that {train_path.name} has")
    train_votes = majority(_check_votes(train, labels, train_path), train["image_id"].str.strip())
    test_votes = majority(_check_votes(test, labels, test_path), test["image_id"].str.strip())
    frame = pd.concat(
        [_frame(root, train_votes, "trainval", "train"), _frame(root, test_votes, "test", "test")],
        ignore_index=True,
    )
    return RawDataset(frame=frame, labels=labels, notes={"source": "physionet"})


def _load_kaggle(root: Path, path: Path) -> RawDataset:
    df = pd.read_csv(path, dtype={"image_id": str, "class_name": str, "rad_id": str})
    df.columns = [c.strip() for c in df.columns]
    missing = [c for c in ("image_id", "class_name", "class_id", "rad_id") if c not in df.columns]
    if missing:
        raise CxrbenchError(f"{path} lacks columns {missing}: not a VinDr-CXR/VinBigData train.csv")
    order = df.drop_duplicates("class_name").sort_values("class_id")["class_name"].tolist()
    # one vote per (image, reader, class), however many boxes the reader drew
    marks = df[["image_id", "rad_id", "class_name"]].drop_duplicates()
    per_reader = marks.groupby(["image_id", "rad_id", "class_name"], sort=False).size()
    per_reader = per_reader.unstack("class_name", fill_value=0).clip(upper=1)
    per_reader = per_reader.reindex(columns=order, fill_value=0)
    labels = majority(per_reader, per_reader.index.get_level_values("image_id").to_series())
    first_seen = pd.unique(df["image_id"])
    frame = _frame(root, labels.loc[first_seen], None, "train")
    return RawDataset(frame=frame, labels=order, notes={"source": "kaggle"})


def load(root: Path) -> RawDataset:
    """Return VinDr-CXR as one row per image, readers combined by majority."""
    root = Path(root)
    for name in PHYSIONET_TRAIN:
        if (root / name).exists():
            return _load_physionet(root, root / name)
    return _load_kaggle(root, require_file(root, PHYSIONET_TRAIN[0], *KAGGLE_TRAIN))
