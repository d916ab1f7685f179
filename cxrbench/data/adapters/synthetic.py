"""Adapter for synthetic phantom chest X-rays: ``generate`` writes them (PNGs + ``metadata.csv``),
``load`` reads the CSV exactly like a real dataset's metadata, so phantoms take the same generic path.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd

from cxrbench.data.adapters.base import RawDataset, require_file
from cxrbench.data.synthetic import COLUMNS, FINDINGS
from cxrbench.errors import CxrbenchError


def generate(
    root: Path,
    *,
    n_patients: int = 200,
    phantom_size: int = 64,
    phantom_seed: int = 0,
    site: str = "a",
    progress: Callable[[int], None] | None = None,
) -> Path:
    """Write ``n_patients`` patients' phantoms (``phantom_size`` px) under ``root``; return ``metadata.csv``.

    ``site`` (``a`` or ``b``) is the acquisition: ``b`` is another hospital (other patients, a
    flatter contrast curve, more noise, burned-in markers), for external-validation tests.

    ``cxrbench prepare synthetic`` passes the prepare's ``--size`` and ``--seed`` unless
    ``--option phantom_size=``/``phantom_seed=`` are given; the same options give the same bytes.
    """
    from cxrbench.data.synthetic import write_phantoms

    return write_phantoms(
        root, n_patients=n_patients, size=phantom_size, seed=phantom_seed, site=site, progress=progress
    )


def check_generate(*, n_patients: int = 200, phantom_size: int = 64, phantom_seed: int = 0, site: str = "a") -> None:
    """Refuse bad ``generate`` options before anything is generated or invalidated."""
    from cxrbench.data.synthetic import check_phantoms

    check_phantoms(n_patients=n_patients, size=phantom_size, seed=phantom_seed, site=site)


def load(root: Path) -> RawDataset:
    """Return one row per phantom image: absolute path, ids, view, sex, age, report, five labels."""
    root = Path(root)
    meta = require_file(root, "metadata.csv")
    try:
        table = pd.read_csv(meta, dtype={"PatientID": str, "StudyID": str, "View": str, "Sex": str})
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise CxrbenchError(f"{meta}: not a readable CSV ({str(exc).splitlines()[0]})") from exc
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise CxrbenchError(f"{meta}: missing columns {', '.join(missing)}")
    labels = table[list(FINDINGS)].apply(pd.to_numeric, errors="coerce").astype(float)
    bad = ~(labels.isin([1.0, 0.0, -1.0]) | labels.isna())
    if bad.any().any():
        column = labels.columns[bad.any()][0]
        raise CxrbenchError(f"{meta}: column {column!r} has values other than 1.0, 0.0, -1.0 or blank")
    frame = pd.DataFrame(
        {
            "path": [str((root / p).resolve()) for p in table["Path"]],
            "patient_id": table["PatientID"].astype(str),
            "study_id": table["StudyID"].astype(str),
            "view": table["View"].str.upper(),
            "sex": table["Sex"].where(table["Sex"].isin(["M", "F"]), None),
            "age": pd.to_numeric(table["Age"], errors="coerce").astype(float),
            "report": table["Report"].fillna("").astype(str),
            "split": None,
        }
    )
    for name in FINDINGS:
        frame[name] = labels[name].to_numpy()
    return RawDataset(frame=frame, labels=list(FINDINGS), notes={"source": "cxrbench synthetic phantoms"})
