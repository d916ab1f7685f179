"""HeaderView against pydicom's own conversion of the same elements, on hand-encoded files in the
three uncompressed encodings (so neither side's writer shapes the bytes); ``read_dataset`` against
``pydicom.dcmread`` on those files, on pydicom's own test files and on CT phantoms."""

from __future__ import annotations

import contextlib
import io
import struct
from pathlib import Path

import pydicom
import pytest
from pydicom.multival import MultiValue

from cxrbench.data import volumes
from cxrbench.data.header_values import _SLOW, HeaderView, _fast, _read_native, read_dataset, read_view

EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_BE = "1.2.840.10008.1.2.2"

# (keyword, tag, VR, value bytes): plain cases and the ones pydicom must decide
ELEMENTS = [
    ("SpecificCharacterSet", 0x00080005, "CS", b"ISO_IR 100"),
    ("ImageType", 0x00080008, "CS", b"ORIGINAL\\PRIMARY\\AXIAL"),
    ("SOPInstanceUID", 0x00080018, "UI", b"1.2.3.4.5\x00"),
    ("Modality", 0x00080060, "CS", b"CT"),
    ("PatientName", 0x00100010, "PN", b"M\xfcller^Hans"),
    ("PatientID", 0x00100020, "LO", b"  padded-left"),
    ("PatientSex", 0x00100040, "CS", b"F "),
    ("PatientAge", 0x00101010, "AS", b"045Y"),
    ("StudyDescription", 0x00081030, "LO", b"Thorax M\xfcller"),
    ("SeriesDescription", 0x0008103E, "LO", b"CTA chest  "),
    ("SliceThickness", 0x00180050, "DS", b"1.25"),
    ("StudyInstanceUID", 0x0020000D, "UI", b"1.2.840.99"),
    ("StudyID", 0x00200010, "SH", b"42 \x00"),
    ("SeriesInstanceUID", 0x0020000E, "UI", b"1.2.840.99.7\x00"),
    ("InstanceNumber", 0x00200013, "IS", b" 12 "),
    ("AcquisitionNumber", 0x00200012, "IS", b""),
    ("ImagePositionPatient", 0x00200032, "DS", b"-125.5\\ 3e2 \\.5"),
    ("ImageOrientationPatient", 0x00200037, "DS", b"1\\0\\0\\0\\1\\0 "),
    ("SliceLocation", 0x00201041, "DS", b"+1.5E-1"),
    ("SamplesPerPixel", 0x00280002, "US", struct.pack("<H", 1)),
    ("Rows", 0x00280010, "US", struct.pack("<H", 512)),
    ("Columns", 0x00280011, "US", struct.pack("<H", 400)),
    ("PixelSpacing", 0x00280030, "DS", b"0.7\\0.7"),
    ("BitsAllocated", 0x00280100, "US", struct.pack("<H", 16)),
    ("BitsStored", 0x00280101, "US", struct.pack("<H", 12)),
    ("WindowCenter", 0x00281050, "DS", b"40\\-600"),
    ("WindowWidth", 0x00281051, "DS", b"   "),
    ("RescaleIntercept", 0x00281052, "DS", b"-1024"),
    ("RescaleSlope", 0x00281053, "DS", b"1.0"),
]


def _element(tag: int, vr: str, value: bytes, *, little: bool, implicit: bool) -> bytes:
    if vr == "US" and not little:
        value = value[::-1]
    if len(value) % 2:
        value += b"\x00" if vr == "UI" else b" "
    end = "<" if little else ">"
    head = struct.pack(end + "HH", tag >> 16, tag & 0xFFFF)
    if implicit:
        return head + struct.pack(end + "I", len(value)) + value
    if vr in ("OB", "OW", "UN", "UT", "SQ"):  # the long form: 2 reserved bytes, 4-byte length
        return head + vr.encode() + struct.pack(end + "HI", 0, len(value)) + value
    return head + vr.encode() + struct.pack(end + "H", len(value)) + value


def _file(syntax: str, elements=ELEMENTS) -> bytes:
    uid = syntax.encode() + (b"\x00" if len(syntax) % 2 else b"")
    meta = _element(0x00020010, "UI", uid, little=True, implicit=False)
    meta = struct.pack("<HH2sHI", 0x0002, 0x0000, b"UL", 4, len(meta)) + meta  # the group length
    little, implicit = syntax != EXPLICIT_BE, syntax == IMPLICIT_LE
    body = b"".join(_element(t, vr, v, little=little, implicit=implicit) for _, t, vr, v in elements)
    return b"\x00" * 128 + b"DICM" + meta + body


def _plain(value):
    return list(value) if isinstance(value, MultiValue) else value


class _PublicOnly:
    """A dataset seen through pydicom's public API only (as a pydicom without ``Dataset._dict``)."""

    def __init__(self, ds) -> None:
        self._ds, self.file_meta = ds, ds.file_meta

    def __contains__(self, tag) -> bool:
        return tag in self._ds

    def get_item(self, tag, **kwargs):
        return self._ds.get_item(tag, **kwargs)

    def get(self, keyword, default=None):
        return self._ds.get(keyword, default)


@pytest.mark.parametrize("public_only", [False, True])
@pytest.mark.parametrize("syntax", [EXPLICIT_LE, IMPLICIT_LE, EXPLICIT_BE])
def test_values_match_pydicom(syntax, public_only):
    data = _file(syntax)
    ds = pydicom.dcmread(io.BytesIO(data))
    view = HeaderView(_PublicOnly(ds) if public_only else ds)
    assert (view._raw is None) == public_only
    reference = pydicom.dcmread(io.BytesIO(data))
    for keyword, *_ in ELEMENTS:
        expected = _plain(reference.get(keyword))
        got = _plain(view.get(keyword))
        assert got == expected, (syntax, keyword, got, expected)
        assert type(got) is type(expected) or isinstance(got, type(expected).__mro__[-2]), keyword
    assert view.get("PatientWeight", "none") == "none"
    assert 0x00280010 in view and 0x7FE00010 not in view
    # the file meta is read the same way (the pixel layout asks it for the transfer syntax)
    assert view.file_meta.get("TransferSyntaxUID") == reference.file_meta.TransferSyntaxUID == syntax
    assert view.file_meta.get("MediaStorageSOPClassUID", "none") == "none"


def test_plain_values_take_the_fast_path():
    ds = pydicom.dcmread(io.BytesIO(_file(EXPLICIT_LE)))
    fast = {
        "SOPInstanceUID",
        "Modality",
        "PatientSex",
        "PatientAge",
        "SliceThickness",
        "InstanceNumber",
        "ImagePositionPatient",
        "ImageOrientationPatient",
        "SliceLocation",
        "Rows",
        "BitsStored",
        "RescaleIntercept",
        "RescaleSlope",
        "SeriesDescription",
        "StudyID",
    }
    slow = {"ImageType", "PatientName", "PatientID", "StudyDescription", "WindowWidth", "AcquisitionNumber"}
    for keyword, tag, vr, _ in ELEMENTS:
        if keyword in fast | slow:
            taken = _fast(ds.get_item(tag), vr) is not _SLOW
            assert taken == (keyword in fast), keyword


def test_unexpected_vr_is_left_to_pydicom():
    elements = [("Rows", 0x00280010, "UN", struct.pack("<H", 512)), ("SliceThickness", 0x00180050, "UN", b"2.5 ")]
    data = _file(EXPLICIT_LE, elements)
    view = HeaderView(pydicom.dcmread(io.BytesIO(data)))
    reference = pydicom.dcmread(io.BytesIO(data))
    assert view.get("Rows") == reference.get("Rows") == 512
    assert view.get("SliceThickness") == reference.get("SliceThickness") == 2.5


def test_unknown_keyword_is_an_error():
    view = HeaderView(pydicom.dcmread(io.BytesIO(_file(EXPLICIT_LE))))
    with pytest.raises(KeyError, match="NoSuchKeyword"):
        view.get("NoSuchKeyword")


def _values(ds) -> dict:
    """Every top-level value but the pixels, converted by pydicom (deferred ones read on access)."""
    return {int(tag): _plain(ds[tag].value) for tag in ds.keys() if tag != 0x7FE00010}


@pytest.mark.parametrize("defer_size", [4096, 4])
@pytest.mark.parametrize("syntax", [EXPLICIT_LE, IMPLICIT_LE, EXPLICIT_BE])
def test_read_dataset_equals_dcmread(tmp_path, syntax, defer_size):
    path = tmp_path / "slice.dcm"
    path.write_bytes(_file(syntax))
    ds = read_dataset(path, defer_size=defer_size, force=False)
    reference = pydicom.dcmread(path, defer_size=defer_size)
    assert _values(ds) == _values(reference)  # defer_size 4: every value read from the file on access
    assert ds.file_meta.TransferSyntaxUID == reference.file_meta.TransferSyntaxUID == syntax
    # the native little-endian syntaxes are parsed without dcmread, big endian by it
    assert (_read_native(path, defer_size) is not None) == (syntax != EXPLICIT_BE)


def test_files_dcmread_must_repair_are_left_to_it(tmp_path):
    lying = tmp_path / "lying.dcm"  # declares explicit VR, written in implicit VR
    implicit = _file(IMPLICIT_LE)
    explicit_meta = _file(EXPLICIT_LE, [])
    lying.write_bytes(explicit_meta + implicit[len(_file(IMPLICIT_LE, [])) :])
    bare = tmp_path / "bare.dcm"  # no preamble, no file meta
    bare.write_bytes(b"".join(_element(t, vr, v, little=True, implicit=True) for _, t, vr, v in ELEMENTS))
    for path in (lying, bare):
        assert _read_native(path, 4096) is None
        with pytest.warns(UserWarning) if path is lying else contextlib.nullcontext():
            reference = pydicom.dcmread(path, force=True)
        assert _values(read_dataset(path, defer_size=4096, force=True)) == _values(reference)
        assert len(reference) == len(ELEMENTS)  # every element read, in the encoding found


def _headers_both_ways(paths, monkeypatch) -> tuple[list, list]:
    fast = [volumes.read_header(p) for p in paths]
    with monkeypatch.context() as m:
        m.setattr(
            volumes,
            "read_view",
            lambda path, *, defer_size, force: HeaderView(pydicom.dcmread(path, defer_size=defer_size, force=force)),
        )
        slow = [volumes.read_header(p) for p in paths]
    return fast, slow


def test_headers_equal_dcmread_on_pydicoms_test_files(monkeypatch):
    """pydicom's bundled test files (truncated, bad VRs, no meta, deflated, big endian, compressed,
    private and undefined-length sequences, charsets): the same header or the same reason."""
    import pydicom.data

    files = sorted(str(f) for f in (Path(pydicom.data.__file__).parent / "test_files").rglob("*") if f.is_file())
    assert len(files) > 50
    fast, slow = _headers_both_ways(files, monkeypatch)
    assert [f for f, a, b in zip(files, fast, slow, strict=True) if a != b] == []
    taken = {Path(f).name for f in files if _read_native(f, 4096) is not None}
    assert {"CT_small.dcm", "MR_small.dcm", "MR_small_implicit.dcm"} <= taken
    assert not {"MR_small_bigendian.dcm", "JPEG2000.dcm", "image_dfl.dcm", "no_meta.dcm"} & taken


def test_headers_equal_dcmread_on_ct_phantoms(tmp_path, monkeypatch):
    from cxrbench.data.ct_phantoms import write_ct_phantoms

    write_ct_phantoms(tmp_path, n_patients=2, size=32, seed=0)
    files = sorted(str(f) for f in tmp_path.rglob("*.dcm"))
    fast, slow = _headers_both_ways(files, monkeypatch)
    assert fast == slow and all(not isinstance(h, str) and h.pixels is not None for h in fast)
    assert all(_read_native(f, 4096) is not None for f in files)


def test_headers_equal_dcmread_on_real_dicom_files(realdata, monkeypatch):
    """The real DICOMs beside the clone (a CR, SIIM's chest radiographs, compressed edge cases)."""
    files = sorted(str(f) for folder in ("dicom_generic", "siim") for f in (realdata / folder).rglob("*.dcm"))
    if not files:
        pytest.skip(f"no DICOM files under {realdata}")
    fast, slow = _headers_both_ways(files, monkeypatch)
    assert [f for f, a, b in zip(files, fast, slow, strict=True) if a != b] == []


def test_read_view_makes_the_pydicom_dataset_only_when_a_value_needs_it(tmp_path):
    path = tmp_path / "slice.dcm"
    path.write_bytes(_file(EXPLICIT_LE))
    reference = pydicom.dcmread(path)
    view = read_view(path, defer_size=4096, force=False)
    assert view.get("Rows") == reference.Rows and view.file_meta.get("TransferSyntaxUID") == EXPLICIT_LE
    assert view._ds is None and view.file_meta._ds is None  # plain values: no dataset made
    assert _plain(view.get("ImageType")) == _plain(reference.ImageType)  # pydicom's rules: made now
    assert view._ds is not None and view.ds.filename == str(path)
    assert view.file_meta.ds is view.ds.file_meta
