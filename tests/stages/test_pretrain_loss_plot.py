"""`cxrbench pretrain` draws its per-step loss beside the training log and records it in the manifest."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from cxrbench.report import plots
from cxrbench.rundir import RunLayout, file_hash
from tests.stages.conftest import cli


def test_pretrain_writes_a_loss_plot_with_a_point_per_step(tmp_path, monkeypatch, one_torch_thread) -> None:
    run = tmp_path / "run"
    r = ("--run", str(run))
    cli("prepare", "synthetic", "--n-patients", "12", "--size", "32", "--seed", "0", "--workers", "1", *r)
    drawn = []
    save = plots._save

    def keep(fig, out_stem):
        drawn.append(np.asarray(fig.axes[0].lines[0].get_xdata()))
        return save(fig, out_stem)

    monkeypatch.setattr(plots, "_save", keep)
    cli(
        "pretrain",
        "rotation",
        "--dataset",
        "synthetic",
        "--epochs",
        "2",
        "--batch-size",
        "4",
        "--arch",
        "resnet10t",
        *r,
    )
    layout = RunLayout(run)
    log = pq.read_table(layout.training_log("pretrain", "rotation")).to_pandas()
    stem = layout.training_plot("pretrain", "rotation")
    png, pdf = stem.with_name(stem.name + ".png"), stem.with_name(stem.name + ".pdf")
    assert png.parent == layout.training_log("pretrain", "rotation").parent  # beside the log
    with Image.open(png) as image:
        image.verify()
    assert len(log) > 2 and len(drawn) == 1 and len(drawn[0]) == len(log)
    np.testing.assert_array_equal(drawn[0], log["step"].to_numpy())
    outputs = json.loads((layout.encoder("rotation") / "manifest.json").read_text())["outputs"]
    for path in (png, pdf):
        assert outputs[layout.relative(path)] == file_hash(path)
