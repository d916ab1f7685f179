"""NIH ChestX-ray14 with Google's expert labels (Majkowska et al., Radiology 2020): 4 findings, adjudicated.

Google had 4,376 ChestX-ray14 images read by three US board-certified radiologists each, with
adjudication, for four findings. The labels are distributed as one CSV beside the NIH images.

File read (in ``root``): ``google2019_nih-chest-xray-labels.csv`` (``.gz`` too), as distributed:
CRLF line ends and no newline after the last row. Its first 11 columns are those of
``Data_Entry_2017_v2020.csv`` (``Image Index``, ``Finding Labels``, ``Follow-up #``, ``Patient ID``,
``Patient Age``, ``Patient Gender``, ``View Position``, ...), then ``Fracture``, ``Pneumothorax``,
``Airspace opacity``, ``Nodule or mass`` as the strings ``YES``/``NO`` (blank would be unknown),
then ``Set Id``: ``val`` (2,414 images) or ``test`` (1,962), no patient in both.

Labels: the four columns, named as in the file, 1.0 for ``YES`` and 0.0 for ``NO`` (the NIH NLP
labels in ``Finding Labels`` are not used). Split: ``Set Id`` is the official split, ``val`` →
``val`` and ``test`` → ``test``, so there are no training images; with ``val_split="trainval"``
the Google validation set is split into train/val by patient instead (seeded, as for datasets
without an official split), keeping ``test`` as published, for probes trained on these labels.
Images, ``sample_id`` (the ``Image Index``), patient ids, views, sex and age exactly as the ``nih``
adapter reads them: ``images/<Image Index>`` or the Kaggle ``images_NNN/images/<Image Index>``.
Layout source: ``shared/realdata/LAYOUTS.md`` (the real file checked).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from cxrbench.data.adapters.base import RawDataset, preview, require_file
from cxrbench.data.adapters.nih import IMAGE_COLUMNS, image_frame, read_table
from cxrbench.errors import CxrbenchError

FILES = ("google2019_nih-chest-xray-labels.csv", "google2019_nih-chest-xray-labels.csv.gz")
LABELS = ("Fracture", "Pneumothorax", "Airspace opacity", "Nodule or mass")
SET_ID = "Set Id"
_VALUES = {"YES": 1.0, "NO": 0.0, "": np.nan}
_SPLITS = {"val": "val", "test": "test"}


def load(root: Path, *, val_split: Literal["val", "trainval"] = "val") -> RawDataset:
    """Return the Google-relabelled NIH images, one row each, with the four expert labels."""
    if val_split not in ("val", "trainval"):
        raise CxrbenchError(f"nih-google: val_split must be 'val' or 'trainval', not {val_split!r}")
    root = Path(root)
    path = require_file(root, *FILES)
    df = read_table(path, (*IMAGE_COLUMNS, *LABELS, SET_ID), what="Google's NIH relabel file")
    out = image_frame(root, df)
    for label in LABELS:
        text = df[label].str.strip().str.upper()
        bad = sorted(set(text) - set(_VALUES))
        if bad:
            raise CxrbenchError(f"{path}: column '{label}' has value(s) {preview(bad)}; expected YES, NO or blank")
        out[label] = text.map(_VALUES).astype(float).to_numpy()
    split = df[SET_ID].str.strip().str.lower()
    bad = sorted(set(split) - set(_SPLITS))
    if bad:
        raise CxrbenchError(f"{path}: '{SET_ID}' has value(s) {preview(bad)}; expected val or test")
    split = split.map(_SPLITS)
    if val_split == "trainval":
        split = split.replace({"val": "trainval"})
    out["split"] = split.to_numpy()
    notes = {"source": str(path), "split": f"Set Id (val as {val_split})"}
    return RawDataset(frame=pd.DataFrame(out), labels=list(LABELS), notes=notes)
