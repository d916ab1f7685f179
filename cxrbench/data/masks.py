"""Segmentation masks: contours rasterised per reader, a consensus across readers, run-length
encoded in samples.parquet, and cached beside the images with the same geometry.

A mask travels from the adapter to the cache as an RLE string (``"ROWS COLS start length ..."``,
row-major, 0-based starts), so the consensus is computed once at prepare time at the slice's own
resolution, and ``build_masks`` resizes it exactly as its image was resized (same ``preprocess``
call) before thresholding at one half.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from cxrbench.data.transforms import Preprocess, preprocess
from cxrbench.errors import CxrbenchError

MASKS_FILE = "masks.npy"

#: A contour: ``(inclusion, [(x, y), ...])`` in pixel coordinates (x = column, y = row).
Contour = tuple[bool, Sequence[tuple[float, float]]]


def rasterise(shape: tuple[int, int], contours: Iterable[Contour]) -> np.ndarray:
    """One reader's mask ``[rows, cols]`` (bool): the pixels inside or on the included polygons,
    minus those inside or on the excluded ones (holes, drawn after every outline whatever their
    order). A one- or two-point contour marks its pixels (LIDC's small nodules have one point)."""
    from PIL import Image, ImageDraw

    canvas = Image.new("1", (shape[1], shape[0]), 0)
    draw = ImageDraw.Draw(canvas)
    for inclusion, points in sorted(contours, key=lambda c: not c[0]):  # outlines first, then holes
        pts = [(float(x), float(y)) for x, y in points]
        if not pts:
            continue
        fill = 1 if inclusion else 0
        if len(pts) < 3:
            draw.point(pts, fill=fill)
        else:
            draw.polygon(pts, fill=fill, outline=fill)
    return np.array(canvas, dtype=bool)


def consensus(masks: Sequence[np.ndarray], *, level: float = 0.5, readers: int | None = None) -> np.ndarray:
    """Pixels marked by at least ``ceil(level * readers)`` readers (at least one); ``readers``
    defaults to the number of masks given (readers who marked nothing count with an empty mask)."""
    if not 0 < level <= 1:
        raise CxrbenchError(f"consensus level must be in (0, 1], got {level}")
    if not masks:
        raise ValueError("consensus needs at least one mask")
    n = readers if readers is not None else len(masks)
    need = max(1, int(np.ceil(level * n - 1e-9)))
    return np.sum(np.stack(masks), axis=0) >= need


def encode_rle(mask: np.ndarray) -> str:
    """``"ROWS COLS start length ..."``: the runs of True pixels of ``mask`` in row-major order."""
    mask = np.asarray(mask, dtype=bool)
    flat = np.concatenate([[False], mask.ravel(), [False]])
    edges = np.flatnonzero(flat[1:] != flat[:-1])
    starts, stops = edges[::2], edges[1::2]
    runs = " ".join(f"{a} {b - a}" for a, b in zip(starts, stops, strict=True))
    return f"{mask.shape[0]} {mask.shape[1]}" + (f" {runs}" if runs else "")


def decode_rle(text: str) -> np.ndarray:
    """The bool mask of an ``encode_rle`` string; a one-line error for a malformed one."""
    try:
        numbers = [int(v) for v in str(text).split()]
        rows, cols, runs = numbers[0], numbers[1], numbers[2:]
    except (ValueError, IndexError):
        raise CxrbenchError(f"malformed mask RLE {str(text)[:40]!r}") from None
    if len(runs) % 2 or rows < 1 or cols < 1:
        raise CxrbenchError(f"malformed mask RLE {str(text)[:40]!r}")
    flat = np.zeros(rows * cols, dtype=bool)
    for start, length in zip(runs[::2], runs[1::2], strict=True):
        if start < 0 or length < 0 or start + length > flat.size:
            raise CxrbenchError(f"mask RLE run {start}+{length} outside a {rows}x{cols} image")
        flat[start : start + length] = True
    return flat.reshape(rows, cols)


def cached_mask(rle: str | None, settings: Preprocess) -> np.ndarray:
    """A mask as the cache holds it: uint8 ``[size, size]`` (0/1), resized like its image."""
    if rle is None or rle == "":
        return np.zeros((settings.size, settings.size), dtype=np.uint8)
    mask = decode_rle(rle).astype(np.float32)
    fixed = Preprocess(size=settings.size, aspect=settings.aspect, equalize=False, scaling="fixed")
    return (preprocess(mask, fixed) >= 128).astype(np.uint8)


def build_masks(rles: Sequence[str | None], out_dir: Path, settings: Preprocess) -> Path:
    """Write ``out_dir/masks.npy`` (uint8 ``[N, size, size]``, row i = ``rles[i]``) atomically."""
    from cxrbench.rundir import atomic_path

    out = np.zeros((len(rles), settings.size, settings.size), dtype=np.uint8)
    for i, rle in enumerate(rles):
        out[i] = cached_mask(rle, settings)
    target = Path(out_dir) / MASKS_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, out)
    return target
