"""NIH ChestX-ray14 adapter: ``Data_Entry_2017*.csv`` plus the official test list, one row per PNG.

ChestX-ray14 (Wang et al., CVPR 2017; NIH Clinical Center box release, also mirrored on Kaggle) is
112,120 frontal PNGs of 30,805 patients with 14 findings mined from reports by NLP.

Files read (relative to ``root``; ``.gz`` variants accepted):

- ``Data_Entry_2017_v2020.csv`` (preferred) or ``Data_Entry_2017.csv``: ``Image Index``, ``Finding
  Labels`` (pipe-separated, ``No Finding`` its own token), ``Patient ID``, ``Patient Age``, ``Patient
  Gender``, ``View Position``. The 2017 file has CRLF line ends, a trailing header comma (an extra
  empty column), zero-padded ids (``00000001``) and ages with a unit (``058Y``, ``003M``, ``010D``)
  including impossible ones (``412Y``, NaN here); the 2020 file has plain integers.
- ``test_list.txt`` → split ``test``; ``train_val_list.txt`` → ``trainval`` (the official split);
  without them the split is None (seeded patient-level split later).

Labels: the 14 findings, spelled as in the file (``Pleural_Thickening`` with an underscore);
``No Finding`` too when ``no_finding=True``. NLP labels carry no uncertainty: every image is 1/0.
``sample_id`` is the ``Image Index``, the same in every layout.
Images: ``images/<Image Index>`` (box release, all tarballs unpacked into one folder) or the Kaggle
layout ``images_001/images/<Image Index>`` … ``images_012/…``. Patient ids are unpadded integers as
strings so both CSV versions agree. Layout source: ``shared/realdata/LAYOUTS.md`` and the NIH README.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from cxrbench.data.adapters.base import (
    RawDataset,
    normalise_sex,
    normalise_view,
    parse_age,
    parse_bool,
    preview,
    require_file,
)
from cxrbench.errors import CxrbenchError

FINDINGS = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Effusion",
    "Emphysema",
    "Fibrosis",
    "Hernia",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pleural_Thickening",
    "Pneumonia",
    "Pneumothorax",
)
NO_FINDING = "No Finding"


def _read_list(path: Path) -> set[str]:
    return {line.strip() for line in path.read_text().splitlines() if line.strip()}


def _image_folders(root: Path, probe: list[str]) -> dict[str, Path] | Path:
    """Return ``root/images`` when it holds the probed images, else a name → folder map of the Kaggle layout."""
    flat = root / "images"
    if any((flat / name).exists() for name in probe):
        return flat
    parts = sorted(p / "images" for p in root.glob("images_*") if (p / "images").is_dir())
    if not parts:
        return flat
    where: dict[str, Path] = {}
    for folder in parts:
        with os.scandir(folder) as entries:
            for entry in entries:
                where[entry.name] = folder
    return where


#: Columns every NIH table keyed by image has (Data_Entry_2017*.csv, the Google relabels).
IMAGE_COLUMNS = ("Image Index", "Patient ID", "Patient Age", "Patient Gender", "View Position")


def read_table(path: Path, needed: tuple[str, ...], *, what: str) -> pd.DataFrame:
    """Return an NIH CSV as stripped text (header names stripped); a one-line error names missing columns."""
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    df.columns = [c.strip() for c in df.columns]
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise CxrbenchError(f"{path} lacks columns {missing}: not {what}")
    return df


def image_frame(root: Path, df: pd.DataFrame) -> pd.DataFrame:
    """Return ``path``, ``sample_id``, ``patient_id``, ``view``, ``sex``, ``age`` from the per-image columns.

    ``sample_id`` is the ``Image Index`` (``00000001_000.png``), whatever the image layout; the path
    is ``root/images/<name>`` or the Kaggle ``root/images_NNN/images/<name>``. Patient ids are
    unpadded integers as text, so the 2017 (``00000001``) and 2020 (``1``) files agree.
    """
    names = df["Image Index"].str.strip()
    folders = _image_folders(Path(root), names.head(3).tolist())
    if isinstance(folders, Path):
        paths = [str(folders / n) for n in names]
    else:
        default = Path(root) / "images"
        paths = [str(folders.get(n, default) / n) for n in names]
    return pd.DataFrame(
        {
            "path": paths,
            "sample_id": names.to_numpy(),
            "patient_id": df["Patient ID"].str.strip().map(lambda s: str(int(s)) if s.isdigit() else s).to_numpy(),
            "view": df["View Position"].map(normalise_view).to_numpy(),
            "sex": df["Patient Gender"].map(normalise_sex).to_numpy(),
            "age": df["Patient Age"].map(parse_age).astype(float).to_numpy(),
        }
    )


def load(root: Path, *, no_finding: bool = False) -> RawDataset:
    """Return ChestX-ray14 as one row per image with the 14 findings (and ``No Finding`` if asked).

    ``no_finding`` may come from the command line as text (``true``/``false``/``1``/``0``).
    """
    no_finding = parse_bool(no_finding, name="no_finding")
    root = Path(root)
    entry = require_file(
        root,
        "Data_Entry_2017_v2020.csv",
        "Data_Entry_2017_v2020.csv.gz",
        "Data_Entry_2017.csv",
        "Data_Entry_2017.csv.gz",
    )
    df = read_table(entry, (*IMAGE_COLUMNS, "Finding Labels"), what="a ChestX-ray14 Data_Entry file")
    names = df["Image Index"].str.strip()

    dummies = df["Finding Labels"].str.replace(r"\s*\|\s*", "|", regex=True).str.strip().str.get_dummies(sep="|")
    unknown = sorted(set(dummies.columns) - set(FINDINGS) - {NO_FINDING})
    if unknown:
        raise CxrbenchError(f"{entry}: unknown finding labels {preview(unknown)} in 'Finding Labels'")
    labels = list(FINDINGS) + ([NO_FINDING] if no_finding else [])

    out = image_frame(root, df)
    for label in labels:
        out[label] = dummies[label].astype(float).to_numpy() if label in dummies else 0.0

    test_file = root / "test_list.txt" if (root / "test_list.txt").exists() else None
    trainval_file = root / "train_val_list.txt"
    split = np.full(len(df), None, dtype=object)
    notes = {}
    if test_file is not None:
        if trainval_file.exists():
            split[names.isin(_read_list(trainval_file)).to_numpy()] = "trainval"
        else:
            split[:] = "trainval"
        split[names.isin(_read_list(test_file)).to_numpy()] = "test"
    else:
        notes["split"] = "test_list.txt not found: no official split"
    out["split"] = split
    return RawDataset(frame=out, labels=labels, notes=notes)
