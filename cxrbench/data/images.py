"""The one image decoder: PNG 8/16-bit, JPEG, TIFF, DICOM and raw JSRT to a 2-D float32 array.

Grey levels come out as a radiologist would see them (higher = brighter), so that every dataset
enters preprocessing the same way; anything undecodable raises ``ImageError`` with a short reason.
Pixel dimensions are bounded from the headers before any pixel data is inflated or decoded, so a
small file declaring a huge image (a decompression bomb) is refused without the memory.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import io
import math
import os
import stat
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxrbench.errors import CxrbenchError

IMAGE_FORMATS = ("png", "jpeg", "tiff", "dicom", "jsrt-raw")
#: CT slices are decoded to HU and windowed: ``ct:LEVEL:WIDTH`` (``ct_format``) names the window;
#: ``ct:L1:W1+L2:W2+L3:W3`` three windows, one channel each.
CT_PREFIX = "ct:"
JSRT_SIDE = 2048
JSRT_BYTES = JSRT_SIDE * JSRT_SIDE * 2
JSRT_MAX = 4095  # 12 bits used of 16
MIN_SIDE = 4  # smaller images are "wrong shape", e.g. a 1xN strip
MAX_ASPECT = 8.0  # longer side / shorter side; chest films are at most ~1.5
MAX_PIXELS = 100_000_000  # rows x columns x frames; a chest film is at most ~4300 x 4300 = 18 Mpx
PIXELS_ENV = "CXRBENCH_MAX_PIXELS"  # overrides MAX_PIXELS
#: The file meta (with the transfer syntax) lies in a DICOM file's first bytes: preamble 132, then
#: group 2, a few hundred bytes; a private group 2 can make it longer, so the peek is generous.
_META_PEEK = 4096
_DEFLATED_HEADER_BYTES = 16 << 20  # a deflated DICOM's elements before its pixel data, at most

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
_TIFF_MAGICS = (b"II*\x00", b"MM\x00*")
_DICOM_SUFFIXES = (".dcm", ".dicom", ".dic")
# ITU-R BT.601 luma, the weights Pillow and most viewers use for colour -> grey.
_LUMA = np.array([0.299, 0.587, 0.114])


class ImageError(CxrbenchError):
    """An image that cannot be decoded; ``reason`` is short, e.g. ``"truncated PNG"``."""

    def __init__(self, reason: str, path: str | Path | None = None) -> None:
        self.reason = reason
        self.path = None if path is None else str(path)
        message = reason if path is None else f"{path}: {reason}"
        super().__init__(message)


def pixel_limit(max_pixels: int | None = None) -> int:
    """Return the bound on an image's pixels (rows x columns x frames): ``max_pixels``, else the
    environment variable ``CXRBENCH_MAX_PIXELS``, else ``MAX_PIXELS``."""
    name = "max_pixels"
    if max_pixels is None:
        text = os.environ.get(PIXELS_ENV, "").strip()
        if not text:
            return MAX_PIXELS
        name = PIXELS_ENV
        try:
            max_pixels = int(text)
        except ValueError:
            raise CxrbenchError(f"{PIXELS_ENV} must be a positive integer (pixels), got {text!r}") from None
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1:
        raise CxrbenchError(f"{name} must be a positive integer (pixels), got {max_pixels!r}")
    return max_pixels


_stamps_seen: contextvars.ContextVar[dict[str, tuple[int, int] | None] | None] = contextvars.ContextVar(
    "stamps_seen", default=None
)


def file_stamp(path: str | Path) -> tuple[int, int] | None:
    """An image file's identity for caches: (size, modification time in ns), that of its volume for
    a NIfTI slice (``VOLUME#K``); None when it cannot be stat'ed. Inside ``stat_once`` each file is
    stat'ed once and its first answer stands."""
    from cxrbench.data.nifti import split_slice

    target = str(split_slice(path)[0])
    seen = _stamps_seen.get()
    if seen is not None and target in seen:
        return seen[target]
    try:
        info = os.stat(target)
        stamp = int(info.st_size), int(info.st_mtime_ns)
    except OSError:
        stamp = None
    if seen is not None:
        seen[target] = stamp
    return stamp


@contextlib.contextmanager
def stat_once() -> Iterator[None]:
    """Within, ``file_stamp`` remembers what it found: a prepare's header pass, image cache and stage
    key ask for the same files' stamps (three stats a slice, minutes for 1.8 M CT slices on a network
    file system), and one snapshot taken before reading them keeps the three consistent (a file
    changed meanwhile is seen as changed by the next prepare)."""
    token = _stamps_seen.set({})
    try:
        yield
    finally:
        _stamps_seen.reset(token)


def read_image(
    path: str | Path,
    *,
    image_format: str | None = None,
    max_pixels: int | None = None,
    ct_uint8: bool = False,
    layout: PixelLayout | None = None,
) -> np.ndarray:
    """Return the image at ``path`` as 2-D float32 grey levels as displayed (higher = brighter);
    ``[C, H, W]`` for a CT format of C windows.

    DICOM: Modality LUT (rescale slope/intercept or LUT sequence), then VOI LUT sequence or window
    centre/width, then MONOCHROME1 inverted within the output range. JSRT raw (headerless 2048x2048
    big-endian 12-bit, higher = darker on film) is inverted to ``4095 - value``. PNG/JPEG/TIFF
    keep their stored values; colour is converted to grey with BT.601 luma weights.

    ``image_format`` is one of ``IMAGE_FORMATS`` or None to detect it from magic bytes / suffix
    (a ``.img`` file of exactly 2048*2048*2 bytes is taken as JSRT raw).

    An image whose header declares more pixels (rows x columns x frames) than ``pixel_limit
    (max_pixels)`` raises ``ImageError`` before its pixel data is decoded; for PNG, JPEG and TIFF,
    Pillow's own decompression-bomb error (2 x ``PIL.Image.MAX_IMAGE_PIXELS``) also applies.

    A ``ct:LEVEL:WIDTH`` format gives the window mapped onto [0, 1]; with ``ct_uint8`` it gives
    ``round(255 x that)`` as uint8 instead (what fixed scaling stores), DICOM slices in one pass;
    a ``layout`` found by ``volumes.read_header`` reads a CT slice's pixel bytes without parsing it.
    """
    limit = pixel_limit(max_pixels)
    check_image_format(image_format)
    from cxrbench.data.nifti import split_slice

    volume, index = split_slice(path)
    if index is not None:  # VOLUME.nii[.gz]#K: one slice of a NIfTI CT volume
        image = _read_nifti_ct(Path(volume), index, image_format, limit)
        return np.rint(image * 255.0).astype(np.uint8) if ct_uint8 else image
    path = Path(path)
    try:
        info = path.stat()  # one stat for both checks: a decode stats millions of files
    except FileNotFoundError:
        raise ImageError("file not found", path) from None
    except OSError as exc:
        raise ImageError(f"unreadable file ({exc.strerror or exc})", path) from None
    if not stat.S_ISREG(info.st_mode):
        raise ImageError("not a regular file", path)
    size = info.st_size
    if size == 0:
        raise ImageError("empty file (0 bytes)", path)
    fmt = image_format or _detect_format(path, size)
    try:
        if fmt.startswith(CT_PREFIX):
            image = _read_ct(path, limit, ct_windows(fmt), uint8=ct_uint8, layout=layout)
        elif fmt == "dicom":
            image = _read_dicom(path, limit)
        elif fmt == "jsrt-raw":
            image = _read_jsrt(path, size)
        else:
            image = _read_pillow(path, fmt, limit)
    except ImageError as exc:
        if exc.path is None:
            raise ImageError(exc.reason, path) from None
        raise
    except MemoryError:
        raise
    except Exception as exc:  # decoder libraries raise anything; a bad file must not crash a stage
        raise ImageError(f"undecodable {fmt} ({type(exc).__name__}: {exc})", path) from None
    _check_shape(image, path, image_channels(fmt))
    return image


def check_image_format(image_format: str | None) -> None:
    """One-line error unless ``image_format`` is None, one of ``IMAGE_FORMATS`` or a ``ct_format``."""
    if image_format is None or image_format in IMAGE_FORMATS:
        return
    if isinstance(image_format, str) and image_format.startswith(CT_PREFIX):
        ct_windows(image_format)
        return
    raise CxrbenchError(
        f"image_format must be one of {', '.join(IMAGE_FORMATS)}, ct:LEVEL:WIDTH or None, got {image_format!r}"
    )


def ct_format(*windows: tuple[float, float]) -> str:
    """The image format of CT slices shown in ``windows`` (``(level, width)`` HU each, one per
    channel: one or three), e.g. ``ct:50:350`` or ``ct:-600:1500+40:400+400:1800``."""
    from cxrbench.data.volumes import check_channels

    def text(value: float) -> str:  # positional: no exponent, whose '+' would split the windows
        return np.format_float_positional(float(value), trim="-")

    check_channels(len(windows))
    return CT_PREFIX + "+".join(f"{text(level)}:{text(width)}" for level, width in windows)


def ct_windows(image_format: str) -> list[tuple[float, float]]:
    """The ``(level, width)`` of each channel of a ``ct_format`` format."""
    return list(_parsed_windows(image_format))


@functools.lru_cache(maxsize=64)
def _parsed_windows(image_format: str) -> tuple[tuple[float, float], ...]:
    """``ct_windows``, parsed once per format: a CT decode asks three times a slice (~0.015 ms)."""
    from cxrbench.data.volumes import parse_windows

    return tuple(parse_windows(image_format[len(CT_PREFIX) :]))


def image_channels(image_format: str | None) -> int:
    """Channels a decoded image has: one per window of a CT format, else 1 (grey)."""
    if image_format is not None and image_format.startswith(CT_PREFIX):
        return len(ct_windows(image_format))
    return 1


def _detect_format(path: Path, size: int) -> str:
    with open(path, "rb") as fh:
        head = fh.read(132)
    if head.startswith(_PNG_MAGIC):
        return "png"
    if head.startswith(_JPEG_MAGIC):
        return "jpeg"
    if head[:4] in _TIFF_MAGICS:
        return "tiff"
    if head[128:132] == b"DICM":
        return "dicom"
    suffix = path.suffix.lower()
    if suffix in _DICOM_SUFFIXES:
        return "dicom"  # DICOM without the 128-byte preamble; pydicom reads it with force=True
    if suffix == ".img" and size == JSRT_BYTES:
        return "jsrt-raw"
    raise ImageError(f"unrecognised image format (suffix {suffix or 'none'!r}, unknown magic bytes)")


def _check_shape(image: np.ndarray, path: Path, channels: int = 1) -> None:
    """A 2-D image (``[channels, H, W]`` for a CT slice in several windows) of sane sides."""
    if image.shape[:-2] != ((channels,) if channels > 1 else ()) or image.ndim < 2:
        raise ImageError(f"wrong shape {image.shape}, expected a 2-D image", path)
    h, w = image.shape[-2:]
    if min(h, w) < MIN_SIDE:
        raise ImageError(f"wrong shape {h}x{w}, sides must be at least {MIN_SIDE}", path)
    if max(h, w) / min(h, w) > MAX_ASPECT:
        raise ImageError(f"wrong shape {h}x{w}, aspect ratio above {MAX_ASPECT:g}", path)
    if image.dtype.kind in "fc" and not np.isfinite(image).all():  # integers always are (a pass less)
        raise ImageError("non-finite pixel values (NaN or inf)", path)


def _check_pixels(fmt: str, rows: int, cols: int, frames: int, limit: int) -> None:
    """Raise ``ImageError`` when the declared rows x cols x frames exceed ``limit``."""
    total = rows * cols * frames
    if total > limit:
        what = f"{rows}x{cols} pixels" if frames == 1 else f"{frames} frames of {rows}x{cols} pixels"
        raise ImageError(f"{fmt} declares {what} ({total / 1e6:.3g} Mpx) > limit {limit / 1e6:.3g} Mpx")


def _to_grey(arr: np.ndarray) -> np.ndarray:
    """Colour (H, W, 3|4) -> float grey with BT.601 weights (alpha dropped); grey passes through."""
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        return arr[..., :3].astype(np.float64) @ _LUMA
    if arr.ndim == 3 and arr.shape[-1] == 2:  # grey + alpha
        return arr[..., 0]
    return arr


# ---------------------------------------------------------------- Pillow: PNG, JPEG, TIFF
def _read_pillow(path: Path, fmt: str, limit: int) -> np.ndarray:
    from PIL import Image

    name = fmt.upper()
    try:
        with warnings.catch_warnings():
            # our limit decides; Pillow's warning threshold (half its error threshold) would not
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:  # reads the header only
                width, height = img.size
                _check_pixels(name, height, width, 1, limit)  # load() decodes the first frame only
                img.load()
                if img.mode in ("P", "PA"):
                    img = img.convert("RGBA")
                elif img.mode == "1" or img.mode.startswith("I;16") and img.mode != "I;16":
                    img = img.convert("L" if img.mode == "1" else "I")
                elif img.mode == "CMYK":
                    img = img.convert("RGB")
                arr = np.asarray(img)
    except Image.DecompressionBombError:
        pillow_limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)
        raise ImageError(
            f"{name} declares over {pillow_limit / 1e6:.3g} Mpx, Pillow's decompression-bomb limit"
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        text = str(exc)
        if "truncated" in text or isinstance(exc, EOFError) or "broken data stream" in text:
            raise ImageError(f"truncated {name}") from None
        if "cannot identify image file" in text:
            raise ImageError(f"not a valid {name} file") from None
        raise ImageError(f"undecodable {name} ({text})") from None
    return _to_grey(arr).astype(np.float32)


# ---------------------------------------------------------------- DICOM
def _read_dicom(path: Path, limit: int) -> np.ndarray:
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut, apply_voi

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ds = _dcmread(path, force=path.suffix.lower() in _DICOM_SUFFIXES, limit=limit)
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError, zlib.error) as exc:
        raise ImageError(f"not a readable DICOM file ({type(exc).__name__}: {exc})") from None
    cut_short = any("end of file" in str(w.message).lower() for w in caught)
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        if cut_short:
            raise ImageError("truncated DICOM")
        # pydicom stops silently at a cut inside an element, so this may be a truncated file too
        raise ImageError("DICOM has no pixel data (not an image, or truncated)")
    meta = getattr(ds, "file_meta", None)
    if meta is None or "TransferSyntaxUID" not in meta:
        # A bare dataset (no preamble/file meta): pixels are native, in the encoding it was read with.
        from pydicom.dataset import FileMetaDataset
        from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

        implicit, little = ds.original_encoding
        if meta is None:
            ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = (
            ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
        )
    frames = _check_dicom_pixels(ds, limit)
    if frames > 1:
        raise ImageError(f"wrong shape: DICOM volume with {frames} frames, expected one 2-D image")
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    try:
        arr = ds.pixel_array
    except (ValueError, EOFError) as exc:
        text = str(exc).lower()
        if cut_short or any(k in text for k in ("less than expected", "ends before", "shorter")):
            raise ImageError("truncated DICOM pixel data") from None
        raise ImageError(f"undecodable DICOM pixel data ({text})") from None
    except (NotImplementedError, RuntimeError) as exc:
        syntax = ds.file_meta.get("TransferSyntaxUID", "unknown")
        raise ImageError(f"no decoder for DICOM transfer syntax {syntax} ({exc})") from None

    if not photometric.startswith("MONOCHROME"):
        return _to_grey(arr).astype(np.float32)  # colour DICOM: no VOI/modality for display
    if arr.ndim != 2:
        raise ImageError(f"wrong shape {arr.shape}, expected a 2-D image")

    lo, hi = _stored_range(ds)
    out = apply_modality_lut(arr, ds)
    if ds.get("ModalityLUTSequence"):
        lo, hi = 0.0, float(2 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    elif "RescaleSlope" in ds and "RescaleIntercept" in ds:
        slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
        lo, hi = sorted((lo * slope + intercept, hi * slope + intercept))
    # VOI: a LUT sequence wins over window centre/width (PS3.3 C.11.2); pydicom's windowing maps
    # onto [lo, hi] as computed above, its VOI LUT onto [0, 2**bits - 1].
    if ds.get("VOILUTSequence"):
        out = apply_voi(out, ds, index=0)
        lo, hi = 0.0, float(2 ** int(ds.VOILUTSequence[0].LUTDescriptor[2]) - 1)
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        center, width = _first(ds["WindowCenter"].value), _first(ds["WindowWidth"].value)
        function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").upper()
        out = window(out, center, width, lo, hi, function=function)
    out = np.asarray(out, dtype=np.float64)
    if photometric == "MONOCHROME1":
        out = (lo + hi) - out
    return out.astype(np.float32)


def _dcmread(path: Path, *, force: bool, limit: int):
    """Return ``pydicom.dcmread(path, force=force)``, except that a deflated dataset (Deflated
    Explicit VR Little Endian, which pydicom inflates whole before reading a single element) is
    inflated here in two bounded steps: the elements before the pixel data, checked against
    ``limit``, then the rest, at most what the declared pixels need. It comes back as a dataset
    in the explicit VR little endian it inflates to."""
    import pydicom
    from pydicom.filereader import _read_file_meta_info, read_preamble
    from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

    with open(path, "rb") as fh:
        head = fh.read(_META_PEEK)
        meta_end = _meta_end(head)
        if meta_end is not None and DeflatedExplicitVRLittleEndian.encode() not in head[:meta_end]:
            # the whole file meta is in the first bytes and names no deflate: a plain read
            # (parsing the meta twice to find out costs a tenth of a CT slice's decode)
            fh.seek(0)
            return pydicom.dcmread(fh, force=force)
        fh.seek(0)
        read_preamble(fh, force)  # raises InvalidDicomError without the DICM prefix, unless force
        meta = _read_file_meta_info(fh)
        if meta.get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian:
            fh.seek(0)
            return pydicom.dcmread(fh, force=force)
        ds = _read_deflated(fh, limit)
    ds.file_meta = meta
    meta.TransferSyntaxUID = ExplicitVRLittleEndian  # what the dataset now is
    return ds


def _meta_end(head: bytes) -> int | None:
    """Where the file meta of a DICOM file starting with ``head`` ends, from its group length
    (0002,0000) in explicit VR 'UL'; None unless ``head`` holds the preamble and all of the meta."""
    if head[128:132] != b"DICM" or head[132:138] != b"\x02\x00\x00\x00UL" or len(head) < 144:
        return None
    end = 144 + int.from_bytes(head[140:144], "little")
    return end if end <= len(head) else None


def _read_deflated(fh, limit: int):
    """Return the dataset deflated in ``fh`` from its position on, read as a bare dataset."""
    import pydicom

    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    chunks: list[bytes] = []
    _inflate(fh, inflater, chunks, _DEFLATED_HEADER_BYTES)
    head = pydicom.dcmread(io.BytesIO(b"".join(chunks)), force=True, stop_before_pixels=True)
    frames = max(1, _check_dicom_pixels(head, limit))
    if "Rows" not in head and not inflater.eof:
        raise ImageError(f"deflated DICOM declares no image size in its first {_DEFLATED_HEADER_BYTES >> 20} MiB")
    bits = int(head.get("BitsAllocated", 16) or 16) * int(head.get("SamplesPerPixel", 1) or 1)
    pixel_bytes = math.ceil(int(head.get("Rows", 0) or 0) * int(head.get("Columns", 0) or 0) * frames * bits / 8)
    need = _DEFLATED_HEADER_BYTES + pixel_bytes
    _inflate(fh, inflater, chunks, need + 1)
    if sum(map(len, chunks)) > need:
        raise ImageError("deflated DICOM inflates to more data than its declared pixels need")
    data = b"".join(chunks)
    del chunks
    return pydicom.dcmread(io.BytesIO(data), force=True)


def _inflate(fh, inflater, chunks: list[bytes], upto: int) -> bool:
    """Inflate the raw deflate stream in ``fh`` onto ``chunks`` until they hold ``upto`` bytes;
    return whether the stream ended (also when the file ends first: a truncated stream)."""
    have = sum(map(len, chunks))
    while have < upto and not inflater.eof:
        data = inflater.unconsumed_tail or fh.read(1 << 16)
        if not data:
            return True
        out = inflater.decompress(data, upto - have)
        chunks.append(out)
        have += len(out)
    return inflater.eof


def _check_dicom_pixels(ds, limit: int) -> int:
    """Raise ``ImageError`` when the dataset declares more pixels than ``limit``; return its
    number of frames."""
    try:
        rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError) as exc:
        raise ImageError(f"invalid DICOM image dimensions ({exc})") from None
    _check_pixels("DICOM", rows, cols, max(frames, 1), limit)
    return frames


def window(x: np.ndarray, center: float, width: float, lo: float, hi: float, *, function: str = "LINEAR") -> np.ndarray:
    """Return ``x`` windowed onto ``[lo, hi]`` as float64 (DICOM PS3.3 C.11.2.1.2, C.11.2.1.3).

    LINEAR and LINEAR_EXACT are the standard's piecewise ramps written as one clipped line;
    SIGMOID is the logistic curve. The same output range as pydicom's ``apply_windowing``.
    """
    out = np.asarray(x, dtype=np.float64)
    if function == "SIGMOID":
        if width <= 0:
            raise ImageError(f"invalid DICOM window width {width:g} for SIGMOID")
        with np.errstate(over="ignore"):  # exp -> inf far below the centre gives lo, as it should
            return (hi - lo) / (1.0 + np.exp(-4.0 * (out - center) / width)) + lo
    if function == "LINEAR":
        if width < 1:
            raise ImageError(f"invalid DICOM window width {width:g} (LINEAR needs >= 1)")
        center, width = center - 0.5, width - 1.0
        if width == 0:  # a step at the centre
            return np.where(out > center, hi, lo)
    elif function == "LINEAR_EXACT":
        if width <= 0:
            raise ImageError(f"invalid DICOM window width {width:g} for LINEAR_EXACT")
    else:
        raise ImageError(f"unsupported DICOM VOI LUT function {function!r}")
    out = (out - center) * ((hi - lo) / width) + (0.5 * (hi - lo) + lo)
    return np.clip(out, lo, hi, out=out)


def _first(value) -> float:
    """Return the first of a multi-valued DICOM number (several windows: the first is default)."""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        value = value[0]
    return float(value)


def _stored_range(ds) -> tuple[float, float]:
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)))
    if int(ds.get("PixelRepresentation", 0)) == 1:
        return float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
    return 0.0, float(2**bits - 1)


# ---------------------------------------------------------------- CT slices
def _read_ct(
    path: Path,
    limit: int,
    windows: list[tuple[float, float]],
    *,
    uint8: bool = False,
    layout: PixelLayout | None = None,
) -> np.ndarray:
    """One CT slice: stored values to HU by its rescale slope/intercept, then each window onto [0, 1]
    (the fixed scaling of CT: the same HU give the same grey in every slice and scan), or onto
    0..255 as uint8 with ``uint8``: ``[H, W]`` for one window, ``[C, H, W]`` for several.
    ``layout`` (from the header pass) reads the pixels directly (without importing pydicom: a
    decode worker that only takes that path starts 0.4 s sooner)."""
    if layout is not None and layout.offset >= 0:
        image = _read_ct_at(path, layout, limit, windows, uint8=uint8)
        if image is not None:
            return image
    from pydicom.errors import InvalidDicomError

    from cxrbench.data.volumes import window_all

    try:
        ds = _dcmread(path, force=True, limit=limit)
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError, zlib.error) as exc:
        raise ImageError(f"not a readable DICOM file ({type(exc).__name__}: {exc})") from None
    if "PixelData" not in ds:
        raise ImageError("DICOM has no pixel data (not an image, or truncated)")
    if _check_dicom_pixels(ds, limit) > 1:
        raise ImageError("wrong shape: a CT slice file holds one 2-D image, this one several frames")
    if not str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper().startswith("MONOCHROME"):
        raise ImageError("colour DICOM is not a CT slice")
    try:
        pixels = native_pixels(ds)
        if pixels is None:
            pixels = ds.pixel_array
    except Exception as exc:  # decoders raise many types for bad pixel data
        raise ImageError(f"undecodable DICOM pixel data ({type(exc).__name__}: {exc})") from None
    if pixels.ndim != 2:
        raise ImageError(f"wrong shape {pixels.shape}, expected a 2-D image")
    return window_all(pixels, ds, windows, uint8=uint8)


_NATIVE_SYNTAXES = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1")  # implicit / explicit VR little endian
PIXEL_DATA = 0x7FE00010


@dataclass(frozen=True, slots=True)
class PixelLayout:
    """How a native (uncompressed little-endian) one-frame grey slice stores its values and where
    in its file they start: what a second read needs to take them without parsing the file again.

    CT prepare reads every slice's header first (to order the series); the layout found then lets
    the decode read just the pixel bytes, a tenth of a pydicom parse."""

    offset: int  # byte offset of the PixelData value in the file; -1: not known
    rows: int
    cols: int
    dtype: str  # numpy dtype of the stored words, e.g. '<i2'
    bits_stored: int
    slope: float = 1.0
    intercept: float = 0.0

    @property
    def nbytes(self) -> int:
        return self.rows * self.cols * np.dtype(self.dtype).itemsize


def pixel_layout(ds, *, offset: int = -1) -> PixelLayout | None:
    """The layout of ``ds``'s pixels when it is a single-frame grey slice in a native little-endian
    transfer syntax with 8-, 16- or 32-bit words; None when pydicom's decoders are needed.
    ``ds``: a dataset or anything with its ``get``, ``in`` and ``file_meta`` (a ``HeaderView``)."""
    meta = getattr(ds, "file_meta", None)
    syntax = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    if syntax not in _NATIVE_SYNTAXES or PIXEL_DATA not in ds:
        return None
    try:
        rows, cols = int(ds.get("Rows")), int(ds.get("Columns"))
        allocated = int(ds.get("BitsAllocated"))
        stored = int(ds.get("BitsStored", allocated) or allocated)
        signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
        slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
        intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    except (AttributeError, TypeError, ValueError):
        return None
    if samples != 1 or frames != 1 or allocated not in (8, 16, 32) or not 0 < stored <= allocated:
        return None
    if not photometric.startswith("MONOCHROME") or rows < 1 or cols < 1:
        return None
    dtype = f"<{'i' if signed else 'u'}{allocated // 8}"
    return PixelLayout(offset, rows, cols, dtype, stored, slope, intercept)


def unpack_pixels(data: bytes, layout: PixelLayout) -> np.ndarray:
    """The stored values in ``data`` (at least ``layout.nbytes``), bits above BitsStored cleared
    (unsigned) or sign-extended (signed), as pydicom does."""
    dtype = np.dtype(layout.dtype)
    pixels = np.frombuffer(data, dtype=dtype, count=layout.rows * layout.cols).reshape(layout.rows, layout.cols)
    shift = dtype.itemsize * 8 - layout.bits_stored
    if shift:
        pixels = np.right_shift(np.left_shift(pixels, shift), shift)
    return pixels


def native_pixels(ds) -> np.ndarray | None:
    """The stored values of a single-frame grey slice in a native little-endian transfer syntax,
    read straight from PixelData (what ``ds.pixel_array`` returns for it, without the decoder
    machinery: a third of a plain read's time); None when the slice needs pydicom's decoders."""
    layout = pixel_layout(ds)
    if layout is None:
        return None
    data = ds.PixelData
    if not isinstance(data, bytes | bytearray) or len(data) < layout.nbytes:
        return None  # pydicom's decoder gives the reason
    return unpack_pixels(data, layout)


def _read_ct_at(path: Path, layout: PixelLayout, limit: int, windows: list[tuple[float, float]], *, uint8: bool):
    """A CT slice from the pixel bytes at ``layout.offset``, without parsing the file; None when the
    file no longer holds them there (shorter than the layout says), so the caller parses it."""
    from cxrbench.data.volumes import window_all

    _check_pixels("DICOM", layout.rows, layout.cols, 1, limit)
    with open(path, "rb") as fh:
        fh.seek(layout.offset)
        data = fh.read(layout.nbytes)
    if len(data) < layout.nbytes:
        return None
    rescale = {"RescaleSlope": layout.slope, "RescaleIntercept": layout.intercept}
    return window_all(unpack_pixels(data, layout), rescale, windows, uint8=uint8)


def _read_nifti_ct(path: Path, index: int, image_format: str | None, limit: int) -> np.ndarray:
    """Slice ``index`` of a NIfTI volume in HU, windowed as a ``ct_format`` says (``[C, H, W]`` for
    several windows)."""
    from cxrbench.data.nifti import read_slice_hu
    from cxrbench.data.volumes import window_hu

    if image_format is None or not image_format.startswith(CT_PREFIX):
        raise ImageError("a NIfTI slice (VOLUME#K) needs a ct:LEVEL:WIDTH image format", path)
    if not path.is_file():
        raise ImageError("file not found", path)
    try:
        hu = read_slice_hu(path, index)
    except MemoryError:
        raise
    except Exception as exc:  # nibabel raises many types for a bad file
        raise ImageError(f"unreadable NIfTI volume ({type(exc).__name__}: {exc})", path) from None
    if hu.size > limit:
        raise ImageError(f"slice of {hu.size} pixels exceeds the limit of {limit}", path)
    windows = ct_windows(image_format)
    image = window_hu(hu, *windows[0]) if len(windows) == 1 else np.stack([window_hu(hu, *w) for w in windows])
    _check_shape(image, path, len(windows))
    return image


# ---------------------------------------------------------------- JSRT raw
def _read_jsrt(path: Path, size: int) -> np.ndarray:
    if size != JSRT_BYTES:
        raise ImageError(f"wrong size for JSRT raw: {size} bytes, expected {JSRT_BYTES} (2048x2048 16-bit)")
    raw = np.fromfile(os.fspath(path), dtype=">u2").reshape(JSRT_SIDE, JSRT_SIDE)
    top = int(raw.max())
    if top > JSRT_MAX:
        raise ImageError(f"not 12-bit JSRT raw data (max value {top} > {JSRT_MAX}; wrong byte order?)")
    # The laser digitiser stores values that grow with film density (darker = higher).
    return (JSRT_MAX - raw.astype(np.float32)).astype(np.float32)
