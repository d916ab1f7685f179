"""Synthetic chest X-ray phantoms: a small, seeded dataset on disk in a realistic layout.

It lets every stage run end to end without downloading anything: images show chest anatomy with
findings visible in the pixels, and reports/labels follow the drawn truth like a labeler's output.
"""

from __future__ import annotations

import csv
import math
import multiprocessing
import os
import struct
import zlib
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from cxrbench.errors import CxrbenchError
from cxrbench.rundir import atomic_path

#: Label columns, named like CheXpert's labeler output.
FINDINGS = ("Cardiomegaly", "Pleural Effusion", "Nodule", "Pneumothorax", "Consolidation")
#: CSV columns, in order.
COLUMNS = ("Path", "PatientID", "StudyID", "View", "Sex", "Age", "Report", *FINDINGS)
VIEWS = ("PA", "AP", "LATERAL")
#: Acquisition sites: ``a`` the default detector; ``b`` another hospital's (flatter contrast, fog,
#: more noise, burned-in laterality marker and text), with its own patients.
SITES = ("a", "b")
MIN_PATIENTS, MIN_SIZE, MAX_SIZE = 10, 32, 4096

# Label states: what the report says about a finding (the CSV encoding of each).
_POS, _NEG, _UNC, _NONE = "1.0", "0.0", "-1.0", ""

# Per-study probability that a true finding is reported with hedging, that a true negative is
# hedged anyway, and that a true negative is explicitly negated (else it goes unmentioned).
_P_HEDGE_TRUE, _P_HEDGE_FALSE, _P_NEGATE = 0.10, 0.03, 0.65


# --------------------------------------------------------------------------------------------
# Truth: what each study shows, drawn per patient so findings co-occur and persist realistically
# --------------------------------------------------------------------------------------------


@dataclass
class _Lesion:
    """A round lesion at (x, y) in frontal image coordinates, z its depth for the lateral view."""

    x: float
    y: float
    z: float
    r: float


@dataclass
class _Study:
    patient_id: str
    study_id: str
    sex: str
    age: int
    frontal: str  # "PA" or "AP"
    lateral: bool
    bit16: bool
    ctr: float  # cardiothoracic ratio
    effusion: dict[int, float] = field(default_factory=dict)  # side (-1 right, +1 left) -> height
    nodules: list[_Lesion] = field(default_factory=list)
    consolidation: list[_Lesion] = field(default_factory=list)
    pneumothorax: tuple[int, float] | None = None  # (side, collapse factor)
    labels: dict[str, str] = field(default_factory=dict)
    report: str = ""

    def truth(self) -> dict[str, bool]:
        return {
            "Cardiomegaly": self.ctr >= 0.5,
            "Pleural Effusion": bool(self.effusion),
            "Nodule": bool(self.nodules),
            "Pneumothorax": self.pneumothorax is not None,
            "Consolidation": bool(self.consolidation),
        }


def _sigmoid(x: float) -> float:
    return float(1.0 / (1.0 + np.exp(-x)))


def _lung_point(rng: np.random.Generator, side: int, *, lateral_part: bool) -> tuple[float, float]:
    """A point inside one lung field (frontal coordinates), optionally away from the heart."""
    inner, outer = (0.45, 0.72) if lateral_part else (0.25, 0.72)
    return side * float(rng.uniform(inner, outer)), float(rng.uniform(-0.5, 0.35))


def _draw_studies(n_patients: int, seed: int, site: str = "a") -> list[_Study]:
    """Draw patients, their studies and the truth of every finding (fixed order for a seed and site)."""
    rng = np.random.default_rng([seed, 7_919] if site == "a" else [seed, 7_919, SITES.index(site)])
    width = max(5, len(str(n_patients)))
    studies: list[_Study] = []
    study_counter = 0
    for p in range(n_patients):
        pid = f"p{p + 1:0{width}d}" if site == "a" else f"{site}p{p + 1:0{width}d}"
        sex = "F" if rng.random() < 0.47 else "M"
        age = int(np.clip(round(rng.normal(58, 17)), 18, 92))
        # Chronic findings are properties of the patient: enlarged heart, a persistent nodule.
        cardio = rng.random() < _sigmoid(-1.3 + 0.05 * (age - 58))
        ctr0 = rng.uniform(0.55, 0.68) if cardio else rng.uniform(0.36, 0.46)
        nodules: list[_Lesion] = []
        if rng.random() < 0.13:
            for _ in range(1 if rng.random() < 0.75 else 2):
                x, y = _lung_point(rng, int(rng.choice([-1, 1])), lateral_part=True)
                nodules.append(_Lesion(x, y, float(rng.uniform(-0.35, 0.35)), float(rng.uniform(0.085, 0.125))))
        n_studies = int(rng.choice([1, 2, 3, 4], p=[0.35, 0.3, 0.2, 0.15]))
        for s in range(n_studies):
            study_counter += 1
            consolidation: list[_Lesion] = []
            if rng.random() < 0.15 + (0.06 if age > 70 else 0.0):
                for _ in range(1 if rng.random() < 0.8 else 2):
                    x, y = _lung_point(rng, int(rng.choice([-1, 1])), lateral_part=False)
                    z = float(rng.uniform(-0.3, 0.3))
                    consolidation.append(_Lesion(x, y, z, float(rng.uniform(0.17, 0.28))))
            effusion: dict[int, float] = {}
            if rng.random() < 0.08 + 0.30 * cardio + 0.25 * bool(consolidation):
                sides = [-1, 1] if rng.random() < 0.35 else [int(rng.choice([-1, 1]))]
                if consolidation and len(sides) == 1 and rng.random() < 0.7:
                    sides = [1 if consolidation[0].x > 0 else -1]  # parapneumonic: same side
                effusion = {side: float(rng.uniform(0.18, 0.45)) for side in sides}
            ptx = None
            if rng.random() < 0.10:
                ptx = (int(rng.choice([-1, 1])), float(rng.uniform(0.5, 0.75)))
            acute = bool(effusion) or bool(consolidation) or ptx is not None
            frontal = "AP" if rng.random() < 0.2 + 0.35 * acute else "PA"
            lateral = rng.random() < (0.65 if frontal == "PA" else 0.15)
            study = _Study(
                patient_id=pid,
                study_id=f"s{study_counter:0{width + 2}d}",
                sex=sex,
                age=min(age + s, 95),
                frontal=frontal,
                lateral=bool(lateral),
                bit16=bool(rng.random() < 0.4),
                ctr=float(np.clip(ctr0 + rng.normal(0, 0.01), 0.3, 0.75)),
                effusion=effusion,
                nodules=list(nodules),
                consolidation=consolidation,
                pneumothorax=ptx,
            )
            _write_report(study, rng)
            studies.append(study)
    return studies


# --------------------------------------------------------------------------------------------
# Reports: sentences per finding, labels are what the report states
# --------------------------------------------------------------------------------------------


def _side_word(x: float) -> str:
    return "left" if x > 0 else "right"  # image right is the patient's left


def _zone_word(y: float) -> str:
    return "upper" if y < -0.2 else ("mid" if y < 0.15 else "lower")


def _size_word(height: float) -> str:
    return "small" if height < 0.26 else ("moderate" if height < 0.37 else "large")


def _sentences(study: _Study, name: str, state: str, rng: np.random.Generator) -> tuple[str, str]:
    """Return (findings sentence, impression phrase) for one finding in one label state."""
    pick = lambda options: options[int(rng.integers(len(options)))]  # noqa: E731
    if name == "Cardiomegaly":
        severity = "mild" if study.ctr < 0.6 else "moderate"
        pos = [f"The heart is {severity}ly enlarged.", f"There is {severity} cardiomegaly."]
        neg = [
            "Heart size is normal.",
            "No cardiomegaly.",
            "The cardiac silhouette is normal in size.",
        ]
        unc = [
            "Borderline heart size; possible mild cardiomegaly.",
            "Cardiomegaly cannot be excluded on this view.",
        ]
        imp = {_POS: f"{severity.capitalize()} cardiomegaly.", _UNC: "Possible cardiomegaly."}
    elif name == "Pleural Effusion":
        if study.effusion:
            sides = sorted(study.effusion)
            where = "bilateral" if len(sides) == 2 else ("left" if sides[0] > 0 else "right")
            size = _size_word(max(study.effusion.values()))
        else:
            where, size = ("left" if rng.random() < 0.5 else "right"), "small"
        noun = "pleural effusions" if where == "bilateral" else "pleural effusion"
        verb = "There are" if where == "bilateral" else "There is a"
        pos = [f"{verb} {size} {where} {noun}.", f"{size.capitalize()} {where} {noun}."]
        neg = ["No pleural effusion.", "There is no pleural effusion.", "No effusion is seen."]
        unc = [f"Possible small {where} {noun}.", f"A small {where} {noun} cannot be excluded."]
        imp = {_POS: f"{size.capitalize()} {where} {noun}.", _UNC: f"Possible {where} {noun}."}
    elif name == "Nodule":
        lesion = study.nodules[0] if study.nodules else _Lesion(-0.5, -0.3, 0.0, 0.07)
        where = f"{_side_word(lesion.x)} {_zone_word(lesion.y)} zone"
        mm = int(round(lesion.r * 150))
        many = len(study.nodules) > 1
        pos = [
            f"There {'are nodules' if many else f'is a {mm} mm nodule'} in the {where}.",
            f"{'Nodules' if many else 'A nodule'} in the {where}.",
        ]
        neg = ["No pulmonary nodule.", "No suspicious pulmonary nodules are seen."]
        unc = [
            f"Possible nodule in the {where}.",
            f"Questionable nodule in the {where}, may represent a nipple shadow.",
        ]
        imp = {
            _POS: f"{'Pulmonary nodules' if many else 'Pulmonary nodule'} in the {where}; CT recommended.",
            _UNC: f"Possible nodule in the {where}.",
        }
    elif name == "Pneumothorax":
        side = _side_word(study.pneumothorax[0]) if study.pneumothorax else "right"
        size = "large" if study.pneumothorax and study.pneumothorax[1] < 0.6 else "small"
        pos = [
            f"There is a {size} {side} pneumothorax.",
            f"{size.capitalize()} {side} apical pneumothorax.",
        ]
        neg = ["No pneumothorax.", "There is no pneumothorax."]
        unc = [
            f"Possible small {side} apical pneumothorax.",
            f"A small {side} pneumothorax cannot be excluded.",
        ]
        imp = {
            _POS: f"{size.capitalize()} {side} pneumothorax.",
            _UNC: f"Possible {side} pneumothorax.",
        }
    elif name == "Consolidation":
        lesion = study.consolidation[0] if study.consolidation else _Lesion(0.5, 0.3, 0.0, 0.2)
        lobe = f"{_side_word(lesion.x)} {'upper' if lesion.y < -0.1 else 'lower'} lobe"
        pos = [
            f"There is consolidation in the {lobe}.",
            f"Focal consolidation in the {lobe}, concerning for pneumonia.",
        ]
        neg = ["No focal consolidation.", "There is no consolidation."]
        unc = [
            f"Hazy opacity in the {lobe} may represent early consolidation.",
            f"Possible consolidation in the {lobe}.",
        ]
        imp = {
            _POS: f"Consolidation in the {lobe}, likely pneumonia.",
            _UNC: f"Possible {lobe} consolidation.",
        }
    else:  # pragma: no cover - FINDINGS is closed
        raise ValueError(name)
    text = {_POS: pick(pos), _NEG: pick(neg), _UNC: pick(unc), _NONE: ""}[state]
    return text, imp.get(state, "")


_FILLER = (
    "The mediastinal contours are unremarkable.",
    "No acute osseous abnormality.",
    "Mild degenerative changes of the thoracic spine.",
    "The visualized upper abdomen is unremarkable.",
    "Surgical clips in the right upper quadrant.",
)


def _write_report(study: _Study, rng: np.random.Generator) -> None:
    """Fill ``study.labels`` (labeler states) and ``study.report`` from the study's truth."""
    findings, impression = [], []
    for name, present in study.truth().items():
        u = rng.random()
        if present:
            state = _UNC if u < _P_HEDGE_TRUE else _POS
        elif u < _P_HEDGE_FALSE:
            state = _UNC
        elif u < _P_HEDGE_FALSE + _P_NEGATE:
            state = _NEG
        else:
            state = _NONE
        study.labels[name] = state
        sentence, phrase = _sentences(study, name, state, rng)
        if sentence:
            findings.append(sentence)
        if phrase:
            impression.append(phrase)
    view = {"PA": "PA and lateral" if study.lateral else "PA", "AP": "Portable AP"}[study.frontal]
    findings.insert(0, f"{view} views of the chest." if study.lateral else f"{view} view of the chest.")
    if rng.random() < 0.5:
        findings.append(_FILLER[int(rng.integers(len(_FILLER)))])
    if not impression:
        impression = ["No acute cardiopulmonary process."]
    numbered = " ".join(f"{i}. {p}" for i, p in enumerate(impression, 1)) if len(impression) > 1 else impression[0]
    study.report = "FINDINGS: " + " ".join(findings) + "\nIMPRESSION: " + numbered


# --------------------------------------------------------------------------------------------
# Images: an attenuation map built from soft shapes, then exposure, noise and quantisation
# --------------------------------------------------------------------------------------------


def _inside(d: np.ndarray, w: float) -> np.ndarray:
    """Soft indicator of ``d < 0`` with an edge ``w`` wide (d is a signed-distance-like field)."""
    return _clip01(0.5 - d / w)


def _clip01(x: np.ndarray) -> np.ndarray:
    """Clip to [0, 1] in place (np.clip's wrapper costs more than the work on small images)."""
    np.maximum(x, 0.0, out=x)
    return np.minimum(x, 1.0, out=x)


def _ellipse(u: np.ndarray, v: np.ndarray, cx: float, cy: float, ax: float, ay: float) -> np.ndarray:
    """Normalised radius of (u, v) in an ellipse: < 1 inside."""
    return np.sqrt(((u - cx) / ax) ** 2 + ((v - cy) / ay) ** 2)


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Unit-variance-ish noise smooth over ``size / cells`` pixels (bicubic upsampling)."""
    small = rng.standard_normal((cells, cells)).astype(np.float32)
    return np.asarray(Image.fromarray(small, mode="F").resize((size, size), Image.BICUBIC))


def _vessels(u: np.ndarray, v: np.ndarray, rng: np.random.Generator, *, centre: tuple[float, float]) -> np.ndarray:
    """Lung markings: wavy lines radiating from a hilum, fading and thinning towards the periphery."""
    du, dv = u - centre[0], v - centre[1]
    rho = np.sqrt(du * du + dv * dv) + 1e-3
    theta = np.arctan2(dv, du)
    out = np.zeros_like(u)
    for branches, width in ((int(rng.integers(7, 11)), 0.22), (int(rng.integers(15, 21)), 0.14)):
        wiggle = float(rng.uniform(0.15, 0.35)) * np.sin(float(rng.uniform(4, 8)) * rho + float(rng.uniform(0, 6.3)))
        line = np.abs(np.sin(0.5 * branches * theta + wiggle + float(rng.uniform(0, 6.3))))
        out = np.maximum(out, _clip01(1.0 - line / (width / (0.3 + rho))) * (0.6 if width < 0.2 else 1.0))
    return out * np.exp(-rho / 0.55)


def _grid(size: int, rng: np.random.Generator, *, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Pixel centres in [-1, 1], jittered by a small rotation, shift and zoom (patient positioning)."""
    axis = (np.arange(size, dtype=np.float32) + 0.5) * (2.0 / size) - 1.0
    theta = float(rng.normal(0.0, 0.04))
    tx, ty = rng.normal(0.0, 0.03, size=2)
    zoom = float(rng.uniform(0.94, 1.06)) * scale
    c, s = math.cos(theta) / zoom, math.sin(theta) / zoom
    x = axis[None, :] - np.float32(tx)
    y = axis[:, None] - np.float32(ty)
    return (c * x + s * y).astype(np.float32), (-s * x + c * y).astype(np.float32)


def _nodule_density(u: np.ndarray, v: np.ndarray, lesions: list[_Lesion], px: float, *, lateral: bool) -> np.ndarray:
    """Projected thickness of spheres: sqrt(1 - (d/r)^2), so edges are soft like real nodules."""
    out = np.zeros_like(u)
    for n in lesions:
        r = max(n.r, 1.6 * px)
        cx = n.z if lateral else n.x
        d2 = ((u - cx) ** 2 + (v - n.y) ** 2) / (r * r)
        out += np.sqrt(_clip01(1.0 - d2))
    return out


def _consolidation_density(
    u: np.ndarray,
    v: np.ndarray,
    lesions: list[_Lesion],
    rng: np.random.Generator,
    size: int,
    *,
    lateral: bool,
) -> np.ndarray:
    """Patchy airspace opacity: blobs with ragged edges and internal mottling."""
    out = np.zeros_like(u)
    if not lesions:
        return out
    ragged = _smooth_noise(rng, size, 10)
    for c in lesions:
        cx = c.z if lateral else c.x
        d = _ellipse(u, v, cx, c.y, c.r * (0.8 if lateral else 1.0), c.r * 1.25) - 1.0 + 0.25 * ragged
        out = np.maximum(out, _inside(d, 0.35))
    return out * (0.8 + 0.2 * np.clip(ragged, -1, 1))


def _frontal(study: _Study, rng: np.random.Generator, size: int) -> np.ndarray:
    """Attenuation map of a PA/AP chest: bright = dense (bone, heart, fluid), lungs dark."""
    ap = study.frontal == "AP"
    u, v = _grid(size, rng, scale=1.0)
    px = 2.0 / size
    w = max(0.05, 2.0 * px)
    habitus = float(rng.uniform(0.92, 1.05))
    hx = 0.33 * habitus  # half-width of one lung
    inspiration = float(rng.uniform(-0.04, 0.04)) - (0.07 if ap else 0.0)
    dome = {-1: 0.42 + inspiration, 1: 0.47 + inspiration}  # right hemidiaphragm sits higher

    # Body outline with shoulders and neck; soft tissue everywhere inside it.
    bw = 0.93 * habitus
    top = np.minimum(v + 0.62, 0.0) / 0.5
    half = 0.28 + (bw - 0.28) * np.sqrt(_clip01(1.0 - top * top))
    tissue = _inside(np.abs(u) - half, w) * 0.5
    if study.sex == "F":
        for side in (-1, 1):
            tissue += 0.07 * _inside(_ellipse(u, v, side * 0.5, 0.62, 0.35, 0.25) - 1.0, 0.3)

    # Lungs (side -1 = patient's right, drawn on the image's left), cut by the diaphragm domes.
    lungs = {}
    for side in (-1, 1):
        cx = side * (0.1 + hx)
        yd = dome[side] + 0.28 * ((u - cx) / hx) ** 2
        lungs[side] = _inside(_ellipse(u, v, cx, 0.05, hx, 0.76) - 1.0, w / hx) * _inside(v - yd, w)

    # Heart: width set by the cardiothoracic ratio; AP projection magnifies it a little.
    thorax_half = 0.1 + 2 * hx + 0.03
    hw = study.ctr * thorax_half * (1.08 if ap else 1.0)
    hv = 0.17 + 0.25 * hw
    heart = _inside(_ellipse(u, v, 0.04 + 0.3 * hw, dome[1] - 0.15, hw, hv) - 1.0, w / hw)
    medi = _inside(np.abs(u - 0.02) - (0.09 + 0.05 * _clip01(v + 0.2)), w)
    # Vessels: the zero crossings of smooth noise form a branching-looking network of thin lines.
    vessels = _vessels(u, v, rng, centre=(-0.2, -0.02)) + _vessels(u, v, rng, centre=(0.22, 0.0))

    # Pneumothorax: the lung collapses towards the hilum; the space left is air without markings.
    ptx_space = np.zeros_like(u)
    pleural_line = np.zeros_like(u)
    if study.pneumothorax is not None:
        side, f = study.pneumothorax
        cx = side * (0.1 + hx)
        hu, hvv = side * 0.2, 0.05
        uc = hu + (u - hu) / f
        vc = np.where(v < hvv, hvv + (v - hvv) / f, v)
        yd = dome[side] + 0.28 * ((uc - cx) / hx) ** 2
        collapsed = _inside(_ellipse(uc, vc, cx, 0.05, hx, 0.76) - 1.0, w / hx) * _inside(vc - yd, w)
        ptx_space = _clip01(lungs[side] - collapsed)
        edge = _inside(_ellipse(uc, vc, cx, 0.05, hx, 0.76) - 1.0, 1.5 * px / hx)
        pleural_line = 4.0 * edge * (1.0 - edge) * lungs[side]
        lungs[side] = collapsed

    lung = _clip01(lungs[-1] + lungs[1] + ptx_space)
    lung_tissue = _clip01(lungs[-1] + lungs[1])
    visible = (1.0 - heart) * (1.0 - medi)
    a = tissue - 0.4 * lung * visible + 0.12 * heart + 0.1 * medi
    a += 0.14 * vessels * lung_tissue * visible
    if study.pneumothorax is not None:
        a += 0.07 * lungs[study.pneumothorax[0]] * visible  # the collapsed lung is denser
    a -= 0.06 * ptx_space
    a += 0.18 * pleural_line

    # Bones: spine, posterior ribs, clavicles.
    a += 0.12 * _inside(np.abs(u) - 0.07, px) * (0.8 + 0.2 * np.cos(2 * np.pi * v / 0.14)) * (v > -0.9)
    thorax = _inside(_ellipse(u, v, 0.0, -0.05, 0.86 * habitus, 0.75) - 1.0, 0.1) * (np.abs(u) > 0.07)
    spacing = float(rng.uniform(0.12, 0.15))
    phase = (v - 0.45 * u * u) / spacing + float(rng.random())
    a += 0.11 * thorax * _clip01((np.cos(2 * np.pi * phase) - 0.3) / 0.7)
    for side in (-1, 1):
        clav = np.abs(v - (-0.6 - 0.18 * (side * u - 0.1))) - 0.035
        a += 0.16 * _inside(clav, px) * ((side * u) > 0.06) * ((side * u) < 0.72)

    # Findings.
    for side, height in study.effusion.items():
        cx = side * (0.1 + hx)
        lateralness = np.clip(side * (u - cx) / hx, -1.0, 1.0)
        surface = dome[side] + 0.2 - height - 0.35 * height * lateralness  # meniscus rises laterally
        fluid = _inside(surface - v, w) * _inside(_ellipse(u, v, cx, 0.1, hx * 1.05, 0.85) - 1.0, w / hx)
        a += fluid * (0.36 + 0.12 * _clip01((v - surface) / (height + 1e-3)))
    if study.consolidation:
        a += 0.3 * _consolidation_density(u, v, study.consolidation, rng, size, lateral=False) * lung
    if study.nodules:
        a += 0.6 * _nodule_density(u, v, study.nodules, px, lateral=False)
    return a


def _lateral(study: _Study, rng: np.random.Generator, size: int) -> np.ndarray:
    """Attenuation map of a lateral chest: anterior on the left, spine posterior on the right."""
    u, v = _grid(size, rng, scale=1.0)
    px = 2.0 / size
    w = max(0.05, 2.0 * px)
    body = _inside(_ellipse(u, v, 0.02, 0.15, 0.9, 1.25) - 1.0, w)
    a = 0.55 * body
    yd = 0.45 + 0.3 * np.clip(u + 0.2, 0.0, None) ** 2  # posterior sulcus lies lower
    lung = _inside(_ellipse(u, v, 0.02, 0.0, 0.62, 0.78) - 1.0, w / 0.6) * _inside(v - yd, w)
    heart = _inside(_ellipse(u, v, -0.25, 0.3, 0.2 + 0.55 * (study.ctr - 0.3), 0.32) - 1.0, w / 0.3)
    a -= 0.36 * lung * (1.0 - heart)
    a += 0.06 * heart
    a += 0.12 * _vessels(u, v, rng, centre=(0.0, 0.0)) * lung
    spine = _inside(np.abs(u - 0.72) - 0.09, px) * (0.75 + 0.25 * (np.cos(2 * np.pi * v / 0.16) > -0.6))
    a += 0.3 * spine
    a += 0.15 * _inside(np.abs(u + 0.62) - 0.025, px) * (v < 0.5)  # sternum
    if study.effusion:
        height = max(study.effusion.values())
        surface = yd - 0.05 - height * (0.4 + 0.8 * np.clip(u, 0.0, None))
        a += 0.35 * _inside(surface - v, w) * _inside(_ellipse(u, v, 0.1, 0.2, 0.6, 0.7) - 1.0, w) * body
    if study.pneumothorax is not None:
        a -= 0.08 * _inside(_ellipse(u, v, -0.2, -0.45, 0.35, 0.3) - 1.0, 0.3) * lung
    if study.consolidation:
        a += 0.28 * _consolidation_density(u, v, study.consolidation, rng, size, lateral=True) * lung
    if study.nodules:
        a += 0.35 * _nodule_density(u, v, study.nodules, px, lateral=True)
    return a


def _expose(
    a: np.ndarray, rng: np.random.Generator, *, size: int, bit16: bool, site: np.random.Generator | None = None
) -> np.ndarray:
    """Detector response: per-image exposure, contrast and noise, quantised to 8 or 12 bits;
    ``site`` (its own random stream) applies site ``b``'s acquisition before quantising."""
    k = float(rng.uniform(1.7, 2.7))
    np.maximum(a, 0.0, out=a)
    d = _clip01((1.0 - np.exp(-k * a)) * np.float32(1.0 / (1.0 - math.exp(-k * 0.95))))
    if d.shape[0] != size:  # anatomy is smooth: render small, upsample, then add pixel noise
        d = np.asarray(Image.fromarray(d, mode="F").resize((size, size), Image.BICUBIC))
    bend = float(rng.uniform(-0.25, 0.25))  # contrast curve, cheaper than a power law
    fog = float(rng.uniform(0.0, 0.08))
    d = fog + (1.0 - fog) * d * (1.0 + bend * (1.0 - d))
    sigma = float(rng.uniform(0.01, 0.03))
    d += rng.standard_normal(d.shape, dtype=np.float32) * (sigma * (0.6 + 0.8 * d))
    _clip01(d)
    if site is not None:
        d = _site_b(d, site)
    if bit16:  # 12-bit detector data in a 16-bit container, window varies per image
        lo, hi = float(rng.uniform(0, 300)), float(rng.uniform(2600, 4095))
        return np.rint(lo + d * (hi - lo)).astype(np.uint16)
    gain = float(rng.uniform(0.85, 1.0))
    return np.rint(np.minimum(d * (255.0 / gain), 255.0)).astype(np.uint8)


def _render_size(size: int) -> int:
    """Resolution the anatomy is drawn at: full up to 96 px, about half above (noise stays full)."""
    return size if size <= 96 else max(96, (size + 1) // 2)


def _render(study: _Study, view: str, *, size: int, seed: int, index: int, site: str = "a") -> np.ndarray:
    """Return the pixels (uint8 or uint16, ``size`` x ``size``) of one view of one study."""
    rng = np.random.default_rng([seed, index, VIEWS.index(view)])
    draw = _lateral if view == "LATERAL" else _frontal
    a = draw(study, rng, _render_size(size)).astype(np.float32, copy=False)
    if site == "a":
        return _expose(a, rng, size=size, bit16=study.bit16)
    site_rng = np.random.default_rng([seed, index, VIEWS.index(view), SITES.index(site)])
    return _expose(a, rng, size=size, bit16=study.bit16, site=site_rng)


#: A 5 x 3 bitmap of the letters R and L, for the laterality marker a technologist places.
_GLYPHS = {
    "R": ["110", "101", "110", "101", "101"],
    "L": ["100", "100", "100", "100", "111"],
}


def _site_b(d: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Site ``b``'s acquisition on detector values in [0, 1]: a flatter, fogged contrast curve,
    stronger noise, a burned-in laterality marker (top corner) and a text strip (bottom)."""
    size = d.shape[0]
    d = 0.18 + 0.6 * np.power(d, 1.6)  # flatter curve with a raised floor
    d = d + rng.standard_normal(d.shape, dtype=np.float32) * 0.05
    cell = max(1, size // 40)
    glyph = _GLYPHS["R" if rng.random() < 0.5 else "L"]
    top = left = max(1, size // 20)
    for r, row in enumerate(glyph):
        for c, bit in enumerate(row):
            if bit == "1":
                d[top + r * cell : top + (r + 1) * cell, left + c * cell : left + (c + 1) * cell] = 1.0
    strip = size - max(2, size // 12)
    length = int(rng.integers(size // 4, size // 2))
    d[strip : strip + cell, left : left + length : 2] = 0.95  # dotted "text" line
    return _clip01(d.astype(np.float32, copy=False))


# --------------------------------------------------------------------------------------------
# Writer
# --------------------------------------------------------------------------------------------


def _check_int(name: str, value: object, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise CxrbenchError(f"{name}={value!r}: expected an integer")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f">= {minimum}" if maximum is None else f"between {minimum} and {maximum}"
        raise CxrbenchError(f"{name}={value}: must be {bound}")
    return int(value)


def check_phantoms(*, n_patients: object, size: object, seed: object, site: object = "a") -> tuple[int, int, int]:
    """The phantom settings as integers, or a one-line error naming the bad one (checked before any work)."""
    if site not in SITES:
        raise CxrbenchError(f"site={site!r}: choose one of {', '.join(SITES)}")
    return (
        _check_int("n_patients", n_patients, MIN_PATIENTS),
        _check_int("size", size, MIN_SIZE, MAX_SIZE),
        _check_int("seed", seed, 0),
    )


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_bytes(pixels: np.ndarray) -> bytes:
    """Greyscale PNG (8 or 16 bit) with no timestamp or text chunks: same pixels, same bytes.

    Written directly (no row filters, zlib level 1) because encoding dominated the run time.
    """
    height, width = pixels.shape
    depth = 16 if pixels.dtype == np.uint16 else 8
    raw = pixels.astype(">u2" if depth == 16 else np.uint8, copy=False)
    rows = np.zeros((height, 1 + width * depth // 8), dtype=np.uint8)  # leading 0 = filter "None"
    rows[:, 1:] = raw.view(np.uint8).reshape(height, -1)
    header = struct.pack(">IIBBBBB", width, height, depth, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(rows.tobytes(), 1))
        + _png_chunk(b"IEND", b"")
    )


#: Jobs with more output pixels than this use one process per available core.
_PARALLEL_PIXELS = 40_000_000


def _workers() -> int:
    if "fork" not in multiprocessing.get_all_start_methods():
        return 1
    try:
        return max(1, min(len(os.sched_getaffinity(0)), 8))
    except AttributeError:  # no affinity API (macOS)
        return max(1, min(os.cpu_count() or 1, 8))


def _patient_chunks(studies: list[_Study], *, per_chunk: int) -> list[tuple[int, int]]:
    """Split study indices into runs of ``per_chunk`` whole patients."""
    starts = [i for i, s in enumerate(studies) if i == 0 or s.patient_id != studies[i - 1].patient_id]
    bounds = starts[::per_chunk] + [len(studies)]
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def _write_chunk(job: tuple[str, list[_Study], int, int, int, str]) -> int:
    """Write the images of a run of studies (``first`` is the first one's index); return patients done."""
    root, studies, first, size, seed, site = job
    for offset, study in enumerate(studies):
        folder = Path(root) / "images" / study.patient_id
        folder.mkdir(parents=True, exist_ok=True)
        for view in [study.frontal, "LATERAL"] if study.lateral else [study.frontal]:
            pixels = _render(study, view, size=size, seed=seed, index=first + offset, site=site)
            (folder / f"{study.study_id}_{view}.png").write_bytes(_png_bytes(pixels))
    return len({s.patient_id for s in studies})


def write_phantoms(
    root: Path,
    *,
    n_patients: int = 200,
    size: int = 64,
    seed: int = 0,
    site: str = "a",
    progress: Callable[[int], None] | None = None,
) -> Path:
    """Return ``root/metadata.csv`` after writing a phantom dataset under ``root``.

    Layout: ``root/images/<PatientID>/<StudyID>_<View>.png`` (8-bit ``L`` or 16-bit ``I;16``
    greyscale) and ``root/metadata.csv`` with columns ``COLUMNS``. The same arguments give
    byte-identical files. ``progress``, if given, is called as patients are finished with the number
    of patients written so far (after each patient, or each 16 for more than 1,000 patients).
    Large jobs (about 40 Mpixel of output) use one process per available core. The CSV is written last (atomically), so an interrupted run leaves
    no metadata file. ``site`` (``SITES``) chooses the acquisition and draws that site's own patients.
    """
    n_patients, size, seed = check_phantoms(n_patients=n_patients, size=size, seed=seed, site=site)
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise CxrbenchError(f"output folder {root} exists and is not a directory")

    studies = _draw_studies(n_patients, seed, site)
    chunks = _patient_chunks(studies, per_chunk=1 if n_patients <= 1000 else 16)
    jobs = [(str(root), studies[a:b], a, size, seed, site) for a, b in chunks]
    pixels = sum(1 + s.lateral for s in studies) * size * size
    workers = _workers() if pixels >= _PARALLEL_PIXELS else 1
    done = 0
    if workers > 1:  # every image depends only on (seed, study index, view): same bytes either way
        # fork, like torch's DataLoader workers: spawn would re-run an unnamed __main__ (stdin, REPL)
        context = multiprocessing.get_context("fork")
        from cxrbench.processes import die_with_parent  # a killed prepare takes its workers with it

        with ProcessPoolExecutor(
            workers, mp_context=context, initializer=die_with_parent, initargs=(os.getpid(),)
        ) as pool:
            for n in pool.map(_write_chunk, jobs):
                done += n
                if progress is not None:
                    progress(done)
    else:
        for job in jobs:
            done += _write_chunk(job)
            if progress is not None:
                progress(done)

    rows = []
    for study in studies:
        for view in [study.frontal, "LATERAL"] if study.lateral else [study.frontal]:
            rel = f"images/{study.patient_id}/{study.study_id}_{view}.png"
            labels = [study.labels[name] for name in FINDINGS]
            row = [rel, study.patient_id, study.study_id, view, study.sex, str(study.age)]
            rows.append([*row, study.report, *labels])

    target = root / "metadata.csv"
    with atomic_path(target) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(COLUMNS)
        writer.writerows(rows)
    return target
