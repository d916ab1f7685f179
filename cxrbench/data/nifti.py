"""CT volumes in NIfTI files (.nii, .nii.gz) as an alternative to DICOM series: the slice order along
the affine's slice normal, and one slice decoded at a time to HU (the header's scl_slope/scl_inter).

A slice is addressed as ``VOLUME#K`` (``K``: the index along the file's third voxel axis), so the
image cache still decodes one slice per row. Slice ``K`` is shown as ``data[:, :, K].T``: rows
along the second voxel axis, columns along the first, as DICOM stores a slice's rows and columns.
nibabel is an optional extra (``pip install 'cxrbench[ct]'``), imported only when a NIfTI file is read.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from cxrbench.errors import CxrbenchError

#: the file names taken as NIfTI volumes
NIFTI_SUFFIXES = (".nii", ".nii.gz")
_SLICE = re.compile(r"^(?P<file>.+\.nii(?:\.gz)?)#(?P<index>\d+)$", re.IGNORECASE)
#: the last gzipped volume's stored values read in this process: (path, size, mtime), raw, slope, inter
_LAST: tuple[tuple[str, int, int], np.ndarray, float, float] | None = None


def nibabel():
    """The nibabel module, or a one-line error naming the extra that installs it."""
    try:
        import nibabel as nib
    except ImportError:
        raise CxrbenchError("NIfTI volumes need nibabel: pip install 'cxrbench[ct]'") from None
    return nib


def slice_path(volume: str | Path, index: int) -> str:
    """The path of slice ``index`` (along the third voxel axis) of ``volume``."""
    return f"{volume}#{int(index)}"


def split_slice(path: str | Path) -> tuple[str, int | None]:
    """``(volume file, slice index)`` of a ``VOLUME#K`` path; ``(path, None)`` for any other path."""
    text = str(path)
    if "#" not in text:  # nearly every path: no regex (a prepare asks three times per file)
        return text, None
    match = _SLICE.match(text)
    return (match["file"], int(match["index"])) if match else (text, None)


def is_nifti(path: str | Path) -> bool:
    """Whether the file name ends in .nii or .nii.gz."""
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def slice_positions(affine: np.ndarray, n: int) -> np.ndarray:
    """Each of ``n`` slices' position (mm) along the slice normal ``first axis x second axis`` of
    ``affine`` (voxel -> world), whatever the sign of the third axis: sorting by it orders the
    slices as DICOM's ``ImagePositionPatient . (row x column)`` does (feet to head for axial)."""
    affine = np.asarray(affine, dtype=np.float64)
    normal = np.cross(affine[:3, 0], affine[:3, 1])
    norm = np.linalg.norm(normal)
    if not np.isfinite(norm) or norm < 1e-6:
        raise ValueError("degenerate affine (the in-plane axes are parallel or zero)")
    origins = affine[:3, 3][None, :] + np.arange(n)[:, None] * affine[:3, 2][None, :]
    return origins @ (normal / norm)


def volume_header(path: str | Path) -> tuple[tuple[int, int, int], np.ndarray]:
    """A volume's ``(shape, affine)`` from its header alone; ValueError for what is no 3-D volume."""
    nib = nibabel()
    image = nib.load(os.fspath(path))
    shape = tuple(int(s) for s in image.shape)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"not a 3-D volume (shape {shape})")
    return shape, np.asarray(image.affine, dtype=np.float64)


def read_slice_hu(path: str | Path, index: int) -> np.ndarray:
    """Slice ``index`` of the volume at ``path`` in HU (stored value x scl_slope + scl_inter), as a
    2-D float64 array ``data[:, :, index].T``. An uncompressed file is read slice by slice through
    a memory map; a gzipped one is inflated once per process and kept until another volume is read
    (the next rows of the cache are its next slices), so memory holds one volume, not the dataset."""
    global _LAST
    nib = nibabel()
    path = os.fspath(path)
    image = nib.load(path)
    shape = image.shape
    if len(shape) not in (3, 4) or (len(shape) == 4 and shape[3] != 1):
        raise ValueError(f"not a 3-D volume (shape {tuple(shape)})")
    if not 0 <= index < shape[2]:
        raise ValueError(f"slice {index} is outside the volume's {shape[2]} slices")
    proxy = image.dataobj
    if not path.lower().endswith(".gz"):
        pixels = np.asarray(proxy[:, :, index] if len(shape) == 3 else proxy[:, :, index, 0], dtype=np.float64)
        return pixels.T
    stat = os.stat(path)
    key = (path, stat.st_size, stat.st_mtime_ns)
    if _LAST is None or _LAST[0] != key:
        _LAST = None  # free the last volume before inflating the next
        raw = np.asarray(proxy.get_unscaled())
        _LAST = (key, raw.reshape(shape[:3]), float(proxy.slope), float(proxy.inter))
    _, raw, slope, inter = _LAST
    return (raw[:, :, index].astype(np.float64) * slope + inter).T
