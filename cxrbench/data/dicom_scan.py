"""The top-level elements of a DICOM Part 10 file in a native little-endian syntax, read without
pydicom: what the CT header pass takes from each of a dataset's million slices.

Importing pydicom costs each worker process 0.14 s and its element generator ~2 µs an element, more
than the header pass's own work. ``scan`` yields, for the files it accepts, the raw elements
``pydicom.filereader.data_element_generator`` yields (same tags, VRs, lengths, value bytes, value
offsets and deferred values). A file that is not a native Part 10 one it declines with None (then
only ``dcmread`` reads it); in one that is, an element it does not expect (an unknown VR, a value
cut short, an undefined length other than a sequence of items) raises ``Unusual`` (then pydicom's
element generator reads it).
"""

from __future__ import annotations

import os
import struct
from typing import NamedTuple

#: Explicit VRs with a 4-byte length after 2 reserved bytes (PS3.5 7.1.2).
_LONG_VRS = frozenset(b"OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())
#: Every VR pydicom reads as explicit (the standard's).
_VRS = _LONG_VRS | frozenset(b"AE AS AT CS DA DS DT FD FL IS LO LT PN SH SL SS ST TM UI UL US".split())
_VR_NAMES = {code: code.decode() for code in _VRS}
#: VRs whose empty value pydicom keeps as ``b""`` (text VRs but DS and IS, and SQ); others: None.
_EMPTY_BYTES = frozenset("AE AS CS DA DT LO LT PN SH SQ ST TM UC UI UR UT".split())
#: Native little-endian transfer syntaxes and whether their VR is implicit.
NATIVE_IMPLICIT = {"1.2.840.10008.1.2": True, "1.2.840.10008.1.2.1": False}

_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_CHARSET, _SYNTAX, _PIXEL_DATA = 0x00080005, 0x00020010, 0x7FE00010
_HEAD = 16384  # one read holds a CT slice's whole header
_DEPTH = 16  # nested sequences deeper than this are pydicom's to read
_TAG_LENGTH = struct.Struct("<HHL")
_TAG_VR_SHORT = struct.Struct("<HH2sH")
_LONG = struct.Struct("<L")
_new = tuple.__new__  # an Element without NamedTuple's argument handling (a fifth of the scan)


class Element(NamedTuple):
    """A raw element as pydicom's ``RawDataElement`` holds it (the fields readers here use), plus
    whether its length was undefined (then it is a sequence, whose value is not kept: None)."""

    tag: int
    VR: str | None  # None in implicit VR, as pydicom leaves it until the value is converted
    length: int
    value: bytes | None  # None: deferred (longer than defer_size), empty of a non-text VR, or a sequence
    value_tell: int
    is_implicit_VR: bool
    is_little_endian: bool
    is_undefined_length: bool = False


class Unusual(Exception):
    """A native Part 10 file whose elements ``scan`` does not read as pydicom would (a value cut
    short, an unknown VR, ...): pydicom's own element generator reads it."""


class _Reader:
    """Bytes of an open file by absolute offset, read ahead in blocks of ``_HEAD``."""

    def __init__(self, fp, size: int) -> None:
        self.fp, self.size = fp, size
        self.base, self.buf = 0, fp.read(_HEAD)

    def take(self, at: int, n: int) -> tuple[bytes, int]:
        """A buffer holding ``n`` bytes from file offset ``at``, and where they start in it."""
        start = at - self.base
        if start < 0 or start + n > len(self.buf):
            if at + n > self.size:
                raise Unusual  # cut short: pydicom keeps what it finds
            self.fp.seek(at)
            self.base, self.buf, start = at, self.fp.read(max(n, _HEAD)), 0
            if n > len(self.buf):
                raise Unusual
        return self.buf, start


def scan(path, defer_size: int | None) -> tuple[dict[int, Element], dict[int, Element], float] | None:
    """The dataset's and the file meta's top-level elements by tag, and the file's modification
    time, as pydicom reads them with ``defer_size`` (values longer than it left unread, but the
    character set). None unless the file is Part 10 with an explicit-VR meta and a native
    little-endian syntax that its first element agrees with (then only ``dcmread`` reads it);
    ``Unusual`` when it is, but an element is not plain (then pydicom's element generator can)."""
    with open(path, "rb", buffering=0) as fp:
        stat = os.fstat(fp.fileno())
        reader = _Reader(fp, stat.st_size)
        head = reader.buf
        if head[128:132] != b"DICM" or not explicit_vr(head[132:138]):
            return None
        meta, at = _elements(reader, 132, implicit=False, defer_size=None, meta=True)
        syntax = getattr(meta.get(_SYNTAX), "value", None)
        if not isinstance(syntax, bytes):
            return None
        implicit = NATIVE_IMPLICIT.get(syntax.rstrip(b"\x00 ").decode("ascii", "replace"))
        if implicit is None:
            return None
        if at + 6 <= stat.st_size:
            buf, i = reader.take(at, 6)
            if explicit_vr(buf[i : i + 6]) == implicit:
                return None  # written otherwise than declared: dcmread's heuristics
        raw, _ = _elements(reader, at, implicit=implicit, defer_size=defer_size)
    return raw, meta, stat.st_mtime


def _header(reader: _Reader, at: int, implicit: bool) -> tuple[int, str | None, int, int]:
    """Tag, VR, length and header size of the element at ``at``."""
    buf, i = reader.take(at, 8)
    if implicit:
        group, elem, length = _TAG_LENGTH.unpack_from(buf, i)
        return group << 16 | elem, None, length, 8
    group, elem, vr, length = _TAG_VR_SHORT.unpack_from(buf, i)
    tag = group << 16 | elem
    if vr in _LONG_VRS:
        buf, i = reader.take(at + 8, 4)
        return tag, _VR_NAMES[vr], _LONG.unpack_from(buf, i)[0], 12
    if vr not in _VRS:
        if tag >> 16 == 0xFFFE:  # items and delimiters carry no VR
            return tag, None, _TAG_LENGTH.unpack_from(buf, i)[2], 8
        raise Unusual  # an unknown VR, or a switch to implicit VR: pydicom's guesses
    return tag, _VR_NAMES[vr], length, 8


def _elements(
    reader: _Reader, at: int, *, implicit: bool, defer_size: int | None, meta: bool = False
) -> tuple[dict[int, Element], int]:
    """The elements from ``at`` to the end of the file (``meta``: to the end of group 2), and where
    they end."""
    out: dict[int, Element] = {}
    size = reader.size
    defer = size if defer_size is None else defer_size  # no value in the file is longer than it
    while size - at >= 8:  # pydicom stops, as here, with fewer than 8 bytes left
        buf, i = reader.buf, at - reader.base
        if 0 <= i and i + 12 <= len(buf) and not meta and implicit:
            group, elem, length = _TAG_LENGTH.unpack_from(buf, i)  # the common cases, inline
            tag, vr, header = group << 16 | elem, None, 8
        elif 0 <= i and i + 12 <= len(buf) and not meta:
            group, elem, code, length = _TAG_VR_SHORT.unpack_from(buf, i)
            vr = _VR_NAMES.get(code)
            if vr is None or group == 0xFFFE:
                tag, vr, length, header = _header(reader, at, implicit)  # its errors
            else:
                tag, header = group << 16 | elem, 8
                if code in _LONG_VRS:
                    length, header = _LONG.unpack_from(buf, i + 8)[0], 12
        else:
            if meta:
                buf, i = reader.take(at, 2)
                if buf[i : i + 2] != b"\x02\x00":
                    break  # the dataset's first element, in whatever encoding
            tag, vr, length, header = _header(reader, at, implicit)
        if tag >> 16 == 0xFFFE:
            raise Unusual  # an item or delimiter outside a sequence
        tell = at + header
        if length == _UNDEFINED:
            if tag == _PIXEL_DATA or not (vr is None or vr in ("SQ", "UN")):
                raise Unusual  # encapsulated pixels, or an undefined-length value pydicom searches
            at = _skip_sequence(reader, tell, implicit, 1)
            out[tag] = _new(Element, (tag, "SQ" if vr == "UN" else vr, length, None, tell, implicit, True, True))
            continue
        at = tell + length
        if length > defer and tag != _CHARSET:
            if at > size:
                raise Unusual  # a value past the end of the file
            value = None
        elif length:
            buf, i = reader.buf, tell - reader.base
            if i < 0 or i + length > len(buf):
                buf, i = reader.take(tell, length)
            value = buf[i : i + length]
        else:
            value = b"" if vr in _EMPTY_BYTES else None
        out[tag] = _new(Element, (tag, vr, length, value, tell, implicit, True, False))
    if not meta and at != size:
        raise Unusual  # trailing bytes that are no element
    return out, at


def _skip_sequence(reader: _Reader, at: int, implicit: bool, depth: int) -> int:
    """Past the sequence delimiter of the undefined-length sequence whose items start at ``at``."""
    if depth > _DEPTH:
        raise Unusual
    while True:
        buf, i = reader.take(at, 8)
        group, elem, length = _TAG_LENGTH.unpack_from(buf, i)
        tag, at = group << 16 | elem, at + 8
        if tag == _SEQUENCE_END:
            return at
        if tag != _ITEM:
            raise Unusual
        at = _skip_item(reader, at, implicit, depth) if length == _UNDEFINED else at + length


def _skip_item(reader: _Reader, at: int, implicit: bool, depth: int) -> int:
    """Past the item delimiter of the undefined-length item whose elements start at ``at``."""
    while True:
        tag, vr, length, header = _header(reader, at, implicit)
        at += header
        if tag == _ITEM_END:
            return at
        if tag >> 16 == 0xFFFE:
            raise Unusual
        if length == _UNDEFINED:
            if not (vr is None or vr in ("SQ", "UN")):
                raise Unusual
            at = _skip_sequence(reader, at, implicit, depth + 1)
        else:
            at += length


def explicit_vr(head: bytes) -> bool:
    """Whether bytes 4..6 of an element are a VR (two capital letters), as pydicom tells explicit
    from implicit VR."""
    return len(head) >= 6 and 0x40 < head[4] < 0x5B and 0x40 < head[5] < 0x5B
