"""Generic adapter for any dataset described by one CSV: a path column, a patient column, label columns.

Values are normalised with the shared helpers in ``base`` (view, sex, age, split). The table is
not trusted: image paths are normalised and must stay inside the dataset root.
"""

from __future__ import annotations

import codecs
import os
from pathlib import Path

import numpy as np
import pandas as pd

from cxrbench.data.adapters.base import (
    RawDataset,
    normalise_sex,
    normalise_split,
    normalise_view,
    parse_age,
    require_file,
)
from cxrbench.errors import CxrbenchError

#: Columns with these exact names are passed through (normalised) rather than taken as labels.
_PASSTHROUGH = ("study_id", "sex", "age", "race", "report")


def _as_label(series: pd.Series) -> pd.Series | None:
    """Return ``series`` as floats if every non-blank value is 1, 0 or -1, else None."""
    numeric = pd.to_numeric(series, errors="coerce")
    if numeric[series.notna()].isna().any():
        return None
    values = numeric.dropna().unique()
    if not np.isin(values, (1.0, 0.0, -1.0)).all():
        return None
    return numeric.astype(float)


def _column(name: str, columns: list[str], *, parameter: str, source: Path) -> str:
    """Return the frame column for ``name`` (exact, else whitespace-stripped match), else a one-line error."""
    if name in columns:
        return name
    stripped = [c for c in columns if c.strip() == name.strip()]
    if len(stripped) == 1:
        return stripped[0]
    raise CxrbenchError(
        f"{source.name}: no column '{name}' for {parameter} (available: {', '.join(map(str, columns))})"
    )


def _required(value: str | None, option: str, what: str) -> str:
    """Return ``value``, or a one-line error saying which ``--option`` to give."""
    if value is None or not isinstance(value, str) or not value.strip():
        raise CxrbenchError(f"csv adapter: give {what} with --option {option}")
    return value


def _read_table(source: Path, *, sep: str, encoding: str) -> pd.DataFrame:
    """Return the CSV as strings (blank cells NaN); unreadable text is a one-line error."""
    try:
        name = codecs.lookup(encoding).name
    except LookupError:
        raise CxrbenchError(f"csv adapter: unknown encoding {encoding!r} (e.g. utf-8, latin-1, cp1252)") from None
    try:
        return pd.read_csv(source, sep=sep, dtype=str, keep_default_na=False, na_values=[""], encoding=name)
    except UnicodeDecodeError as exc:
        raise CxrbenchError(
            f"{source}: not {encoding} text (it holds byte 0x{exc.object[exc.start]:02x}); "
            "give its encoding, e.g. --option encoding=latin-1"
        ) from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise CxrbenchError(f"{source}: cannot be read as CSV with sep={sep!r} ({str(exc).splitlines()[0]})") from exc


def _stripped(frame: pd.DataFrame, col: str, *, name: str, source: Path) -> pd.Series:
    """Return the column with surrounding whitespace removed; a blank cell is a one-line error."""
    values = frame[col].str.strip()
    blank = values.isna() | (values == "")
    if blank.any():
        line = int(np.flatnonzero(blank)[0]) + 2
        raise CxrbenchError(f"{source.name}: blank {name!r} on line {line}")
    return values


def _image_paths(values: pd.Series, root: Path, *, source: Path) -> list[str]:
    """Return the image paths under ``root`` (as resolved), normalised so that one image has one
    path (``a/../b`` is ``b``; an absolute path under ``root`` as given or as resolved is the
    same file); a path leading outside ``root`` is a one-line error."""
    given = Path(os.path.abspath(root))
    resolved = given.resolve()
    out, outside = [], []
    for line, value in enumerate(values, start=2):
        path = Path(os.path.normpath(resolved / value))  # an absolute value replaces the root
        if not path.is_relative_to(resolved):
            if path.is_relative_to(given):
                path = resolved / path.relative_to(given)
            else:
                outside.append((line, value))
        out.append(str(path))
    if outside:
        line, value = outside[0]
        more = f" ({len(outside)} rows do)" if len(outside) > 1 else ""
        raise CxrbenchError(
            f"{source.name} line {line}: image path {value!r} leads outside the dataset root {resolved}{more}"
        )
    return out


def load(
    root: Path,
    *,
    csv: str | None = None,
    path_column: str | None = None,
    patient_column: str | None = None,
    label_columns: list[str] | None = None,
    view_column: str | None = None,
    split_column: str | None = None,
    sep: str = ",",
    encoding: str = "utf-8",
) -> RawDataset:
    """Return the rows of ``root/csv`` as a RawDataset (one row per image, labels 1/0/-1/blank).

    ``csv``, ``path_column`` and ``patient_column`` are required (a one-line error names the
    ``--option`` to give). Image paths are taken relative to ``root`` and normalised; one that
    leads outside ``root`` (``../x.png``, an absolute path elsewhere) is an error. A blank or
    whitespace-only path or patient id is an error. ``label_columns=None`` takes every other
    column whose non-blank values are all 1, 0 or -1 (a comma-separated string is also
    accepted). Columns named exactly ``study_id``, ``sex``, ``age`` or ``report`` are passed
    through (sex → M/F, age → years); the split column accepts
    train/val/valid/validation/test/trainval (any case) or blank (generic patient-level split).
    ``encoding`` is the table's text encoding (public metadata is often ``latin-1``).
    """
    csv = _required(csv, "csv=FILE", "the metadata table (relative to --root)")
    path_column = _required(path_column, "path_column=COL", "the image path column")
    patient_column = _required(patient_column, "patient_column=COL", "the patient id column")
    if not sep:
        raise CxrbenchError("csv adapter: option 'sep' must be a non-empty separator")
    source = require_file(Path(root).resolve(), csv)
    frame = _read_table(source, sep=sep, encoding=encoding)
    columns = list(frame.columns)
    path_col = _column(path_column, columns, parameter="path_column", source=source)
    patient_col = _column(patient_column, columns, parameter="patient_column", source=source)
    view_col = _column(view_column, columns, parameter="view_column", source=source) if view_column else None
    split_col = _column(split_column, columns, parameter="split_column", source=source) if split_column else None
    used = {path_col, patient_col, view_col, split_col} - {None}
    passthrough = {c.strip(): c for c in columns if c.strip() in _PASSTHROUGH and c not in used}

    paths = _image_paths(_stripped(frame, path_col, name=path_column, source=source), Path(root), source=source)
    patients = _stripped(frame, patient_col, name=patient_column, source=source)

    labels: dict[str, pd.Series] = {}
    if label_columns is None:
        for col in columns:
            if col in used or col in passthrough.values():
                continue
            as_label = _as_label(frame[col])
            if as_label is not None and frame[col].notna().any():
                labels[col] = as_label
        if not labels:
            raise CxrbenchError(
                f"{source.name}: no label column found (none of the other columns holds only 1/0/-1/blank; "
                f"columns: {', '.join(columns)})"
            )
    else:
        if isinstance(label_columns, str):  # from the command line: "A,B,C"
            label_columns = [c for c in label_columns.split(",") if c.strip()]
        if not label_columns:
            raise CxrbenchError("csv adapter: option 'label_columns' must be a non-empty list of column names")
        for name in label_columns:
            col = _column(name, columns, parameter="label_columns", source=source)
            if col in used:
                raise CxrbenchError(
                    f"{source.name}: column '{name}' cannot be both a label and the path/patient/view/split"
                )
            as_label = _as_label(frame[col])
            if as_label is None:
                numeric = pd.to_numeric(frame[col], errors="coerce")
                bad = frame[col][frame[col].notna() & ~numeric.isin((1.0, 0.0, -1.0))]
                example = bad.iloc[0]
                raise CxrbenchError(
                    f"{source.name}: label column '{name}' has value '{example}' (allowed: 1, 0, -1 or blank)"
                )
            labels[col] = as_label

    out = pd.DataFrame(
        {
            "path": paths,
            "patient_id": patients.to_numpy(),
            "view": [normalise_view(v) for v in frame[view_col]] if view_col else None,
        }
    )
    out["split"] = [normalise_split(v, source=source.name) for v in frame[split_col]] if split_col else None
    if "study_id" in passthrough:
        out["study_id"] = frame[passthrough["study_id"]].to_numpy()
    if "sex" in passthrough:
        out["sex"] = [normalise_sex(v) for v in frame[passthrough["sex"]]]
    if "age" in passthrough:
        out["age"] = [parse_age(v) if isinstance(v, str) else float("nan") for v in frame[passthrough["age"]]]
    if "report" in passthrough:
        out["report"] = frame[passthrough["report"]].to_numpy()
    if "race" in passthrough:
        out["race"] = [v.strip() if isinstance(v, str) and v.strip() else None for v in frame[passthrough["race"]]]
    for col, values in labels.items():
        out[col.strip()] = values.to_numpy()
    return RawDataset(frame=out, labels=[c.strip() for c in labels], notes={"source": str(source)})
