"""RSNA Pneumonia Detection Challenge (Kaggle 2018) adapter: box rows collapsed to one row per DICOM.

The dataset is 26,684 frontal NIH ChestX-ray14 radiographs re-read by radiologists (RSNA/STR) for
lung opacities suggestive of pneumonia. Files read (relative to ``root``, the Kaggle download):

- ``stage_2_train_labels.csv`` (or the zipped ``.csv.zip``): ``patientId,x,y,width,height,Target``,
  one row per box, so a patientId repeats; negatives have blank boxes and ``Target`` 0.
- ``stage_2_detailed_class_info.csv`` (``patientId,class``; one row per box too), only with
  ``labels="classes"``: ``Normal``, ``No Lung Opacity / Not Normal``, ``Lung Opacity``.
- images ``stage_2_train_images/<patientId>.dcm``. When that folder exists, each header is read
  (no pixels) for ``ViewPosition`` (PA/AP), ``PatientSex`` and ``PatientAge``; otherwise they are None.

Labels: ``labels="target"`` (default) gives one binary label ``Lung Opacity`` (= ``Target``, the
competition's pneumonia target: 1 if any row of the image is 1); ``labels="classes"`` gives the three
one-hot classes (``task="multiclass"``; images absent from the class file are NaN). The Kaggle
``patientId`` is one UUID per image (the DICOM ``PatientID`` equals it), so it is the patient id;
the real NIH patient is not recoverable. No public test labels: split is None.
Layout source: ``shared/realdata/LAYOUTS.md`` (real files checked) and the Kaggle data page.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from cxrbench.data.adapters.base import RawDataset, dicom_headers, preview, require_file
from cxrbench.errors import CxrbenchError

TARGET_LABEL = "Lung Opacity"
CLASSES = ("Normal", "No Lung Opacity / Not Normal", "Lung Opacity")
IMAGE_DIR = "stage_2_train_images"


def load(root: Path, *, labels: str = "target", read_headers: bool = True) -> RawDataset:
    """Return one row per RSNA training image with the pneumonia target (or the three classes)."""
    if labels not in ("target", "classes"):
        raise CxrbenchError(f"rsna-pneumonia: labels must be 'target' or 'classes', not '{labels}'")
    root = Path(root).resolve()
    source = require_file(root, "stage_2_train_labels.csv", "stage_2_train_labels.csv.zip")
    boxes = pd.read_csv(source, dtype={"patientId": str})
    missing = [c for c in ("patientId", "Target") if c not in boxes.columns]
    if missing:
        raise CxrbenchError(f"{source}: lacks column(s) {', '.join(missing)} (has {preview(boxes.columns, 5)})")
    boxes["patientId"] = boxes["patientId"].str.strip()
    per_image = boxes.groupby("patientId", sort=False)["Target"].max()

    ids = per_image.index.to_list()
    image_dir = root / IMAGE_DIR
    frame = pd.DataFrame(
        {
            "path": [str(image_dir / f"{pid}.dcm") for pid in ids],
            "sample_id": ids,
            "patient_id": ids,
            "view": None,
        }
    )
    frame["split"] = None
    if read_headers and image_dir.is_dir():
        headers = dicom_headers(frame["path"].to_list())
        frame["view"] = headers["view"].to_numpy()
        frame["sex"] = headers["sex"].to_numpy()
        frame["age"] = headers["age"].to_numpy()

    if labels == "target":
        frame[TARGET_LABEL] = per_image.to_numpy(dtype=float)
        return RawDataset(frame=frame, labels=[TARGET_LABEL], notes={"source": str(source)})

    class_file = require_file(root, "stage_2_detailed_class_info.csv")
    info = pd.read_csv(class_file, dtype=str)
    info["patientId"] = info["patientId"].str.strip()
    info["class"] = info["class"].str.strip()
    unknown = sorted(set(info["class"]) - set(CLASSES))
    if unknown:
        raise CxrbenchError(f"{class_file}: unknown class '{unknown[0]}' (expected one of {', '.join(CLASSES)})")
    per_class = info.drop_duplicates("patientId").set_index("patientId")["class"].reindex(ids)
    for name in CLASSES:
        frame[name] = (per_class == name).astype(float).where(per_class.notna()).to_numpy()
    return RawDataset(frame=frame, labels=list(CLASSES), task="multiclass", notes={"source": str(source)})
