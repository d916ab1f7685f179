"""Indiana University chest X-ray collection (OpenI / NLMCXR; Demner-Fushman et al. 2016) adapter.

3,955 de-identified radiology reports with 7,470 images (frontal and lateral). Files read
(relative to ``root``):

- reports: ``NLMCXR_reports.tgz`` (read in place) or the unpacked ``ecgen-radiology/<n>.xml``.
  Each ``<eCitation>`` has ``<uId id="CXR1"/>``, the text in ``<AbstractText Label="FINDINGS">`` /
  ``"IMPRESSION"`` (``XXXX`` marks de-identified words), manual MeSH codes in ``<MeSH><major>``
  (``normal``, ``Cardiomegaly/mild``, ``Lung/hypoinflation``; ``No Indexing`` = not coded) and one
  ``<parentImage id="CXR1_1_IM-0001-3001">`` per image (104 reports have none and give no row).
- images: ``NLMCXR_png/<image id>.png`` (the PNG release), ``<image id>.png`` in ``root`` or
  ``images/``, or the DICOM release ``NLMCXR_dcm/<id without CXR>.dcm`` (``1_IM-0001-3001.dcm``),
  whichever holds the first images. For DICOMs the header ``ViewPosition`` gives the view; the
  XML does not say which image is frontal, so with PNGs the view is None.

Labels: the MeSH ``major`` heading before the first ``/`` (``Cardiomegaly/mild`` → ``Cardiomegaly``),
per report, copied to each of its images; 1 if the report lists it, else 0; reports coded only
``No Indexing`` are NaN. ``top=20`` (the 13-dataset SSL paper's 20 labels) keeps the most frequent
headings (``normal`` included), ``top=None`` keeps all. ``report`` holds the FINDINGS and
IMPRESSION sections. Patient and study id: the report id (``CXR1``; patients are not identified
across reports). No official split. Layout source: ``shared/realdata/LAYOUTS.md`` (real tgz checked).
"""

from __future__ import annotations

import tarfile
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from cxrbench.data.adapters.base import RawDataset, dicom_headers, require_file
from cxrbench.errors import CxrbenchError

NOT_CODED = "No Indexing"
REPORT_SECTIONS = ("FINDINGS", "IMPRESSION")


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


def _image_path(root: Path, image_ids: list[str]) -> tuple[callable, bool]:
    """Return (image id → path, is_dicom) for the image layout holding the first images."""
    layouts = [
        (lambda i: root / "NLMCXR_png" / f"{i}.png", False),
        (lambda i: root / f"{i}.png", False),
        (lambda i: root / "images" / f"{i}.png", False),
        (lambda i: root / "NLMCXR_dcm" / f"{i.removeprefix('CXR')}.dcm", True),
        (lambda i: root / f"{i.removeprefix('CXR')}.dcm", True),
    ]
    for build, is_dicom in layouts:
        if any(build(i).exists() for i in image_ids[:5]):
            return build, is_dicom
    return layouts[0]


def load(root: Path, *, top: int | None = 20, read_headers: bool = True) -> RawDataset:
    """Return one row per Indiana image with MeSH-heading labels and the report text."""
    if top is not None and (not isinstance(top, int) or top < 1):
        raise CxrbenchError(f"indiana: top must be a positive integer or None, not {top!r}")
    root = Path(root).resolve()
    source = require_file(root, "NLMCXR_reports.tgz", "ecgen-radiology")
    reports = [r for r in _read_reports(source) if r["images"]]
    counts = Counter(h for r in reports for h in r["headings"] if h != NOT_CODED)
    ranked = sorted(counts, key=lambda h: (-counts[h], h))
    headings = ranked[:top] if top is not None else ranked

    rows = [(image, r["uid"], r["report"], r["headings"]) for r in reports for image in r["images"]]
    build, is_dicom = _image_path(root, [image for image, *_ in rows])
    frame = pd.DataFrame(
        {
            "path": [str(build(image)) for image, *_ in rows],
            "sample_id": [image for image, *_ in rows],
            "patient_id": [uid for _, uid, *_ in rows],
            "view": None,
            "study_id": [uid for _, uid, *_ in rows],
            "report": [text for _, _, text, _ in rows],
        }
    )
    frame["split"] = None
    if is_dicom and read_headers:
        frame["view"] = dicom_headers(frame["path"].to_list())["view"].to_numpy()
    coded = np.array([any(h != NOT_CODED for h in hs) for *_, hs in rows])
    for heading in headings:
        values = np.array([heading in hs for *_, hs in rows], dtype=float)
        frame[heading] = np.where(coded, values, np.nan)
    return RawDataset(frame=frame, labels=headings, notes={"source": str(source)})
