"""The few header values the CT header pass needs, read from pydicom's raw elements.

pydicom converts a value on first access through its hooks and validators, which cost more than
parsing the whole header (~0.04 ms a value). The values a slice's header pass reads are short,
plain ASCII in nearly every real file, and their conversion is then unambiguous: this module does
that common case itself and hands every other one (non-ASCII text, several values where one is
expected, a VR other than the standard's, odd number forms) back to pydicom, so the result is
always what pydicom would return.

``read_view`` takes a standard file's elements from ``dicom_scan`` (no pydicom at all);
``read_dataset`` reads a file's header with pydicom's element parser, without ``dcmread``'s
file-level machinery, for the standard case (a Part 10 file in a native little-endian syntax).
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Callable
from typing import Any

from cxrbench.data.dicom_scan import NATIVE_IMPLICIT, Unusual, explicit_vr, scan

_STRING_VRS = {"UI", "CS", "LO", "SH", "AS"}
_PLAIN_TEXT = re.compile(rb"[\x21-\x5b\x5d-\x7e][\x20-\x5b\x5d-\x7e]*")  # printable ASCII, no backslash
_DECIMALS = re.compile(rb"[ ]*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?[ ]*")
_INTEGER = re.compile(rb"[ ]*[+-]?\d{1,11}[ ]*")
#: Keyword -> (tag, VR) from the standard's data dictionary, for the keywords the CT header pass and
#: the pixel layout ask every slice (others are looked up in pydicom's dictionary on first use):
#: reading a standard file's header then imports no pydicom at all (0.14 s a worker process).
_TAGS: dict[str, tuple[int, str]] = {
    "TransferSyntaxUID": (0x00020010, "UI"),
    "SOPInstanceUID": (0x00080018, "UI"),
    "StudyInstanceUID": (0x0020000D, "UI"),
    "SeriesInstanceUID": (0x0020000E, "UI"),
    "PatientID": (0x00100020, "LO"),
    "PatientSex": (0x00100040, "CS"),
    "PatientAge": (0x00101010, "AS"),
    "SliceThickness": (0x00180050, "DS"),
    "InstanceNumber": (0x00200013, "IS"),
    "ImagePositionPatient": (0x00200032, "DS"),
    "ImageOrientationPatient": (0x00200037, "DS"),
    "SamplesPerPixel": (0x00280002, "US"),
    "PhotometricInterpretation": (0x00280004, "CS"),
    "NumberOfFrames": (0x00280008, "IS"),
    "Rows": (0x00280010, "US"),
    "Columns": (0x00280011, "US"),
    "BitsAllocated": (0x00280100, "US"),
    "BitsStored": (0x00280101, "US"),
    "PixelRepresentation": (0x00280103, "US"),
    "RescaleIntercept": (0x00281052, "DS"),
    "RescaleSlope": (0x00281053, "DS"),
}


class HeaderView:
    """Read-only ``get``/``in`` over a dataset read by ``dcmread``: the values of string, decimal
    (DS), integer (IS) and unsigned short (US) elements as pydicom would convert them."""

    def __init__(self, ds) -> None:
        self._ds: Any = ds
        self._build: Callable[[], Any] | None = None
        meta = getattr(ds, "file_meta", None)  # read the same way: pydicom's get costs ~0.02 ms a value
        self.file_meta = HeaderView(meta) if meta is not None else None
        # the dataset's elements by tag, as read: pydicom's own store, looked up without its Tag()
        # conversions (a third of the header pass); its public API where a version lacks it
        raw = getattr(ds, "_dict", None)
        self._raw = raw if isinstance(raw, dict) else None

    @classmethod
    def of_elements(cls, raw: dict, meta: dict | None, build: Callable[[], Any]) -> HeaderView:
        """A view of raw elements as pydicom's parser (or ``dicom_scan``, the same) yields them (by
        tag; ``meta``: the file meta's), whose pydicom dataset ``build()`` makes only when a value
        needs pydicom's own rules: most slices never do, and making it is a tenth of a header read."""
        view = cls.__new__(cls)
        view._ds, view._build, view._raw = None, build, raw
        view.file_meta = None if meta is None else cls.of_elements(meta, None, lambda: view.ds.file_meta)
        return view

    @property
    def ds(self) -> Any:
        """The pydicom dataset (made on first use for a view ``of_elements``)."""
        if self._ds is None and self._build is not None:
            self._ds = self._build()
        return self._ds

    def __contains__(self, tag: int) -> bool:
        return tag in self._raw if self._raw is not None else tag in self.ds

    def element(self, tag: int, *, keep_deferred: bool = False):
        """The element ``tag`` as read, unconverted (``keep_deferred``: a deferred value stays unread)."""
        if self._raw is not None and keep_deferred:
            return self._raw.get(tag)
        return self.ds.get_item(tag, keep_deferred=keep_deferred)

    def get(self, keyword: str, default: Any = None) -> Any:
        """The value of ``keyword`` (a DICOM keyword), or ``default`` when the element is absent."""
        try:
            tag, vr = _TAGS[keyword]
        except KeyError:
            from pydicom.datadict import dictionary_VR, tag_for_keyword  # here: importing volumes needs no pydicom

            tag = tag_for_keyword(keyword)
            if tag is None:
                raise KeyError(f"unknown DICOM keyword {keyword!r}") from None
            vr = dictionary_VR(tag)
            _TAGS[keyword] = tag, vr
        raw = self._raw.get(tag) if self._raw is not None else (self.element(tag) if tag in self.ds else None)
        if raw is None:
            return default
        value = _fast(raw, vr)
        if value is _SLOW:
            return self.ds.get(keyword, default)
        return value


_SLOW = object()


def _fast(raw, vr: str) -> Any:
    """The converted value of the raw element ``raw`` (standard VR ``vr``), or ``_SLOW`` when only
    pydicom can say."""
    value = getattr(raw, "value", None)
    if not isinstance(value, bytes) or (raw.VR is not None and raw.VR != vr):
        return _SLOW  # already converted, or an unusual VR: pydicom's rules
    if vr in _STRING_VRS:
        text = value.rstrip(b"\x00 ")
        if not text:
            return ""
        return text.decode("ascii") if _PLAIN_TEXT.fullmatch(text) else _SLOW
    if vr == "US":
        if len(value) != 2:
            return _SLOW  # none or several values
        return struct.unpack("<H" if raw.is_little_endian else ">H", value)[0]
    if vr == "DS":
        parts = value.rstrip(b"\x00").split(b"\\")
        if not all(_DECIMALS.fullmatch(p) for p in parts):
            return _SLOW
        numbers = [float(p) for p in parts]
        return numbers[0] if len(numbers) == 1 else numbers
    if vr == "IS":
        text = value.rstrip(b"\x00")
        return int(text) if _INTEGER.fullmatch(text) else _SLOW
    return _SLOW


def read_view(path, *, defer_size: int, force: bool) -> HeaderView:
    """A ``HeaderView`` of the file's dataset as ``read_dataset`` reads it. A standard file's elements
    come from ``dicom_scan.scan`` (no pydicom) and its pydicom dataset is only made if a value needs
    pydicom's rules (``HeaderView.of_elements``); any other file is read by ``read_dataset``."""
    try:
        parts = scan(path, defer_size)
    except Unusual:  # a standard file pydicom's element generator reads
        return HeaderView(read_dataset(path, defer_size=defer_size, force=force))
    except Exception:  # whatever it is, dcmread reads the file again and decides
        parts = None
    if parts is None:  # no preamble, another syntax, ...: dcmread's (pydicom's native path declines them too)
        import pydicom

        return HeaderView(pydicom.dcmread(path, defer_size=defer_size, force=force))
    raw, meta, _ = parts
    return HeaderView.of_elements(raw, meta, lambda: read_dataset(path, defer_size=defer_size, force=force))


def read_dataset(path, *, defer_size: int, force: bool):
    """The file's dataset as ``pydicom.dcmread(path, defer_size=, force=)`` reads it (values of
    ``defer_size`` bytes or more left unread). A Part 10 file in a native little-endian syntax whose
    first elements are encoded as it declares is parsed by pydicom's own element generator straight
    into a ``Dataset`` with its ``file_meta``: what ``dcmread`` does for it, without its file-level
    checks and ``FileDataset`` (about 0.17 of its 0.3 ms on a CT slice). Anything else (no preamble,
    compressed, deflated or big-endian syntaxes, a syntax that lies, a parse error) is read by
    ``dcmread`` itself, so its answer and its errors are pydicom's."""
    try:
        ds = _read_native(path, defer_size)
    except Exception:  # whatever it is, dcmread reads it again and decides
        ds = None
    if ds is None:
        import pydicom

        ds = pydicom.dcmread(path, defer_size=defer_size, force=force)
    return ds


def _read_native(path, defer_size: int):
    """The dataset of a standard file (see ``read_dataset``), or None where ``dcmread`` must read it."""
    parts = _read_native_elements(path, defer_size)
    return None if parts is None else _dataset(*parts)


def _read_native_elements(path, defer_size: int) -> tuple[dict, dict, str, float] | None:
    """The raw elements of a standard file and of its file meta, its path and modification time."""
    from pydicom.filereader import data_element_generator

    with open(path, "rb") as fp:
        if fp.read(132)[128:] != b"DICM":
            return None
        start = fp.tell()
        if not explicit_vr(fp.read(6)):
            return None  # file meta not in explicit VR: dcmread's repairs
        fp.seek(start)
        meta = {e.tag: e for e in data_element_generator(fp, False, True, stop_when=_past_meta)}
        syntax = getattr(meta.get(0x00020010), "value", None)
        if not isinstance(syntax, bytes):
            return None
        implicit = NATIVE_IMPLICIT.get(syntax.rstrip(b"\x00 ").decode("ascii", "replace"))
        if implicit is None:
            return None
        start = fp.tell()
        first = fp.read(6)
        if len(first) == 6 and explicit_vr(first) == implicit:
            return None  # written otherwise than declared: dcmread's heuristics
        fp.seek(start)
        raw = {e.tag: e for e in data_element_generator(fp, implicit, True, defer_size=defer_size)}
        modified = os.fstat(fp.fileno()).st_mtime
    return raw, meta, os.fspath(path), modified


def _dataset(raw: dict, meta: dict, path: str, modified: float):
    """The pydicom dataset of elements read by ``_read_native_elements``."""
    from pydicom.dataset import Dataset, FileMetaDataset

    ds = Dataset(raw)
    ds.file_meta = FileMetaDataset(meta)
    # where a deferred value is read from on access, as dcmread's FileDataset records it
    ds.filename, ds.buffer, ds.fileobj_type, ds.timestamp = path, None, open, modified
    return ds


def _past_meta(tag, vr, length) -> bool:
    return tag >> 16 != 2
