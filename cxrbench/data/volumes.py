"""CT volumes from DICOM series: headers read once, slices grouped by SeriesInstanceUID and ordered
by their position along the slice normal, pixels converted to Hounsfield units and windowed.

A series is an ordered list of slice files; the pixels stay in the files and are decoded one slice
at a time into the prepared cache, so memory does not grow with the dataset. A series that cannot
be trusted as a volume (unreadable files, mixed orientations, missing or duplicated slices, slices
thicker than asked) is rejected whole, with the reason, rather than silently reordered or patched.
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cxrbench.data.header_values import HeaderView, read_view
from cxrbench.data.images import PIXEL_DATA, PixelLayout, file_stamp, pixel_layout
from cxrbench.errors import CxrbenchError

#: The soft-tissue window (level, width) in HU that the chest CT study clips every slice to.
SOFT_TISSUE = (50.0, 350.0)
#: Other common chest windows, by name (level, width).
WINDOWS = {"soft-tissue": SOFT_TISSUE, "lung": (-600.0, 1500.0), "mediastinum": (40.0, 400.0), "bone": (400.0, 1800.0)}
#: Orientation cosines further apart than this are different orientations.
ORIENTATION_TOLERANCE = 1e-3
#: A gap between neighbouring slices larger than this many times the series' median spacing means
#: slices are missing.
GAP_FACTOR = 1.5
#: Values longer than this are not read by the header pass: the pixel data (the header's own values
#: are short). Every other element is parsed lazily, which is cheaper than pydicom's specific_tags
#: filter (it compares every tag read against the list).
_DEFER_BYTES = 4096


@dataclass(frozen=True, slots=True)
class SliceHeader:
    """What ordering and checking a slice needs, read without its pixel data."""

    path: str
    series_uid: str
    study_uid: str
    sop_uid: str
    patient_id: str
    position: tuple[float, float, float] | None
    orientation: tuple[float, ...] | None
    thickness: float
    instance: int | None
    shape: tuple[int, int]
    sex: str | None = None
    age: str | None = None
    pixels: PixelLayout | None = None  # where the pixel bytes lie (native syntaxes only)


@dataclass(frozen=True, slots=True)
class Series:
    """One series: its slices ordered along the normal (feet to head for axial scans), their
    positions in mm along that normal, or the reason it was rejected (then ``slices`` keeps the
    files in the order found, for the quarantine table)."""

    uid: str
    slices: tuple[SliceHeader, ...]
    positions: tuple[float, ...] = ()
    problem: str | None = None

    @property
    def spacing(self) -> float:
        """Median distance between neighbouring slices (mm); NaN for a single slice."""
        return float(np.median(np.diff(self.positions))) if len(self.positions) > 1 else math.nan


def parse_window(text: str | Sequence[float]) -> tuple[float, float]:
    """A window as ``(level, width)`` from a name (``soft-tissue``, ``lung``, ...), ``"50,350"`` or a pair."""
    if isinstance(text, str):
        if text in WINDOWS:
            return WINDOWS[text]
        parts = text.replace(":", ",").split(",")
    else:
        parts = list(text)
    try:
        level, width = (float(p) for p in parts)
    except (TypeError, ValueError):
        raise CxrbenchError(
            f"window {text!r}: give LEVEL,WIDTH in HU (e.g. 50,350) or one of {', '.join(WINDOWS)}"
        ) from None
    if not (math.isfinite(level) and math.isfinite(width)) or width <= 0:
        raise CxrbenchError(f"window {text!r}: the width must be positive and both numbers finite")
    return level, width


def check_channels(n: int) -> None:
    """One-line error unless ``n`` windows make an image encoders take: 1 (grey) or 3 (RGB)."""
    if n not in (1, 3):
        raise CxrbenchError(f"{n} CT windows: give one (grey) or three (one per RGB channel), joined by '+'")


def parse_windows(text: str) -> list[tuple[float, float]]:
    """Windows joined by ``+`` (``lung+mediastinum+bone``, ``-600,1500+40,400+400,1800``), each as
    ``parse_window`` reads it: one, or three for three channels."""
    windows = [parse_window(part) for part in str(text).split("+")]
    check_channels(len(windows))
    return windows


def window_all(pixels: np.ndarray, ds, windows: Sequence[tuple[float, float]], *, uint8: bool = False) -> np.ndarray:
    """``window_stored`` in each of ``windows``: ``[H, W]`` for one, ``[C, H, W]`` for several."""
    if len(windows) == 1:
        return window_stored(pixels, ds, *windows[0], uint8=uint8)
    return np.stack([window_stored(pixels, ds, level, width, uint8=uint8) for level, width in windows])


def window_hu(hu: np.ndarray, level: float, width: float) -> np.ndarray:
    """HU clipped to ``[level - width/2, level + width/2]`` and mapped linearly onto [0, 1] (float32)."""
    lo = level - width / 2.0
    return np.clip((np.asarray(hu, dtype=np.float64) - lo) / width, 0.0, 1.0).astype(np.float32)


def to_hu(pixels: np.ndarray, ds) -> np.ndarray:
    """Stored values to Hounsfield units with the slice's own RescaleSlope/RescaleIntercept
    (identity where absent), as float64."""
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    return np.asarray(pixels, dtype=np.float64) * slope + intercept


def window_stored(pixels: np.ndarray, ds, level: float, width: float, *, uint8: bool = False) -> np.ndarray:
    """``window_hu(to_hu(pixels, ds), level, width)`` as one float32 linear map and clip (stored
    value x slope/width + (intercept - low)/width): the prepare decode's hot path, within 1e-6 of
    the float64 two-step result. ``uint8``: the same on 0..255, rounded (``round(255 x window)``)."""
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    lo = level - width / 2.0
    top = 255.0 if uint8 else 1.0
    out = np.asarray(pixels).astype(np.float32)
    out *= np.float32(top * slope / width)
    out += np.float32(top * (intercept - lo) / width)
    np.clip(out, 0.0, top, out=out)
    if uint8:
        return np.rint(out, out=out).astype(np.uint8)
    return out


class Shared(dict):
    """One object per distinct value: the slices of a series repeat their UIDs, orientation, size
    and pixel layout, and a header pass holds every slice's header at once (1.8 M on RSNA PE).
    Shared within a worker's chunk, they also cross to the parent pickled once per chunk."""

    def __call__(self, value: Any) -> Any:
        return value if value is None else self.setdefault(value, value)


def read_header(path: str | Path, shared: Shared | None = None) -> SliceHeader | str:
    """The slice's header, or the reason it cannot be read (a string) -- never an exception.
    ``shared``: where equal field values of other headers are taken from (memory)."""
    one = shared if shared is not None else Shared()

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = read_view(path, defer_size=_DEFER_BYTES, force=str(path).endswith(".dcm"))
        series = str(ds.get("SeriesInstanceUID", "") or "")
        if not series:
            return "not a DICOM slice (no SeriesInstanceUID)"
        position = ds.get("ImagePositionPatient")
        orientation = ds.get("ImageOrientationPatient")
        thickness = ds.get("SliceThickness")
        instance = ds.get("InstanceNumber")
        return SliceHeader(
            path=str(path),
            series_uid=one(series),
            study_uid=one(str(ds.get("StudyInstanceUID", "") or "")),
            sop_uid=str(ds.get("SOPInstanceUID", "") or ""),
            patient_id=one(str(ds.get("PatientID", "") or "")),
            position=tuple(float(v) for v in position) if position is not None and len(position) == 3 else None,
            orientation=one(tuple(float(v) for v in orientation))
            if orientation is not None and len(orientation) == 6
            else None,
            thickness=float(thickness) if thickness not in (None, "") else math.nan,
            instance=int(instance) if instance not in (None, "") else None,
            shape=one((int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0))),
            sex=one(str(ds.get("PatientSex"))) if ds.get("PatientSex") else None,
            age=one(str(ds.get("PatientAge"))) if ds.get("PatientAge") else None,
            pixels=one(_layout(ds)),
        )
    except Exception as exc:  # a bad file is a reason for the quarantine, not a crash
        return f"unreadable DICOM header ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"


def _layout(ds: HeaderView) -> PixelLayout | None:
    """The pixel layout of a header read with the pixel data deferred: its value's file offset is
    the raw element's (left unread: ``keep_deferred``)."""
    raw = ds.element(PIXEL_DATA, keep_deferred=True) if PIXEL_DATA in ds else None
    offset = getattr(raw, "value_tell", None)
    if offset is None or getattr(raw, "is_undefined_length", False):
        return None  # encapsulated (compressed) pixel data has no one offset
    return pixel_layout(ds, offset=int(offset))


def _read_headers(paths: list[str]) -> list[SliceHeader | str]:
    shared = Shared()
    return [read_header(p, shared) for p in paths]


def read_headers(
    paths: Sequence[str | Path],
    *,
    workers: int | None = None,
    chunk: int = 256,
    progress: Callable[[int], None] | None = None,
) -> list[SliceHeader | str]:
    """Headers of ``paths`` in order (a reason string for each unreadable file), read in ``workers``
    processes (None: the CPU count, at most 8; 0 or 1: in this process). Inside
    ``header_cache.remember_headers(FILE)`` files unchanged since FILE was written are not read
    again (unless it says not to reuse), and FILE is rewritten with this call's results. A progress bar unless ``progress`` is given."""
    from cxrbench.data import header_cache

    paths = [str(p) for p in paths]
    file, reuse = header_cache.current() or (None, False)
    stamps = [file_stamp(p) for p in paths] if file is not None else []
    known = header_cache.load(file, paths, stamps) if file is not None and reuse and file.is_file() else {}
    todo = [p for p in paths if p not in known]
    from cxrbench.console import progress as bar

    with bar(len(paths), "read CT headers") if progress is None else contextlib.nullcontext(progress) as advance:
        advance(len(paths) - len(todo))
        found = _read_all(todo, workers, chunk, advance)
    known.update(zip(todo, found, strict=True))
    out = [known[p] for p in paths]
    if file is not None and todo:
        header_cache.save(file, paths, out, stamps)
    return out


def _read_all(
    paths: list[str], workers: int | None, chunk: int, progress: Callable[[int], None]
) -> list[SliceHeader | str]:
    workers = min(os.cpu_count() or 1, 8) if workers is None else workers
    if workers > 1:  # about 4 chunks per worker, so none sits idle at the end
        chunk = max(1, min(chunk, math.ceil(len(paths) / (4 * workers))))
    chunks = [paths[i : i + chunk] for i in range(0, len(paths), chunk)]
    out: list[SliceHeader | str] = []
    if workers <= 1 or len(chunks) <= 1:
        for part in chunks:
            out.extend(_read_headers(part))
            progress(len(part))
        return out
    from cxrbench.processes import worker_pool

    with worker_pool(workers) as pool:  # prepare's shared pool: the decode reuses its processes
        futures = [pool.submit(_read_headers, part) for part in chunks]
        # until a worker has finished a chunk (new workers spend ~0.25 s starting: spawn, imports),
        # read chunks from the far end here, each taken back from the queue before it is read
        here: dict[int, list[SliceHeader | str]] = {}
        last = len(chunks) - 1
        while last > workers and not any(f.done() for f in futures[:workers]) and futures[last].cancel():
            here[last] = _read_headers(chunks[last])
            progress(len(chunks[last]))
            last -= 1
        for i, (part, future) in enumerate(zip(chunks, futures, strict=True)):
            if i in here:
                out.extend(here[i])
                continue
            out.extend(future.result())
            progress(len(part))
    return out


def order_series(slices: Iterable[SliceHeader], *, max_thickness: float | None = None) -> Series:
    """The slices of one series ordered along the normal of their common orientation, or rejected.

    The normal is the cross product of the row and column direction cosines; each slice's
    coordinate along it is ``position . normal``. File names and InstanceNumber play no part (they
    are often out of order). Rejected: slices of different orientations or sizes, without position
    or orientation, two slices at one position, gaps larger than ``GAP_FACTOR`` times the median
    spacing (missing slices), or slice thickness above ``max_thickness`` mm.
    """
    items = list(slices)
    if not items:
        raise ValueError("a series needs at least one slice")
    uid = items[0].series_uid

    def rejected(reason: str) -> Series:
        return Series(uid, tuple(items), problem=reason)

    if any(s.position is None or s.orientation is None for s in items):
        return rejected("slice without ImagePositionPatient or ImageOrientationPatient")
    orientations = np.array([s.orientation for s in items], dtype=np.float64)
    if np.abs(orientations - orientations[0]).max() > ORIENTATION_TOLERANCE:
        return rejected("mixed slice orientations in one series")
    if len({s.shape for s in items}) > 1:
        return rejected("slices of different sizes in one series")
    row, col = orientations[0, :3], orientations[0, 3:]
    normal = np.cross(row, col)
    if np.linalg.norm(normal) < 0.5:
        return rejected("degenerate ImageOrientationPatient (row and column directions are parallel)")
    coords = np.array([s.position for s in items], dtype=np.float64) @ normal
    order = np.argsort(coords, kind="stable")
    coords = coords[order]
    ordered = tuple(items[i] for i in order)
    if len(ordered) > 1:
        steps = np.diff(coords)
        if (steps < 1e-3).any():
            return rejected("two slices at the same position")
        median = float(np.median(steps))
        if (steps > GAP_FACTOR * median).any():
            gaps = int((steps > GAP_FACTOR * median).sum())
            return rejected(f"missing slices ({gaps} gap(s) wider than {GAP_FACTOR} x the {median:.2f} mm spacing)")
    if max_thickness is not None:
        thickness = np.array([s.thickness for s in ordered])
        known = thickness[np.isfinite(thickness)]
        thick = (
            float(np.median(known))
            if known.size
            else (float(np.median(np.diff(coords))) if len(coords) > 1 else math.nan)
        )
        if not math.isfinite(thick):
            return rejected("slice thickness unknown (no SliceThickness, single slice)")
        if thick > max_thickness:
            return rejected(f"slice thickness {thick:g} mm > {max_thickness:g} mm")
    return Series(uid, ordered, tuple(float(c) for c in coords))


def group_series(
    headers: Iterable[SliceHeader | str], paths: Sequence[str | Path], *, max_thickness: float | None = None
) -> tuple[list[Series], list[tuple[str, str]]]:
    """Headers grouped by SeriesInstanceUID and ordered; returns the series (accepted and rejected,
    in order of first appearance) and ``(path, reason)`` for files whose header could not be read.

    A series with an unreadable file is rejected whole: the volume would have a hole."""
    by_series: dict[str, list[SliceHeader]] = {}
    unreadable: list[tuple[str, str]] = []
    for header, path in zip(headers, paths, strict=True):
        if isinstance(header, str):
            unreadable.append((str(path), header))
        else:
            by_series.setdefault(header.series_uid, []).append(header)
    # a file that failed to read belongs to the series of its folder (the layouts keep one series
    # per folder): that series is incomplete
    broken_dirs = {str(Path(p).parent) for p, _ in unreadable}
    out = []
    for slices in by_series.values():
        if broken_dirs and {str(Path(s.path).parent) for s in slices} & broken_dirs:
            out.append(Series(slices[0].series_uid, tuple(slices), problem="series has an unreadable slice file"))
        else:
            out.append(order_series(slices, max_thickness=max_thickness))
    return out, unreadable


def pixel_layouts(series: Iterable[Series]) -> dict[str, PixelLayout]:
    """Path -> pixel layout of every slice of the accepted ``series`` whose layout is known (the
    ``RawDataset.pixel_layouts`` of a CT adapter)."""
    return {h.path: h.pixels for s in series if s.problem is None for h in s.slices if h.pixels is not None}
