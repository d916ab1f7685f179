"""Adapter for synthetic chest CT phantoms with nodule contours: ``generate`` writes DICOM series and
four readers' XML in the LIDC-IDRI layout (``cxrbench.data.ct_phantoms``), and ``load`` reads them
with the ``lidc`` adapter itself, masks and consensus included."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from cxrbench.data.adapters import lidc
from cxrbench.data.adapters.base import RawDataset


def generate(
    root: Path,
    *,
    n_patients: int = 12,
    phantom_size: int = 64,
    phantom_seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> Path:
    """Write ``n_patients`` CT series with nodules and the readers' XML under ``root/LIDC-IDRI``."""
    from cxrbench.data.ct_phantoms import write_lidc_phantoms

    return write_lidc_phantoms(root, n_patients=n_patients, size=phantom_size, seed=phantom_seed, progress=progress)


def check_generate(*, n_patients: int = 12, phantom_size: int = 64, phantom_seed: int = 0) -> None:
    """Refuse bad ``generate`` options before anything is written."""
    from cxrbench.data.ct_phantoms import check_ct_phantoms

    check_ct_phantoms(n_patients=n_patients, size=phantom_size, seed=phantom_seed)


def load(
    root: Path,
    *,
    consensus: float = 0.5,
    small_nodules: bool = False,
    window: str = "soft-tissue",
    max_thickness: float | None = None,
    workers: int | None = None,
) -> RawDataset:
    """The phantoms as the ``lidc`` adapter reads them (same options)."""
    return lidc.load(
        root,
        consensus=consensus,
        small_nodules=small_nodules,
        window=window,
        max_thickness=max_thickness,
        workers=workers,
    )
