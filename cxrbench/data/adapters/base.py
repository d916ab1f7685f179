"""What a dataset adapter returns (one row per image, before any policy) and the helpers all adapters share.

Adapters only *read*: label policies (uncertain handling, rare-label dropping), view filtering,
splits, image decoding and caching happen once, in the generic path (`cxrbench.data.prepare`).
"""

from __future__ import annotations

import collections.abc
import inspect
import math
import os
import re
import types
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import numpy as np
import pandas as pd

from cxrbench.data.images import PixelLayout
from cxrbench.errors import CxrbenchError

#: Columns every adapter frame has (``None``/NaN where the dataset does not record it).
REQUIRED_COLUMNS = ("path", "patient_id", "view")
#: Optional columns the generic path understands.
OPTIONAL_COLUMNS = (
    "sample_id",
    "study_id",
    "sex",
    "age",
    "race",
    "split",
    "report",
    "series_id",
    "slice_index",
    "slice_position",
)
#: Label values adapters emit: positive, negative, uncertain (policy applied later), NaN = unknown.
POSITIVE, NEGATIVE, UNCERTAIN = 1.0, 0.0, -1.0
#: Normalised frontal views; ``FRONTAL`` is a frontal image whose projection (PA or AP) the
#: dataset does not record (Indiana's ``Frontal``). Anything else is kept upper-cased.
FRONTAL_VIEWS = frozenset({"PA", "AP", "FRONTAL"})


@dataclass
class RawDataset:
    """One row per image as the dataset's creators distribute it.

    ``frame`` columns:

    - ``path`` (str): absolute path of the image file (it need not exist yet; missing files are
      quarantined by the generic path).
    - ``sample_id`` (str, optional but emitted by every dataset adapter): the image's id as the
      dataset itself names it (NIH ``Image Index``, MIMIC ``dicom_id``, CheXpert ``Path`` as
      written in its CSV, the file stem where the dataset has nothing else), so ids do not change
      with the folder layout and predictions made elsewhere join on them. Unique per dataset.
      Rows without one get the image path relative to the dataset root.
    - ``patient_id`` (str), ``view`` (str or None: ``PA``, ``AP``, ``LATERAL``, ``LL``, ... upper-case).
    - optional ``study_id`` (str), ``sex`` (``M``/``F``/None), ``age`` (float years, NaN unknown),
      ``race`` (str as the dataset records it, None unknown; for attribute probes),
      ``split`` (``train``/``val``/``test``/None: the official split; None rows get a seeded
      patient-level split), ``report`` (free text); CT slices: ``series_id`` (SeriesInstanceUID),
      ``slice_index`` (0, 1, ... along the slice normal) and ``slice_position`` (mm along it);
      segmentation: ``mask_rle`` (``cxrbench.data.masks.encode_rle`` at the image's own size; empty
      for an empty mask).
    - one float column per name in ``labels``: 1.0 / 0.0 / -1.0 (uncertain) / NaN (unknown).

    ``task`` is ``multiclass`` when exactly one label per image is positive (one-hot columns).
    ``image_format`` names a non-standard pixel encoding the decoder must be told about
    (``jsrt-raw``, ``ct:LEVEL:WIDTH``); ``None`` means "detect from the file". ``rejected``: files
    the adapter itself refused before decoding (``path``, ``sample_id``, ``patient_id``, ``reason``;
    e.g. a CT series with missing slices), which go to the quarantine table with the reason.
    ``pixel_layouts``: path -> where a CT slice's pixel bytes lie, found while its header was read
    (the decode then reads the bytes instead of parsing the file again); a speed hint only.
    """

    frame: pd.DataFrame
    labels: list[str]
    task: Literal["multilabel", "multiclass"] = "multilabel"
    image_format: str | None = None
    notes: dict[str, str] = field(default_factory=dict)
    rejected: pd.DataFrame | None = None
    pixel_layouts: dict[str, PixelLayout] | None = None

    def __post_init__(self) -> None:
        missing = [c for c in (*REQUIRED_COLUMNS, *self.labels) if c not in self.frame.columns]
        if missing:
            raise ValueError(f"adapter frame lacks columns {preview(missing)}")


def preview(values: Iterable[object], limit: int = 3) -> str:
    """Return the first ``limit`` values quoted and the rest counted: ``'a', 'b', 'c' and 12 more``.

    Every error message that names values read from a file goes through this, so a message stays
    one short line however many values are wrong.
    """
    items = list(values)
    shown = ", ".join(repr(v) if isinstance(v, str) else str(v) for v in items[:limit])
    rest = len(items) - limit
    return f"{shown} and {rest} more" if rest > 0 else shown


def label_key(name: object) -> str:
    """Return the comparison key of a label name: lower case, runs of non-alphanumerics as one ``_``.

    ``"Pleural Effusion"``, ``"pleural  effusion"`` and ``"Pleural_Effusion"`` share the key
    ``pleural_effusion``; the generic path names label columns by it (empty for names without
    letters or digits).
    """
    return re.sub(r"[^0-9a-zA-Z]+", "_", str(name).strip()).strip("_").lower()


#: The CheXpert labeler's "no finding" column, and the one finding that does not contradict it.
NO_FINDING = "No Finding"
SUPPORT_DEVICES = "Support Devices"


def fill_no_finding(frame: pd.DataFrame, findings: Sequence[str]) -> int:
    """Set a blank ``No Finding`` to 0.0 where another finding of the row is positive or uncertain.

    The CheXpert labeler (CheXpert, MIMIC-CXR-JPG, BRAX) writes ``No Finding`` only as 1.0 or
    blank: blank when some finding is positive or uncertain (then "no finding" is false), and also
    blank when nothing is positive but the report never says it is normal. The first case becomes
    0.0; the second stays NaN (unknown), as do rows whose only positive is ``Support Devices``
    (devices do not contradict "no finding": the real CheXpert train.csv has 8,808 rows with both
    ``No Finding`` and ``Support Devices`` at 1.0). Returns how many rows were set to 0.0.
    """
    others = [f for f in findings if f not in (NO_FINDING, SUPPORT_DEVICES) and f in frame]
    if NO_FINDING not in frame or not others:
        return 0
    values = frame[others].to_numpy(dtype=float)
    contradicted = ((values == POSITIVE) | (values == UNCERTAIN)).any(axis=1)
    blank = frame[NO_FINDING].isna().to_numpy()
    frame.loc[blank & contradicted, NO_FINDING] = NEGATIVE
    return int((blank & contradicted).sum())


def require_file(root: Path, *candidates: str) -> Path:
    """Return the first of ``candidates`` (relative to ``root``) that exists, else a one-line error."""
    root = Path(root)
    if not root.is_dir():
        raise CxrbenchError(f"dataset root {root} is not a directory")
    for name in candidates:
        path = root / name
        if path.exists():
            return path
    expected = " or ".join(str(root / c) for c in candidates)
    raise CxrbenchError(f"expected {expected}: not found (is --root the folder you unpacked the dataset into?)")


# --- value normalisers shared by every adapter (kept here: any other module would be a dataset) ---

_VIEW_ALIASES = {
    "POSTEROANTERIOR": "PA",
    "ANTEROPOSTERIOR": "AP",
    "LAT": "LATERAL",
    "L": "LATERAL",
}
_SEX_ALIASES = {"M": "M", "MALE": "M", "F": "F", "FEMALE": "F"}
_SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validate": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
    "trainval": "trainval",
}
#: Oldest plausible age in years; older values are recording errors (NIH has "412Y").
MAX_AGE_YEARS = 120.0
_AGE_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([YyMmWwDd]?)\s*")
_AGE_UNIT_YEARS = {"": 1.0, "Y": 1.0, "M": 1.0 / 12.0, "W": 7.0 / 365.25, "D": 1.0 / 365.25}


def _blank(value: object) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def normalise_view(value: object) -> str | None:
    """Return the normalised view (``PA``, ``AP``, ``LATERAL``, ``LL`` or the upper-cased value), None if blank.

    Spaces, underscores and hyphens are folded (``AP_horizontal`` = ``AP HORIZONTAL``); a view whose
    first word is AP or PA is that projection (``AP supine``, ``AP AXIAL``, ``PA LLD`` decubitus).
    """
    if _blank(value):
        return None
    text = re.sub(r"[\s_\-]+", " ", str(value)).strip().upper()
    if not text:
        return None
    if text in _VIEW_ALIASES:
        return _VIEW_ALIASES[text]
    first = text.split(" ")[0]
    return first if first in ("AP", "PA") else text


def normalise_sex(value: object) -> str | None:
    """Return ``M``/``F`` for male/female spellings, None for anything else (blank, ``Unknown``, ``O``)."""
    if _blank(value):
        return None
    return _SEX_ALIASES.get(str(value).strip().upper())


def parse_age(value: object) -> float:
    """Return the age in years as a float; NaN when blank, unparseable, negative or above 120.

    Understands plain numbers and DICOM-style ``058Y`` / ``007M`` / ``012W`` / ``003D`` strings.
    """
    if _blank(value) or isinstance(value, bool):
        return float("nan")
    if isinstance(value, (int, float, np.integer, np.floating)):
        years = float(value)
    else:
        match = _AGE_RE.fullmatch(str(value))
        if not match:
            return float("nan")
        years = float(match.group(1)) * _AGE_UNIT_YEARS[match.group(2).upper()]
    if not math.isfinite(years) or years < 0 or years > MAX_AGE_YEARS:
        return float("nan")
    return years


def normalise_split(value: object, *, source: str) -> str | None:
    """Return ``train``/``val``/``test``/``trainval`` for a split spelling, None if blank; else a one-line error."""
    if _blank(value):
        return None
    text = str(value).strip().lower()
    if not text:
        return None
    if text not in _SPLIT_ALIASES:
        allowed = ", ".join(sorted(set(_SPLIT_ALIASES)))
        raise CxrbenchError(f"{source}: unknown split value '{value}' (allowed: {allowed}, or blank)")
    return _SPLIT_ALIASES[text]


def dicom_headers(paths: Sequence[str | Path]) -> pd.DataFrame:
    """Return ``patient_id``, ``view``, ``sex``, ``age`` read from each DICOM header (None/NaN if unreadable).

    Reads only those four tags (``stop_before_pixels``), so it is cheap enough for a few 10k files.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    tags = ["PatientID", "ViewPosition", "PatientSex", "PatientAge"]
    rows = []
    for path in paths:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=tags)
        except (OSError, InvalidDicomError):
            rows.append((None, None, None, float("nan")))
            continue
        pid = str(ds.get("PatientID", "") or "").strip() or None
        rows.append(
            (
                pid,
                normalise_view(ds.get("ViewPosition")),
                normalise_sex(ds.get("PatientSex")),
                parse_age(ds.get("PatientAge")),
            )
        )
    return pd.DataFrame(rows, columns=["patient_id", "view", "sex", "age"])


# --- adapter options from the command line (``--option KEY=VALUE``) or a suite file ---

_TRUE = frozenset({"true", "1", "yes", "y", "on"})
_FALSE = frozenset({"false", "0", "no", "n", "off"})
_NONE = frozenset({"", "none", "null"})


def parse_bool(value: object, *, name: str) -> bool:
    """Return ``value`` as a bool (``true/false``, ``1/0``, ``yes/no``, ``on/off``); else a one-line error."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise CxrbenchError(f"option '{name}' must be true or false, got '{value}'")


def _type_name(tp: object) -> str:
    if get_origin(tp) is Literal:
        return " or ".join(repr(a) for a in get_args(tp))
    return getattr(tp, "__name__", None) or str(tp)


def _coerce(text: str, tp: object, *, name: str) -> object:
    """Return ``text`` converted to annotation ``tp``; raise ValueError when it cannot be."""
    origin = get_origin(tp)
    if tp is Any or tp is str or tp is object:
        return text
    if origin in (Union, types.UnionType):
        members = [a for a in get_args(tp) if a is not type(None)]
        if type(None) in get_args(tp) and text.strip().lower() in _NONE:
            return None
        # in the order the annotation lists them: ``bool | str`` tries bool first
        for member in members:
            try:
                return _coerce(text, member, name=name)
            except (ValueError, CxrbenchError):
                continue
        raise ValueError(text)
    if origin is Literal:
        for allowed in get_args(tp):
            if text.strip() == str(allowed):
                return allowed
        raise ValueError(text)
    if origin in (list, tuple, Sequence, collections.abc.Sequence):
        args = get_args(tp)
        item = args[0] if args else str
        items = [_coerce(part.strip(), item, name=name) for part in text.split(",") if part.strip()]
        return tuple(items) if origin is tuple else items
    if tp is bool:
        return parse_bool(text, name=name)
    if tp is int:
        return int(text.strip())
    if tp is float:
        return float(text.strip())
    if tp is Path or (isinstance(tp, type) and issubclass(tp, os.PathLike)):
        return Path(text.strip()).expanduser()
    raise ValueError(text)


def option_names(load: Callable[..., object], *, skip: int = 1, hidden: Collection[str] = ()) -> list[str]:
    """The keyword options of ``load`` after its first ``skip`` parameters, less ``hidden`` ones."""
    params = list(inspect.signature(load).parameters.values())[skip:]
    return [p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name not in hidden]


def coerce_options(
    load: Callable[..., object],
    options: Mapping[str, object],
    *,
    what: str | None = None,
    skip: int = 1,
    hidden: Collection[str] = (),
) -> dict[str, object]:
    """Return ``options`` checked against ``load``'s keyword parameters, strings converted by annotation.

    Strings become what each parameter's annotation asks for: ``bool`` (true/false, 1/0, yes/no),
    ``int``, ``float``, ``Path``, ``list[...]`` (comma-separated), a ``Literal`` value, or None for
    ``none``/empty where the annotation allows None. Values that are not strings pass unchanged.
    An unknown option or an unreadable value is a one-line error naming it (and the known options).
    ``what`` names the owner in messages (default: ``dataset NAME`` from ``load``'s module); the
    first ``skip`` parameters (the dataset root, a method's encoder) and ``hidden`` ones, which the
    caller fills in itself, are not options.
    """
    dataset = what or "dataset " + load.__module__.rsplit(".", 1)[-1].replace("_", "-")
    signature = inspect.signature(load)
    params = list(signature.parameters.values())[skip:]
    if any(p.kind is p.VAR_KEYWORD for p in params):
        raise ValueError(f"{dataset}: its options must be listed, not taken as **kwargs")
    known = set(option_names(load, skip=skip, hidden=hidden))
    hints = get_type_hints(load.__init__ if isinstance(load, type) else load)
    out: dict[str, object] = {}
    for key, value in options.items():
        if key not in known:
            listed = ", ".join(sorted(known)) or "none"
            raise CxrbenchError(f"unknown option '{key}' for {dataset} (known: {listed})")
        tp = hints.get(key, Any)
        if not isinstance(value, str):
            out[key] = value
            continue
        try:
            out[key] = _coerce(value, tp, name=key)
        except (ValueError, CxrbenchError):
            raise CxrbenchError(f"option '{key}' for {dataset}: cannot read '{value}' as {_type_name(tp)}") from None
    return out
