"""Remembered CT slice headers: what ``volumes.read_header`` found in each file, kept in a Parquet
table beside the prepared dataset's image cache and keyed by the file's path, size and modification
time, so a prepare redone with other labels or options (or rerun to find nothing changed) reads
only new or changed files. Reading the headers is most of a CT rerun: ~0.65 ms a slice, 20 CPU
minutes for the 1.8 M slices of RSNA STR PE.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Sequence
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq

from cxrbench.data.images import PixelLayout

if TYPE_CHECKING:  # volumes: only needed when headers are read
    from cxrbench.data.volumes import SliceHeader

HEADERS_FILE = "headers.parquet"
#: Bump when ``read_header`` would find something else in the same file (old tables are then ignored).
VERSION = 1
_META = b"cxrbench.headers"
#: A file's identity for reuse (``images.file_stamp``): (size, mtime in ns); None when it cannot be stat'ed.
Stamp = tuple[int, int] | None

_current: contextvars.ContextVar[tuple[Path, bool] | None] = contextvars.ContextVar("header_cache", default=None)

_SCHEMA = pa.schema(
    [
        ("path", pa.string()),
        ("size", pa.int64()),
        ("mtime_ns", pa.int64()),
        ("reason", pa.string()),  # set: the file's header could not be read (the rest is null)
        ("series_uid", pa.string()),
        ("study_uid", pa.string()),
        ("sop_uid", pa.string()),
        ("patient_id", pa.string()),
        ("position", pa.list_(pa.float64())),
        ("orientation", pa.list_(pa.float64())),
        ("thickness", pa.float64()),
        ("instance", pa.int64()),
        ("rows", pa.int64()),
        ("cols", pa.int64()),
        ("sex", pa.string()),
        ("age", pa.string()),
        (
            "pixels",  # the PixelLayout; null for slices whose pixels need pydicom's decoders
            pa.struct(
                [
                    ("offset", pa.int64()),
                    ("rows", pa.int64()),
                    ("cols", pa.int64()),
                    ("dtype", pa.string()),
                    ("bits_stored", pa.int64()),
                    ("slope", pa.float64()),
                    ("intercept", pa.float64()),
                ]
            ),
        ),
    ]
)


@contextlib.contextmanager
def remember_headers(file: Path, *, reuse: bool = True) -> Iterator[None]:
    """Let every ``volumes.read_headers`` inside reuse (unless ``reuse`` is false: ``--force``) and
    rewrite the table ``file``."""
    token = _current.set((Path(file), bool(reuse)))
    try:
        yield
    finally:
        _current.reset(token)


def current() -> tuple[Path, bool] | None:
    """``(table, reuse)`` of the enclosing ``remember_headers``, if any."""
    return _current.get()


def _version() -> bytes:
    """This table format's version and the installed pydicom's, from its metadata: importing pydicom
    for it took 0.4 s of the parent's serial time in a CT prepare whose decode does not need it."""
    from importlib import metadata

    return f"{VERSION}/pydicom {metadata.version('pydicom')}".encode()


def load(file: Path, paths: Sequence[str], stamps: Sequence[Stamp]) -> dict[str, SliceHeader | str]:
    """The remembered result for each of ``paths`` whose file still has its stamp; {} when the table
    is missing, unreadable or from another version (it is only a shortcut: never an error)."""
    try:
        table = pq.read_table(file)
        if (table.schema.metadata or {}).get(_META) != _version() or not table.schema.equals(
            _SCHEMA, check_metadata=False
        ):
            return {}
        columns = table.to_pydict()
    except Exception:  # noqa: BLE001 - a damaged or foreign table is ignored and rewritten
        return {}
    from cxrbench.data.volumes import Shared, SliceHeader

    one = Shared()  # a series' slices share their UIDs, orientation, size and layout (memory)
    wanted = {p: s for p, s in zip(paths, stamps, strict=True) if s is not None}
    out: dict[str, SliceHeader | str] = {}
    for i, path in enumerate(columns["path"]):
        if wanted.get(path) != (columns["size"][i], columns["mtime_ns"][i]):
            continue
        if columns["reason"][i] is not None:
            out[path] = columns["reason"][i]
            continue
        pixels = columns["pixels"][i]
        out[path] = SliceHeader(
            path=path,
            series_uid=one(columns["series_uid"][i]),
            study_uid=one(columns["study_uid"][i]),
            sop_uid=columns["sop_uid"][i],
            patient_id=one(columns["patient_id"][i]),
            position=_tuple(columns["position"][i]),
            orientation=one(_tuple(columns["orientation"][i])),
            thickness=columns["thickness"][i],
            instance=columns["instance"][i],
            shape=one((columns["rows"][i], columns["cols"][i])),
            sex=one(columns["sex"][i]),
            age=one(columns["age"][i]),
            pixels=one(PixelLayout(**pixels)) if pixels is not None else None,
        )
    return out


def save(file: Path, paths: Sequence[str], headers: Sequence[SliceHeader | str], stamps: Sequence[Stamp]) -> None:
    """Write the table for ``paths`` (files that could not be stat'ed are left out), atomically;
    a run directory that cannot be written (a read-only copy) just goes without it."""
    kept = [(p, h, m) for p, h, m in zip(paths, headers, stamps, strict=True) if m is not None]
    read = [h if not isinstance(h, str) else None for _, h, _ in kept]  # None: unreadable, a reason
    columns = {
        "path": [p for p, _, _ in kept],
        "size": [m[0] for _, _, m in kept],
        "mtime_ns": [m[1] for _, _, m in kept],
        "reason": [h if isinstance(h, str) else None for _, h, _ in kept],
    }
    # column by column, not row dicts (dataclasses.asdict's deep copies cost 0.25 ms a row); the
    # header's fields by name, but its shape as rows and cols and its pixel layout as a struct
    from cxrbench.data.volumes import SliceHeader

    for name in (f.name for f in fields(SliceHeader) if f.name not in ("path", "shape", "pixels")):
        columns[name] = [getattr(h, name) if h is not None else None for h in read]
    columns["rows"] = [h.shape[0] if h is not None else None for h in read]
    columns["cols"] = [h.shape[1] if h is not None else None for h in read]
    # each distinct layout made a dict once: a series' slices share one (``Shared``)
    as_dicts = {h.pixels: None for h in read if h is not None and h.pixels is not None}
    as_dicts = {layout: _shallow(layout) for layout in as_dicts}
    columns["pixels"] = [as_dicts[h.pixels] if h is not None and h.pixels is not None else None for h in read]
    table = pa.Table.from_pydict(columns, schema=_SCHEMA.with_metadata({_META: _version()}))
    from cxrbench.rundir import write_parquet

    try:
        Path(file).parent.mkdir(parents=True, exist_ok=True)
        write_parquet(Path(file), table)
    except OSError:
        pass


def _shallow(obj) -> dict:
    """A dataclass's fields as a dict, values as they are."""
    return {f.name: getattr(obj, f.name) for f in fields(obj)}


def _tuple(values: list[float] | None) -> tuple[float, ...] | None:
    return tuple(values) if values is not None else None
