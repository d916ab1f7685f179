"""CheXpert adapter: ``train.csv`` (NLP labels, train or val) and ``valid.csv`` (radiologists, test).

CheXpert (Irvin et al., AAAI 2019; Stanford ML Group) is 224,316 radiographs of 65,240 patients with
14 observations labelled from reports by the CheXpert labeler as positive ``1.0``, negative ``0.0``,
uncertain ``-1.0`` or blank (not mentioned, kept as unknown). The 234-image validation set was
labelled by radiologists (only 0/1) and is the official held-out set, so it becomes ``test``; train
rows become ``trainval``.

Files read: ``train.csv`` and ``valid.csv`` in ``CheXpert-v1.0-small/`` (or ``CheXpert-v1.0/``);
``root`` may be that folder or its parent. Columns: ``Path,Sex,Age,Frontal/Lateral,AP/PA`` then the
labels. ``Path`` is relative to the folder *containing* the dataset folder
(``CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg``), so the prefix is resolved
against that folder, whatever it was renamed to. Patient id and study come from the
``patientNNNNN``/``studyN`` path components. View: ``AP/PA`` for frontal rows (``AP``, ``PA``, and
the few ``LL``/``RL`` the file has), ``LATERAL`` for lateral rows. ``Sex`` ``Unknown`` and ``Age``
0 (three rows in an adult cohort whose next-lowest age is 18) are unknown. ``No Finding`` is
only ever 1.0 or blank in train.csv; a blank becomes 0.0 where another finding (not ``Support
Devices``) is 1.0 or -1.0, as the labeler leaves it blank exactly then, and stays unknown where
nothing is positive (the report never says "normal": 6,099 rows of the real train.csv, 1,843 of
them with only ``Support Devices``). ``sample_id`` is ``Path`` as written. Layout source:
``shared/realdata/LAYOUTS.md`` (the real v1.0-small ``train.csv``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from cxrbench.data.adapters.base import (
    MAX_AGE_YEARS,
    RawDataset,
    fill_no_finding,
    normalise_sex,
    require_file,
)
from cxrbench.errors import CxrbenchError

LABELS = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)
DATASET_DIRS = ("CheXpert-v1.0-small", "CheXpert-v1.0")
_LABEL_VALUES = {1.0, 0.0, -1.0}
_PATH_RE = r"^(?:[^/]+/)?(?P<rel>(?:train|valid)/(?P<patient>patient\d+)/(?P<study>study\d+)/[^/]+)$"


def _dataset_dir(root: Path) -> Path:
    """Return the folder holding ``train.csv``: ``root`` itself or a known sub-folder of it."""
    for sub in ("", *DATASET_DIRS):
        if (root / sub / "train.csv").exists() or (root / sub / "train.csv.gz").exists():
            return root / sub
    require_file(root, "train.csv", *(f"{d}/train.csv" for d in DATASET_DIRS))
    raise AssertionError("unreachable")  # require_file raised


def read_labels(values: pd.Series, *, source: Path, column: str) -> np.ndarray:
    """Return CheXpert-coded labels as floats (1, 0, -1, NaN for blank); other codes are an error."""
    if pd.api.types.is_numeric_dtype(values):
        numbers = values.to_numpy(dtype=float)
        bad = ~np.isnan(numbers) & ~np.isin(numbers, list(_LABEL_VALUES))
    else:  # text somewhere in the column: find it
        numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
        bad = ~np.isnan(numbers) & ~np.isin(numbers, list(_LABEL_VALUES))
        bad |= np.isnan(numbers) & values.notna().to_numpy() & (values.astype(str).str.strip() != "")
    if bad.any():
        raise CxrbenchError(
            f"{source}: column '{column}' has value '{values[bad].iloc[0]}'; expected 1.0, 0.0, -1.0 or blank"
        )
    return numbers


def _read(csv: Path, base: Path, split: str) -> pd.DataFrame:
    text = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA")
    df = pd.read_csv(csv, dtype=dict.fromkeys(text, str), na_values=[""], keep_default_na=False)
    df.columns = [c.strip() for c in df.columns]
    df[[c for c in text if c in df]] = df[[c for c in text if c in df]].fillna("")
    missing = [c for c in ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *LABELS) if c not in df]
    if missing:
        raise CxrbenchError(f"{csv} lacks columns {missing}: not a CheXpert label file")
    # Path is relative to the folder containing the dataset folder; accept it without the prefix too
    parts = df["Path"].str.strip().str.extract(_PATH_RE)
    if parts["rel"].isna().any():
        bad = df["Path"][parts["rel"].isna()].iloc[0]
        raise CxrbenchError(f"{csv}: Path '{bad}' is not <dataset>/<train|valid>/patientN/studyN/<file>")
    frontal = df["Frontal/Lateral"].str.strip().str.upper()
    appa = df["AP/PA"].str.strip().str.upper()
    view = np.where(appa != "", appa, np.where(frontal == "LATERAL", "LATERAL", None))
    age = pd.to_numeric(df["Age"], errors="coerce").astype(float)
    out = pd.DataFrame(
        {
            "path": str(base) + os.sep + parts["rel"],
            "sample_id": df["Path"].str.strip(),
            "patient_id": parts["patient"],
            "study_id": parts["patient"] + "/" + parts["study"],
            "view": view,
            "sex": df["Sex"].map({v: normalise_sex(v) for v in df["Sex"].unique()}),  # once per distinct value
            "age": age.where((age > 0) & (age <= MAX_AGE_YEARS)),
            "split": split,
        }
    )
    for label in LABELS:
        out[label] = read_labels(df[label], source=csv, column=label)
    fill_no_finding(out, LABELS)
    return out


def load(root: Path) -> RawDataset:
    """Return CheXpert as one row per image: train.csv as ``trainval``, valid.csv as ``test``."""
    root = Path(root)
    data_dir = _dataset_dir(root)
    train = require_file(data_dir, "train.csv", "train.csv.gz")
    valid = require_file(data_dir, "valid.csv", "valid.csv.gz")
    frame = pd.concat([_read(train, data_dir, "trainval"), _read(valid, data_dir, "test")], ignore_index=True)
    return RawDataset(frame=frame, labels=list(LABELS))
