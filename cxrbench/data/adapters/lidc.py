"""LIDC-IDRI (TCIA) adapter: one row per CT slice of every annotated series, with the nodule mask
agreed by the readers.

Layout as TCIA's NBIA download unpacks it (``root`` is the ``LIDC-IDRI`` folder or its parent):
``LIDC-IDRI-0001/<study folder>/<series folder>/*.dcm`` with the readers' XML file (``069.xml``
...) beside the slices of each CT series. The XML (namespace ``http://www.nih.gov``, root
``LidcReadMessage``; radiograph folders carry ``IdriReadMessage`` and are skipped) has one
``readingSession`` per radiologist (up to four); each ``unblindedReadNodule`` has ``roi`` elements,
one per slice: ``imageSOP_UID``, ``imageZposition``, ``inclusion`` (FALSE marks a hole) and the
``edgeMap`` contour points (``xCoord`` = column, ``yCoord`` = row, boundary pixels inside).

Masks: each reader's contours of nodules >= 3 mm (contours of at least three points; the
single-point marks of smaller nodules and ``nonNodule`` loci are left out unless
``small_nodules``) are rasterised per slice; a pixel is nodule when at least ``consensus`` of the
series' readers marked it (default 0.5: two of four, the 50% agreement level usual with pylidc).
Rois are matched to slices by SOP Instance UID, else by z position within 0.1 mm. The label
``nodule`` is 1 on slices whose consensus mask is not empty. Slices are ordered and series checked
as in ``cxrbench.data.volumes``; ``window`` as for ``rsna-pe``. Layout and XML source: the TCIA
LIDC-IDRI collection page and its XML documentation (Armato et al., Med. Phys. 2011).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cxrbench.data.adapters.base import RawDataset, normalise_sex, parse_age, preview
from cxrbench.data.images import ct_format
from cxrbench.data.masks import Contour, encode_rle, rasterise
from cxrbench.data.masks import consensus as agree
from cxrbench.data.volumes import group_series, parse_windows, pixel_layouts, read_headers
from cxrbench.errors import CxrbenchError

NS = "{http://www.nih.gov}"
LABEL = "nodule"
_Z_TOLERANCE = 0.1  # mm


@dataclass
class Reading:
    """The annotations of one series: per reader, each roi's SOP UID (or None), z and contour."""

    series_uid: str
    readers: int
    rois: list[list[tuple[str | None, float | None, Contour]]] = field(default_factory=list)

    def contours(self, reader: int, sop: str, z: float) -> list[Contour]:
        """The reader's contours on the slice ``sop`` at ``z``: rois naming it, or naming no SOP UID
        and lying within 0.1 mm of ``z``."""
        return [
            contour
            for uid, at, contour in self.rois[reader]
            if uid == sop or (uid is None and at is not None and abs(at - z) <= _Z_TOLERANCE)
        ]


def parse_reading(path: Path, *, small_nodules: bool = False) -> Reading | None:
    """The readers' contours in one LIDC XML file; None for a radiograph (IDRI) or foreign file;
    a one-line error for XML that cannot be parsed."""
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as exc:
        raise CxrbenchError(f"{path}: unreadable LIDC XML ({exc})") from None
    if root.tag != f"{NS}LidcReadMessage":
        return None
    series = (root.findtext(f"{NS}ResponseHeader/{NS}SeriesInstanceUid") or "").strip()
    sessions = root.findall(f"{NS}readingSession")
    reading = Reading(series, readers=len(sessions))
    for session in sessions:
        rois = []
        for nodule in session.findall(f"{NS}unblindedReadNodule"):
            for roi in nodule.findall(f"{NS}roi"):
                points = [
                    (float(e.findtext(f"{NS}xCoord")), float(e.findtext(f"{NS}yCoord")))
                    for e in roi.findall(f"{NS}edgeMap")
                ]
                if len(points) < 3 and not small_nodules:
                    continue
                inclusion = (roi.findtext(f"{NS}inclusion") or "TRUE").strip().upper() == "TRUE"
                sop = (roi.findtext(f"{NS}imageSOP_UID") or "").strip() or None
                z = roi.findtext(f"{NS}imageZposition")
                rois.append((sop, float(z) if z not in (None, "") else None, (inclusion, points)))
        reading.rois.append(rois)
    return reading


def _series_folders(root: Path) -> Iterator[tuple[Path, Path]]:
    """(folder, xml file) of every series folder holding an LIDC XML file."""
    for xml in sorted(root.rglob("*.xml")):
        yield xml.parent, xml


def _root(root: Path) -> Path:
    root = Path(root).resolve()
    if not root.is_dir():
        raise CxrbenchError(f"dataset root {root} is not a directory")
    inner = root / "LIDC-IDRI"
    return inner if inner.is_dir() else root


def load(
    root: Path,
    *,
    consensus: float = 0.5,
    small_nodules: bool = False,
    window: str = "soft-tissue",
    max_thickness: float | None = None,
    workers: int | None = None,
) -> RawDataset:
    """One row per slice of each annotated CT series, its consensus mask as RLE (``mask_rle``)."""
    root = _root(root)
    windows = parse_windows(window)
    if not 0 < consensus <= 1:
        raise CxrbenchError(f"lidc: consensus must be in (0, 1] (a fraction of the readers), got {consensus}")
    folders = []
    for folder, xml in _series_folders(root):
        reading = parse_reading(xml, small_nodules=small_nodules)
        if reading is not None and reading.readers > 0:
            folders.append((folder, reading))
    if not folders:
        raise CxrbenchError(
            f"lidc: no series folder with an LIDC XML file (LidcReadMessage) under {root} "
            "(is --root the folder holding LIDC-IDRI-0001, ...?)"
        )
    paths = [str(p) for folder, _ in folders for p in sorted(folder.glob("*.dcm"))]
    headers = read_headers(paths, workers=workers)
    series, unreadable = group_series(headers, paths, max_thickness=max_thickness)
    readings = {str(folder): reading for folder, reading in folders}

    rows, rejected = [], [(p, why) for p, why in unreadable]
    for item in series:
        if item.problem is not None:
            rejected.extend((h.path, item.problem) for h in item.slices)
            continue
        reading = readings[str(Path(item.slices[0].path).parent)]
        for index, header in enumerate(item.slices):
            masks = []
            for reader in range(reading.readers):
                contours = reading.contours(reader, header.sop_uid, header.position[2])
                masks.append(rasterise(header.shape, contours) if contours else np.zeros(header.shape, dtype=bool))
            mask = agree(masks, level=consensus, readers=reading.readers)
            rows.append(
                {
                    "path": header.path,
                    "sample_id": header.sop_uid,
                    "patient_id": header.patient_id or Path(header.path).parents[2].name,
                    "study_id": header.study_uid,
                    "series_id": item.uid,
                    "slice_index": index,
                    "slice_position": item.positions[index],
                    "view": "AXIAL",
                    "sex": normalise_sex(header.sex),
                    "age": parse_age(header.age),
                    "mask_rle": encode_rle(mask) if mask.any() else "",
                    LABEL: float(mask.any()),
                }
            )
    if not rows:
        reasons = sorted({why for _, why in rejected})
        raise CxrbenchError(f"lidc: no usable CT series under {root} ({preview(reasons, 2)})")
    frame = pd.DataFrame(rows)
    refused = pd.DataFrame(
        {
            "path": [p for p, _ in rejected],
            "sample_id": [None] * len(rejected),
            "patient_id": [Path(p).parents[2].name for p, _ in rejected],
            "reason": [why for _, why in rejected],
        }
    )
    return RawDataset(
        frame=frame,
        labels=[LABEL],
        image_format=ct_format(*windows),
        notes={"series": str(len(series)), "readers": str(max(r.readers for _, r in folders))},
        rejected=refused,
        pixel_layouts=pixel_layouts(series),
    )
