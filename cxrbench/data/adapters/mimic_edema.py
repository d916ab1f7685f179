"""MIMIC-CXR pulmonary edema severity adapter: 4-class severity labels on MIMIC-CXR-JPG images.

The edema severity labels (Liao et al., MICCAI 2019 / Horng et al. 2021; PhysioNet
``mimic-cxr-pe-severity``, GitHub ``RayRuizhiLiao/mimic_cxr_edema``) grade congestive heart failure
studies of MIMIC-CXR as 0 no edema, 1 vascular congestion, 2 interstitial edema, 3 alveolar edema.

Files read from ``root``: ``regex_report_edema_severity.csv`` (``subject_id,study_id,edema_severity``,
report level, regex-labelled; required), ``expert_report_edema_severity.csv`` (same columns,
radiologist-read reports; optional) and ``consensus_image_edema_severity.csv``
(``subject_id,study_id,dicom_id,edema_severity``, image level, consensus of radiologists; optional).
Report-level labels are given to every image of the study, listed by the MIMIC-CXR-JPG
``mimic-cxr-2.0.0-metadata.csv(.gz)`` found in ``mimic_root`` (default ``root``); images follow the
MIMIC-CXR-JPG layout there (``files/pXX/pSUBJECT/sSTUDY/DICOM.jpg``). The more careful source wins:
image consensus over expert report over regex report. Values must be integers 0–3.
The task is ``multiclass`` with one-hot columns named by severity; views come from the metadata's
``ViewPosition`` (laterals kept; the generic frontal filter drops them). No official split.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cxrbench.data.adapters import mimic_cxr
from cxrbench.data.adapters.base import RawDataset, normalise_view, require_file
from cxrbench.errors import CxrbenchError

CLASSES = ("no edema", "vascular congestion", "interstitial edema", "alveolar edema")
REGEX = "regex_report_edema_severity.csv"
EXPERT = "expert_report_edema_severity.csv"
CONSENSUS = "consensus_image_edema_severity.csv"


def _read(path: Path, ids: list[str]) -> pd.DataFrame:
    df = mimic_cxr.read_ids(path, [*ids, "edema_severity"])
    sev = pd.to_numeric(df["edema_severity"], errors="coerce")
    bad = ~sev.isin(range(len(CLASSES)))
    if bad.any():
        value = df.loc[bad, "edema_severity"].iloc[0]
        raise CxrbenchError(f"{path}: edema_severity '{value}' is not one of 0, 1, 2, 3")
    df["edema_severity"] = sev.astype(int)
    return df[[*ids, "edema_severity"]]


def load(root: Path, *, mimic_root: Path | None = None) -> RawDataset:
    """Return edema severity as one row per MIMIC-CXR image with one-hot severity columns."""
    root = Path(root)
    mimic_root = Path(mimic_root) if mimic_root is not None else root
    study_ids = ["subject_id", "study_id"]
    regex = _read(require_file(root, REGEX), study_ids)
    reports = regex
    if (root / EXPERT).exists():
        expert = _read(root / EXPERT, study_ids)
        reports = pd.concat([expert, regex]).drop_duplicates(study_ids, keep="first")
    meta = mimic_cxr.read_ids(mimic_cxr.csv_file(mimic_root, "metadata"), ["dicom_id", *study_ids, "ViewPosition"])
    images = meta[["dicom_id", *study_ids, "ViewPosition"]].merge(reports, on=study_ids)
    notes = {"sources": REGEX}
    if (root / CONSENSUS).exists():
        consensus = _read(root / CONSENSUS, ["dicom_id", *study_ids])
        images = images.merge(
            consensus[["dicom_id", "edema_severity"]],
            on="dicom_id",
            how="outer",
            suffixes=("", "_c"),
        )
        images["edema_severity"] = images["edema_severity_c"].fillna(images["edema_severity"])
        # consensus images whose study the metadata lacks keep the consensus ids
        lacking = images["subject_id"].isna()
        fill = consensus.set_index("dicom_id").loc[images.loc[lacking, "dicom_id"], study_ids]
        images.loc[lacking, study_ids] = fill.to_numpy()
        notes["sources"] = f"{CONSENSUS} > {EXPERT} > {REGEX}"

    severity = images["edema_severity"].astype(int).to_numpy()
    out = pd.DataFrame(
        {
            "path": mimic_cxr.image_paths(mimic_root, images["subject_id"], images["study_id"], images["dicom_id"]),
            "sample_id": images["dicom_id"].astype(str),
            "patient_id": images["subject_id"].astype(str),
            "study_id": images["study_id"].astype(str),
            "view": images["ViewPosition"].map(normalise_view),
            "sex": None,
            "age": np.nan,
            "split": None,
        }
    )
    for k, name in enumerate(CLASSES):
        out[name] = (severity == k).astype(float)
    return RawDataset(frame=out, labels=list(CLASSES), task="multiclass", notes=notes)
