"""BRAX adapter: the Brazilian labelled chest X-ray dataset's master spreadsheet, one row per PNG.

BRAX (Reis et al., Scientific Data 2022; PhysioNet ``brax`` 1.1.0) is 40,967 images of 19,351
patients from Hospital Israelita Albert Einstein, labelled from Portuguese reports with the 14
CheXpert observations: ``1`` positive, ``0`` negative, ``-1`` uncertain, blank not mentioned (kept
as unknown). As with CheXpert, a blank ``No Finding`` becomes 0.0 where another finding (not
``Support Devices``) is positive or uncertain (``base.fill_no_finding``).

File read (in ``root``): ``master_spreadsheet_update.csv`` (or the 1.0.0 ``master_spreadsheet.csv``),
columns ``PatientID``, ``PngPath`` (relative to ``root``:
``images/id_<PatientID>/Study_<UID>/Series_<UID>/image-<UID>.png``), ``ViewPosition`` (``PA``,
``AP``, ``AP LLD`` → ``AP``, ``L`` → ``LATERAL``, others upper-cased, blank → None), ``PatientSex``,
``PatientAge`` (a number, optionally with a DICOM unit suffix such as ``045Y``; a range such as
``85 or more`` keeps its lower bound) and the labels. Third-party loaders trim 7 characters off
``PngPath``; when a few probed rows exist only in that trimmed form, that form is used. The study is
the ``Study_<UID>`` path component. No official split. Layout source: the PhysioNet BRAX page and
public loaders found with the search tools (no real rows were available).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from cxrbench.data.adapters.base import (
    RawDataset,
    fill_no_finding,
    normalise_sex,
    normalise_view,
    parse_age,
    require_file,
)
from cxrbench.data.adapters.chexpert import LABELS, read_labels
from cxrbench.errors import CxrbenchError

FILES = ("master_spreadsheet_update.csv", "master_spreadsheet.csv")
_TRIM = 7
_LEADING_NUMBER = re.compile(r"^\s*(\d+(?:\.\d+)?\s*[YMWD]?)\b", re.IGNORECASE)


def _age(value: object) -> float:
    if isinstance(value, str):
        match = _LEADING_NUMBER.match(value)
        return parse_age(match.group(1)) if match else float("nan")
    return parse_age(value)


def _paths(root: Path, rel: pd.Series) -> pd.Series:
    full = str(root) + os.sep + rel
    trimmed = str(root) + os.sep + rel.str[:-_TRIM]
    probe = rel.index[: min(5, len(rel))]
    if not any(os.path.exists(full[i]) for i in probe) and any(os.path.exists(trimmed[i]) for i in probe):
        return trimmed
    return full


def load(root: Path) -> RawDataset:
    """Return BRAX as one row per image with the 14 CheXpert labels (1/0/-1/NaN)."""
    root = Path(root)
    path = require_file(root, *FILES)
    text = ("PatientID", "PngPath", "ViewPosition", "PatientSex", "PatientAge")
    df = pd.read_csv(path, dtype=dict.fromkeys(text, str), low_memory=False)
    df.columns = [c.strip() for c in df.columns]
    missing = [c for c in ("PatientID", "PngPath", "ViewPosition", *LABELS) if c not in df.columns]
    if missing:
        raise CxrbenchError(f"{path} lacks columns {missing}: not a BRAX master spreadsheet")
    rel = df["PngPath"].fillna("").str.strip().str.lstrip("/")
    view = df["ViewPosition"].map(normalise_view)
    sex = df.get("PatientSex", pd.Series(None, index=df.index)).map(normalise_sex)
    ages = df.get("PatientAge", pd.Series(np.nan, index=df.index)).map(_age).astype(float)
    out = pd.DataFrame(
        {
            "path": _paths(root, rel),
            "sample_id": df["PngPath"].str.strip(),
            "patient_id": df["PatientID"].str.strip(),
            "study_id": rel.str.extract(r"(Study_[^/]+)", expand=False),
            "view": view,
            "sex": sex,
            "age": ages,
            "split": np.full(len(df), None, dtype=object),
        }
    )
    for label in LABELS:
        out[label] = read_labels(df[label], source=path, column=label)
    fill_no_finding(out, LABELS)
    return RawDataset(frame=out, labels=list(LABELS))
