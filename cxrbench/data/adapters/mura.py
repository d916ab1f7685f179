"""MURA v1.1 (Rajpurkar et al., MIDL 2018) adapter: musculoskeletal radiographs, abnormal vs normal per study.

40,561 upper-extremity radiographs (7 body parts) in 14,863 studies of 12,173 patients, each study
labelled normal or abnormal by a radiologist. Used as in the ConViRT report-sections paper
(``papers/convirt-report-sections.txt``): image-level binary label from the study folder.
Files read (``root`` = the folder holding ``MURA-v1.1/``, or ``MURA-v1.1`` itself):

- ``MURA-v1.1/train_image_paths.csv`` and ``valid_image_paths.csv``: no header, one image path per
  line, relative to the folder holding ``MURA-v1.1`` and carrying that prefix, e.g.
  ``MURA-v1.1/train/XR_SHOULDER/patient00001/study1_positive/image1.png``.

Label ``Abnormal``: 1 for ``studyN_positive``, 0 for ``studyN_negative`` (the creators' encoding,
the same as ``*_labeled_studies.csv``). Patient id ``patientNNNNN``; study id
``XR_SHOULDER/patient00001/study1``. Split: the official ``train`` → ``trainval`` (split by patient
later), ``valid`` → ``test`` (the hidden test set is not public). View: None (not chest films).
Layout source: the MURA download's file list as quoted in public code (documented only here).
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from cxrbench.data.adapters.base import RawDataset, require_file
from cxrbench.errors import CxrbenchError

LABEL = "Abnormal"
SPLITS = {"train": "trainval", "valid": "test"}
_PATH = re.compile(
    r"(?:.*/)?(?P<split>train|valid)/(?P<part>XR_[A-Z]+)/(?P<patient>patient\d+)/"
    r"(?P<study>study\d+)_(?P<label>positive|negative)/[^/]+$"
)


def load(root: Path) -> RawDataset:
    """Return one row per MURA image with the study's ``Abnormal`` label and the official split."""
    root = Path(root).resolve()
    first = require_file(root, "MURA-v1.1/train_image_paths.csv", "train_image_paths.csv")
    folder = first.parent
    rows = []
    for name in ("train_image_paths.csv", "valid_image_paths.csv"):
        source = folder / name
        if not source.exists():
            continue
        lines = pd.read_csv(source, header=None, dtype=str)[0].str.strip()
        for line in lines:
            match = _PATH.fullmatch(line.replace("\\", "/"))
            if not match:
                raise CxrbenchError(
                    f"{source}: path '{line}' is not .../<train|valid>/XR_<PART>/patientN/studyN_<positive|negative>/<image>"
                )
            rel = line.replace("\\", "/")[match.start("split") :]
            rows.append(
                (
                    str(folder / rel),
                    line,
                    match.group("patient"),
                    f"{match.group('part')}/{match.group('patient')}/{match.group('study')}",
                    SPLITS[match.group("split")],
                    1.0 if match.group("label") == "positive" else 0.0,
                )
            )
    frame = pd.DataFrame(rows, columns=["path", "sample_id", "patient_id", "study_id", "split", LABEL])
    frame.insert(3, "view", None)
    return RawDataset(frame=frame, labels=[LABEL], notes={"source": str(folder)})
