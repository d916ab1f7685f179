"""TB Portals (NIAID): chest X-rays of TB cases from Eastern Europe/Central Asia, labelled by sputum smear.

TB Portals (https://tbportals.niaid.nih.gov) distributes, after a data-use agreement, CSV tables that
all key on ``condition_id`` (one TB case of one patient) and the DICOM images. The layout below rests
on public code that reads the real files (no official data dictionary was found), namely:

- ``TB_Portals_CXRs_<release>.csv`` (e.g. ``TB_Portals_CXRs_August_2023.csv``): one row per X-ray
  series with ``patient_id``, ``condition_id``, ``imagingstudy_id`` and ``series_instance_content_url``,
  the DICOM path ``<patient>/<study uid>/<series uid>/<instance>.dcm`` relative to the unpacked image
  archive (``TB_Portals_Published_CXRs_<release>``); newer releases add ``country`` and
  ``cxr_outlier`` (``outlier`` marks images the curators flagged). Columns as in NIAID's own DEPOT
  schema (``xray_instances_verified``) and analysis scripts in niaid/* and users' repositories.
- ``TB_Portals_Patient_Cases_<release>.csv``: one row per case with ``patient_id``, ``condition_id``,
  ``gender``, ``age_of_onset``, ``type_of_resistance`` (Sensitive, Mono DR, Poly DR, MDR non XDR,
  Pre-XDR, XDR), ``outcome``, ...
- ``TB_Portals_DST_<release>.csv``: one row per specimen observation with ``condition_id``,
  ``specimen_collection_date`` (days relative to the case's registration) and ``microscopyresults``
  (sputum smear: ``Negative``, ``Positive`` or a graded count such as ``10 to 99 in 100 (1+)``;
  ``Not done``, ``Unknown result``, ``NULL``... are unknown).
  Older releases name the files with spaces (``TB Portals Patient Cases_20210202.csv``); both work.

Labels: ``labels="smear"`` (default; the SSL-13 paper's "predict smear classification", binary):
``smear`` is the case's first determinate smear (earliest ``specimen_collection_date`` with a
positive or negative result; positive if any result on that day is positive), NaN when the case
has none. ``labels="resistance"``: ``type_of_resistance`` one-hot (multiclass), blank/``Not
Reported`` → unknown. Every image of a case carries the case's label. No official split (the paper
splits 60/20/20 by patient). The view is not in the tables: None, or the DICOM ``ViewPosition``
with ``read_headers=true``. ``drop_outliers`` (default true) drops rows whose ``cxr_outlier`` is
``outlier``. The image folder is found by probing ``root`` and its ``*CXR*`` sub-folders, or given
as ``image_dir``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from cxrbench.data.adapters.base import (
    RawDataset,
    dicom_headers,
    normalise_sex,
    parse_age,
    preview,
    require_file,
)
from cxrbench.errors import CxrbenchError

#: Table kinds as named in the file names (underscored form; older releases use spaces).
CXRS, CASES, DST = "CXRs", "Patient_Cases", "DST"
SMEAR = "smear"
#: ``type_of_resistance`` values in order of severity; values not listed here are appended.
RESISTANCE = ("Sensitive", "Mono DR", "Poly DR", "MDR non XDR", "Pre-XDR", "XDR")
_UNKNOWN_TEXT = {"", "not reported", "unknown", "null", "none"}
_PROBE = 5


def _candidates(root: Path, kind: str) -> list[Path]:
    spaced = kind.replace("_", " ")
    found = {*root.glob(f"TB_Portals_{kind}_*.csv"), *root.glob(f"TB Portals {spaced}_*.csv")}
    if kind == CXRS:  # the image manifests are not the CXR table
        found = {p for p in found if "manifest" not in p.name.lower()}
    return sorted(found)


def _release_of(path: Path, kind: str) -> str:
    return re.sub(rf"^TB[ _]Portals[ _]{kind.replace('_', '[ _]')}_", "", path.name)[: -len(".csv")]


def _table(root: Path, kind: str, release: str | None) -> Path:
    """Return the ``kind`` table: the one for ``release`` if given/present, else the only one."""
    if release:
        return require_file(
            root,
            f"TB_Portals_{kind}_{release}.csv",
            f"TB Portals {kind.replace('_', ' ')}_{release}.csv",
        )
    found = _candidates(root, kind)
    if not found:
        if not root.is_dir():
            raise CxrbenchError(f"dataset root {root} is not a directory")
        raise CxrbenchError(
            f"expected {root / f'TB_Portals_{kind}_<release>.csv'} (e.g. TB_Portals_{kind}_August_2023.csv "
            "from the TB Portals published data): not found"
        )
    if len(found) > 1:
        names = preview([p.name for p in found])
        raise CxrbenchError(f"{root}: several TB Portals {kind} tables ({names}); choose one with --option release=...")
    return found[0]


def _companion(root: Path, kind: str, release: str) -> Path:
    """Return the case/DST table: the only one present (its release may differ), else ``release``'s."""
    found = _candidates(root, kind)
    return found[0] if len(found) == 1 else _table(root, kind, release)


def _read(path: Path, required: tuple[str, ...]) -> pd.DataFrame:
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, low_memory=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise CxrbenchError(f"{path}: not a readable CSV ({str(exc).splitlines()[0]})") from exc
    df.columns = [c.strip().lstrip("\ufeff") for c in df.columns]
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise CxrbenchError(f"{path} lacks columns {missing}: not a TB Portals table")
    return df.apply(lambda s: s.str.strip())


def smear_result(value: object) -> float:
    """Return 1.0 for a positive smear (``Positive`` or a graded count), 0.0 for ``Negative``, else NaN."""
    text = str(value).strip().lower() if isinstance(value, str) else ""
    if text == "negative":
        return 0.0
    if text == "positive" or re.search(r"\d", text):
        return 1.0
    return float("nan")


def case_smear(dst: pd.DataFrame) -> pd.Series:
    """Return each ``condition_id``'s first determinate smear (1/0; NaN-free, cases without one absent)."""
    result = dst["microscopyresults"].map(smear_result)
    day = pd.to_numeric(dst.get("specimen_collection_date"), errors="coerce")
    rows = pd.DataFrame({"case": dst["condition_id"], "day": day, "smear": result}).dropna(subset=["smear"])
    if rows.empty:
        return pd.Series(dtype=float)
    # undated observations count as the latest, so a dated first result wins
    rows["day"] = rows["day"].fillna(np.inf)
    first_day = rows.groupby("case")["day"].transform("min")
    first = rows[rows["day"] == first_day]
    return first.groupby("case")["smear"].max()


def _image_base(root: Path, rel: pd.Series, release: str, image_dir: Path | None) -> Path:
    if image_dir is not None:
        base = Path(image_dir) if Path(image_dir).is_absolute() else root / image_dir
        if not base.is_dir():
            raise CxrbenchError(f"image_dir {base} is not a directory")
        return base
    bases = [
        root,
        root / f"TB_Portals_Published_CXRs_{release}",
        root / f"TB_Portals_CXRs_{release}",
        *sorted(p for p in root.iterdir() if p.is_dir() and "cxr" in p.name.lower()),
    ]
    probe = rel.head(_PROBE).tolist()
    for base in bases:
        if any((base / r).exists() for r in probe):
            return base
    return root


def load(
    root: Path,
    *,
    labels: Literal["smear", "resistance"] = "smear",
    release: str | None = None,
    image_dir: Path | None = None,
    drop_outliers: bool = True,
    read_headers: bool = False,
) -> RawDataset:
    """Return TB Portals as one row per chest X-ray with the case's smear (or resistance) label."""
    if labels not in ("smear", "resistance"):
        raise CxrbenchError(f"tbportals: labels must be 'smear' or 'resistance', got '{labels}'")
    root = Path(root).resolve()
    cxr_path = _table(root, CXRS, release)
    release = release or _release_of(cxr_path, CXRS)
    cxr = _read(cxr_path, ("condition_id", "series_instance_content_url"))
    cases_path = _companion(root, CASES, release)
    cases = _read(cases_path, ("patient_id", "condition_id"))
    cases = cases.drop_duplicates("condition_id").set_index("condition_id")

    notes = {"images": str(cxr_path), "cases": str(cases_path), "labels": labels}
    if drop_outliers and "cxr_outlier" in cxr.columns:
        outlier = cxr["cxr_outlier"].str.lower() == "outlier"
        notes["dropped_outliers"] = str(int(outlier.sum()))
        cxr = cxr[~outlier]
    cxr = cxr[cxr["series_instance_content_url"] != ""]
    cxr = cxr.drop_duplicates("series_instance_content_url").reset_index(drop=True)

    case = cxr["condition_id"]
    patient = cxr["patient_id"] if "patient_id" in cxr.columns else pd.Series("", index=cxr.index)
    patient = patient.where(patient != "", case.map(cases["patient_id"]))
    patient = patient.where(patient.notna() & (patient != ""), case)  # a case without a patient row

    rel = cxr["series_instance_content_url"].str.replace("\\", "/").str.lstrip("/")
    base = _image_base(root, rel, release, image_dir)
    out = pd.DataFrame(
        {
            "path": [str(base / r) for r in rel],
            "sample_id": rel.to_numpy(),
            "patient_id": patient.to_numpy(),
            "view": None,
            "study_id": (cxr["imagingstudy_id"].replace("", None) if "imagingstudy_id" in cxr.columns else None),
            "sex": case.map(cases.get("gender", pd.Series(dtype=str))).map(normalise_sex),
            "age": case.map(cases.get("age_of_onset", pd.Series(dtype=str))).map(parse_age).astype(float),
            "split": None,
        }
    )
    if read_headers:
        out["view"] = dicom_headers(out["path"].to_list())["view"].to_numpy()

    if labels == "smear":
        dst_path = _companion(root, DST, release)
        dst = _read(dst_path, ("condition_id", "microscopyresults"))
        notes["smear"] = str(dst_path)
        out[SMEAR] = case.map(case_smear(dst)).astype(float).to_numpy()
        return RawDataset(frame=out, labels=[SMEAR], notes=notes)

    if "type_of_resistance" not in cases.columns:
        raise CxrbenchError(f"{cases_path} lacks column 'type_of_resistance' (needed for labels=resistance)")
    kind = case.map(cases["type_of_resistance"]).fillna("")
    known = kind.str.lower().isin(_UNKNOWN_TEXT)
    seen = sorted(set(kind[~known]))
    names = [r for r in RESISTANCE if r in seen] + [r for r in seen if r not in RESISTANCE]
    for name in names:
        out[name] = np.where(known, np.nan, (kind == name).astype(float))
    return RawDataset(frame=out, labels=names, task="multiclass", notes=notes)
