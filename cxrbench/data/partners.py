"""Partner images from patient metadata: for each image, the other images of the same patient that
may stand in as its positive (MedAug), by study and laterality, drawn per step reproducibly.

The candidates are computed once per run from ``patient_id``/``study_id``/``view`` of the prepared
train rows; ``EpochBatches`` draws one candidate per row from a generator seeded by (seed, epoch,
step), so a resumed run and every rank draw what one uninterrupted process would.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from cxrbench.data.adapters.base import FRONTAL_VIEWS
from cxrbench.errors import CxrbenchError

#: which studies a partner may come from: the image's own study, only other studies, or any
STUDY_CRITERIA = ("same", "distinct", "all")
#: which laterality (frontal or lateral view) a partner may have, relative to the image's own
LATERALITY_CRITERIA = ("same", "distinct", "all")
_LATERAL_VIEWS = frozenset({"LATERAL", "LL", "RL"})
#: more images than this under one patient id means the ids are not patients (and the pairwise
#: criteria would need its square in memory)
MAX_IMAGES_PER_PATIENT = 10_000


@dataclass(frozen=True)
class Partners:
    """Candidate partners per row in CSR form: row ``i``'s candidates are
    ``members[offsets[i]:offsets[i+1]]`` (positions among the same rows; never ``i`` itself)."""

    offsets: np.ndarray
    members: np.ndarray

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def counts(self) -> np.ndarray:
        """How many candidates each row has (0: the row is paired with itself)."""
        return np.diff(self.offsets)

    def draw(self, idx: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One partner per row of ``idx``, uniform among its candidates; the row itself where it
        has none (the positive is then another augmented view of the same image, as in MoCo)."""
        idx = np.asarray(idx, dtype=np.int64)
        u = rng.random(len(idx))  # one draw per row whether or not it has candidates: a fixed stream
        counts = self.counts()[idx]
        pick = self.offsets[idx] + np.floor(u * counts).astype(np.int64)
        has = counts > 0
        out = idx.copy()
        out[has] = self.members[pick[has]]
        return out


def laterality(views: Sequence[object]) -> np.ndarray:
    """``frontal`` (PA/AP/FRONTAL), ``lateral`` (LL, RL or a view naming LATERAL) or None (unrecorded,
    or an oblique/other projection that is neither), per image."""
    return np.array([_side(v) for v in views], dtype=object)


def _side(view: object) -> str | None:
    if view is None or pd.isna(view):
        return None
    text = str(view).upper()
    if text in FRONTAL_VIEWS:
        return "frontal"
    return "lateral" if text in _LATERAL_VIEWS or "LATERAL" in text else None


def find_partners(
    patient_ids: Sequence[object],
    study_ids: Sequence[object] | None,
    views: Sequence[object] | None,
    *,
    study: str = "same",
    side: str = "all",
) -> Partners:
    """For each image, the other images of its patient meeting ``study`` and ``side`` (laterality).

    ``same``/``distinct`` need the value known on both images (an unrecorded study or view matches
    nothing); ``all`` ignores it. Rows are positions in the given sequences.
    """
    if study not in STUDY_CRITERIA:
        raise ValueError(f"study criterion {study!r}: choose one of {', '.join(STUDY_CRITERIA)}")
    if side not in LATERALITY_CRITERIA:
        raise ValueError(f"laterality criterion {side!r}: choose one of {', '.join(LATERALITY_CRITERIA)}")
    n = len(patient_ids)
    patients, _ = pd.factorize(pd.Series(list(patient_ids), dtype=object), use_na_sentinel=True)
    studies = _codes(study_ids, n)
    sides = _codes(None if views is None else laterality(views), n)
    order = np.argsort(patients, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(patients[order]) != 0]) if n else np.array([], dtype=np.int64)
    stops = np.r_[starts[1:], n]
    lists: list[np.ndarray] = [np.empty(0, dtype=np.int64)] * n
    for lo, hi in zip(starts, stops, strict=True):
        group = order[lo:hi]
        if hi - lo < 2 or patients[group[0]] < 0:  # a lone image, or no patient id
            continue
        if hi - lo > MAX_IMAGES_PER_PATIENT:
            pid = list(patient_ids)[group[0]]
            raise CxrbenchError(f"patient id {pid!r} has {hi - lo} images: these ids do not look like patients")
        ok = ~np.eye(len(group), dtype=bool)
        ok &= _criterion(studies[group], study)
        ok &= _criterion(sides[group], side)
        for row, mask in zip(group, ok, strict=True):
            lists[row] = group[mask]
    counts = np.array([len(c) for c in lists], dtype=np.int64)
    offsets = np.r_[0, np.cumsum(counts)].astype(np.int64)
    members = np.concatenate(lists).astype(np.int64) if n else np.empty(0, dtype=np.int64)
    return Partners(offsets, members)


def _codes(values: Sequence[object] | None, n: int) -> np.ndarray:
    """Integer codes of ``values`` (-1 for missing; all -1 when there are none)."""
    if values is None:
        return np.full(n, -1, dtype=np.int64)
    codes, _ = pd.factorize(pd.Series(list(values), dtype=object), use_na_sentinel=True)
    return codes.astype(np.int64)


def _criterion(codes: np.ndarray, rule: str) -> np.ndarray:
    """Pairwise mask of one criterion over a patient's images."""
    if rule == "all":
        return np.ones((len(codes), len(codes)), dtype=bool)
    known = (codes >= 0)[:, None] & (codes >= 0)[None, :]
    equal = codes[:, None] == codes[None, :]
    return known & (equal if rule == "same" else ~equal)
