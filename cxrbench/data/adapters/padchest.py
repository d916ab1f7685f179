"""PadChest adapter: the BIMCV label CSV, one row per PNG, labels parsed from list-like strings.

PadChest (Bustos et al., Medical Image Analysis 2020; BIMCV, Hospital San Juan, Alicante) is
160,868 images of 69,882 patients whose Spanish reports were labelled (27% by physicians, the rest
by an RNN) with 174 findings, 19 diagnoses and 104 locations.

File read (in ``root``): ``PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv`` (``.gz`` too), or
the pre-release ``PADCHEST_chest_x_ray_images_labels_160K.csv``. Columns used: ``ImageID``,
``ImageDir`` (zip/folder number, a float such as ``13.0`` when pandas reads it), ``StudyID``,
``PatientID`` (long decimal strings, kept as text), ``PatientBirth`` (a year), ``StudyDate_DICOM``
(``YYYYMMDD``), ``PatientSex_DICOM``, ``Projection`` (``PA``, ``L`` → ``LATERAL``, ``AP``,
``AP_horizontal`` → ``AP``, others upper-cased), ``Labels`` and ``Report`` (stemmed Spanish tokens,
returned as ``report``).

``Labels`` is a python-list string (``['pneumothorax', 'pulmonary mass']``) whose entries can be
padded (``' endotracheal tube'``) or empty (``''``); entries are stripped and empties dropped. A
row whose ``Labels`` is blank or ``[]`` has unknown labels (NaN), else 1.0 for each listed label and
0.0 for the rest (the labels carry no uncertainty code). ``labels="ssl13"`` (default) keeps the nine
labels of the 13-dataset SSL benchmark (COPD signs, emphysema, heart insufficiency, lung metastasis,
normal, pneumonia, pulmonary edema, pulmonary fibrosis, tuberculosis sequelae); ``labels="all"``
keeps every label in the file (the generic path drops rare ones). Age is the study year minus the
birth year (NaN when unknown or outside 0–120). No official split. Images: ``<root>/<ImageDir>/
<ImageID>`` as the zips unpack, or flat (``<root>/images/<ImageID>`` or ``<root>/<ImageID>``),
chosen by probing a few rows. Layout source: ``shared/realdata/LAYOUTS.md`` (the authors' notebook
and README).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from cxrbench.data.adapters.base import MAX_AGE_YEARS, RawDataset, normalise_view, require_file
from cxrbench.errors import CxrbenchError

FILES = (
    "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv",
    "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz",
    "PADCHEST_chest_x_ray_images_labels_160K.csv",
    "PADCHEST_chest_x_ray_images_labels_160K.csv.gz",
)
SSL13_LABELS = (
    "COPD signs",
    "emphysema",
    "heart insufficiency",
    "lung metastasis",
    "normal",
    "pneumonia",
    "pulmonary edema",
    "pulmonary fibrosis",
    "tuberculosis sequelae",
)
LABEL_SETS = ("ssl13", "all")
_QUOTED = re.compile(r"'((?:[^'\\]|\\.)*)'|\"((?:[^\"\\]|\\.)*)\"")
_NEEDED = ("ImageID", "ImageDir", "PatientID", "Projection", "Labels")


def parse_labels(value: object) -> list[str] | None:
    """Return the stripped, non-empty entries of a list-like ``Labels`` string; None if blank or ``[]``."""
    if not isinstance(value, str) or not value.strip():
        return None
    entries = [(a or b).strip() for a, b in _QUOTED.findall(value)]
    entries = [e for e in entries if e]
    return entries or None


def _image_paths(root: Path, image_id: pd.Series, image_dir: pd.Series) -> pd.Series:
    """Return image paths in the first layout where any of a few probed rows exists."""
    sub = pd.to_numeric(image_dir, errors="coerce").map(lambda d: "" if np.isnan(d) else str(int(d)))
    layouts = [
        str(root) + os.sep + sub + os.sep + image_id,
        str(root / "images") + os.sep + sub + os.sep + image_id,
        str(root / "images") + os.sep + image_id,
        str(root) + os.sep + image_id,
    ]
    probe = image_id.index[: min(5, len(image_id))]
    for paths in layouts:
        if any(os.path.exists(paths[i]) for i in probe):
            return paths
    return layouts[0]


def load(root: Path, *, labels: str = "ssl13") -> RawDataset:
    """Return PadChest as one row per image with the ``labels`` set (``ssl13`` or ``all``)."""
    if labels not in LABEL_SETS:
        raise CxrbenchError(f"labels must be one of {', '.join(LABEL_SETS)}, got {labels!r}")
    root = Path(root)
    path = require_file(root, *FILES)
    text_cols = ("ImageID", "StudyID", "PatientID", "PatientSex_DICOM", "Projection", "Labels")
    df = pd.read_csv(path, dtype=dict.fromkeys(text_cols, str), low_memory=False)
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in _NEEDED if c not in df.columns]
    if missing:
        raise CxrbenchError(f"{path} lacks columns {missing}: not a PadChest label file")

    parsed = df["Labels"].map(parse_labels)
    known = parsed.notna().to_numpy()
    long = parsed.explode().dropna()
    if long.empty:
        present = pd.DataFrame(index=df.index)
    else:
        pairs = pd.DataFrame({"row": long.index, "label": long.to_numpy()})
        present = pairs.groupby(["row", "label"]).size().unstack("label", fill_value=0)
        present = present.reindex(df.index, fill_value=0)
    names = list(SSL13_LABELS) if labels == "ssl13" else sorted(present.columns)

    view = df["Projection"].map(normalise_view)  # "AP_horizontal", "AP supine" -> AP; "L" -> LATERAL
    blank = pd.Series("", index=df.index, dtype=str)
    sex = df.get("PatientSex_DICOM", blank).fillna("").str.strip().str.upper()
    birth = pd.to_numeric(df.get("PatientBirth", blank), errors="coerce")
    study_year = pd.to_numeric(df.get("StudyDate_DICOM", blank), errors="coerce") // 10_000
    age = (study_year - birth).astype(float)
    out = pd.DataFrame(
        {
            "path": _image_paths(root, df["ImageID"].str.strip(), df["ImageDir"]),
            "sample_id": df["ImageID"].str.strip(),
            "patient_id": df["PatientID"].str.strip(),
            "study_id": df["StudyID"].str.strip() if "StudyID" in df else None,
            "view": view,
            "sex": sex.where(sex.isin(["M", "F"]), None),
            "age": age.where((age >= 0) & (age <= MAX_AGE_YEARS)),
            "split": np.full(len(df), None, dtype=object),
        }
    )
    if "Report" in df:
        out["report"] = df["Report"].where(df["Report"].notna(), None)
    columns = {
        name: np.where(known, (present[name].to_numpy() > 0 if name in present else False), np.nan) for name in names
    }
    # one concat: labels="all" has 193 labels, and one insert each makes pandas warn per insert
    out = pd.concat([out, pd.DataFrame(columns, index=out.index, dtype=float)], axis=1)
    return RawDataset(frame=out, labels=names, notes={"label_set": labels})
