"""JSRT (Japanese Society of Radiological Technology, Shiraishi et al. 2000) adapter: nodule subtlety per image.

247 PA radiographs of 247 patients: 154 with one lung nodule (``JPCLN###``), 93 without (``JPCNN###``).
Files read (relative to ``root``), first found wins:

- ``jsrt_metadata.csv`` (the Kaggle-style table): no header, CRLF, 10 fields
  ``file,subtlety,size,age,sex,x,y,malignant|benign|non-nodule,location,diagnosis``; non-nodule rows
  leave subtlety/size/x/y/location/diagnosis blank; age may be ``?`` (→ NaN); file names ``.png``.
- the original ``CLNDAT_EN.TXT`` + ``CNNDAT_EN.TXT``: one line per image starting
  ``JPCLN001.IMG, 5, 15, 53, male, ...`` (nodule: subtlety, size, age, sex) or ``JPCNN001.IMG, 30,
  male`` (non-nodule: age, sex); separators may be commas, tabs or spaces. Only this line start
  is relied on (quoted in a public blog; the non-nodule line form is an assumption).

Images: the original headerless 2048x2048 12-bit big-endian ``<name>.IMG`` (``All247images/`` or
``root``; ``image_format="jsrt-raw"``), or ``<name>.png`` (``images/`` or ``root``; format detected),
whichever holds the first images. Labels: ``labels="subtlety"`` (default; the 13-dataset SSL paper's
6-class task) gives one-hot ``non-nodule`` and ``subtlety 1``..``subtlety 5`` (1 = extremely subtle,
5 = obvious); ``labels="nodule"`` gives binary ``Nodule``. Patient id = image name (one image per
patient). No official split. Layout source: ``shared/realdata/LAYOUTS.md`` (real table checked).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from cxrbench.data.adapters.base import RawDataset, normalise_sex, parse_age, require_file
from cxrbench.errors import CxrbenchError

SUBTLETY_CLASSES = (
    "non-nodule",
    "subtlety 1",
    "subtlety 2",
    "subtlety 3",
    "subtlety 4",
    "subtlety 5",
)
_ORIGINAL = re.compile(
    r"^\s*(?P<name>JPC[LN]N\d+)\.IMG[\s,]+(?:(?P<subtlety>\d)[\s,]+(?P<size>\d+)[\s,]+)?"
    r"(?P<age>\d+|\?)[\s,]+(?P<sex>male|female)",
    re.IGNORECASE,
)


def _read_table(path: Path) -> pd.DataFrame:
    """Return name, subtlety (float, NaN for non-nodule), age, sex from the Kaggle-style table."""
    raw = pd.read_csv(path, header=None, dtype=str, keep_default_na=False)
    if raw.shape[1] < 5:
        raise CxrbenchError(f"{path}: expected 10 comma-separated fields per row, found {raw.shape[1]}")
    return pd.DataFrame(
        {
            "name": raw[0].str.strip().str.rsplit(".", n=1).str[0],
            "subtlety": pd.to_numeric(raw[1].str.strip(), errors="coerce"),
            "age": raw[3].str.strip(),
            "sex": raw[4].str.strip(),
        }
    )


def _read_original(paths: list[Path]) -> pd.DataFrame:
    """Return name, subtlety, age, sex from CLNDAT_EN.TXT / CNNDAT_EN.TXT lines."""
    rows = []
    for path in paths:
        for line in path.read_text(errors="replace").splitlines():
            match = _ORIGINAL.match(line)
            if match:
                sub = match.group("subtlety")
                rows.append(
                    (
                        match.group("name").upper(),
                        float(sub) if sub else np.nan,
                        match.group("age"),
                        match.group("sex"),
                    )
                )
    if not rows:
        raise CxrbenchError(f"{paths[0]}: no line of the form 'JPCLN001.IMG, 5, 15, 53, male, ...'")
    return pd.DataFrame(rows, columns=["name", "subtlety", "age", "sex"])


def _locate(root: Path, names: list[str]) -> tuple[Path, str]:
    """Return (image folder, suffix) holding the first images: raw ``.IMG`` preferred, else ``.png``."""
    probe = names[:5]
    for folder, suffix in (
        ("All247images", ".IMG"),
        ("", ".IMG"),
        ("images", ".png"),
        ("", ".png"),
    ):
        if any((root / folder / f"{n}{suffix}").exists() for n in probe):
            return root / folder, suffix
    return root / "All247images", ".IMG"


def load(root: Path, *, labels: str = "subtlety") -> RawDataset:
    """Return one row per JSRT image with nodule-subtlety classes (or a binary ``Nodule`` label)."""
    if labels not in ("subtlety", "nodule"):
        raise CxrbenchError(f"jsrt: labels must be 'subtlety' or 'nodule', not '{labels}'")
    root = Path(root).resolve()
    source = require_file(root, "jsrt_metadata.csv", "CLNDAT_EN.TXT", "CLNDAT_EN.txt")
    if source.suffix == ".csv":
        table = _read_table(source)
    else:
        extra = [p for p in (root / "CNNDAT_EN.TXT", root / "CNNDAT_EN.txt") if p.exists()][:1]
        table = _read_original([source, *extra])
    nodule = table["name"].str.upper().str.startswith("JPCLN")
    bad = table.loc[nodule & ~table["subtlety"].isin([1, 2, 3, 4, 5]), "name"]
    if len(bad):
        raise CxrbenchError(f"{source}: nodule image {bad.iloc[0]} has no subtlety 1-5")
    folder, suffix = _locate(root, table["name"].to_list())
    frame = pd.DataFrame(
        {
            "path": [str(folder / f"{n}{suffix}") for n in table["name"]],
            "sample_id": table["name"].to_numpy(),
            "patient_id": table["name"].to_numpy(),
            "view": "PA",
            "sex": [normalise_sex(s) for s in table["sex"]],
            "age": [parse_age(a) for a in table["age"]],
        }
    )
    frame["split"] = None
    image_format = "jsrt-raw" if suffix == ".IMG" else None
    if labels == "nodule":
        frame["Nodule"] = nodule.astype(float).to_numpy()
        return RawDataset(frame=frame, labels=["Nodule"], image_format=image_format, notes={"source": str(source)})
    cls = np.where(nodule, table["subtlety"].fillna(0).astype(int), 0)
    for k, name in enumerate(SUBTLETY_CLASSES):
        frame[name] = (cls == k).astype(float)
    return RawDataset(
        frame=frame,
        labels=list(SUBTLETY_CLASSES),
        task="multiclass",
        image_format=image_format,
        notes={"source": str(source)},
    )
