"""SIIM-ACR Pneumothorax Segmentation (Kaggle 2019) adapter: RLE mask rows → one binary label per DICOM.

12,047 frontal NIH ChestX-ray14 radiographs re-annotated for pneumothorax masks by SIIM/STR
radiologists, as redistributed by jesperdramsch on Kaggle (the copy the 13-dataset SSL paper uses).
Files read (relative to ``root``):

- ``train-rle.csv`` (or ``.csv.gz``): header ``ImageId, EncodedPixels`` with a leading space in
  the second name (matched after stripping); one row per mask component, so an ImageId can repeat;
  ``-1`` means no pneumothorax. An image is positive when any of its rows holds an RLE mask.
- images ``dicom-images-train/<StudyInstanceUID>/<SeriesInstanceUID>/<ImageId>.dcm``: the study and
  series folders are not in the CSV, so the folder is walked once to map ImageId → file (a flat
  ``dicom-images-train/<ImageId>.dcm`` is found the same way; unmatched ids get that flat path and
  are quarantined later).

Patient id, view, sex and age come from each DICOM header (read without pixels); the header's
``PatientID`` is an anonymised UUID. Where a file is missing the ImageId stands in as patient id.
Label: ``Pneumothorax``. No public test labels: split is None. Layout source:
``shared/realdata/LAYOUTS.md`` (real CSV and a real DICOM checked) and the Kaggle dataset page.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from cxrbench.data.adapters.base import RawDataset, dicom_headers, preview, require_file
from cxrbench.errors import CxrbenchError

LABEL = "Pneumothorax"
IMAGE_DIR = "dicom-images-train"


def load(root: Path, *, read_headers: bool = True) -> RawDataset:
    """Return one row per SIIM-ACR training image with a binary ``Pneumothorax`` label."""
    root = Path(root).resolve()
    source = require_file(root, "train-rle.csv", "train-rle.csv.gz")
    rle = pd.read_csv(source, dtype=str)
    rle.columns = [c.strip() for c in rle.columns]
    missing = [c for c in ("ImageId", "EncodedPixels") if c not in rle.columns]
    if missing:
        raise CxrbenchError(f"{source}: lacks column(s) {', '.join(missing)} (has {preview(rle.columns, 5)})")
    rle["ImageId"] = rle["ImageId"].str.strip()
    mask = rle["EncodedPixels"].fillna("-1").str.strip()
    rle["positive"] = (mask != "-1") & (mask != "")
    per_image = rle.groupby("ImageId", sort=False)["positive"].any()
    ids = per_image.index.to_list()

    image_dir = root / IMAGE_DIR
    found = {p.stem: p for p in image_dir.rglob("*.dcm")} if image_dir.is_dir() else {}
    paths = [str(found.get(i, image_dir / f"{i}.dcm")) for i in ids]
    frame = pd.DataFrame({"path": paths, "sample_id": ids, "patient_id": ids, "view": None})
    frame["split"] = None
    if read_headers and found:
        headers = dicom_headers(paths)
        frame["patient_id"] = headers["patient_id"].fillna(pd.Series(ids)).to_numpy()
        frame["view"] = headers["view"].to_numpy()
        frame["sex"] = headers["sex"].to_numpy()
        frame["age"] = headers["age"].to_numpy()
    frame[LABEL] = per_image.to_numpy(dtype=float)
    return RawDataset(frame=frame, labels=[LABEL], notes={"source": str(source), "images_found": str(len(found))})
