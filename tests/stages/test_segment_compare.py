"""Segmentation in evaluate/compare on LIDC-layout phantoms: mean Dice/IoU rows equal to the per-case
tables' means, the paired Δ vs the baseline in every table format, Dice vs fraction and vs epoch plots."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from cxrbench.data.samples import LabelPolicy
from cxrbench.data.transforms import Preprocess
from cxrbench.rundir import Manifest
from cxrbench.stages.compare import compare
from cxrbench.stages.evaluate import evaluate
from cxrbench.stages.prepare import prepare
from cxrbench.stages.segment import segment
from cxrbench.stages.segment_results import load_curves, segmentation_files
from tests.stages.test_ct_downstream import ARCH, _other_encoder

DATASET = "synthetic-lidc"


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    yield


def test_segmentation_is_evaluated_and_compared_with_paired_deltas_and_curves(tmp_path: Path) -> None:
    run = tmp_path / "run"
    prepare(
        run, DATASET, root=None, options={"n_patients": 8}, image=Preprocess(size=32),
        policy=LabelPolicy(split=(0.5, 0.25, 0.25)), workers=0,
    )  # fmt: skip
    other = _other_encoder(tmp_path)
    for encoder, fraction, epochs in (("random", 0.5, 1), ("random", 1.0, 2), (other, 1.0, 2)):
        segment(
            run, dataset=DATASET, encoder=encoder, arch=ARCH, epochs=epochs, batch_size=8, width=4,
            fraction=fraction, device="cpu",
        )  # fmt: skip
    evaluate(run, n_boot=40)
    metrics = pd.read_parquet(run / "evaluation" / "metrics.parquet")
    seg = metrics[metrics["dataset"] == DATASET]
    assert set(seg["metric"]) == {"dice", "iou"} and (seg["label"] == "mean").all() and len(seg) == 6
    cases = pd.read_parquet(run / "segmentation" / DATASET / "random" / "segment.parquet")
    test = cases[cases["split"] == "test"]
    row = seg[(seg["encoder"] == "random") & (seg["fraction"] == 1.0)].set_index("metric")
    assert row.loc["dice", "value"] == pytest.approx(test["dice"].mean())
    assert row.loc["iou", "value"] == pytest.approx(test["iou"].mean())
    assert row.loc["dice", "ci_low"] <= row.loc["dice", "value"] <= row.loc["dice", "ci_high"]

    compare(run, baseline="random", n_boot=40)
    home = run / "comparisons"
    table = pd.read_parquet(home / f"{DATASET}-segmentation.parquet")
    assert len(table) == 2 and set(table["fraction"]) == {1.0}  # the 0.5 run has no twin: skipped
    folder = [p.parent.name for p in segmentation_files(run) if p.parent.name != "random"][0]
    theirs = pd.read_parquet(run / "segmentation" / DATASET / folder / "segment.parquet")
    full = table[(table["fraction"] == 1.0) & (table["metric"] == "dice")].iloc[0]
    want = theirs.loc[theirs["split"] == "test", "dice"].mean() - test["dice"].mean()
    assert full["delta"] == pytest.approx(want) and full["delta_ci_low"] <= full["delta"] <= full["delta_ci_high"]
    for fmt in ("md", "csv", "tex", "html"):
        assert "Dice" in (home / f"{DATASET}-segmentation.{fmt}").read_text()
    assert "Δ Dice [CI]" in pd.read_csv(home / f"{DATASET}-segmentation.csv").columns
    assert (home / "plots" / f"{DATASET}-dice-fraction.png").is_file()
    assert (home / "plots" / f"{DATASET}-dice-epochs.png").is_file()
    curves = load_curves(segmentation_files(run))
    manifest = Manifest.read(run / "segmentation" / DATASET / "random" / "segment.manifest.json")
    mine = curves[(curves["encoder"] == "random") & (curves["fraction"] == 1.0)]
    assert mine["test_dice"].tolist() == [p["test_dice"] for p in manifest.extra["curve"]] and len(mine) == 2
