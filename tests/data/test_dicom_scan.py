"""``dicom_scan.scan`` against pydicom's own element generator on the same bytes: pydicom's test
files (sequences of undefined length, private sequences, odd VRs, truncated files), files pydicom
writes with nested undefined-length sequences in both native syntaxes, cut files and CT phantoms;
and the CT header pass and decode without importing pydicom."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pydicom
import pydicom.data
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from cxrbench.data import header_values, volumes
from cxrbench.data.dicom_scan import Unusual
from cxrbench.data.dicom_scan import scan as _scan
from cxrbench.data.header_values import HeaderView, _read_native_elements

PYDICOM_FILES = sorted(str(f) for f in (Path(pydicom.data.__file__).parent / "test_files").rglob("*") if f.is_file())


def scan(path, defer_size):
    """The scan's elements, or None where it leaves the file to pydicom (either way)."""
    try:
        return _scan(path, defer_size)
    except Unusual:
        return None


def _reference(path, defer_size):
    """pydicom's element generator's elements of ``path`` (file meta, dataset), None where it declines."""
    try:
        parts = _read_native_elements(path, defer_size)
    except Exception:  # noqa: BLE001 - pydicom's path then goes to dcmread
        return None
    return None if parts is None else (parts[1], parts[0])


def _assert_same(ours, theirs, where) -> None:
    """Every element of both, in the same order, with the same fields; an undefined-length sequence
    (pydicom parses it, the scan skips it) at the same value offset."""
    for mine, ref in zip(ours, theirs, strict=True):
        assert list(mine) == list(ref), where
        for tag, element in mine.items():
            other = ref[tag]
            if element.is_undefined_length:
                assert other.is_undefined_length and other.VR == "SQ", (where, hex(tag))
                assert element.value_tell == other.file_tell and element.value is None, (where, hex(tag))
            else:
                assert tuple(element[:7]) == tuple(other[:7]), (where, hex(tag))
                assert isinstance(element.VR, str | None) and element.VR == other.VR


@pytest.mark.parametrize("defer_size", [4096, 4])
def test_scan_yields_pydicoms_elements_on_its_test_files(defer_size):
    assert len(PYDICOM_FILES) > 50
    taken, left = set(), set()
    for path in PYDICOM_FILES:
        found, reference = scan(path, defer_size), _reference(path, defer_size)
        name = Path(path).name
        if found is None:
            if reference is not None:
                left.add(name)
            continue
        assert reference is not None, name  # never accepts what pydicom's own native path declines
        _assert_same(found[:2][::-1], reference, name)
        taken.add(name)
    # the standard syntaxes, with undefined-length (and private, nested) sequences, are scanned;
    # of what pydicom reads natively, only files cut short are left to it
    assert {"CT_small.dcm", "MR_small.dcm", "MR_small_implicit.dcm", "liver_1frame.dcm", "reportsi.dcm"} <= taken
    assert {"nested_priv_SQ.dcm", "waveform_ecg.dcm", "examples_palette.dcm", "rtplan.dcm"} <= taken
    assert left == {"MR_truncated.dcm", "rtplan_truncated.dcm"}
    assert not {"MR_small_bigendian.dcm", "JPEG2000.dcm", "image_dfl.dcm", "no_meta.dcm"} & taken


def _nested_file(path: Path, *, implicit: bool) -> Path:
    """A CT-like slice with an undefined-length sequence whose undefined-length item holds another
    undefined-length sequence (and a private one), written by pydicom in ``implicit`` or explicit VR."""
    inner = Dataset()
    inner.CodeValue, inner.CodeMeaning = "T-D3000", "Chest"
    inner_seq = Sequence([inner])
    item = Dataset()
    item.ReferencedSOPInstanceUID = "1.2.3.4"
    item.AnatomicRegionSequence = inner_seq
    item["AnatomicRegionSequence"].is_undefined_length = True
    item.is_undefined_length_sequence_item = True
    sized = Dataset()
    sized.ReferencedSOPInstanceUID = "1.2.3.5"
    ds = Dataset()
    ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.9.1", "1.2.9", "1.2.9.7"
    ds.PatientID, ds.PatientSex, ds.PatientAge = "P1", "", "061Y"
    ds.ReferencedImageSequence = Sequence([item, sized])
    ds["ReferencedImageSequence"].is_undefined_length = True
    ds.ImagePositionPatient, ds.ImageOrientationPatient = [-1.5, 2, 30.25], [1, 0, 0, 0, 1, 0]
    ds.SliceThickness, ds.InstanceNumber = 1.25, 7
    ds.add_new(0x00091010, "SQ", Sequence([Dataset()]))
    ds[0x00091010].is_undefined_length = True
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.Rows, ds.Columns = 1, "MONOCHROME2", 4, 4
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 1
    ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
    ds.PixelData = bytes(range(32))
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = (
        "1.2.840.10008.5.1.4.1.1.2",
        "1.2.9.1",
    )
    ds.save_as(path, implicit_vr=implicit, little_endian=True, enforce_file_format=True)
    return path


@pytest.mark.parametrize("implicit", [False, True])
def test_nested_undefined_length_sequences_are_skipped_as_pydicom_reads_them(tmp_path, implicit):
    path = _nested_file(tmp_path / "slice.dcm", implicit=implicit)
    found = scan(path, 16)
    assert found is not None
    _assert_same(found[:2][::-1], _reference(path, 16), path.name)
    assert sum(e.is_undefined_length for e in found[0].values()) == 2
    header = volumes.read_header(path)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(
            volumes, "read_view", lambda p, *, defer_size, force: HeaderView(pydicom.dcmread(p, defer_size=defer_size))
        )
        assert header == volumes.read_header(path)
    assert header.position == (-1.5, 2.0, 30.25) and header.sex is None and header.age == "061Y"
    assert header.pixels is not None and header.pixels.offset == found[0][0x7FE00010].value_tell


def test_cut_files_are_left_to_pydicom(tmp_path):
    """A file cut anywhere: the scan declines or (cut between elements) agrees with pydicom, and the
    header read is the same either way."""
    whole = _nested_file(tmp_path / "whole.dcm", implicit=False).read_bytes()
    pixels = whole.rindex(bytes(range(32)))
    declined = 0
    for cut in sorted({100, 131, 133, 140, 200, 300, 301, pixels - 6, pixels - 1, pixels + 3, len(whole) - 1}):
        path = tmp_path / f"cut{cut}.dcm"
        path.write_bytes(whole[:cut])
        found, reference = scan(path, 16), _reference(path, 16)
        if found is None:
            declined += 1
        else:
            _assert_same(found[:2][::-1], reference, cut)
        with pytest.MonkeyPatch.context() as m:
            fast = volumes.read_header(path)
            m.setattr(
                volumes,
                "read_view",
                lambda p, *, defer_size, force: HeaderView(pydicom.dcmread(p, defer_size=defer_size, force=force)),
            )
            assert fast == volumes.read_header(path), cut
    assert declined >= 8


def test_phantom_slices_scan_as_pydicom_reads_them(tmp_path):
    from cxrbench.data.ct_phantoms import write_ct_phantoms

    write_ct_phantoms(tmp_path, n_patients=2, size=16, seed=0)
    files = sorted(tmp_path.rglob("*.dcm"))
    assert files
    for path in files:
        found = scan(path, 4096)
        assert found is not None
        _assert_same(found[:2][::-1], _reference(path, 4096), path.name)


def test_real_dicom_files_scan_as_pydicom_reads_them(realdata):
    files = sorted(str(f) for folder in ("dicom_generic", "siim") for f in (realdata / folder).rglob("*.dcm"))
    if not files:
        pytest.skip(f"no DICOM files under {realdata}")
    for path in files:
        found, reference = scan(path, 4096), _reference(path, 4096)
        assert (found is None) == (reference is None), path
        if found is not None:
            _assert_same(found[:2][::-1], reference, path)


def test_keyword_table_is_the_standards():
    from pydicom.datadict import dictionary_VR, tag_for_keyword

    for keyword, (tag, vr) in header_values._TAGS.items():
        assert tag_for_keyword(keyword) == tag and dictionary_VR(tag) == vr, keyword


def test_header_pass_and_decode_import_no_pydicom(tmp_path):
    """A prepare worker that reads a standard slice's header and decodes its pixels never imports
    pydicom (0.14 s a process)."""
    from cxrbench.data.ct_phantoms import write_ct_phantoms

    write_ct_phantoms(tmp_path, n_patients=2, size=16, seed=0)
    path = sorted(tmp_path.rglob("*.dcm"))[0]
    code = (
        "import sys\n"
        "from cxrbench.data.volumes import read_header\n"
        "from cxrbench.data.images import _read_ct\n"
        f"h = read_header({str(path)!r})\n"
        "assert not isinstance(h, str) and h.pixels is not None, h\n"
        f"image = _read_ct(__import__('pathlib').Path({str(path)!r}), 10**8, [(50.0, 350.0)], layout=h.pixels)\n"
        "assert image.shape == (16, 16), image.shape\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'pydicom'))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]", done.stdout


def test_each_file_is_read_by_one_parser_only(monkeypatch):
    """A file the scan reads never meets pydicom; one it cannot place (another syntax, no preamble)
    goes straight to dcmread; a standard file with an element the scan does not read (cut short) to
    pydicom's element generator."""
    folder = Path(pydicom.data.__file__).parent / "test_files"
    used = []
    real_native, real_dcmread = header_values._read_native, pydicom.dcmread
    monkeypatch.setattr(header_values, "_read_native", lambda *a: used.append("generator") or real_native(*a))
    monkeypatch.setattr(pydicom, "dcmread", lambda *a, **k: used.append("dcmread") or real_dcmread(*a, **k))
    for name, expected in [
        ("CT_small.dcm", []),
        ("MR_small_implicit.dcm", []),
        ("JPEG2000.dcm", ["dcmread"]),
        ("MR_small_bigendian.dcm", ["dcmread"]),
        ("no_meta.dcm", ["dcmread"]),
        ("MR_truncated.dcm", ["generator"]),
    ]:
        used.clear()
        view = header_values.read_view(folder / name, defer_size=4096, force=True)
        view.get("Rows")
        assert used == expected, name


def test_damaged_files_read_as_dcmread_reads_them(tmp_path):
    """Seeded random damage (bytes changed, cut out, inserted; files cut short) to standard files with
    and without sequences: where the scan takes the damaged file, its header is the one the
    ``dcmread`` path reads; where it leaves it to pydicom's generator, both read the same header or
    both give a reason."""
    import random
    import warnings

    rng = random.Random(12)
    folder = Path(pydicom.data.__file__).parent / "test_files"
    sources = [(folder / n).read_bytes() for n in ("CT_small.dcm", "MR_small_implicit.dcm", "reportsi.dcm")]
    path = tmp_path / "damaged.dcm"
    taken = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for case in range(300):
            data = bytearray(rng.choice(sources))
            for _ in range(rng.randint(1, 4)):
                at = rng.randrange(128, min(len(data), 3000))
                what = rng.random()
                if what < 0.6:
                    data[at] = rng.randrange(256)
                elif what < 0.8:
                    del data[at : at + rng.randint(1, 8)]
                else:
                    data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
            if rng.random() < 0.2:
                data = data[: rng.randrange(132, len(data))]
            path.write_bytes(bytes(data))
            try:
                took = _scan(path, 4096) is not None
            except Unusual:
                took = False
            fast = volumes.read_header(path)
            with pytest.MonkeyPatch.context() as m:
                m.setattr(
                    volumes,
                    "read_view",
                    lambda p, *, defer_size, force: HeaderView(pydicom.dcmread(p, defer_size=defer_size, force=force)),
                )
                slow = volumes.read_header(path)
            if took:
                taken += 1
                assert fast == slow, case
            else:
                assert fast == slow or (isinstance(fast, str) and isinstance(slow, str)), case
    assert taken > 30
