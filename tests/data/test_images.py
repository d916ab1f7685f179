"""read_image against arrays computed independently (written by hand, or by the DICOM formulas)."""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.sequence import Sequence
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, generate_uid

from cxrbench.data.images import JSRT_BYTES, ImageError, read_image, window
from cxrbench.errors import CxrbenchError

RNG = np.random.default_rng(7)


# ------------------------------------------------------------------ helpers
def write_dicom(path: Path, arr: np.ndarray, *, photometric="MONOCHROME2", bits=12, **tags) -> Path:
    """A minimal valid DICOM file (explicit VR little endian) holding ``arr``; extra tags by keyword."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.Modality = "DX"
    ds.set_pixel_data(arr, photometric, bits)
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.save_as(path, enforce_file_format=True)
    return path


def linear_window(x, center, width, y_min, y_max):
    """DICOM PS3.3 C.11.2.1.2.1 (LINEAR), written out independently of pydicom."""
    x = np.asarray(x, dtype=np.float64)
    c, w = center - 0.5, width - 1.0
    out = ((x - c) / w + 0.5) * (y_max - y_min) + y_min
    out = np.where(x <= c - w / 2, y_min, out)
    return np.where(x > c + w / 2, y_max, out)


# ------------------------------------------------------------------ PNG / JPEG / TIFF
def test_png_8bit_read_back_exactly(tmp_path):
    arr = RNG.integers(0, 256, (12, 9), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "a.png")
    got = read_image(tmp_path / "a.png")
    assert got.dtype == np.float32 and got.shape == (12, 9)
    np.testing.assert_array_equal(got, arr.astype(np.float32))


def test_png_16bit_read_back_exactly(tmp_path):
    arr = RNG.integers(0, 65536, (10, 14), dtype=np.uint16)
    arr[0, 0], arr[0, 1] = 0, 65535  # both ends of the range survive
    Image.fromarray(arr).save(tmp_path / "a.png")
    assert Image.open(tmp_path / "a.png").mode.startswith("I")  # really a 16-bit PNG
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), arr.astype(np.float32))


def test_png_rgb_becomes_bt601_luma(tmp_path):
    rgb = RNG.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(rgb, mode="RGB").save(tmp_path / "c.png")
    want = 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]
    np.testing.assert_allclose(read_image(tmp_path / "c.png"), want, atol=1e-4)


def test_jpeg_within_tolerance(tmp_path):
    yy, xx = np.mgrid[0:32, 0:32]
    arr = (40 + 4 * yy + 2 * xx).astype(np.uint8)  # smooth, no wrap: JPEG keeps it closely
    Image.fromarray(arr).save(tmp_path / "a.jpg", quality=95)
    got = read_image(tmp_path / "a.jpg")
    assert np.abs(got - arr).max() <= 4


def test_tiff_16bit_exact(tmp_path):
    arr = RNG.integers(0, 4096, (6, 7), dtype=np.uint16)
    Image.fromarray(arr).save(tmp_path / "a.tif")
    np.testing.assert_array_equal(read_image(tmp_path / "a.tif"), arr)


# ------------------------------------------------------------------ DICOM
def test_float_tiff_with_nan_or_inf_is_refused_and_a_finite_one_read(tmp_path):
    image = np.linspace(0, 1, 40 * 40, dtype=np.float32).reshape(40, 40)
    Image.fromarray(image, mode="F").save(tmp_path / "ok.tif")
    np.testing.assert_array_equal(read_image(tmp_path / "ok.tif"), image)
    for bad in (np.nan, np.inf):
        broken = image.copy()
        broken[3, 5] = bad
        Image.fromarray(broken, mode="F").save(tmp_path / "bad.tif")
        with pytest.raises(ImageError, match="non-finite"):
            read_image(tmp_path / "bad.tif")


def test_dicom_monochrome2_plain(tmp_path):
    arr = RNG.integers(0, 4096, (8, 6), dtype=np.uint16)
    got = read_image(write_dicom(tmp_path / "a.dcm", arr))
    np.testing.assert_array_equal(got, arr.astype(np.float32))


def test_dicom_monochrome1_is_inverted_over_stored_range(tmp_path):
    arr = RNG.integers(0, 4096, (8, 6), dtype=np.uint16)
    got = read_image(write_dicom(tmp_path / "a.dcm", arr, photometric="MONOCHROME1", bits=12))
    np.testing.assert_array_equal(got, 4095.0 - arr)


def test_dicom_rescale_slope_intercept(tmp_path):
    arr = RNG.integers(0, 4096, (5, 5), dtype=np.uint16)
    path = write_dicom(tmp_path / "a.dcm", arr, RescaleSlope=0.5, RescaleIntercept=-100)
    np.testing.assert_allclose(read_image(path), arr * 0.5 - 100, rtol=1e-6)


def test_dicom_signed_pixels(tmp_path):
    arr = RNG.integers(-2048, 2048, (6, 6), dtype=np.int16)
    got = read_image(write_dicom(tmp_path / "a.dcm", arr, bits=12))
    np.testing.assert_array_equal(got, arr)


def test_dicom_window_center_width(tmp_path):
    arr = np.arange(0, 4096, 64, dtype=np.uint16).reshape(8, 8)
    path = write_dicom(tmp_path / "a.dcm", arr, WindowCenter=2000, WindowWidth=1001)
    want = linear_window(arr, 2000, 1001, 0, 4095)
    np.testing.assert_allclose(read_image(path), want, rtol=1e-6)
    got = read_image(path)
    assert got.min() == 0 and got.max() == 4095  # clipped outside the window


def test_dicom_rescale_window_monochrome1_combined(tmp_path):
    # The real CR's tags (slope 0.684, intercept 200, window 1600/2800, MONOCHROME1) by hand:
    arr = RNG.integers(1900, 2900, (8, 8), dtype=np.uint16)
    path = write_dicom(
        tmp_path / "a.dcm",
        arr,
        photometric="MONOCHROME1",
        bits=12,
        RescaleSlope=0.684,
        RescaleIntercept=200,
        WindowCenter=1600,
        WindowWidth=2800,
    )
    y_min, y_max = 200.0, 4095 * 0.684 + 200  # output range = rescaled stored range
    windowed = linear_window(arr * 0.684 + 200, 1600, 2800, y_min, y_max)
    np.testing.assert_allclose(read_image(path), (y_min + y_max) - windowed, rtol=1e-5)


@pytest.mark.parametrize("function", ["LINEAR", "LINEAR_EXACT", "SIGMOID"])
@pytest.mark.parametrize(("center", "width"), [(2000.0, 1001.0), (100.0, 1.0), (-50.5, 300.0)])
def test_window_equals_pydicom(function, center, width):
    from pydicom.pixels import apply_windowing

    if function == "LINEAR_EXACT" and width == 1.0:
        width = 0.5
    x = np.linspace(-600, 4200, 997)
    ds = Dataset()
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsStored, ds.PixelRepresentation = 12, 0
    ds.WindowCenter, ds.WindowWidth, ds.VOILUTFunction = center, width, function
    with np.errstate(over="ignore"):
        want = apply_windowing(x.copy(), ds)
    np.testing.assert_allclose(window(x, center, width, 0, 4095, function=function), want, rtol=1e-9, atol=1e-9)


def test_dicom_sigmoid_and_bad_window(tmp_path):
    arr = np.arange(0, 4096, 64, dtype=np.uint16).reshape(8, 8)
    path = write_dicom(tmp_path / "s.dcm", arr, WindowCenter=1000, WindowWidth=500, VOILUTFunction="SIGMOID")
    want = 4095 / (1 + np.exp(-4 * (arr - 1000.0) / 500))
    np.testing.assert_allclose(read_image(path), want, rtol=1e-6)
    path = write_dicom(tmp_path / "bad.dcm", arr, WindowCenter=1000, WindowWidth=0)
    with pytest.raises(ImageError, match="window width"):
        read_image(path)


def test_dicom_voi_lut_sequence_wins_over_window(tmp_path):
    arr = np.array([[0, 5, 10, 11], [12, 13, 20, 200], [7, 9, 14, 15], [1, 2, 3, 4]], np.uint16)
    lut = np.array([0, 100, 300, 700, 1500, 3100], dtype=np.uint16)  # covers inputs 10..15
    item = Dataset()
    item.LUTDescriptor = [len(lut), 10, 12]
    item.LUTData = lut.tolist()
    item["LUTDescriptor"].VR = "US"
    item["LUTData"].VR = "US"
    path = write_dicom(tmp_path / "a.dcm", arr, VOILUTSequence=Sequence([item]), WindowCenter=5, WindowWidth=3)
    want = lut[np.clip(arr.astype(int) - 10, 0, len(lut) - 1)]  # below/above clamp to the ends
    np.testing.assert_array_equal(read_image(path), want)


def test_dicom_voi_lut_monochrome1_inverts_over_lut_bits(tmp_path):
    arr = np.array([[0, 1, 2, 3]] * 4, dtype=np.uint16)
    item = Dataset()
    item.LUTDescriptor = [4, 0, 8]
    item.LUTData = [0, 10, 20, 255]
    item["LUTDescriptor"].VR = "US"
    item["LUTData"].VR = "US"
    path = write_dicom(tmp_path / "a.dcm", arr, photometric="MONOCHROME1", VOILUTSequence=[item])
    np.testing.assert_array_equal(read_image(path)[0], [255, 245, 235, 0])


def test_dicom_without_preamble_found_by_suffix(tmp_path):
    arr = RNG.integers(0, 256, (6, 6), dtype=np.uint8)
    ds = pydicom.dcmread(write_dicom(tmp_path / "full.dcm", arr, bits=8))
    del ds.file_meta  # a bare dataset: no preamble, no "DICM", implicit VR (old ACR-NEMA style)
    ds.preamble = None
    pydicom.dcmwrite(tmp_path / "bare.dcm", ds, implicit_vr=True, little_endian=True)
    assert (tmp_path / "bare.dcm").read_bytes()[128:132] != b"DICM"
    np.testing.assert_array_equal(read_image(tmp_path / "bare.dcm"), arr)


# ------------------------------------------------------------------ JSRT raw
def test_jsrt_raw_big_endian_inverted(tmp_path):
    values = (np.arange(2048 * 2048, dtype=np.uint32) % 4096).astype(np.uint16)
    path = tmp_path / "JPCLN001.IMG"
    path.write_bytes(values.astype(">u2").tobytes())
    assert path.stat().st_size == JSRT_BYTES
    got = read_image(path, image_format="jsrt-raw")
    want = 4095.0 - values.reshape(2048, 2048)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(read_image(path), want)  # .IMG of the JSRT size is detected
    # Byte order by hand for the first pixels: bytes 00 00 | 00 01 | 00 02 -> 0, 1, 2 -> 4095, 4094, 4093
    assert path.read_bytes()[:6] == b"\x00\x00\x00\x01\x00\x02"
    np.testing.assert_array_equal(got[0, :3], [4095, 4094, 4093])


def test_jsrt_raw_rejects_wrong_size_and_byte_order(tmp_path):
    short = tmp_path / "short.IMG"
    short.write_bytes(b"\x00\x01" * 1000)
    with pytest.raises(ImageError, match="wrong size for JSRT raw"):
        read_image(short, image_format="jsrt-raw")
    little = tmp_path / "little.IMG"
    little.write_bytes(np.full(2048 * 2048, 4000, dtype="<u2").tobytes())  # 4000 read as >u2 is huge
    with pytest.raises(ImageError, match="byte order"):
        read_image(little, image_format="jsrt-raw")


# ------------------------------------------------------------------ bad files -> reasons
def test_truncated_png_and_jpeg(tmp_path):
    Image.fromarray(RNG.integers(0, 256, (64, 64), dtype=np.uint8)).save(tmp_path / "a.png")
    data = (tmp_path / "a.png").read_bytes()
    (tmp_path / "t.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError) as err:
        read_image(tmp_path / "t.png")
    assert err.value.reason == "truncated PNG"
    assert str(tmp_path / "t.png") in err.value.message  # the message names the file
    Image.fromarray(RNG.integers(0, 256, (64, 64), dtype=np.uint8)).save(tmp_path / "a.jpg")
    data = (tmp_path / "a.jpg").read_bytes()
    (tmp_path / "t.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="truncated JPEG"):
        read_image(tmp_path / "t.jpg")


def test_zero_byte_missing_and_random_files(tmp_path):
    (tmp_path / "zero.png").write_bytes(b"")
    with pytest.raises(ImageError, match="empty file"):
        read_image(tmp_path / "zero.png")
    with pytest.raises(ImageError, match="file not found"):
        read_image(tmp_path / "nope.png")
    (tmp_path / "folder.png").mkdir()
    with pytest.raises(ImageError, match="not a regular file"):
        read_image(tmp_path / "folder.png")
    (tmp_path / "noise.bin").write_bytes(RNG.integers(0, 256, 500, dtype=np.uint8).tobytes())
    with pytest.raises(ImageError, match="unrecognised image format"):
        read_image(tmp_path / "noise.bin")
    (tmp_path / "noise.dcm").write_bytes(RNG.integers(0, 256, 500, dtype=np.uint8).tobytes())
    with pytest.raises(ImageError):
        read_image(tmp_path / "noise.dcm")
    (tmp_path / "noise.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(200)))
    with pytest.raises(ImageError, match="PNG"):
        read_image(tmp_path / "noise.png")


def test_wrong_shapes(tmp_path):
    Image.fromarray(np.arange(50, dtype=np.uint8).reshape(1, 50)).save(tmp_path / "strip.png")
    with pytest.raises(ImageError, match="wrong shape 1x50"):
        read_image(tmp_path / "strip.png")
    volume = RNG.integers(0, 4096, (3, 8, 8), dtype=np.uint16)
    with pytest.raises(ImageError, match="3 frames"):
        read_image(write_dicom(tmp_path / "vol.dcm", volume))


def test_truncated_dicoms(tmp_path):
    arr = RNG.integers(0, 4096, (32, 32), dtype=np.uint16)
    data = write_dicom(tmp_path / "a.dcm", arr).read_bytes()
    (tmp_path / "cut_pixels.dcm").write_bytes(data[:-100])  # cut inside the pixel data
    with pytest.raises(ImageError, match="truncated DICOM pixel data"):
        read_image(tmp_path / "cut_pixels.dcm")
    (tmp_path / "cut_header.dcm").write_bytes(data[:200])  # cut inside the header
    with pytest.raises(ImageError, match="DICOM"):
        read_image(tmp_path / "cut_header.dcm")


def test_truncated_compressed_dicom(realdata, tmp_path):
    data = (realdata / "siim" / "images" / "Fake_MONOHR1.dcm").read_bytes()
    (tmp_path / "cut.dcm").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="truncated DICOM"):
        read_image(tmp_path / "cut.dcm")


def test_dicom_without_pixel_data(tmp_path):
    path = write_dicom(tmp_path / "a.dcm", np.zeros((4, 4), np.uint8), bits=8)
    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.save_as(path)
    with pytest.raises(ImageError, match="no pixel data"):
        read_image(path)


def test_bad_image_format_parameter(tmp_path):
    with pytest.raises(CxrbenchError, match="image_format must be one of"):
        read_image(tmp_path / "x.png", image_format="bmp")


# ------------------------------------------------------------------ real files
def test_real_dicoms_decode(realdata):
    generic = realdata / "dicom_generic"
    for name in ("JPEG2000.dcm", "JPGExtended.dcm", "MR_small_jpeg_ls_lossless.dcm"):
        ds = pydicom.dcmread(generic / name)
        got = read_image(generic / name)
        assert got.shape == (ds.Rows, ds.Columns) and np.isfinite(got).all()
        if "WindowCenter" not in ds:  # no VOI: the decoded stored values themselves
            np.testing.assert_array_equal(got, ds.pixel_array)


def test_real_monochrome1_cr_by_hand(realdata):
    path = realdata / "dicom_generic" / "pydicom_CR1_6154_MONOCHROME1.dcm"
    ds = pydicom.dcmread(path)
    raw = ds.pixel_array.astype(np.float64)
    slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
    y_min, y_max = intercept, (2**ds.BitsStored - 1) * slope + intercept
    windowed = linear_window(raw * slope + intercept, float(ds.WindowCenter), float(ds.WindowWidth), y_min, y_max)
    np.testing.assert_allclose(read_image(path), y_min + y_max - windowed, rtol=1e-5)


def test_real_siim_jpeg_baseline_and_flipped_photometric(realdata):
    folder = realdata / "siim" / "images"
    real = next(p for p in folder.glob("*.dcm") if not p.name.startswith("Fake"))
    mono2 = read_image(real)
    np.testing.assert_array_equal(mono2, pydicom.dcmread(real).pixel_array)
    np.testing.assert_array_equal(read_image(folder / "Fake_MONOHR1.dcm"), 255.0 - mono2)


def test_real_nih_png(realdata):
    path = realdata / "nih" / "images" / "00000001_000.png"
    np.testing.assert_array_equal(read_image(path), np.asarray(Image.open(path)))


# ------------------------------------------------------------------ pixel bombs
# Small files declaring huge images: refused from their headers, before any pixel data is
# inflated or decoded. Peak memory is measured in a fresh process (ru_maxrss, which also sees
# Pillow's and zlib's C allocations) as the rise over the process after its imports.
_DECODE_PEAK = textwrap.dedent(
    """
    import resource, sys
    import PIL.Image, PIL.PngImagePlugin, PIL.JpegImagePlugin, pydicom, pydicom.pixels
    from cxrbench.data.images import ImageError, read_image

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        read_image(sys.argv[1])
        print("decoded")
    except ImageError as exc:
        print(exc.reason)
    print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)  # KiB -> MiB
    """
)


def _decode_in_fresh_process(path: Path, **env: str) -> tuple[str, float]:
    """Return (the ImageError reason or "decoded", the rise in peak RSS in MiB) of read_image(path)."""
    repo = str(Path(__file__).resolve().parents[2])
    done = subprocess.run(
        [sys.executable, "-c", _DECODE_PEAK, str(path)],
        env={**os.environ, "PYTHONPATH": repo, **env},
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    reason, mib = done.stdout.strip().splitlines()[-2:]
    return reason, float(mib)


def _deflate_zeros(out, n: int, head: bytes = b"", *, wbits: int = -zlib.MAX_WBITS) -> None:
    """Write ``head`` then ``n`` zero bytes through deflate to ``out``, a block at a time."""
    z = zlib.compressobj(9, zlib.DEFLATED, wbits)
    out.write(z.compress(head))
    block = bytes(1 << 20)
    for start in range(0, n, len(block)):
        out.write(z.compress(block[: min(len(block), n - start)]))
    out.write(z.flush())


def deflated_dicom(
    path: Path, rows: int, cols: int, *, frames: int = 1, pixel_bytes: int | None = None, meta_padding: int = 0
) -> Path:
    """A Deflated Explicit VR Little Endian DICOM declaring rows x cols x frames 8-bit pixels, all
    zero, so that it deflates ~1000:1; ``pixel_bytes`` overrides the pixel data's length;
    ``meta_padding`` bytes of PrivateInformation lengthen the file meta."""
    meta = FileMetaDataset()
    if meta_padding:
        meta.PrivateInformationCreatorUID = "1.2.3.4"
        meta.PrivateInformation = b"\0" * meta_padding
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds = Dataset()
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns, ds.SamplesPerPixel = rows, cols, 1
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    if frames > 1:
        ds.NumberOfFrames = frames
    head = DicomBytesIO()
    head.is_little_endian, head.is_implicit_VR = True, False
    write_dataset(head, ds)
    n = rows * cols * frames if pixel_bytes is None else pixel_bytes
    pixel_header = struct.pack("<HH2s2xI", 0x7FE0, 0x0010, b"OB", n)
    file_meta = DicomBytesIO()
    file_meta.is_little_endian, file_meta.is_implicit_VR = True, False
    write_file_meta_info(file_meta, meta)
    with open(path, "wb") as out:
        out.write(b"\0" * 128 + b"DICM" + file_meta.getvalue())
        _deflate_zeros(out, n, head.getvalue() + pixel_header)
    return path


def png_of_zeros(path: Path, height: int, width: int) -> Path:
    """A valid 8-bit grey PNG of zeros, written row block by row block (never held whole)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    idat = io.BytesIO()
    _deflate_zeros(idat, height * (width + 1), wbits=zlib.MAX_WBITS)  # filter byte 0 + zeros per row
    with open(path, "wb") as out:
        out.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)))
        out.write(chunk(b"IDAT", idat.getvalue()) + chunk(b"IEND", b""))
    return path


def jpeg_declaring(path: Path, height: int, width: int) -> Path:
    """A 16x16 JPEG whose frame header (SOF0) is patched to declare height x width."""
    buf = io.BytesIO()
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(buf, format="JPEG")
    data = bytearray(buf.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    path.write_bytes(bytes(data))
    return path


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss is in KiB on Linux")
def test_deflated_dicom_bomb_is_refused_from_its_header_without_inflating(tmp_path):
    path = deflated_dicom(tmp_path / "bomb.dcm", 15000, 15000)
    assert path.stat().st_size < 400_000  # 225 MB of pixels in a few hundred KB
    reason, mib = _decode_in_fresh_process(path)
    assert reason == "DICOM declares 15000x15000 pixels (225 Mpx) > limit 100 Mpx"
    assert mib < 200, f"peak memory rose by {mib:.0f} MiB"
    # a file meta longer than the first bytes the reader peeks at takes the careful path too
    long_meta = deflated_dicom(tmp_path / "long-meta.dcm", 15000, 15000, meta_padding=10_000)
    reason, mib = _decode_in_fresh_process(long_meta)
    assert reason == "DICOM declares 15000x15000 pixels (225 Mpx) > limit 100 Mpx"
    assert mib < 200, f"peak memory rose by {mib:.0f} MiB"


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss is in KiB on Linux")
def test_png_and_jpeg_bombs_are_refused_from_their_headers(tmp_path):
    png = png_of_zeros(tmp_path / "bomb.png", 11000, 11000)
    assert png.stat().st_size < 400_000
    jpeg = jpeg_declaring(tmp_path / "bomb.jpg", 11000, 11000)
    for path, name in ((png, "PNG"), (jpeg, "JPEG")):
        reason, mib = _decode_in_fresh_process(path)
        assert reason == f"{name} declares 11000x11000 pixels (121 Mpx) > limit 100 Mpx"
        assert mib < 200, f"{name}: peak memory rose by {mib:.0f} MiB"


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss is in KiB on Linux")
def test_pixel_limit_from_the_environment_refuses_before_decoding(tmp_path):
    # 64 Mpx is under Pillow's own limits, so only ours can stop it (decoded, it takes ~320 MB)
    png = png_of_zeros(tmp_path / "big.png", 8000, 8000)
    reason, mib = _decode_in_fresh_process(png, CXRBENCH_MAX_PIXELS="50_000_000")
    assert reason == "PNG declares 8000x8000 pixels (64 Mpx) > limit 50 Mpx"
    assert mib < 200, f"peak memory rose by {mib:.0f} MiB"
    frames = deflated_dicom(tmp_path / "frames.dcm", 300, 200, frames=3)
    reason, _ = _decode_in_fresh_process(frames, CXRBENCH_MAX_PIXELS="100000")
    assert reason == "DICOM declares 3 frames of 300x200 pixels (0.18 Mpx) > limit 0.1 Mpx"


def test_pixel_limit_parameter_and_bad_values(tmp_path, monkeypatch):
    path = tmp_path / "a.png"
    Image.fromarray(RNG.integers(0, 256, (40, 30), dtype=np.uint8)).save(path)
    assert read_image(path, max_pixels=1200).shape == (40, 30)  # the limit itself is allowed
    with pytest.raises(ImageError, match=r"PNG declares 40x30 pixels \(0.0012 Mpx\) > limit 0.0011 Mpx"):
        read_image(path, max_pixels=1100)
    with pytest.raises(CxrbenchError, match="max_pixels must be a positive integer"):
        read_image(path, max_pixels=0)
    monkeypatch.setenv("CXRBENCH_MAX_PIXELS", "lots")
    with pytest.raises(CxrbenchError, match="CXRBENCH_MAX_PIXELS must be a positive integer.*'lots'"):
        read_image(path)


def test_deflated_dicom_decodes_and_may_not_inflate_past_its_declared_pixels(tmp_path):
    arr = RNG.integers(0, 4096, (24, 20), dtype=np.uint16)
    path = write_dicom(tmp_path / "small.dcm", arr)
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.save_as(tmp_path / "deflated.dcm", enforce_file_format=True)
    np.testing.assert_array_equal(read_image(tmp_path / "deflated.dcm"), arr.astype(np.float32))
    # 64x64 declared, but 40 MB of pixel data follows: refused once past what 64x64 can need
    stuffed = deflated_dicom(tmp_path / "stuffed.dcm", 64, 64, pixel_bytes=40 << 20)
    with pytest.raises(ImageError, match="inflates to more data than its declared pixels need"):
        read_image(stuffed)
