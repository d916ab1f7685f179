"""Generic adapter for an image-folder dataset: one sub-folder per class, optionally under train/val/test.

Layouts understood (the torchvision ``ImageFolder`` convention, plus official split folders)::

    ROOT/<class>/**/<image>                    split None (generic patient-level split)
    ROOT/{train,val,test}/<class>/**/<image>   split from the top folder (``valid``/``validation`` → val)

Images are found recursively (``.png .jpg .jpeg .dcm .dicom .tif .tiff .bmp``, any case; hidden
files and folders are skipped). Labels are one-hot columns named after the class folders
(``task="multiclass"``). The patient id is the file stem, unless ``ROOT/patients.csv`` maps files to
patients: columns ``file`` (path relative to ROOT, or the bare file name) and ``patient_id``; then
every image must have a row, so that no patient is silently split across train and test.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from cxrbench.data.adapters.base import RawDataset, preview
from cxrbench.errors import CxrbenchError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".tif", ".tiff", ".bmp"})
_SPLIT_FOLDERS = {
    "train": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
}
PATIENTS_FILE = "patients.csv"


def _visible_dirs(folder: Path) -> list[Path]:
    """Return the non-hidden sub-folders of ``folder``, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images(folder: Path) -> list[Path]:
    """Return every image file below ``folder`` (recursively, hidden parts skipped), sorted."""
    found = []
    for path in folder.rglob("*"):
        rel = path.relative_to(folder).parts
        if any(part.startswith(".") for part in rel):
            continue
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
            found.append(path)
    return sorted(found)


def _patient_map(root: Path) -> dict[str, str] | None:
    """Return ``patients.csv`` as {file: patient_id}, None when the file is absent."""
    source = root / PATIENTS_FILE
    if not source.exists():
        return None
    table = pd.read_csv(source, dtype=str, keep_default_na=False)
    table.columns = [c.strip() for c in table.columns]
    missing = [c for c in ("file", "patient_id") if c not in table.columns]
    if missing:
        raise CxrbenchError(
            f"{source}: lacks column(s) {', '.join(missing)} (needs file,patient_id; has {preview(table.columns, 5)})"
        )
    files = table["file"].str.strip().str.replace("\\", "/", regex=False)
    return dict(zip(files, table["patient_id"].str.strip(), strict=True))


def load(root: Path) -> RawDataset:
    """Return one row per image under ``root``, labelled one-hot by its class folder."""
    root = Path(root).resolve()
    if not root.is_dir():
        raise CxrbenchError(f"dataset root {root} is not a directory")
    top = _visible_dirs(root)
    split_dirs = [d for d in top if d.name.lower() in _SPLIT_FOLDERS]
    if split_dirs:
        others = [d.name for d in top if d not in split_dirs]
        if others:
            raise CxrbenchError(
                f"{root}: mixes split folders ({', '.join(d.name for d in split_dirs)}) with other folders "
                f"({preview(others)}); put every class folder under train/val/test, or use no split folders"
            )
        groups = [(_SPLIT_FOLDERS[d.name.lower()], d) for d in split_dirs]
    else:
        groups = [(None, root)]

    rows = []
    for split, base in groups:
        for class_dir in _visible_dirs(base):
            for image in _images(class_dir):
                rows.append(
                    (
                        str(image),
                        image.relative_to(root).as_posix(),
                        image.name,
                        class_dir.name,
                        split,
                    )
                )
    if not rows:
        raise CxrbenchError(
            f"{root}: no images found in class sub-folders (expected ROOT/<class>/<image> or "
            f"ROOT/train/<class>/<image>; suffixes {', '.join(sorted(IMAGE_SUFFIXES))})"
        )
    frame = pd.DataFrame(rows, columns=["path", "relpath", "name", "class", "split"])
    classes = sorted(frame["class"].unique())
    if len(classes) < 2:
        raise CxrbenchError(
            f"{root}: found only one class folder ('{classes[0]}'); a classification task needs two or more"
        )

    clash = sorted(set(classes) & {"path", "patient_id", "view", "split", "study_id", "sex", "age", "report"})
    if clash:
        raise CxrbenchError(
            f"{root}: class folder name(s) {', '.join(clash)} clash with reserved column names; rename them"
        )
    mapping = _patient_map(root)
    if mapping is None:
        patients = frame["path"].map(lambda p: Path(p).stem)
    else:
        patients = frame["relpath"].map(mapping).fillna(frame["name"].map(mapping))
        unmapped = frame.loc[patients.isna(), "relpath"]
        if len(unmapped):
            raise CxrbenchError(
                f"{root / PATIENTS_FILE}: no patient for {len(unmapped)} image(s), e.g. '{unmapped.iloc[0]}' "
                "(add a row per image: file,patient_id)"
            )
    out = pd.DataFrame(
        {
            "path": frame["path"],
            "sample_id": frame["relpath"],
            "patient_id": patients.astype(str),
            "view": None,
            "split": frame["split"],
        }
    )
    for name in classes:
        out[name] = (frame["class"] == name).astype(float)
    return RawDataset(
        frame=out,
        labels=classes,
        task="multiclass",
        notes={"layout": "split folders" if split_dirs else "class folders"},
    )
