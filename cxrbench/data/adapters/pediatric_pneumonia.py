"""Pediatric pneumonia (Kermany et al., Cell 2018; Guangzhou) adapter: labels and patients from folders and names.

5,856 paediatric (1-5 y) anterior-posterior radiographs, distributed as folders, no CSV (Mendeley
``ChestXRay2017.zip``; Kaggle "chest-xray-pneumonia" adds a 16-image ``val`` folder):

    chest_xray/{train,val,test}/{NORMAL,PNEUMONIA}/<name>.jpeg

``root`` may be the folder holding ``chest_xray`` (also the Kaggle ``chest_xray/chest_xray`` copy) or
``chest_xray`` itself. File names carry patient and subtype: ``person1019_bacteria_2950.jpeg`` /
``person1019_virus_1707.jpeg`` (patient ``person1019``), normals ``IM-0115-0001.jpeg``,
``IM-0439-0001-0002.jpeg`` (patient ``IM-0439``) and ``NORMAL2-IM-0383-0001.jpeg`` (``NORMAL2-IM-0383``);
names that match none of these keep their stem as patient id. The test folder numbers patients
independently of train, so its ids are prefixed ``test/``.

Labels: ``labels="binary"`` (default) gives ``Pneumonia`` (folder), the task of the 13-dataset
SSL paper; ``labels="subtype"`` gives multiclass ``Normal``/``Bacteria``/``Virus`` from the names.
Split: the creators' ``test`` folder → ``test``; ``train`` and ``val`` → ``trainval`` (re-split by
patient, as that paper keeps only the official test split). View: ``AP`` (all images, per the paper).
Layout source: ``shared/realdata/LAYOUTS.md`` (real file names) and the Kaggle/Mendeley pages.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from cxrbench.data.adapters.base import RawDataset, require_file
from cxrbench.errors import CxrbenchError

IMAGE_SUFFIXES = frozenset({".jpeg", ".jpg", ".png"})
SPLITS = {"train": "trainval", "val": "trainval", "test": "test"}
CLASS_FOLDERS = ("NORMAL", "PNEUMONIA")
SUBTYPES = ("Normal", "Bacteria", "Virus")
_PERSON = re.compile(r"(person\d+)_(bacteria|virus)_\d+", re.IGNORECASE)
_NORMAL = re.compile(r"((?:NORMAL2-)?IM-\d+)(?:-\d+)+", re.IGNORECASE)


def patient_from_name(stem: str) -> str:
    """Return the patient id encoded in a Kermany file stem (the stem itself if none is recognised)."""
    for pattern in (_PERSON, _NORMAL):
        match = pattern.fullmatch(stem)
        if match:
            return match.group(1)
    return stem


def _subtype(folder: str, stem: str) -> str | None:
    """Return ``Normal``/``Bacteria``/``Virus`` for an image, None for a pneumonia name without subtype."""
    if folder == "NORMAL":
        return "Normal"
    match = _PERSON.fullmatch(stem)
    return match.group(2).capitalize() if match else None


def load(root: Path, *, labels: str = "binary") -> RawDataset:
    """Return one row per image with ``Pneumonia`` (or the three subtypes) and the official test split."""
    if labels not in ("binary", "subtype"):
        raise CxrbenchError(f"pediatric-pneumonia: labels must be 'binary' or 'subtype', not '{labels}'")
    root = Path(root).resolve()
    train = require_file(root, "chest_xray/train", "train", "chest_xray/chest_xray/train")
    base = train.parent
    rows = []
    for folder, split in SPLITS.items():
        for cls in CLASS_FOLDERS:
            class_dir = base / folder / cls
            if not class_dir.is_dir():
                continue
            for image in sorted(class_dir.iterdir()):
                if image.name.startswith(".") or image.suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                patient = patient_from_name(image.stem)
                if folder == "test":
                    patient = f"test/{patient}"
                rel = image.relative_to(base).as_posix()  # train/NORMAL/IM-0115-0001.jpeg
                rows.append((str(image), rel, patient, split, cls, _subtype(cls, image.stem)))
    if not rows:
        raise CxrbenchError(
            f"{base}: no images in {{train,val,test}}/{{NORMAL,PNEUMONIA}}/ (is this the chest_xray folder?)"
        )
    table = pd.DataFrame(rows, columns=["path", "sample_id", "patient_id", "split", "class", "subtype"])
    frame = table[["path", "sample_id", "patient_id"]].copy()
    frame["view"] = "AP"
    frame["split"] = table["split"]
    if labels == "binary":
        frame["Pneumonia"] = (table["class"] == "PNEUMONIA").astype(float)
        return RawDataset(frame=frame, labels=["Pneumonia"], notes={"base": str(base)})
    for name in SUBTYPES:
        frame[name] = (table["subtype"] == name).astype(float).where(table["subtype"].notna())
    return RawDataset(frame=frame, labels=list(SUBTYPES), task="multiclass", notes={"base": str(base)})
