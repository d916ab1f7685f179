"""CT volumes: slices ordered by position along the normal (not by file name or InstanceNumber),
series checks with their reasons, HU and windowing against hand-computed values."""

from __future__ import annotations

import dataclasses
import math
import random
from pathlib import Path

import numpy as np
import pytest

from cxrbench.data.ct_phantoms import write_ct_phantoms, write_slice
from cxrbench.data.images import ct_format, read_image
from cxrbench.data.volumes import SliceHeader, group_series, order_series, parse_window, read_headers, window_hu
from cxrbench.errors import CxrbenchError


def _header(z: float, *, orientation=(1, 0, 0, 0, 1, 0), instance=1, thickness=1.0, series="S", path=None):
    return SliceHeader(
        path=path or f"/x/{z}.dcm",
        series_uid=series,
        study_uid="T",
        sop_uid=f"sop{z}",
        patient_id="P",
        position=(0.0, 0.0, float(z)),
        orientation=tuple(float(v) for v in orientation),
        thickness=thickness,
        instance=instance,
        shape=(8, 8),
    )


def test_phantom_series_are_ordered_by_position_not_by_file_name_or_instance(tmp_path: Path) -> None:
    write_ct_phantoms(tmp_path, n_patients=2, size=16, seed=3)
    files = sorted((tmp_path / "train").rglob("*.dcm"))
    random.Random(0).shuffle(files)
    series, unreadable = group_series(read_headers(files, workers=0), files)
    assert not unreadable and len(series) == 2
    for item in series:
        assert item.problem is None
        z = [s.position[2] for s in item.slices]
        assert z == sorted(z) and item.positions == pytest.approx(z)
        assert np.diff(z) == pytest.approx([item.spacing] * (len(z) - 1))
        instances = [s.instance for s in item.slices]
        names = [Path(s.path).name for s in item.slices]
        assert instances != sorted(instances) and names != sorted(names)  # neither gives the order


def test_oblique_series_are_ordered_along_the_cross_product_of_the_direction_cosines() -> None:
    # rows along x, columns tilted 30 degrees towards z: normal = (0, -sin, cos)
    c, s = math.cos(math.pi / 6), math.sin(math.pi / 6)
    orientation = (1, 0, 0, 0, c, s)
    normal = np.array([0.0, -s, c])
    positions = [np.array([0.0, 0.0, 0.0]) + k * 2.0 * normal + np.array([3.0, 0, 0]) for k in (3, 0, 2, 1)]
    slices = [
        SliceHeader(f"/x/{k}", "S", "T", f"sop{k}", "P", tuple(p), orientation, 2.0, 10 - k, (8, 8))
        for k, p in zip((3, 0, 2, 1), positions, strict=True)
    ]
    ordered = order_series(slices)
    assert ordered.problem is None
    assert [h.path for h in ordered.slices] == ["/x/0", "/x/1", "/x/2", "/x/3"]
    assert ordered.positions == pytest.approx([0.0, 2.0, 4.0, 6.0])


@pytest.mark.parametrize(
    ("slices", "reason"),
    [
        ([_header(z) for z in (0, 1, 2, 4, 5)], "missing slices"),
        ([_header(0), _header(1), _header(2, orientation=(0, 1, 0, 0, 0, -1))], "mixed slice orientations"),
        ([_header(0), _header(1), _header(1)], "two slices at the same position"),
        ([_header(z, thickness=5.0) for z in (0, 5, 10)], "slice thickness 5 mm > 3 mm"),
    ],
)
def test_unsound_series_are_rejected_with_the_reason(slices, reason: str) -> None:
    out = order_series(slices, max_thickness=3.0)
    assert out.problem is not None and reason in out.problem
    assert len(out.slices) == len(slices)


def test_a_series_with_an_unreadable_file_is_rejected_whole(tmp_path: Path) -> None:
    write_ct_phantoms(tmp_path, n_patients=2, size=16, seed=1)
    files = sorted((tmp_path / "train").rglob("*.dcm"))
    files[0].write_bytes(b"not dicom at all")
    series, unreadable = group_series(read_headers(files, workers=0), files)
    assert [p for p, _ in unreadable] == [str(files[0])]
    assert "not a DICOM slice" in unreadable[0][1]
    broken = [s for s in series if s.problem]
    assert len(broken) == 1 and broken[0].problem == "series has an unreadable slice file"
    assert all(Path(h.path).parent == files[0].parent for h in broken[0].slices)


def test_hu_and_window_match_hand_computed_values(tmp_path: Path) -> None:
    stored = np.tile(np.array([[0, 899, 1074, 1249], [1424, 2000, 24, 1000]], dtype=np.int16), (2, 1))
    meta = {
        "sop": "1.2.3.4",
        "study": "1.2.3",
        "series": "1.2.3.5",
        "patient": "P",
        "sex": "F",
        "age": 50,
        "instance": 1,
        "position": (0.0, 0.0, 0.0),
        "pixel": 1.0,
        "thickness": 1.0,
    }
    path = tmp_path / "slice.dcm"
    write_slice(path, stored, meta)  # intercept -1024, slope 1: HU = stored - 1024
    got = read_image(path, image_format=ct_format((50, 350)))
    hu = stored.astype(float) - 1024  # -1024, -125, 50, 225, 400, 976, -1000, -24
    want = np.clip((hu - (50 - 175)) / 350, 0, 1)
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert got[0, 1] == 0 and got[0, 2] == pytest.approx(0.5) and got[0, 3] == 1
    lung = read_image(path, image_format=ct_format(parse_window("lung")))
    np.testing.assert_allclose(lung, np.clip((hu - (-600 - 750)) / 1500, 0, 1), atol=1e-6)


def test_window_values_and_errors() -> None:
    assert window_hu(np.array([-125.0, 50.0, 225.0, -1000.0, 3000.0]), 50, 350).tolist() == [0, 0.5, 1, 0, 1]
    assert parse_window("soft-tissue") == (50.0, 350.0) and parse_window("40,400") == (40.0, 400.0)
    for bad in ("wide", "50", "50,-3", "a,b"):
        with pytest.raises(CxrbenchError, match="window"):
            parse_window(bad)
    with pytest.raises(CxrbenchError, match="window '50'"):
        read_image("/nonexistent.dcm", image_format="ct:50")


def test_the_one_pass_window_of_stored_values_matches_hu_then_window() -> None:
    from cxrbench.data.volumes import to_hu, window_stored

    pixels = np.random.default_rng(0).integers(-2000, 4000, (64, 64)).astype(np.int16)
    for slope, intercept in ((1.0, -1024.0), (2.5, 100.0), (0.5, 0.0)):
        ds = {"RescaleSlope": slope, "RescaleIntercept": intercept}
        for level, width in ((50.0, 350.0), (-600.0, 1500.0)):
            got = window_stored(pixels, ds, level, width)
            assert got.dtype == np.float32
            np.testing.assert_allclose(got, window_hu(to_hu(pixels, ds), level, width), rtol=0, atol=2e-6)


def test_the_uint8_window_is_round_255_times_the_float64_window() -> None:
    from cxrbench.data.volumes import to_hu, window_stored

    pixels = np.random.default_rng(1).integers(-2000, 4000, (128, 128)).astype(np.int16)
    for slope, intercept in ((1.0, -1024.0), (2.5, 100.0)):
        ds = {"RescaleSlope": slope, "RescaleIntercept": intercept}
        got = window_stored(pixels, ds, 50.0, 350.0, uint8=True)
        want = np.rint(window_hu(to_hu(pixels, ds), 50.0, 350.0).astype(np.float64) * 255)
        assert got.dtype == np.uint8
        # float32 vs float64 may only flip a value lying on a rounding tie
        assert np.abs(got.astype(int) - want).max() <= 1 and (got == want).mean() > 0.999


def _native_slice(tmp_path: Path, stored: np.ndarray, *, allocated: int, bits: int, signed: bool, syntax) -> Path:
    """A one-frame MONOCHROME2 slice whose PixelData is ``stored`` as raw little-endian words; the
    bits above BitsStored are left as the caller filled them (pydicom must clear or extend them)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = allocated, bits, bits - 1
    ds.PixelRepresentation = int(signed)
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    raw = stored.astype(f"<{'i' if signed else 'u'}{allocated // 8}").tobytes()
    ds.PixelData = raw + b"\0" * (len(raw) % 2)
    path = tmp_path / f"{allocated}-{bits}-{int(signed)}-{syntax}.dcm"
    ds.save_as(path, implicit_vr=syntax == "1.2.840.10008.1.2", little_endian=True, enforce_file_format=True)
    return path


@pytest.mark.parametrize(
    ("allocated", "bits", "signed"),
    [(16, 16, True), (16, 12, True), (16, 12, False), (16, 16, False), (8, 8, False), (32, 24, True), (32, 32, False)],
)
@pytest.mark.parametrize("syntax", ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1"])
def test_native_pixels_equal_pydicoms_pixel_array(tmp_path: Path, allocated, bits, signed, syntax) -> None:
    """The fast read of uncompressed slices against pydicom's decoder, with garbage in the unused
    high bits (cleared for unsigned, sign-extended for signed) and an odd pixel count."""
    import pydicom

    from cxrbench.data.images import native_pixels

    rng = np.random.default_rng(allocated + bits)
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1)) if signed else (0, 2**bits)
    stored = rng.integers(lo, hi, (7, 9), dtype=np.int64)
    words = stored & ((1 << bits) - 1)  # two's complement in the stored bits ...
    if bits < allocated:  # ... and random garbage above them
        words |= rng.integers(0, 2 ** (allocated - bits), stored.shape) << bits
    words = words.astype(f"<u{allocated // 8}").view(f"<{'i' if signed else 'u'}{allocated // 8}")
    ds = pydicom.dcmread(_native_slice(tmp_path, words, allocated=allocated, bits=bits, signed=signed, syntax=syntax))
    got = native_pixels(ds)
    assert got is not None
    np.testing.assert_array_equal(got, ds.pixel_array)
    np.testing.assert_array_equal(got, stored)  # the values written, whatever the high bits held


def test_native_pixels_leave_other_syntaxes_to_pydicom(tmp_path: Path) -> None:
    import pydicom
    from pydicom.uid import RLELossless

    from cxrbench.data.images import native_pixels

    ds = pydicom.dcmread(
        _native_slice(
            tmp_path, np.zeros((4, 4), np.int16), allocated=16, bits=16, signed=True, syntax="1.2.840.10008.1.2.1"
        )
    )
    ds.compress(RLELossless)
    assert native_pixels(ds) is None  # encapsulated: pydicom's decoder does it
    del ds.PixelData
    assert native_pixels(ds) is None


@pytest.mark.parametrize("aspect", ["pad", "crop", "stretch"])
def test_the_ct_cache_is_within_one_grey_level_of_float_resampling(tmp_path: Path, aspect: str) -> None:
    """The cache decodes CT to uint8 and resamples in 8 bits; the reference resamples the float
    window (read_image) and rounds afterwards. Same size: identical; resized: within one level."""
    from cxrbench.data.cache import build_cache, open_cache
    from cxrbench.data.transforms import Preprocess, preprocess

    write_ct_phantoms(tmp_path / "ct", n_patients=2, size=48, seed=3)
    paths = sorted(str(p) for p in (tmp_path / "ct").rglob("*.dcm"))[:6]
    fmt = ct_format((50, 350))
    for size in (48, 20):
        settings = Preprocess(size=size, aspect=aspect, scaling="fixed")
        assert (
            build_cache(paths, tmp_path / f"c{size}{aspect}", settings=settings, image_format=fmt, workers=0)
            == [None] * 6
        )
        got = open_cache(tmp_path / f"c{size}{aspect}").astype(int)
        want = np.stack([preprocess(read_image(p, image_format=fmt), settings) for p in paths]).astype(int)
        if size == 48:
            assert np.abs(got - want).max() <= 1 and (got == want).mean() > 0.999
        else:
            assert np.abs(got - want).max() <= 1 and (got == want).mean() > 0.9


@pytest.mark.parametrize(
    ("allocated", "bits", "signed"), [(16, 12, True), (16, 16, False), (8, 8, False), (32, 24, True)]
)
@pytest.mark.parametrize("syntax", ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1"])
def test_the_header_pass_finds_the_pixel_bytes_and_reading_them_equals_a_full_read(
    tmp_path: Path, allocated, bits, signed, syntax
) -> None:
    """read_header records where PixelData's value lies (without reading it); the decode reading
    those bytes gives exactly what parsing the whole file gives."""
    from cxrbench.data.volumes import read_header

    rng = np.random.default_rng(bits)
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1)) if signed else (0, 2**bits)
    stored = rng.integers(lo, hi, (40, 33), dtype=np.int64)
    words = (stored & ((1 << bits) - 1)) | (rng.integers(0, 2 ** (allocated - bits), stored.shape) << bits)
    words = words.astype(f"<u{allocated // 8}").view(f"<{'i' if signed else 'u'}{allocated // 8}")
    path = _native_slice(tmp_path, words, allocated=allocated, bits=bits, signed=signed, syntax=syntax)
    import pydicom

    ds = pydicom.dcmread(path)
    ds.SeriesInstanceUID, ds.ImagePositionPatient = "1.2.3", [0, 0, 0]
    ds.save_as(path, implicit_vr=syntax == "1.2.840.10008.1.2", little_endian=True, enforce_file_format=True)
    header = read_header(path)
    assert header.pixels is not None and header.pixels.offset > 0
    raw = path.read_bytes()[header.pixels.offset : header.pixels.offset + header.pixels.nbytes]
    assert raw == bytes(pydicom.dcmread(path).PixelData[: header.pixels.nbytes])
    for fmt in (ct_format((50, 350)), ct_format((0, 2**bits))):  # and a window with every grey level in use
        for uint8 in (False, True):  # uint8 from 8/16-bit words: the lookup table of every word
            fast = read_image(path, image_format=fmt, ct_uint8=uint8, layout=header.pixels)
            np.testing.assert_array_equal(fast, read_image(path, image_format=fmt, ct_uint8=uint8))


def test_a_layout_that_no_longer_fits_the_file_falls_back_to_parsing_it(tmp_path: Path) -> None:
    from cxrbench.data.images import ImageError
    from cxrbench.data.volumes import read_header

    write_ct_phantoms(tmp_path / "ct", n_patients=2, size=32, seed=1)
    path = sorted((tmp_path / "ct").rglob("*.dcm"))[0]
    layout = read_header(path).pixels
    fmt = ct_format((50, 350))
    want = read_image(path, image_format=fmt)
    stale = dataclasses.replace(layout, offset=path.stat().st_size - 10)  # past the end
    np.testing.assert_array_equal(read_image(path, image_format=fmt, layout=stale), want)
    path.write_bytes(path.read_bytes()[: layout.offset + 100])  # truncated since its header was read
    with pytest.raises(ImageError, match="DICOM"):
        read_image(path, image_format=fmt, layout=layout)


def test_prepare_rsna_pe_decodes_from_the_header_pass_layouts_without_parsing_again(
    tmp_path: Path, monkeypatch
) -> None:
    """The CT prepare decode reads pixel bytes at the offsets its header pass found (no pydicom parse
    of any slice a second time), and the cache equals one decoded by parsing every file."""
    import pydicom

    from cxrbench.data.adapters import load_dataset
    from cxrbench.data.cache import build_cache, open_cache
    from cxrbench.data.transforms import Preprocess

    write_ct_phantoms(tmp_path / "ct", n_patients=3, size=32, seed=2)
    raw = load_dataset("rsna-pe", tmp_path / "ct", {"workers": 1})
    paths = raw.frame["path"].tolist()
    assert raw.pixel_layouts is not None and set(raw.pixel_layouts) == set(paths)
    settings = Preprocess(size=24, scaling="fixed")
    build_cache(paths, tmp_path / "parsed", settings=settings, image_format=raw.image_format, workers=0)
    parses = []
    real = pydicom.dcmread
    monkeypatch.setattr(pydicom, "dcmread", lambda *a, **k: parses.append(a) or real(*a, **k))
    layouts = [raw.pixel_layouts[p] for p in paths]
    build_cache(paths, tmp_path / "fast", settings=settings, image_format=raw.image_format, workers=0, layouts=layouts)
    assert parses == []
    np.testing.assert_array_equal(open_cache(tmp_path / "fast"), open_cache(tmp_path / "parsed"))


def test_a_decode_from_header_pass_layouts_never_imports_pydicom(tmp_path: Path) -> None:
    """A fresh process decoding slices at their layouts' offsets (what prepare's decode workers do)
    does not import pydicom: 0.4 s of each spawned worker's start-up."""
    import json
    import subprocess
    import sys

    from cxrbench.data.adapters import load_dataset

    write_ct_phantoms(tmp_path / "ct", n_patients=2, size=24, seed=4)
    raw = load_dataset("rsna-pe", tmp_path / "ct", {"workers": 1})
    jobs = [(p, dataclasses.asdict(raw.pixel_layouts[p])) for p in raw.frame["path"][:5]]
    script = (
        "import json, sys\n"
        "from cxrbench.data.cache import build_cache\n"
        "from cxrbench.data.images import PixelLayout\n"
        "from cxrbench.data.transforms import Preprocess\n"
        "jobs = json.loads(sys.argv[1])\n"
        "reasons = build_cache([p for p, _ in jobs], sys.argv[2], settings=Preprocess(size=16, scaling='fixed'),\n"
        "                      image_format=sys.argv[3], workers=0, layouts=[PixelLayout(**l) for _, l in jobs])\n"
        "assert reasons == [None] * len(jobs), reasons\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'pydicom'))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, json.dumps(jobs), str(tmp_path / "cache"), raw.image_format],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    assert out.stdout.strip() == "[]", out.stdout


def test_parallel_header_pass_equals_the_serial_one_in_order(tmp_path: Path) -> None:
    """Two workers and small chunks: while the workers start, this process reads chunks from the far
    end itself; every header still lands at its file's place (a bad file's reason too)."""
    write_ct_phantoms(tmp_path, n_patients=2, size=16, seed=3)
    files = sorted((tmp_path / "train").rglob("*.dcm"))
    random.Random(1).shuffle(files)
    (tmp_path / "bad.dcm").write_bytes(b"not a dicom file")
    files.insert(len(files) // 2, tmp_path / "bad.dcm")
    serial = read_headers(files, workers=0)
    parallel = read_headers(files, workers=2, chunk=2, progress=lambda n: None)
    assert len(files) >= 12 and parallel == serial
    assert isinstance(serial[len(files) // 2], str) and all(not isinstance(h, str) for h in serial[:3])
