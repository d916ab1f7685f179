"""MIMIC-CXR-JPG adapter: image metadata, study-level CheXpert/NegBio labels and the official split.

MIMIC-CXR-JPG (Johnson et al., PhysioNet 2019, v2.0.0/2.1.0) is 377,110 JPEGs from 227,827 studies
of 65,379 patients at Beth Israel Deaconess. Labels come per *study* from the CheXpert (default) or
NegBio labeler run on the report: ``1.0``, ``0.0``, ``-1.0`` (uncertain) or blank (not mentioned);
every image of a study gets its study's labels; images of studies absent from the label file get
NaN for every label. Both labelers write ``No Finding`` only as 1.0 or blank: a blank becomes 0.0
where another finding (not ``Support Devices``) is positive or uncertain (``base.fill_no_finding``).

Files read from ``root`` (``.csv.gz`` as distributed, or unpacked ``.csv``):
``mimic-cxr-2.0.0-metadata.csv`` (``dicom_id,subject_id,study_id,...,ViewPosition,...``),
``mimic-cxr-2.0.0-chexpert.csv`` or ``-negbio.csv`` (``subject_id,study_id`` + 14 labels) and
``mimic-cxr-2.0.0-split.csv`` (``dicom_id,study_id,subject_id,split`` with ``train``/``validate``/
``test`` → ``train``/``val``/``test``; without it the split is None). Images:
``files/p{subject_id[:2]}/p{subject_id}/s{study_id}/{dicom_id}.jpg`` (PhysioNet layout). View from
``ViewPosition`` (``AP AXIAL``, ``AP LLD``… → ``AP``; ``PA LLD`` → ``PA``; blank → None). No age or
sex (those live in MIMIC-IV). Layout source: the PhysioNet MIMIC-CXR-JPG page and
``shared/realdata/LAYOUTS.md`` (the header TorchXRayVision's test generator uses).

Reports (optional): the free-text ``files/p{subject_id[:2]}/p{subject_id}/s{study_id}.txt`` of
``mimic-cxr-reports.zip`` unpacked into ``root`` (beside the JPG folders) or into
``root/mimic-cxr-reports/``; when present each image gets its study's report (``report``), whose
sections prepare parses once. ``reports=False`` leaves them out.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from cxrbench.data.adapters.base import (
    RawDataset,
    fill_no_finding,
    normalise_view,
    preview,
    require_file,
)
from cxrbench.errors import CxrbenchError

LABELS = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Enlarged Cardiomediastinum",
    "Fracture",
    "Lung Lesion",
    "Lung Opacity",
    "No Finding",
    "Pleural Effusion",
    "Pleural Other",
    "Pneumonia",
    "Pneumothorax",
    "Support Devices",
)
LABELERS = ("chexpert", "negbio")
PREFIX = "mimic-cxr-2.0.0-"
_SPLITS = {"train": "train", "validate": "val", "val": "val", "test": "test"}
_LABEL_VALUES = [1.0, 0.0, -1.0]


def csv_file(root: Path, name: str) -> Path:
    """Return ``root/mimic-cxr-2.0.0-<name>.csv.gz`` or its unpacked ``.csv``; else a one-line error."""
    return require_file(root, f"{PREFIX}{name}.csv.gz", f"{PREFIX}{name}.csv")


def read_ids(path: Path, columns: list[str]) -> pd.DataFrame:
    """Return the CSV with its id columns as stripped strings; a one-line error names missing columns."""
    df = pd.read_csv(path, dtype=dict.fromkeys(columns, str))
    df.columns = [c.strip() for c in df.columns]
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise CxrbenchError(f"{path} lacks columns {missing}")
    for c in columns:
        df[c] = df[c].str.strip()
    return df


def image_paths(root: Path, subject_id: pd.Series, study_id: pd.Series, dicom_id: pd.Series) -> pd.Series:
    """Return ``root/files/pXX/pSUBJECT/sSTUDY/DICOM.jpg`` for each row (the PhysioNet JPG layout)."""
    base = str(Path(root) / "files") + os.sep
    sid = subject_id.astype(str)
    return (
        base
        + "p"
        + sid.str[:2]
        + os.sep
        + "p"
        + sid
        + os.sep
        + "s"
        + study_id.astype(str)
        + os.sep
        + dicom_id.astype(str)
        + ".jpg"
    )


def label_matrix(df: pd.DataFrame, labels: list[str], *, source: Path) -> pd.DataFrame:
    """Return the label columns as floats, checking every value is 1, 0, -1 or blank."""
    out = df[labels].apply(pd.to_numeric, errors="coerce").astype(float)
    bad = (out.notna() & ~out.isin(_LABEL_VALUES)) | (out.isna() & df[labels].notna())
    if bad.any().any():
        col = bad.any()[lambda s: s].index[0]
        value = df.loc[bad[col], col].iloc[0]
        raise CxrbenchError(f"{source}: column '{col}' has value '{value}'; expected 1.0, 0.0, -1.0 or blank")
    return out


REPORT_FOLDERS = ("files", "mimic-cxr-reports/files")


def report_paths(root: Path, subject_id: pd.Series, study_id: pd.Series) -> pd.Series | None:
    """``pXX/pSUBJECT/sSTUDY.txt`` under the first report folder that holds a few of the studies'
    reports, or None when there is none."""
    sid = subject_id.astype(str)
    rel = "p" + sid.str[:2] + os.sep + "p" + sid + os.sep + "s" + study_id.astype(str) + ".txt"
    for folder in REPORT_FOLDERS:
        base = Path(root) / folder
        if base.is_dir() and any((base / r).is_file() for r in rel.drop_duplicates().head(20)):
            return str(base) + os.sep + rel
    return None


def read_reports(paths: pd.Series) -> pd.Series:
    """Each path's text (None where the file is missing), each study's file read once."""
    texts = {}
    for path in paths.drop_duplicates():
        try:
            texts[path] = Path(path).read_text(encoding="utf-8", errors="replace")
        except OSError:
            texts[path] = None
    return paths.map(texts)


def load(root: Path, *, labeler: str = "chexpert", reports: bool = True) -> RawDataset:
    """Return MIMIC-CXR-JPG as one row per image with study labels from ``labeler`` and the official split."""
    if labeler not in LABELERS:
        raise CxrbenchError(f"labeler must be one of {', '.join(LABELERS)}, got '{labeler}'")
    root = Path(root)
    meta_path = csv_file(root, "metadata")
    label_path = csv_file(root, labeler)
    meta = read_ids(meta_path, ["dicom_id", "subject_id", "study_id", "ViewPosition"])
    lab = read_ids(label_path, ["subject_id", "study_id"])
    missing = [c for c in LABELS if c not in lab.columns]
    if missing:
        raise CxrbenchError(f"{label_path} lacks label columns {missing}")
    lab = pd.concat(
        [lab[["subject_id", "study_id"]], label_matrix(lab, list(LABELS), source=label_path)],
        axis=1,
    ).drop_duplicates(["subject_id", "study_id"])
    frame = meta[["dicom_id", "subject_id", "study_id", "ViewPosition"]].merge(
        lab, on=["subject_id", "study_id"], how="left", validate="many_to_one"
    )

    notes = {"labeler": labeler}
    split_candidates = [f"{PREFIX}split.csv.gz", f"{PREFIX}split.csv"]
    split_path = next((root / n for n in split_candidates if (root / n).exists()), None)
    if split_path is not None:
        sp = read_ids(split_path, ["dicom_id", "split"]).drop_duplicates("dicom_id")
        unknown = sorted(set(sp["split"].dropna()) - set(_SPLITS))
        if unknown:
            raise CxrbenchError(
                f"{split_path}: unknown split values {preview(unknown)}; expected train, validate, test"
            )
        frame["split"] = frame["dicom_id"].map(sp.set_index("dicom_id")["split"].map(_SPLITS))
    else:
        frame["split"] = np.full(len(frame), None, dtype=object)
        notes["split"] = "mimic-cxr-2.0.0-split.csv not found: no official split"

    out = pd.DataFrame(
        {
            "path": image_paths(root, frame["subject_id"], frame["study_id"], frame["dicom_id"]),
            "sample_id": frame["dicom_id"],
            "patient_id": frame["subject_id"],
            "study_id": frame["study_id"],
            "view": frame["ViewPosition"].map(normalise_view),
            "sex": None,
            "age": np.nan,
            "split": frame["split"],
        }
    )
    texts = report_paths(root, frame["subject_id"], frame["study_id"]) if reports else None
    if texts is not None:
        out["report"] = read_reports(texts).to_numpy()
    elif reports:
        notes["reports"] = "no mimic-cxr-reports folder found: no reports"
    for label in LABELS:
        out[label] = frame[label].to_numpy(dtype=float)
    fill_no_finding(out, LABELS)
    return RawDataset(frame=out, labels=list(LABELS), notes=notes)
