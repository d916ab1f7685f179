"""Synthetic chest CT phantoms written as real DICOM series in the RSNA STR PE layout, so every CT
path (header scan, slice ordering, HU, windowing, labels) runs on a CPU in seconds.

Each patient has one CTPA study: a body of soft tissue, two lungs, contrast-filled pulmonary
arteries (bright), in some patients a filling defect (an embolus: soft-tissue grey inside a bright
vessel) over a run of slices, and a few lung nodules. Files are named by their random
SOPInstanceUID and InstanceNumber is shuffled, so neither gives the slice order; the slice spacing
varies between series. ``train.csv`` has the RSNA columns (one row per slice). Sex changes the
body's shape and age the vertebra's density, so attribute probes have something to find.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from cxrbench.errors import CxrbenchError
from cxrbench.rundir import atomic_path

#: train.csv's columns, as in the RSNA STR Pulmonary Embolism Detection challenge data.
RSNA_COLUMNS = (
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "pe_present_on_image",
    "negative_exam_for_pe",
    "qa_motion",
    "qa_contrast",
    "flow_artifact",
    "rv_lv_ratio_gte_1",
    "rv_lv_ratio_lt_1",
    "leftsided_pe",
    "chronic_pe",
    "true_filling_defect_not_pe",
    "rightsided_pe",
    "acute_and_chronic_pe",
    "central_pe",
    "indeterminate",
)
_SPACINGS = (1.25, 1.5, 2.0, 2.5)  # mm between slices; thickness equals spacing
_EXTENT_MM = 40.0  # cranio-caudal length of every phantom volume
_PIXEL_MM = 5.0  # field of view 5 mm per pixel at 64 px, scaled with the size
_HU = {"air": -1000.0, "lung": -850.0, "tissue": 40.0, "contrast": 320.0, "clot": 45.0, "bone": 700.0}
_ROOT_UID = "1.2.826.0.1.3680043.10.1234"  # a private UID root for phantoms


@dataclass(frozen=True)
class Embolus:
    """A filling defect in one artery (``side``: left, right or central) from slice fraction
    ``start`` to ``stop`` of the volume."""

    side: str
    start: float
    stop: float


@dataclass(frozen=True)
class Study:
    patient: str
    sex: str
    age: int
    spacing: float
    emboli: tuple[Embolus, ...]
    nodules: tuple[tuple[float, float, float, float], ...]  # (x, y, z in [0, 1], radius mm)
    seed: int


def check_ct_phantoms(*, n_patients: int, size: int, seed: int) -> tuple[int, int, int]:
    """Refuse bad options with a one-line error; returns them as ints."""
    for name, value, low in (("n_patients", n_patients, 2), ("phantom_size", size, 16), ("phantom_seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise CxrbenchError(f"{name} must be an integer >= {low}, got {value!r}")
    if size > 512:
        raise CxrbenchError(f"phantom_size must be at most 512, got {size}")
    return int(n_patients), int(size), int(seed)


def draw_studies(n_patients: int, seed: int) -> list[Study]:
    """Every patient's study, drawn from ``seed`` alone (half of them with an embolus)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n_patients):
        positive = i % 2 == 1  # balanced, whatever the seed
        emboli = []
        if positive:
            for side in rng.choice(["left", "right", "central"], size=int(rng.integers(1, 3)), replace=False):
                start = float(rng.uniform(0.1, 0.6))
                emboli.append(Embolus(str(side), start, start + float(rng.uniform(0.2, 0.35))))
        nodules = tuple(
            (
                float(rng.uniform(0.25, 0.4) if rng.random() < 0.5 else rng.uniform(0.6, 0.75)),
                float(rng.uniform(0.57, 0.62)),  # below the arteries, inside a lung
                float(rng.uniform(0.3, 0.7)),
                float(rng.uniform(12.0, 18.0)),
            )
            for _ in range(int(rng.integers(0, 3)))
        )
        out.append(
            Study(
                patient=f"CTP{i:05d}",
                sex=str(rng.choice(["M", "F"])),
                age=int(rng.integers(25, 90)),
                spacing=float(rng.choice(_SPACINGS)),
                emboli=tuple(emboli),
                nodules=nodules,
                seed=int(rng.integers(0, 2**31)),
            )
        )
    return out


def _artery_centres(z: float) -> dict[str, tuple[float, float]]:
    """Where each artery crosses the slice at height fraction ``z`` (x, y in [0, 1] of the field):
    the central trunk in the middle, the branches drifting outwards into each lung."""
    spread = 0.08 + 0.12 * z
    return {"central": (0.5, 0.42), "left": (0.5 + spread, 0.48), "right": (0.5 - spread, 0.48)}


def slice_hu(study: Study, z: float, size: int, rng: np.random.Generator) -> tuple[np.ndarray, bool, np.ndarray]:
    """One axial slice at height fraction ``z``: HU ``[size, size]``, whether an embolus shows, and
    the nodule mask of the slice. Sizes are fractions of the field (vessels and nodules larger than
    life, so that they span pixels at 32-64 px)."""
    pixel = _PIXEL_MM * 64 / size
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / size
    hu = np.full((size, size), _HU["air"])
    aspect = 0.30 if study.sex == "M" else 0.26  # body half-height; men's chests are deeper here
    body = ((xx - 0.5) / 0.42) ** 2 + ((yy - 0.5) / aspect) ** 2 <= 1
    hu[body] = _HU["tissue"]
    for cx in (0.32, 0.68):
        lung = ((xx - cx) / 0.14) ** 2 + ((yy - 0.5) / 0.18) ** 2 <= 1
        hu[lung] = _HU["lung"]
    spine = (xx - 0.5) ** 2 + (yy - 0.7) ** 2 <= 0.045**2
    hu[spine] = _HU["bone"] - 4.0 * (study.age - 25)  # bone density falls with age
    shows = False
    for side, (cx, cy) in _artery_centres(z).items():
        radius = 0.05 if side == "central" else 0.035  # the trunk ~32 mm across, the branches ~22 mm
        vessel = (xx - cx) ** 2 + (yy - cy) ** 2 <= radius**2
        hu[vessel] = _HU["contrast"]
        for clot in study.emboli:
            if clot.side == side and clot.start <= z <= clot.stop:
                defect = (xx - cx) ** 2 + (yy - cy) ** 2 <= (0.6 * radius) ** 2
                hu[defect] = _HU["clot"]
                shows = True
    mask = np.zeros((size, size), dtype=bool)
    for nx, ny, nz, r_mm in study.nodules:
        dz = (z - nz) * _EXTENT_MM
        if abs(dz) < r_mm:
            r = np.sqrt(r_mm**2 - dz**2) / pixel / size
            ball = (xx - nx) ** 2 + (yy - ny) ** 2 <= r**2
            hu[ball] = _HU["tissue"]
            mask |= ball
    hu += rng.normal(0.0, 12.0, hu.shape)
    return hu, shows, mask


def _uid(*parts: int) -> str:
    return ".".join([_ROOT_UID, *(str(p) for p in parts)])


def write_slice(path: Path, stored: np.ndarray, meta: dict) -> None:
    """One CT Image Storage file: int16 stored values, rescale intercept -1024, explicit VR LE."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

    file_meta = FileMetaDataset()
    file_meta.MediaStorageSOPClassUID = CTImageStorage
    file_meta.MediaStorageSOPInstanceUID = meta["sop"]
    file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = file_meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta["sop"]
    ds.StudyInstanceUID = meta["study"]
    ds.SeriesInstanceUID = meta["series"]
    ds.Modality = "CT"
    ds.PatientID = meta["patient"]
    ds.PatientSex = meta["sex"]
    ds.PatientAge = f"{meta['age']:03d}Y"
    ds.InstanceNumber = meta["instance"]
    ds.ImagePositionPatient = [f"{v:.4f}" for v in meta["position"]]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.PixelSpacing = [f"{meta['pixel']:.4f}", f"{meta['pixel']:.4f}"]
    ds.SliceThickness = f"{meta['thickness']:.3f}"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleIntercept = "-1024"
    ds.RescaleSlope = "1"
    ds.PixelData = np.ascontiguousarray(stored, dtype="<i2").tobytes()
    with atomic_path(path) as tmp:
        ds.save_as(tmp, enforce_file_format=True)


@dataclass(frozen=True)
class WrittenSlice:
    path: Path
    sop: str
    z: float  # height fraction in [0, 1]
    shows_embolus: bool
    nodule_mask: np.ndarray


def write_series(
    study: Study,
    index: int,
    *,
    seed: int,
    size: int,
    folder: Callable[[str, str], Path],
    name: Callable[[int, str], str],
) -> tuple[str, str, list[WrittenSlice]]:
    """Write one study's series as DICOM files ``folder(study_uid, series_uid) / name(k, sop)``
    (``k``: a shuffled instance number); returns the study and series UIDs and the slices in
    position order."""
    rng = np.random.default_rng(study.seed)
    study_uid, series_uid = _uid(seed, index, 1), _uid(seed, index, 1, 2)
    n = int(round(_EXTENT_MM / study.spacing))
    order = rng.permutation(n)  # InstanceNumber and SOP UIDs do not follow position
    pixel = _PIXEL_MM * 64 / size
    out = []
    for k in range(n):
        z = k / max(n - 1, 1)
        hu, shows, mask = slice_hu(study, z, size, rng)
        instance = int(order[k]) + 1
        sop = _uid(seed, index, 1, 2, instance, int(rng.integers(1, 10**9)))
        stored = np.clip(np.rint(hu + 1024.0), -32768, 32767).astype(np.int16)
        meta = {
            "sop": sop,
            "study": study_uid,
            "series": series_uid,
            "patient": study.patient,
            "sex": study.sex,
            "age": study.age,
            "instance": instance,
            "position": (-160.0, -160.0, -300.0 + k * study.spacing),
            "pixel": pixel,
            "thickness": study.spacing,
        }
        path = folder(study_uid, series_uid) / name(instance, sop)
        write_slice(path, stored, meta)
        out.append(WrittenSlice(path, sop, z, shows, mask))
    return study_uid, series_uid, out


def write_ct_phantoms(
    root: Path,
    *,
    n_patients: int = 24,
    size: int = 64,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> Path:
    """Write the phantoms under ``root`` (``train/STUDY/SERIES/SOP.dcm`` and ``train.csv``); return
    ``train.csv``. The same arguments give the same files; the CSV is written last, atomically."""
    n_patients, size, seed = check_ct_phantoms(n_patients=n_patients, size=size, seed=seed)
    root = Path(root)
    rows = []
    for index, study in enumerate(draw_studies(n_patients, seed)):
        study_uid, series_uid, slices = write_series(
            study,
            index,
            seed=seed,
            size=size,
            folder=lambda st, se: root / "train" / st / se,
            name=lambda k, sop: f"{sop}.dcm",
        )
        positive_exam = any(s.shows_embolus for s in slices)
        sides = {e.side for e in study.emboli} if positive_exam else set()
        for item in sorted(slices, key=lambda s: s.sop):  # the CSV lists a study's slices in no positional order
            rows.append(
                {
                    "StudyInstanceUID": study_uid,
                    "SeriesInstanceUID": series_uid,
                    "SOPInstanceUID": item.sop,
                    "pe_present_on_image": int(item.shows_embolus),
                    "negative_exam_for_pe": int(not positive_exam),
                    "qa_motion": 0,
                    "qa_contrast": 0,
                    "flow_artifact": 0,
                    "rv_lv_ratio_gte_1": int(positive_exam and study.age > 60),
                    "rv_lv_ratio_lt_1": int(positive_exam and study.age <= 60),
                    "leftsided_pe": int("left" in sides),
                    "chronic_pe": 0,
                    "true_filling_defect_not_pe": 0,
                    "rightsided_pe": int("right" in sides),
                    "acute_and_chronic_pe": 0,
                    "central_pe": int("central" in sides),
                    "indeterminate": 0,
                }
            )
        if progress:
            progress(index + 1)
    out = root / "train.csv"
    with atomic_path(out) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=RSNA_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return out


def _reader_xml(
    series_uid: str, study_uid: str, slices: list[WrittenSlice], study: Study, size: int, readers: int, rng
) -> str:
    """The LIDC XML of one series: per reader, a contour of each nodule on each slice it crosses
    (16 points on the nodule's outline, the radius off by up to 15%; a reader misses a nodule with
    probability 0.2)."""
    from xml.sax.saxutils import escape

    pixel = _PIXEL_MM * 64 / size
    parts = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        '<LidcReadMessage xmlns="http://www.nih.gov" uid="phantom">',
        f"<ResponseHeader><SeriesInstanceUid>{escape(series_uid)}</SeriesInstanceUid>"
        f"<StudyInstanceUID>{escape(study_uid)}</StudyInstanceUID></ResponseHeader>",
    ]
    angles = np.linspace(0, 2 * np.pi, 16, endpoint=False)
    for reader in range(readers):
        parts.append(f"<readingSession><servicingRadiologistID>{reader}</servicingRadiologistID>")
        for number, (nx, ny, nz, r_mm) in enumerate(study.nodules):
            if rng.random() < 0.2:
                continue
            scale = float(rng.uniform(0.85, 1.15))
            parts.append(f"<unblindedReadNodule><noduleID>{reader}-{number}</noduleID><characteristics/>")
            for item in slices:
                dz = (item.z - nz) * _EXTENT_MM
                if abs(dz) >= r_mm:
                    continue
                r = np.sqrt(r_mm**2 - dz**2) / pixel * scale
                xs, ys = nx * size + r * np.cos(angles), ny * size + r * np.sin(angles)
                edges = "".join(
                    f"<edgeMap><xCoord>{int(round(x))}</xCoord><yCoord>{int(round(y))}</yCoord></edgeMap>"
                    for x, y in zip(xs, ys, strict=True)
                )
                parts.append(
                    f"<roi><imageZposition>{-300.0 + item.z * _EXTENT_MM:.3f}</imageZposition>"
                    f"<imageSOP_UID>{item.sop}</imageSOP_UID><inclusion>TRUE</inclusion>{edges}</roi>"
                )
            parts.append("</unblindedReadNodule>")
        parts.append("</readingSession>")
    parts.append("</LidcReadMessage>")
    return "\n".join(parts)


def write_lidc_phantoms(
    root: Path,
    *,
    n_patients: int = 12,
    size: int = 64,
    seed: int = 0,
    readers: int = 4,
    progress: Callable[[int], None] | None = None,
) -> Path:
    """Write phantoms in the LIDC-IDRI layout (``LIDC-IDRI/LIDC-IDRI-NNNN/STUDY/SERIES/1-KKK.dcm`` and
    the readers' ``069.xml`` beside them; every patient has at least one nodule); returns
    ``phantoms.json`` (the series written), written last."""
    n_patients, size, seed = check_ct_phantoms(n_patients=n_patients, size=size, seed=seed)
    base = Path(root) / "LIDC-IDRI"
    written = []
    for index, study in enumerate(draw_studies(n_patients, seed)):
        rng = np.random.default_rng(study.seed + 1)
        if not study.nodules:  # segmentation phantoms: everyone has a nodule
            study = replace(study, nodules=((0.32, 0.6, 0.5, 15.0),))
        patient = f"LIDC-IDRI-{index + 1:04d}"
        study = replace(study, patient=patient)
        study_uid, series_uid, slices = write_series(
            study,
            index,
            seed=seed,
            size=size,
            folder=lambda st, se, patient=patient: base / patient / st[-12:] / se[-12:],
            name=lambda k, sop: f"1-{k:03d}.dcm",
        )
        xml = _reader_xml(series_uid, study_uid, slices, study, size, readers, rng)
        with atomic_path(slices[0].path.parent / "069.xml") as tmp:
            tmp.write_text(xml, encoding="utf-8")
        written.append({"patient": patient, "series": series_uid, "slices": len(slices)})
        if progress:
            progress(index + 1)
    index_file = Path(root) / "phantoms.json"
    with atomic_path(index_file) as tmp:
        tmp.write_text(json.dumps({"size": size, "seed": seed, "series": written}, indent=1), encoding="utf-8")
    return index_file
