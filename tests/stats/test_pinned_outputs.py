"""The `evaluate` and `compare` stages' numbers are pinned: speed-ups must not change a single bit.

A small run (two datasets, three encoders, a label-fraction variant, ties, unknown labels, a rare
label whose replicates are sometimes dropped) goes through both stages; every value of
``metrics.parquet`` and of each comparison table (Parquet and the md/csv/tex/html texts) is hashed
and checked against the digests the code gave before the speed-ups (bootstrap, validation, reading
and plotting changes). Floats are hashed by their bits, so a change in the last bit of one CI fails.
A failing digest means the statistics changed: that is only right together with a new
``CACHE_VERSION`` and a CHANGELOG entry saying why.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxrbench.adapt.predictions import predictions_table
from cxrbench.rundir import RunLayout, write_parquet
from cxrbench.stages.compare import compare
from cxrbench.stages.evaluate import evaluate

ENCODERS = ("imagenet", "moco", "dino")
ADAPTATIONS = ("probe", "probe-f0.10-s1")


def _write_run(run: Path) -> None:
    rng = np.random.default_rng(2024)
    for d, dataset in enumerate(("nih", "chexpert")):
        n_test, n_val = 240 + 30 * d, 90
        n = n_test + n_val
        labels = ["Effusion", "Nodule", "Hernia"][: 3 - d]
        prev = np.array([0.3, 0.1, 0.012])[: len(labels)]
        y = (rng.random((n, len(labels))) < prev).astype(float)
        y[:2] = [[0.0] * len(labels), [1.0] * len(labels)]
        y[n_test : n_test + 2] = y[:2]
        y[rng.random(y.shape) < 0.03] = np.nan  # unknown labels
        if d == 0:  # Hernia: two test positives, so some replicates lack one and are dropped
            y[:n_test, 2] = np.where(np.isnan(y[:n_test, 2]), np.nan, 0.0)
            y[[1, 5], 2] = 1.0
        rows = pd.DataFrame({
            "sample_id": [f"{dataset}-{i:04d}.png" for i in range(n)],
            "patient_id": [f"{dataset}-p{i // 2:04d}" for i in range(n)],
            "split": ["test"] * n_test + ["val"] * n_val,
        })  # fmt: skip
        for e, encoder in enumerate(ENCODERS):
            for adaptation in ADAPTATIONS:
                skill = 0.6 + 0.4 * e + (0.2 if adaptation == "probe" else 0.0)
                scores = np.round(skill * np.nan_to_num(y) + rng.normal(size=y.shape), 1)  # many ties
                table = predictions_table(rows, labels, y, scores)
                write_parquet(RunLayout(run).predictions(dataset, encoder, adaptation), table)


def _frame_digest(frame: pd.DataFrame) -> str:
    """Hash of a frame's columns, dtypes and values (floats by their bits, NaN included)."""
    h = hashlib.sha256()
    for name in frame.columns:
        col = frame[name]
        h.update(f"{name}:{col.dtype}\0".encode())
        if pd.api.types.is_float_dtype(col.dtype):
            h.update(col.to_numpy(dtype=np.float64).tobytes())
        else:
            h.update("\0".join(map(repr, col.tolist())).encode())
    return h.hexdigest()[:16]


def _outputs(run: Path) -> dict[str, str]:
    out = {"metrics.parquet": _frame_digest(pd.read_parquet(run / "evaluation/metrics.parquet"))}
    warnings = json.loads((run / "evaluation/manifest.json").read_text())["extra"]["warnings"]
    out["warnings"] = hashlib.sha256(json.dumps(warnings).encode()).hexdigest()[:16]
    for path in sorted((run / "comparisons").iterdir()):
        if path.suffix == ".parquet":
            out[path.name] = _frame_digest(pd.read_parquet(path))
        elif path.suffix in (".md", ".csv", ".tex", ".html"):
            out[path.name] = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    return out


PINNED = {
    "image": {
        "metrics.parquet": "45e5caf73a7c9998",
        "warnings": "9edb575c352dd98c",
        "chexpert.csv": "3d114e0e412447dc",
        "chexpert.html": "510870f36be1a2f3",
        "chexpert.md": "308c0537ae896ee5",
        "chexpert.parquet": "2ffa526e0c97bd1d",
        "chexpert.tex": "40c6e816843df370",
        "nih.csv": "216bff3d33a616fc",
        "nih.html": "8e4ece194d7816b3",
        "nih.md": "b6141e0f9d09f12d",
        "nih.parquet": "b785c4cda0cb6168",
        "nih.tex": "4b0dd702f30c3df5",
        "summary.csv": "21a5ff6dbc293064",
        "summary.html": "d71d1fc788eebaff",
        "summary.md": "ed88e6a76254c2f4",
        "summary.parquet": "7ea8df40bdb55818",
        "summary.tex": "62e8974eb2f74436",
    },
    "patient": {
        "metrics.parquet": "294760b9e0055be1",
        "warnings": "6b63ec0e112287ba",
        "chexpert.csv": "9f751fbb0b100a89",
        "chexpert.html": "69772432ad4da1ff",
        "chexpert.md": "e897bbb6c435a72e",
        "chexpert.parquet": "9cad8b6d2a7abbe1",
        "chexpert.tex": "a9ba03268722003b",
        "nih.csv": "d821319c81c23e5d",
        "nih.html": "d45e77f40163ffff",
        "nih.md": "6e1cfb0a29856006",
        "nih.parquet": "b2d1386ed0ceff26",
        "nih.tex": "78c44dde07bcf868",
        "summary.csv": "bb068f86d9fcf16b",
        "summary.html": "6f61f392d64c31e8",
        "summary.md": "7d5302fe06c6ae01",
        "summary.parquet": "c8e99a2cadf79f73",
        "summary.tex": "b111b120d16358c6",
    },
}


@pytest.mark.parametrize("cluster", ["image", "patient"])
def test_stage_outputs_are_bitwise_pinned(tmp_path: Path, cluster: str) -> None:
    run = tmp_path / "run"
    _write_run(run)
    evaluate(run, n_boot=150, seed=5, cluster=cluster)
    compare(run, baseline="imagenet", n_boot=150, seed=5, cluster=cluster, plots=False)
    assert _outputs(run) == PINNED[cluster]


def test_roc_bands_are_bitwise_pinned() -> None:
    """The ROC figures' numbers (curve on the grid, band, AUC CI) as the code gave them before the
    speed-ups; the figures draw exactly these."""
    from cxrbench.report.plots import roc_band

    rng = np.random.default_rng(7)
    h = hashlib.sha256()
    for n, prev, groups in [(400, 0.3, False), (300, 0.05, True), (1000, 0.5, False)]:
        y = (rng.random(n) < prev).astype(float)
        y[:2] = [0, 1]
        s = np.round(y + rng.normal(size=n), 1)
        g = np.array([f"p{i // 3}" for i in range(n)]) if groups else None
        band = roc_band(y, s, groups=g, n_boot=200, seed=3)
        for key in ("low", "high", "tpr_grid"):
            h.update(np.asarray(band[key], dtype=np.float64).tobytes())
        h.update(np.array([band["auc"], band["auc_low"], band["auc_high"]]).tobytes())
    assert h.hexdigest()[:16] == "6e7f5a34d1ef406b"
