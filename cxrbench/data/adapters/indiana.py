"""Indiana University chest X-ray collection (OpenI / NLMCXR; Demner-Fushman et al. 2016) adapter.

3,955 de-identified radiology reports with 7,470 images (frontal and lateral). Files read
(relative to ``root``):

- reports: ``NLMCXR_reports.tgz`` (read in place) or the unpacked ``ecgen-radiology/<n>.xml``.
  Each ``<eCitation>`` has ``<uId id="CXR1"/>``, the text in ``<AbstractText Label="FINDINGS">`` /
  ``"IMPRESSION"`` (``XXXX`` marks de-identified words), manual MeSH codes in ``<MeSH><major>``
  (``normal``, ``Cardiomegaly/mild``, ``Lung/hypoinflation``; ``No Indexing`` = not coded) and one
  ``<parentImage id="CXR1_1_IM-0001-3001">`` per image (104 reports have none and give no row).
- images: ``NLMCXR_png/<image id>.png`` (the PNG release), ``<image id>.png`` in ``root`` or
  ``images/``, Kaggle's ``images/images_normalized/1_IM-0001-4001.dcm.png``, or the DICOM release
  ``NLMCXR_dcm/<id without CXR>.dcm`` (``1_IM-0001-3001.dcm``), whichever holds the first images.
  Report CXR1 names its images ``CXR1_1_IM-...`` where every file and table says ``1_IM-...``.
- views: the XML does not say which image is frontal. Kaggle's ``indiana_projections.csv``
  (``uid,filename,projection``; ``Frontal``/``Lateral``) decides frontal against lateral; the DICOM
  ``ViewPosition`` refines a frontal image into PA/AP, and is the only source without that table:
  from ``nlmcxr_dicom_metadata.csv(.gz)`` (the DICOM headers as a table: ``imageid``,
  ``View Position`` PA, AP, LL, LATERAL, RL, or blank for 2,586 of 7,469 images) when present,
  else from the DICOM files' headers. Views no source gives stay None, and ``--views frontal``
  leaves those images out (``notes["views"]`` names the sources used).

Labels: the MeSH ``major`` heading before the first ``/`` (``Cardiomegaly/mild`` → ``Cardiomegaly``),
per report, copied to each of its images; 1 if the report lists it, else 0; reports coded only
``No Indexing`` are NaN. Headings that differ only by case or spacing (``Thoracic Vertebrae`` /
``Thoracic vertebrae``, ``Subcutaneous  Emphysema``) are one label, spelled as most reports do.
``top=20`` (the 13-dataset SSL paper's 20 labels) keeps the most frequent headings (``normal``
included), ``top=None`` keeps all (117 on the real reports). ``report`` holds the FINDINGS and
IMPRESSION sections. Patient and study id: the report id (``CXR1``; patients are not identified
across reports); ``sample_id`` the parentImage id. No official split. Layout source:
``shared/realdata/LAYOUTS.md`` (real tgz and DICOM header table checked) and Kaggle's
"Chest X-rays (Indiana University)" file list as used in public code.
"""

from __future__ import annotations

import re
import tarfile
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from cxrbench.data.adapters.base import (
    FRONTAL_VIEWS,
    RawDataset,
    dicom_headers,
    label_key,
    normalise_view,
    require_file,
)
from cxrbench.errors import CxrbenchError

NOT_CODED = "No Indexing"
REPORT_SECTIONS = ("FINDINGS", "IMPRESSION")
#: Kaggle's table of views, ``uid,filename,projection`` with ``Frontal``/``Lateral``.
PROJECTIONS = ("indiana_projections.csv", "indiana_projections.csv.gz")
#: The DICOM release's headers as a table (``imageid``, ``View Position``, ...; 176 columns).
DICOM_METADATA = ("nlmcxr_dicom_metadata.csv", "nlmcxr_dicom_metadata.csv.gz")
KAGGLE_IMAGES = Path("images") / "images_normalized"


def parse_report(xml: bytes | str) -> dict:
    """Return ``uid``, ``images`` (parentImage ids), ``headings`` (MeSH major heads) and ``report`` of one XML."""
    root = ET.fromstring(xml)
    uid = root.find("uId")
    sections = {el.get("Label"): (el.text or "").strip() for el in root.iter("AbstractText")}
    report = "\n".join(f"{s}: {sections[s]}" for s in REPORT_SECTIONS if sections.get(s))
    headings = []
    for major in root.iterfind("MeSH/major"):
        head = (major.text or "").split("/")[0].strip()
        if head and head not in headings:
            headings.append(head)
    return {
        "uid": uid.get("id") if uid is not None else None,
        "images": [el.get("id") for el in root.iter("parentImage")],
        "headings": headings,
        "report": report or None,
    }


def _read_reports(source: Path) -> list[dict]:
    """Return every parsed report from the tgz or the unpacked folder."""
    reports = []
    if source.is_dir():
        for path in sorted(source.glob("*.xml")):
            reports.append(parse_report(path.read_bytes()))
    else:
        with tarfile.open(source) as archive:
            for member in archive:
                if member.isfile() and member.name.endswith(".xml"):
                    reports.append(parse_report(archive.extractfile(member).read()))
    if not reports:
        raise CxrbenchError(f"{source}: no report XML files found")
    return reports


def image_key(image_id: str) -> str:
    """Return the image id as the DICOM release and the Kaggle PNGs name it.

    The reports of CXR1 name their images ``CXR1_1_IM-0001-3001``, while its DICOM
    (``1_IM-0001-3001.dcm``), the DICOM metadata (``CXR1_IM-0001-3001``) and the Kaggle PNG
    (``1_IM-0001-3001.dcm.png``) drop the repeated report number; every other id is the same.
    """
    return re.sub(r"^CXR(\d+)_\1_", r"CXR\1_", image_id)


def _image_path(root: Path, image_ids: list[str]) -> tuple[callable, bool]:
    """Return (image id → path, is_dicom) for the image layout holding the first images."""
    layouts = [
        (lambda i: root / "NLMCXR_png" / f"{i}.png", False),
        (lambda i: root / f"{i}.png", False),
        (lambda i: root / "images" / f"{i}.png", False),
        # Kaggle "Chest X-rays (Indiana University)": images/images_normalized/1_IM-0001-4001.dcm.png
        (lambda i: root / KAGGLE_IMAGES / f"{image_key(i).removeprefix('CXR')}.dcm.png", False),
        (lambda i: root / "NLMCXR_dcm" / f"{image_key(i).removeprefix('CXR')}.dcm", True),
        (lambda i: root / "NLMCXR_dcm" / f"{i.removeprefix('CXR')}.dcm", True),
        (lambda i: root / f"{image_key(i).removeprefix('CXR')}.dcm", True),
    ]
    for build, is_dicom in layouts:
        if any(build(i).exists() for i in image_ids[:5]):
            return build, is_dicom
    return layouts[0]


def _projections(path: Path) -> dict[str, str]:
    """Return image key → ``FRONTAL``/``LATERAL`` from the Kaggle ``indiana_projections.csv``."""
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    table.columns = [c.strip() for c in table.columns]
    missing = [c for c in ("filename", "projection") if c not in table.columns]
    if missing:
        raise CxrbenchError(f"{path} lacks columns {missing}: expected uid,filename,projection (Frontal/Lateral)")
    names = table["filename"].str.strip().str.replace(r"\.dcm\.png$|\.png$|\.dcm$", "", regex=True)
    views = table["projection"].map(normalise_view)
    return dict(zip("CXR" + names, views, strict=True))


def _metadata_views(path: Path) -> dict[str, str | None]:
    """Return image key → normalised ``View Position`` from the DICOM header table."""
    table = pd.read_csv(path, usecols=["imageid", "View Position"], dtype=str, low_memory=False)
    return dict(zip(table["imageid"].str.strip(), table["View Position"].map(normalise_view), strict=True))


def _views(root: Path, image_ids: list[str], paths: list[str], is_dicom: bool, read_headers: bool):
    """Return (view per image, where the views came from).

    The projections table decides frontal against lateral; the DICOM ``ViewPosition`` (from the
    header table or the DICOM files) refines a frontal image into PA/AP when it says PA or AP, and
    is the only source without the table. A view no source gives stays None.
    """
    keys = [image_key(i) for i in image_ids]
    sources = []
    projection: list[str | None] = [None] * len(keys)
    position: list[str | None] = [None] * len(keys)
    table = next((root / n for n in PROJECTIONS if (root / n).exists()), None)
    if table is not None:
        found = _projections(table)
        projection = [found.get(k) for k in keys]
        sources.append(table.name)
    meta = next((root / n for n in DICOM_METADATA if (root / n).exists()), None)
    if meta is not None:
        found = _metadata_views(meta)
        position = [found.get(k) for k in keys]
        sources.append(meta.name)
    elif is_dicom and read_headers:
        position = dicom_headers(paths)["view"].tolist()
        sources.append("DICOM headers")
    views = []
    for proj, pos in zip(projection, position, strict=True):
        if proj is None:
            views.append(pos)
        elif proj == "FRONTAL" and pos in FRONTAL_VIEWS:
            views.append(pos)
        else:
            views.append(proj)
    return views, " + ".join(sources) or "none (views unknown)"


def _fold(reports: list[dict]) -> dict[str, str]:
    """Return heading → label name, headings differing only in case, spacing or punctuation folded.

    The label is the spelling most reports use (``Thoracic Vertebrae`` 256 reports over
    ``Thoracic vertebrae`` 1; ``Subcutaneous Emphysema`` over ``Subcutaneous  Emphysema``).
    """
    counts = Counter(h for r in reports for h in r["headings"])
    spellings: dict[str, list[str]] = {}
    for heading in sorted(counts, key=lambda h: (-counts[h], h)):
        spellings.setdefault(label_key(heading), []).append(heading)
    return {h: group[0] for group in spellings.values() for h in group}


def load(root: Path, *, top: int | None = 20, read_headers: bool = True) -> RawDataset:
    """Return one row per Indiana image with MeSH-heading labels, the report text and the view."""
    if top is not None and (not isinstance(top, int) or top < 1):
        raise CxrbenchError(f"indiana: top must be a positive integer or None, not {top!r}")
    root = Path(root).resolve()
    source = require_file(root, "NLMCXR_reports.tgz", "ecgen-radiology")
    reports = [r for r in _read_reports(source) if r["images"]]
    folded = _fold(reports)
    for report in reports:
        report["headings"] = list(dict.fromkeys(folded[h] for h in report["headings"]))
    not_coded = label_key(NOT_CODED)
    counts = Counter(h for r in reports for h in r["headings"] if label_key(h) != not_coded)
    ranked = sorted(counts, key=lambda h: (-counts[h], h))
    headings = ranked[:top] if top is not None else ranked

    rows = [(image, r["uid"], r["report"], r["headings"]) for r in reports for image in r["images"]]
    image_ids = [image for image, *_ in rows]
    build, is_dicom = _image_path(root, image_ids)
    paths = [str(build(image)) for image in image_ids]
    views, view_source = _views(root, image_ids, paths, is_dicom, read_headers)
    frame = pd.DataFrame(
        {
            "path": paths,
            "sample_id": image_ids,
            "patient_id": [uid for _, uid, *_ in rows],
            "view": views,
            "study_id": [uid for _, uid, *_ in rows],
            "report": [text for _, _, text, _ in rows],
            "split": None,
        }
    )
    coded = np.array([any(label_key(h) != not_coded for h in hs) for *_, hs in rows])
    labels = {
        heading: np.where(coded, np.array([heading in hs for *_, hs in rows], dtype=float), np.nan)
        for heading in headings
    }
    frame = pd.concat([frame, pd.DataFrame(labels, index=frame.index)], axis=1)
    notes = {"source": str(source), "views": view_source}
    return RawDataset(frame=frame, labels=headings, notes=notes)
