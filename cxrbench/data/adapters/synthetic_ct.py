"""Adapter for synthetic chest CT phantoms: ``generate`` writes DICOM series in the RSNA STR PE layout
(``cxrbench.data.ct_phantoms``), and ``load`` reads them with the ``rsna-pe`` adapter itself, so the
phantoms exercise exactly the path real CT data takes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from cxrbench.data.adapters import rsna_pe
from cxrbench.data.adapters.base import RawDataset


def generate(
    root: Path,
    *,
    n_patients: int = 24,
    phantom_size: int = 64,
    phantom_seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> Path:
    """Write ``n_patients`` CT studies (``phantom_size`` px slices) under ``root``; return ``train.csv``."""
    from cxrbench.data.ct_phantoms import write_ct_phantoms

    return write_ct_phantoms(root, n_patients=n_patients, size=phantom_size, seed=phantom_seed, progress=progress)


def check_generate(*, n_patients: int = 24, phantom_size: int = 64, phantom_seed: int = 0) -> None:
    """Refuse bad ``generate`` options before anything is written."""
    from cxrbench.data.ct_phantoms import check_ct_phantoms

    check_ct_phantoms(n_patients=n_patients, size=phantom_size, seed=phantom_seed)


def load(
    root: Path,
    *,
    labels: list[str] = ["pe_present_on_image"],  # noqa: B006 - read only
    window: str = "soft-tissue",
    max_thickness: float | None = None,
    workers: int | None = None,
) -> RawDataset:
    """The phantoms as the ``rsna-pe`` adapter reads them (same options)."""
    return rsna_pe.load(root, labels=labels, window=window, max_thickness=max_thickness, workers=workers)
