"""Shenzhen tuberculosis set (NLM; Jaeger et al. 2014) adapter: TB label from the file name, age/sex from the readings.

662 frontal radiographs (326 normal, 336 TB), one per patient, from Shenzhen No. 3 People's
Hospital. Two distributions are understood (``root`` = the folder holding either):

- NLM original ``ChinaSet_AllFiles/``: images ``CXR_png/CHNCXR_0001_0.png`` and one text file per
  image ``ClinicalReadings/CHNCXR_0001_0.txt`` whose first line is sex and age (``male 45yrs``, with
  real variants ``femal 32yrs``, ``female24yrs``, ``male , 29yrs``, ``male 16month``, ``female 64days``;
  a bare number is read as years) and whose remaining lines are the finding (``normal``, ``STB`` …).
- Kaggle ``shenzhen_metadata.csv`` (``study_id,sex,age,findings``; ``study_id`` is the image file
  name, sex ``Male``/``Female``, age plain years, findings quoted when they contain commas), images
  under ``images/images/``, ``images/`` or ``CXR_png/`` (checked on the first rows).

Label ``Tuberculosis``: the last digit of the name (``_0`` normal, ``_1`` TB), the creators'
encoding. Patient id: the name without the label (``CHNCXR_0001``). View ``PA`` (the set is frontal
PA). No official split (the 13-dataset SSL paper splits 60/20/20 by patient; it pools this set with
Montgomery). Layout source: ``shared/realdata/LAYOUTS.md`` (real Kaggle table) and the NLM readme
as quoted in public code; reading-line variants were taken from real rows quoted there.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from cxrbench.data.adapters.base import (
    RawDataset,
    normalise_sex,
    parse_age,
    preview,
    require_file,
)
from cxrbench.errors import CxrbenchError

LABEL = "Tuberculosis"
_NAME = re.compile(r"(?P<stem>[A-Za-z]+_\d+)_(?P<label>[01])")
_SEX_AGE = re.compile(
    r"^\s*(?P<sex>fem[a-z]*|male?)\W*?(?P<age>\d+(?:\.\d+)?)\s*(?P<unit>y\w*|mon\w*|d\w*)?",
    re.IGNORECASE,
)
_UNIT_DIVISOR = {"y": 1.0, "m": 12.0, "d": 365.25}


def split_name(name: str) -> tuple[str, float]:
    """Return (patient id, TB label) from an NLM file name such as ``CHNCXR_0001_0.png``."""
    match = _NAME.fullmatch(Path(name).stem.strip())
    if not match:
        raise CxrbenchError(f"file name '{name}' does not end in _0 (normal) or _1 (TB) as the NLM sets do")
    return match.group("stem"), float(match.group("label"))


def parse_reading(text: str) -> tuple[str | None, float]:
    """Return (sex ``M``/``F``/None, age in years or NaN) from a Shenzhen clinical reading's first line."""
    first = text.strip().splitlines()[0] if text.strip() else ""
    match = _SEX_AGE.match(first)
    if not match:
        return None, float("nan")
    sex = "F" if match.group("sex").lower().startswith("fem") else "M"
    unit = (match.group("unit") or "y")[0].lower()
    return sex, parse_age(float(match.group("age")) / _UNIT_DIVISOR[unit])


def _image_dir(base: Path, candidates: tuple[str, ...], probe: list[str]) -> Path:
    """Return the first candidate folder holding any of the ``probe`` files (the first candidate if none does)."""
    for folder in candidates:
        if any((base / folder / name).exists() for name in probe):
            return base / folder
    return base / candidates[0]


def tb_frame(names: list[str], image_dir: Path, sex: list, age: list, *, view: str) -> pd.DataFrame:
    """Return the adapter frame for NLM TB-set image names (label and patient from the name)."""
    parsed = [split_name(n) for n in names]
    frame = pd.DataFrame(
        {
            "path": [str(image_dir / n) for n in names],
            "sample_id": [Path(n).stem for n in names],
            "patient_id": [p for p, _ in parsed],
            "view": view,
            "sex": sex,
            "age": pd.Series(age, dtype=float).to_numpy(),
        }
    )
    frame["split"] = None
    frame[LABEL] = [y for _, y in parsed]
    return frame


def load(root: Path) -> RawDataset:
    """Return one row per Shenzhen image with a binary ``Tuberculosis`` label."""
    root = Path(root).resolve()
    source = require_file(root, "shenzhen_metadata.csv", "ChinaSet_AllFiles/ClinicalReadings", "ClinicalReadings")
    if source.suffix == ".csv":
        table = pd.read_csv(source, dtype=str, skipinitialspace=True)
        missing = [c for c in ("study_id", "sex", "age") if c not in table.columns]
        if missing:
            raise CxrbenchError(f"{source}: lacks column(s) {', '.join(missing)} (has {preview(table.columns, 5)})")
        names = table["study_id"].str.strip().to_list()
        image_dir = _image_dir(root, ("images/images", "images", "CXR_png"), names[:5])
        sex = [normalise_sex(v) for v in table["sex"]]
        age = [parse_age(v) for v in table["age"]]
    else:
        readings = sorted(p for p in source.glob("*.txt") if not p.name.startswith("."))
        if not readings:
            raise CxrbenchError(f"{source}: no CHNCXR_*.txt clinical readings found")
        names = [p.stem + ".png" for p in readings]
        parsed = [parse_reading(p.read_text(errors="replace")) for p in readings]
        image_dir = source.parent / "CXR_png"
        sex = [s for s, _ in parsed]
        age = [a for _, a in parsed]
    frame = tb_frame(names, image_dir, sex, age, view="PA")
    return RawDataset(frame=frame, labels=[LABEL], notes={"source": str(source)})
