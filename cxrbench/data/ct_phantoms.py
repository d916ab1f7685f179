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
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxrbench.errors import CxrbenchError

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
                float(rng.uniform(0.4, 0.6)),
                float(rng.uniform(0.2, 0.8)),
                float(rng.uniform(8.0, 14.0)),
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
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    ds.save_as(tmp, enforce_file_format=True)
    os.replace(tmp, path)


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
        rng = np.random.default_rng(study.seed)
        study_uid, series_uid = _uid(seed, index, 1), _uid(seed, index, 1, 2)
        n = int(round(_EXTENT_MM / study.spacing))
        order = rng.permutation(n)  # InstanceNumber and SOP UIDs do not follow position
        pixel = _PIXEL_MM * 64 / size
        positive_exam = False
        slices = []
        for k in range(n):
            z = k / max(n - 1, 1)
            hu, shows, _ = slice_hu(study, z, size, rng)
            positive_exam |= shows
            sop = _uid(seed, index, 1, 2, int(order[k]) + 1, int(rng.integers(1, 10**9)))
            stored = np.clip(np.rint(hu + 1024.0), -32768, 32767).astype(np.int16)
            meta = {
                "sop": sop,
                "study": study_uid,
                "series": series_uid,
                "patient": study.patient,
                "sex": study.sex,
                "age": study.age,
                "instance": int(order[k]) + 1,
                "position": (-160.0, -160.0, -300.0 + k * study.spacing),
                "pixel": pixel,
                "thickness": study.spacing,
            }
            write_slice(root / "train" / study_uid / series_uid / f"{sop}.dcm", stored, meta)
            slices.append((sop, shows))
        sides = {e.side for e in study.emboli} if positive_exam else set()
        for sop, shows in sorted(slices):  # the CSV lists a study's slices in no positional order
            rows.append(
                {
                    "StudyInstanceUID": study_uid,
                    "SeriesInstanceUID": series_uid,
                    "SOPInstanceUID": sop,
                    "pe_present_on_image": int(shows),
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
    tmp = out.with_name(f".train.csv.tmp-{os.getpid()}")
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=RSNA_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, out)
    return out
