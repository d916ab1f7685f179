"""RSNA STR Pulmonary Embolism Detection (Kaggle 2020, the RSPECT dataset) adapter: one row per CT slice.

Files read (relative to ``root``, the Kaggle download):

- ``train.csv``: one row per slice, ``StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID``, the
  slice-level label ``pe_present_on_image`` and the exam-level labels repeated on every slice of the
  study (``negative_exam_for_pe``, ``rv_lv_ratio_gte_1``, ``rv_lv_ratio_lt_1``, ``leftsided_pe``,
  ``rightsided_pe``, ``central_pe``, ``chronic_pe``, ``acute_and_chronic_pe``, ``indeterminate``) and
  the informational ``qa_motion``, ``qa_contrast``, ``flow_artifact``, ``true_filling_defect_not_pe``.
- slices ``train/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``.

Every header is read (no pixels) to group slices by SeriesInstanceUID and order them along the
slice normal by ImagePositionPatient (``cxrbench.data.volumes``): the CSV, file names and
InstanceNumber do not give the order. A series with unreadable or missing files, mixed
orientations or gaps is quarantined whole, with the reason. Pixels are decoded to HU and shown in
``window`` (default the soft-tissue window L 50 / W 350 HU of the chest CT study); three windows
joined by ``+`` (e.g. ``lung+mediastinum+bone``) give three channels, one per window.

``labels``: the train.csv columns to use as labels (default the slice-level ``pe_present_on_image``;
exam-level names give each slice its exam's value, for study-level training). The DICOM headers'
PatientID is the patient where present, else the study (no split is published for the training
set, so a seeded patient-level split is made). Layout source: the Kaggle data page and the RSNA
AI-challenge wiki (Colak et al., Radiology: AI 2021).
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from cxrbench.data.adapters.base import RawDataset, normalise_sex, parse_age, preview, require_file
from cxrbench.data.images import ct_format
from cxrbench.data.volumes import group_series, parse_windows, pixel_layouts, read_headers
from cxrbench.errors import CxrbenchError

IDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
SLICE_LABELS = ("pe_present_on_image",)
EXAM_LABELS = (
    "negative_exam_for_pe",
    "rv_lv_ratio_gte_1",
    "rv_lv_ratio_lt_1",
    "leftsided_pe",
    "rightsided_pe",
    "central_pe",
    "chronic_pe",
    "acute_and_chronic_pe",
    "indeterminate",
)
INFO = ("qa_motion", "qa_contrast", "flow_artifact", "true_filling_defect_not_pe")
IMAGE_DIR = "train"


def load(
    root: Path,
    *,
    labels: list[str] = ["pe_present_on_image"],  # noqa: B006 - read only
    window: str = "soft-tissue",
    max_thickness: float | None = None,
    workers: int | None = None,
) -> RawDataset:
    """One row per slice of the training studies, in slice order within each series."""
    root = Path(root).resolve()
    windows = parse_windows(window)
    known = (*SLICE_LABELS, *EXAM_LABELS, *INFO)
    unknown = [name for name in labels if name not in known]
    if unknown or not labels:
        raise CxrbenchError(f"rsna-pe: labels {preview(unknown)} unknown (choose from {', '.join(known)})")
    source = require_file(root, "train.csv")
    try:
        table = pd.read_csv(source, dtype={c: str for c in IDS})
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise CxrbenchError(f"{source}: not a readable CSV ({str(exc).splitlines()[0]})") from None
    missing = [c for c in (*IDS, *labels) if c not in table.columns]
    if missing:
        raise CxrbenchError(f"{source}: missing columns {preview(missing)} (is this the RSNA STR PE train.csv?)")
    if table["SOPInstanceUID"].duplicated().any():
        dup = table.loc[table["SOPInstanceUID"].duplicated(), "SOPInstanceUID"]
        raise CxrbenchError(f"{source}: SOPInstanceUID listed more than once, e.g. {preview(dup.unique(), 2)}")
    images = os.path.join(root, IMAGE_DIR)  # joined as strings: pathlib took 0.05 ms a slice
    paths = [
        os.path.join(images, study, series, f"{sop}.dcm")
        for study, series, sop in zip(
            table["StudyInstanceUID"].tolist(),  # lists: iterating the columns took 5 us a row
            table["SeriesInstanceUID"].tolist(),
            table["SOPInstanceUID"].tolist(),
            strict=True,
        )
    ]
    headers = read_headers(paths, workers=workers)
    series, unreadable = group_series(headers, paths, max_thickness=max_thickness)
    by_path = table.assign(path=paths).set_index("path")

    rows, rejected = [], []
    for item in series:
        for index, header in enumerate(item.slices):
            if item.problem is not None:
                rejected.append((header.path, item.problem))
                continue
            rows.append(
                {
                    "path": header.path,
                    "series_id": item.uid,
                    "slice_index": index,
                    "slice_position": item.positions[index],
                    "patient_id": header.patient_id or header.study_uid,
                    "sex": normalise_sex(header.sex),
                    "age": parse_age(header.age),
                }
            )
    frame = pd.DataFrame(
        rows, columns=["path", "series_id", "slice_index", "slice_position", "patient_id", "sex", "age"]
    )
    csv_rows = by_path.loc[frame["path"]] if len(frame) else by_path.iloc[:0]
    frame["sample_id"] = csv_rows["SOPInstanceUID"].to_numpy()
    frame["study_id"] = csv_rows["StudyInstanceUID"].to_numpy()
    frame["view"] = "AXIAL"
    for name in labels:
        frame[name] = pd.to_numeric(csv_rows[name], errors="coerce").astype(float).to_numpy()
    refused = rejected + unreadable
    rejected_frame = pd.DataFrame(
        {
            "path": [p for p, _ in refused],
            "sample_id": [by_path.loc[p, "SOPInstanceUID"] if p in by_path.index else None for p, _ in refused],
            "patient_id": [by_path.loc[p, "StudyInstanceUID"] if p in by_path.index else None for p, _ in refused],
            "reason": [why for _, why in refused],
        }
    )
    notes = {"series": str(len(series)), "rejected_series": str(sum(s.problem is not None for s in series))}
    if len(frame) == 0:
        reasons = sorted({why for _, why in refused})
        raise CxrbenchError(f"rsna-pe: no usable CT series under {root} ({preview(reasons, 2)})")
    return RawDataset(
        frame=frame.reset_index(drop=True),
        labels=list(labels),
        image_format=ct_format(*windows),
        notes=notes,
        rejected=rejected_frame,
        pixel_layouts=pixel_layouts(series),
    )
