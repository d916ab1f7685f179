"""Patient-level splits and nested label fractions, stable under adding or reordering rows.

Each patient's place is a pure function of (seed, patient id), so a new row never moves an
existing patient, and a patient is always in exactly one split.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from cxrbench.data.adapters.base import preview
from cxrbench.errors import CxrbenchError

SPLITS = ("train", "val", "test")
#: official split values an adapter may give; ``trainval`` is split into train/val by patient.
OFFICIAL = frozenset({"train", "val", "test", "trainval"})


def parse_ratios(text: str) -> tuple[float, float, float]:
    """``"60/20/20"`` -> (0.6, 0.2, 0.2): train/val/test percentages, each above 0, summing to 100.

    Anything else is a one-line error naming the value, never silently rescaled: ``50/50/10`` was
    meant to mean something, and an empty val or test split would leave model selection or
    evaluation with nothing to work on.
    """
    parts = text.replace(",", "/").split("/")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != 3 or not all(math.isfinite(v) for v in values):
        raise CxrbenchError(f"--split {text!r}: expected three train/val/test percentages like 60/20/20")
    empty = [name for name, v in zip(SPLITS, values, strict=True) if v <= 0]
    if empty:
        raise CxrbenchError(f"--split {text!r}: the {' and '.join(empty)} split must be above 0% (e.g. 60/20/20)")
    total = sum(values)
    if not math.isclose(total, 100.0, abs_tol=1e-6):
        raise CxrbenchError(f"--split {text!r}: the percentages sum to {total:g}, not 100")
    return values[0] / total, values[1] / total, values[2] / total


def patient_unit(patient_ids: Sequence[str], *, seed: int, salt: str = "split") -> np.ndarray:
    """A uniform number in [0, 1) per patient, from a hash of (salt, seed, patient id)."""
    out = np.empty(len(patient_ids), dtype=np.float64)
    for i, pid in enumerate(patient_ids):
        digest = hashlib.blake2b(f"{salt}:{seed}:{pid}".encode(), digest_size=8).digest()
        out[i] = int.from_bytes(digest, "big") / 2.0**64
    return out


def assign_splits(
    patient_ids: Sequence[str],
    official: Sequence[str | None] | None = None,
    *,
    ratios: tuple[float, float, float] = (0.6, 0.2, 0.2),
    seed: int = 0,
) -> np.ndarray:
    """Split name per row: official where given, else by the patient's hash and ``ratios``.

    Rows marked ``trainval`` go to train or val in the proportion ``ratios[0]:ratios[1]``.
    A patient whose rows carry different official splits is an error (it would leak).
    """
    pids = np.asarray([str(p) for p in patient_ids], dtype=object)
    unique, inverse = np.unique(pids, return_inverse=True)
    u = patient_unit(list(unique), seed=seed)[inverse]
    train, val, _ = ratios
    by_hash = np.where(u < train, "train", np.where(u < train + val, "val", "test")).astype(object)
    if official is None:
        return by_hash
    off = np.asarray([None if _missing(s) else str(s) for s in official], dtype=object)
    bad = {s for s in off if s is not None and s not in OFFICIAL}
    if bad:
        raise CxrbenchError(
            f"unknown official split values {preview(sorted(bad))} (allowed: {', '.join(sorted(OFFICIAL))})"
        )
    trainval_cut = train / (train + val) if train + val > 0 else 1.0
    trainval = np.where(u < trainval_cut, "train", "val").astype(object)
    result = np.where(off == None, by_hash, off)  # noqa: E711 (element-wise)
    result = np.where(off == "trainval", trainval, result)
    _check_one_split_per_patient(pids, result)
    return result


def _missing(value: object) -> bool:
    """True for None, NaN, ``pd.NA`` and ``NaT`` (``pd.NA != pd.NA`` cannot be used as a bool)."""
    return value is None or (np.ndim(value) == 0 and bool(pd.isna(value)))


def _check_one_split_per_patient(pids: np.ndarray, splits: np.ndarray) -> None:
    seen: dict[str, str] = {}
    for pid, split in zip(pids, splits, strict=True):
        if seen.setdefault(pid, split) != split:
            raise CxrbenchError(
                f"patient {pid} appears in both the {seen[pid]} and {split} splits of the official split"
            )


def fraction_patients(train_patients: Sequence[str], fraction: float, *, seed: int) -> set[str]:
    """The patients of a label-efficiency subset: nested in ``fraction`` for a given seed.

    Patients are ranked by a seeded hash and the first ``ceil(fraction * n)`` kept, so the 1%
    subset is inside the 10% subset, which is inside 100%.
    """
    if not 0 < fraction <= 1:
        raise CxrbenchError(f"--fraction {fraction}: must be in (0, 1]")
    unique = sorted({str(p) for p in train_patients})
    if not unique:
        return set()
    order = np.argsort(patient_unit(unique, seed=seed, salt="fraction"), kind="stable")
    keep = max(1, int(np.ceil(fraction * len(unique) - 1e-9)))
    return {unique[i] for i in order[:keep]}
