"""CT volumes in NIfTI files (a folder of .nii/.nii.gz + a CSV of labels): one row per slice.

Files read (relative to ``root``):

- ``labels.csv`` (``csv`` option): one row per volume, ``volume`` (the file's path under ``root``),
  optional ``patient_id``, ``study_id``, ``sex``, ``age``, and the label columns (0/1, blank for
  unknown), each volume's labels given to all of its slices (study-level labels).
- the volumes: 3-D NIfTI-1/2 images in HU (the header's scl_slope/scl_inter applied).

Slices are ordered by their position along the affine's slice normal (``cxrbench.data.nifti``),
not by the voxel index, and each is cached as ``VOLUME#K`` decoded on its own, windowed like the
DICOM series (default the soft-tissue window L 50 / W 350 HU). A volume that cannot be read (or is
not 3-D, or has a degenerate affine) is quarantined whole with the reason. Needs the ``ct`` extra
(nibabel).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cxrbench.data.adapters.base import RawDataset, normalise_sex, parse_age, preview, require_file
from cxrbench.data.images import ct_format
from cxrbench.data.nifti import is_nifti, nibabel, slice_path, slice_positions, volume_header
from cxrbench.data.volumes import parse_windows
from cxrbench.errors import CxrbenchError

#: the CSV's columns that are not labels
META = ("volume", "patient_id", "study_id", "sex", "age")


def load(
    root: Path,
    *,
    csv: str = "labels.csv",
    labels: list[str] | None = None,
    window: str = "soft-tissue",
) -> RawDataset:
    """One row per slice of each listed volume, in slice order; ``labels``: the CSV's label columns
    to use (default all but the metadata columns)."""
    nibabel()  # a missing extra is a one-line error before anything is read
    root = Path(root).resolve()
    windows = parse_windows(window)
    source = require_file(root, csv)
    try:
        table = pd.read_csv(source, dtype={"volume": str, "patient_id": str, "study_id": str})
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise CxrbenchError(f"{source}: not a readable CSV ({str(exc).splitlines()[0]})") from None
    if "volume" not in table.columns:
        raise CxrbenchError(f"{source}: no 'volume' column (the NIfTI file of each row, relative to the root)")
    names = list(labels) if labels else [c for c in table.columns if c not in META]
    missing = [n for n in names if n not in table.columns]
    if missing or not names:
        raise CxrbenchError(f"{source}: label columns {preview(missing) or '(none)'} not found")
    bad = [v for v in table["volume"].astype(str) if not is_nifti(v)]
    if bad:
        raise CxrbenchError(f"{source}: volumes must be .nii or .nii.gz files, got {preview(bad)}")
    if table["volume"].duplicated().any():
        raise CxrbenchError(
            f"{source}: volume listed more than once: {preview(table['volume'][table['volume'].duplicated()])}"
        )

    rows, rejected = [], []
    for record in table.to_dict("records"):
        name = str(record["volume"])
        path = root / name
        patient = str(record["patient_id"]) if pd.notna(record.get("patient_id")) else name
        try:
            shape, affine = volume_header(path)
            positions = slice_positions(affine, shape[2])
        except Exception as exc:  # a bad volume is quarantined, not a crash
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            rejected.append(
                {
                    "path": str(path),
                    "sample_id": name,
                    "patient_id": patient,
                    "reason": f"unreadable NIfTI volume ({reason})",
                }
            )
            continue
        for index, k in enumerate(np.argsort(positions, kind="stable")):
            rows.append(
                {
                    "path": slice_path(path, int(k)),
                    "sample_id": f"{name}#{int(k)}",
                    "patient_id": patient,
                    "study_id": str(record["study_id"]) if pd.notna(record.get("study_id")) else name,
                    "series_id": name,
                    "slice_index": index,
                    "slice_position": float(positions[k]),
                    "view": "AXIAL",
                    "sex": normalise_sex(record.get("sex")),
                    "age": parse_age(record.get("age")),
                    **{n: pd.to_numeric(record[n], errors="coerce") for n in names},
                }
            )
    if not rows:
        raise CxrbenchError(
            f"nifti-ct: no readable volume under {root} ({preview([r['reason'] for r in rejected], 2)})"
        )
    frame = pd.DataFrame(rows)
    for n in names:
        frame[n] = frame[n].astype(float)
    return RawDataset(
        frame=frame,
        labels=names,
        image_format=ct_format(*windows),
        notes={"volumes": str(len(table)), "rejected_volumes": str(len(rejected))},
        rejected=pd.DataFrame(rejected, columns=["path", "sample_id", "patient_id", "reason"]),
    )
