"""`cxrbench segment` on LIDC-layout phantoms: one row per val/test series with Dice and IoU from
its counts, the per-epoch curve in the manifest, and one-line errors for datasets without masks."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from cxrbench.adapt.segment import dice_iou
from cxrbench.data.transforms import Preprocess
from cxrbench.errors import CxrbenchError
from cxrbench.rundir import Manifest
from cxrbench.stages.prepare import prepare
from cxrbench.stages.segment import CASE_COLUMNS, segment


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    yield


def test_segment_writes_dice_per_series_and_the_epoch_curve(tmp_path: Path) -> None:
    from cxrbench.data.samples import LabelPolicy

    run = tmp_path / "run"
    prepare(
        run,
        "synthetic-lidc",
        root=None,
        options={"n_patients": 8},
        image=Preprocess(size=32),
        policy=LabelPolicy(split=(0.5, 0.25, 0.25)),
        workers=0,
    )
    manifest = segment(
        run, dataset="synthetic-lidc", encoder="random", arch="resnet10t", epochs=2, batch_size=8, width=4, device="cpu"
    )
    (written,) = [k for k in manifest.outputs if k.startswith("segmentation/")]
    assert written == "segmentation/synthetic-lidc/random/segment.parquet"
    table = pd.read_parquet(run / written)
    samples = pd.read_parquet(run / "prepared" / "synthetic-lidc" / "samples.parquet")
    scored = samples[samples["split"].isin(["val", "test"])]
    assert list(table.columns) == list(CASE_COLUMNS)
    assert sorted(table["case_id"]) == sorted(scored["series_id"].unique())
    dice, iou = dice_iou(table["tp"], table["fp"], table["fn"])
    assert table["dice"].tolist() == pytest.approx(dice.tolist()) and table["iou"].tolist() == pytest.approx(
        iou.tolist()
    )
    assert (table["tp"] + table["fn"] > 0).all()  # every phantom series has a nodule
    curve = Manifest.read(run / "segmentation/synthetic-lidc/random/segment.manifest.json").extra["curve"]
    assert [p["epoch"] for p in curve] == [0, 1] and {"val_dice", "test_dice", "loss"} <= set(curve[0])
    assert manifest.complete and not (run / "checkpoints").exists()
    again = segment(
        run, dataset="synthetic-lidc", encoder="random", arch="resnet10t", epochs=2, batch_size=8, width=4, device="cpu"
    )
    assert again.key == manifest.key  # up to date: nothing retrained


def test_a_dataset_without_masks_is_a_one_line_error(tmp_path: Path) -> None:
    run = tmp_path / "run"
    prepare(run, "synthetic", root=None, options={"n_patients": 20}, image=Preprocess(size=32), workers=0)
    with pytest.raises(CxrbenchError, match="has no segmentation masks"):
        segment(run, dataset="synthetic", encoder="random", arch="resnet10t", epochs=1)
