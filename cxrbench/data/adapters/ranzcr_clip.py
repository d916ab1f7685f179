"""RANZCR CLiP (Kaggle 2021) adapter: catheter and tube position labels, one row per JPEG.

30,083 chest radiographs (27,074 in the released ``train.csv``) labelled by radiologists for the
presence and placement of endotracheal tubes (ETT), nasogastric tubes (NGT), central venous
catheters (CVC) and Swan-Ganz catheters. Files read (relative to ``root``, the Kaggle download):

- ``train.csv``: ``StudyInstanceUID``, eleven 0/1 label columns, ``PatientID``.
- images ``train/<StudyInstanceUID>.jpg`` (``train_annotations.csv`` line coordinates are not read).

Labels: the eleven columns as named (``ETT - Abnormal`` … ``Swan Ganz Catheter Present``), the
13-dataset SSL paper's multi-label (11) task. Several images can share a ``PatientID``, so the
generic patient-level split keeps them together. No public test labels: split is None. View:
not recorded (None). Documented only: no real file was available; the layout rests on the Kaggle
data description quoted in ``shared/realdata/LAYOUTS.md``.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from cxrbench.data.adapters.base import RawDataset, require_file
from cxrbench.errors import CxrbenchError

LABELS = (
    "ETT - Abnormal",
    "ETT - Borderline",
    "ETT - Normal",
    "NGT - Abnormal",
    "NGT - Borderline",
    "NGT - Incompletely Imaged",
    "NGT - Normal",
    "CVC - Abnormal",
    "CVC - Borderline",
    "CVC - Normal",
    "Swan Ganz Catheter Present",
)


def load(root: Path) -> RawDataset:
    """Return one row per RANZCR CLiP training image with the eleven tube/catheter labels."""
    root = Path(root).resolve()
    source = require_file(root, "train.csv")
    table = pd.read_csv(source, dtype={"StudyInstanceUID": str, "PatientID": str})
    table.columns = [c.strip() for c in table.columns]
    missing = [c for c in ("StudyInstanceUID", "PatientID", *LABELS) if c not in table.columns]
    if missing:
        raise CxrbenchError(f"{source}: lacks column(s) {', '.join(missing)} (is this the RANZCR CLiP train.csv?)")
    uid = table["StudyInstanceUID"].str.strip()
    frame = pd.DataFrame(
        {
            "path": [str(root / "train" / f"{u}.jpg") for u in uid],
            "sample_id": uid.to_numpy(),
            "patient_id": table["PatientID"].str.strip().to_numpy(),
            "view": None,
            "study_id": uid.to_numpy(),
        }
    )
    frame["split"] = None
    for name in LABELS:
        values = pd.to_numeric(table[name], errors="coerce")
        bad = table[name][values.notna() & ~values.isin((0.0, 1.0)) | values.isna() & table[name].notna()]
        if len(bad):
            raise CxrbenchError(f"{source}: column '{name}' has value '{bad.iloc[0]}' (expected 0 or 1)")
        frame[name] = values.astype(float).to_numpy()
    return RawDataset(frame=frame, labels=list(LABELS), notes={"source": str(source)})
