"""Tests for the phantom writer and its adapter: determinism, layout, labels, reports, learnability."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import ndimage
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from cxrbench.data.adapters import get_adapter
from cxrbench.data.adapters.base import RawDataset
from cxrbench.data.adapters.synthetic import load
from cxrbench.data.synthetic import COLUMNS, FINDINGS, write_phantoms
from cxrbench.errors import CxrbenchError

N_PATIENTS, SIZE, SEED = 240, 64, 11


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("phantoms")
    write_phantoms(root, n_patients=N_PATIENTS, size=SIZE, seed=SEED)
    return root


@pytest.fixture(scope="module")
def table(dataset: Path) -> pd.DataFrame:
    return pd.read_csv(dataset / "metadata.csv", dtype={"PatientID": str, "StudyID": str})


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------ arguments


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"n_patients": 9}, "n_patients"),
        ({"n_patients": 12.5}, "n_patients"),
        ({"size": 31}, "size"),
        ({"size": True}, "size"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_arguments_raise_one_line_error_naming_the_parameter(tmp_path, kwargs, named):
    with pytest.raises(CxrbenchError) as info:
        write_phantoms(tmp_path / "out", **kwargs)
    assert named in info.value.message and "\n" not in info.value.message
    assert not (tmp_path / "out").exists()  # nothing written before validation


def test_root_that_is_a_file_is_rejected(tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(CxrbenchError, match="not a directory"):
        write_phantoms(target, n_patients=10, size=32)


# ---------------------------------------------------------------------------------- determinism


def test_same_seed_gives_identical_bytes_and_other_seed_differs(tmp_path):
    first = write_phantoms(tmp_path / "a", n_patients=10, size=32, seed=5)
    write_phantoms(tmp_path / "b", n_patients=10, size=32, seed=5)
    write_phantoms(tmp_path / "c", n_patients=10, size=32, seed=6)
    assert first == tmp_path / "a" / "metadata.csv"
    a, b, c = (_tree_bytes(tmp_path / name) for name in "abc")
    assert a == b
    assert len(a) > 10
    assert a["metadata.csv"] != c["metadata.csv"]
    shared = set(a) & set(c) - {"metadata.csv"}
    assert shared and all(a[k] != c[k] for k in shared)  # every common image differs


def test_parallel_writer_gives_the_same_bytes(tmp_path, monkeypatch):
    from cxrbench.data import synthetic

    write_phantoms(tmp_path / "serial", n_patients=10, size=32, seed=2)
    monkeypatch.setattr(synthetic, "_PARALLEL_PIXELS", 0)
    monkeypatch.setattr(synthetic, "_workers", lambda: 2)
    seen: list[int] = []
    write_phantoms(tmp_path / "parallel", n_patients=10, size=32, seed=2, progress=seen.append)
    assert _tree_bytes(tmp_path / "serial") == _tree_bytes(tmp_path / "parallel")
    assert seen == list(range(1, 11))


def test_progress_reports_every_patient_in_order(tmp_path):
    seen: list[int] = []
    write_phantoms(tmp_path, n_patients=12, size=32, progress=seen.append)
    assert seen == list(range(1, 13))


# ------------------------------------------------------------------------------- layout, schema


def test_csv_columns_and_encodings(dataset, table):
    with open(dataset / "metadata.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    assert tuple(rows[0]) == COLUMNS
    label_cells = {cell for row in rows[1:] for cell in row[len(COLUMNS) - len(FINDINGS) :]}
    assert label_cells == {"1.0", "0.0", "-1.0", ""}
    assert all(re.fullmatch(r"\d+", row[COLUMNS.index("Age")]) for row in rows[1:])
    assert set(table["View"]) == {"PA", "AP", "LATERAL"}
    assert set(table["Sex"]) == {"M", "F"}
    assert table["Age"].between(18, 100).all()
    for path, patient, study, view in table[["Path", "PatientID", "StudyID", "View"]].itertuples(index=False):
        assert path == f"images/{patient}/{study}_{view}.png"
    assert all((dataset / p).is_file() for p in table["Path"])
    assert table["Path"].is_unique
    assert set(p.relative_to(dataset).as_posix() for p in dataset.rglob("*.png")) == set(table["Path"])


def test_several_images_per_patient_and_one_frontal_per_study(table):
    per_patient = table.groupby("PatientID").size()
    assert per_patient.mean() >= 2.0 and per_patient.max() >= 4
    assert table["PatientID"].nunique() == N_PATIENTS
    frontal = table[table["View"] != "LATERAL"]
    assert frontal["StudyID"].is_unique and set(frontal["StudyID"]) == set(table["StudyID"])
    # a study belongs to one patient, and patient-level facts agree across its images
    assert (table.groupby("StudyID")["PatientID"].nunique() == 1).all()
    assert (table.groupby("PatientID")["Sex"].nunique() == 1).all()
    assert (table.groupby("StudyID")[list(FINDINGS) + ["Report"]].nunique(dropna=False) == 1).all().all()


def test_prevalences_are_realistic(table):
    studies = table.drop_duplicates("StudyID")
    for name in FINDINGS:
        positive = float((studies[name] == 1.0).mean())
        assert 0.05 <= positive <= 0.40, (name, positive)
        assert (studies[name] == -1.0).sum() >= 3, name
        assert studies[name].isna().sum() >= 3, name
    # co-occurrence: effusion is more common with an enlarged heart (heart failure)
    cardio = studies["Cardiomegaly"] == 1.0
    effusion = studies["Pleural Effusion"] == 1.0
    assert effusion[cardio].mean() > effusion[~cardio].mean() + 0.1


def test_png_bit_depths_and_ranges(dataset, table):
    modes: dict[str, list[np.ndarray]] = {}
    for path in table["Path"][:120]:
        with Image.open(dataset / path) as image:
            assert image.size == (SIZE, SIZE)
            modes.setdefault(image.mode, []).append(np.asarray(image))
    assert set(modes) == {"L", "I;16"}
    for pixels in modes["I;16"]:
        assert pixels.dtype == np.uint16 and 255 < pixels.max() <= 4095  # 12 bits in 16
    for pixels in modes["L"]:
        assert pixels.dtype == np.uint8 and pixels.max() - pixels.min() > 100
    ranges = {int(p.max()) for p in modes["I;16"]}
    assert len(ranges) > len(modes["I;16"]) // 2  # exposure varies per image


def test_frontal_images_look_like_chest_xrays(dataset, table):
    """Bright = dense: lungs darker than the mediastinum/spine column and the abdomen below."""
    normal = table[(table["View"] == "PA")].head(30)
    for path in normal["Path"]:
        a = np.asarray(Image.open(dataset / path), dtype=float)
        a = (a - a.min()) / (a.max() - a.min())
        s = SIZE
        lungs = np.r_[
            a[s // 4 : s // 2, s // 5 : s // 3].ravel(),
            a[s // 4 : s // 2, 2 * s // 3 : 4 * s // 5].ravel(),
        ]
        centre = a[s // 4 : s // 2, s // 2 - 2 : s // 2 + 2]
        abdomen = a[-s // 10 :, s // 3 : 2 * s // 3]
        assert np.median(lungs) + 0.15 < np.median(centre)
        assert np.median(lungs) + 0.15 < np.median(abdomen)


# ------------------------------------------------------------------------------- report/labels

_TERMS = {
    "Cardiomegaly": r"cardiomegaly|heart size|heart is|cardiac silhouette",
    "Pleural Effusion": r"effusion",
    "Nodule": r"nodule",
    "Pneumothorax": r"pneumothorax",
    "Consolidation": r"consolidation",
}
_UNCERTAIN = r"possible|cannot be excluded|questionable|may represent|borderline"
_NEGATED = r"^no\b|\bthere is no\b|\bnormal\b"


def _label_sentence(sentence: str) -> float:
    if re.search(_UNCERTAIN, sentence, re.I):
        return -1.0
    if re.search(_NEGATED, sentence, re.I):
        return 0.0
    return 1.0


def _labeler(report: str) -> dict[str, float]:
    """A tiny independent rule labeler: positive beats uncertain beats negated beats unmentioned."""
    sentences = [s.strip() for s in re.split(r"(?<=[.;])\s+|\n", report) if s.strip()]
    out = {}
    for name, pattern in _TERMS.items():
        states = {_label_sentence(s) for s in sentences if re.search(pattern, s, re.I)}
        out[name] = next((v for v in (1.0, -1.0, 0.0) if v in states), np.nan)
    return out


def test_reports_have_sections_and_agree_with_labels(table):
    studies = table.drop_duplicates("StudyID")
    for report, *labels in studies[["Report", *FINDINGS]].itertuples(index=False):
        assert re.fullmatch(r"FINDINGS: .+\nIMPRESSION: .+", report, re.S), report
        extracted = _labeler(report)
        for name, value in zip(FINDINGS, labels, strict=True):
            assert extracted[name] == value or (np.isnan(value) and np.isnan(extracted[name])), (
                name,
                value,
                report,
            )


def test_negated_and_uncertain_wording(table):
    studies = table.drop_duplicates("StudyID")
    for name in FINDINGS:
        negated = studies.loc[studies[name] == 0.0, "Report"]
        uncertain = studies.loc[studies[name] == -1.0, "Report"]
        assert negated.str.contains(r"\bno\b|normal", case=False).all()
        assert uncertain.str.contains(_UNCERTAIN, case=False).all()
    assert studies["Report"].str.contains("No pleural effusion").any()
    assert studies["Report"].str.contains("Possible", case=True).any()


# --------------------------------------------------------------------------------- learnability


def _features(root: Path, paths: pd.Series) -> np.ndarray:
    """8x8 block means of each standardised image plus blob-detector (difference of Gaussians) statistics."""
    a = np.stack([np.asarray(Image.open(root / p), dtype=np.float64) for p in paths])
    a = (a - a.mean(axis=(1, 2), keepdims=True)) / a.std(axis=(1, 2), keepdims=True)
    blocks = a.reshape(len(a), 8, SIZE // 8, 8, SIZE // 8).mean(axis=(2, 4)).reshape(len(a), -1)
    dog = ndimage.gaussian_filter(a, (0, 1.5, 1.5)) - ndimage.gaussian_filter(a, (0, 4.0, 4.0))
    inner = dog[:, SIZE // 8 : -SIZE // 8, SIZE // 8 : -SIZE // 8].reshape(len(a), -1)
    return np.column_stack([blocks, inner.max(1), np.percentile(inner, [99.5, 99, 95], axis=1).T])


def test_every_finding_is_learnable_from_pixels(dataset, table):
    frontal = table[table["View"] != "LATERAL"].reset_index(drop=True)
    x = _features(dataset, frontal["Path"])
    x = (x - x.mean(0)) / x.std(0)
    held_out = frontal["PatientID"].str[1:].astype(int).to_numpy() % 3 == 0
    for name in FINDINGS:
        y = frontal[name].to_numpy()
        keep = y != -1.0
        positive = y == 1.0
        train, test = keep & ~held_out, keep & held_out
        model = LogisticRegression(C=0.05, max_iter=5000).fit(x[train], positive[train])
        auc = roc_auc_score(positive[test], model.decision_function(x[test]))
        assert auc > 0.75, (name, auc)


# ------------------------------------------------------------------------------------- adapter


def test_adapter_reads_the_written_dataset(dataset, table):
    raw = get_adapter("synthetic").load(dataset)
    assert isinstance(raw, RawDataset) and raw.labels == list(FINDINGS)
    frame = raw.frame
    assert len(frame) == len(table)
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in frame["path"])
    assert frame["split"].isna().all()
    assert list(frame["patient_id"]) == list(table["PatientID"])
    assert list(frame["study_id"]) == list(table["StudyID"])
    assert set(frame["view"]) == {"PA", "AP", "LATERAL"}
    assert frame["age"].dtype == float and frame["sex"].isin(["M", "F"]).all()
    assert frame["report"].str.startswith("FINDINGS:").all()
    for name in FINDINGS:
        np.testing.assert_array_equal(frame[name].to_numpy(), table[name].to_numpy())
        assert set(frame[name].dropna().unique()) == {1.0, 0.0, -1.0}


def test_adapter_errors_are_one_line(tmp_path):
    with pytest.raises(CxrbenchError, match="metadata.csv"):
        load(tmp_path)
    (tmp_path / "metadata.csv").write_text("Path,PatientID\nimages/a.png,p1\n")
    with pytest.raises(CxrbenchError, match="missing columns"):
        load(tmp_path)
    header = ",".join(f'"{c}"' if " " in c else c for c in COLUMNS)
    (tmp_path / "metadata.csv").write_text(header + "\nimages/a.png,p1,s1,PA,M,50,FINDINGS: x,2.0,,,,\n")
    with pytest.raises(CxrbenchError, match="Cardiomegaly"):
        load(tmp_path)
