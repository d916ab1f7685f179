"""The chest CT study's five strategies (masked chain, next-slice, denoise, rotation, flip) pretrain on
CT phantoms through the CLI, and their encoders load for probe, finetune and segment."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxrbench.cli import main
from tests.stages.conftest import ARCH, cli, prepare_ct_phantoms

#: each strategy with options that keep it tiny (and the study's defaults otherwise)
STRATEGIES = {
    "masked": ("--option", "ratios=0.05,0.1", "--option", "decoder_width=16"),
    "next-slice": ("--option", "decoder_width=16"),
    "denoise": ("--option", "decoder_width=16"),
    "rotation": (),
    "flip": (),
}


@pytest.fixture(scope="module")
def ct_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run with tiny `synthetic-ct` and `synthetic-lidc` phantoms prepared."""
    run = tmp_path_factory.mktemp("ct-run")
    prepare_ct_phantoms(run)
    return run


@pytest.mark.parametrize("method", list(STRATEGIES))
def test_each_strategy_pretrains_on_ct_and_its_encoder_probes_and_segments(
    ct_run: Path, tmp_path: Path, quiet, method: str
) -> None:
    run = tmp_path / "run"
    shutil.copytree(ct_run, run)
    r = ("--run", str(run))
    train = ("--epochs", "1", "--batch-size", "16", "--arch", ARCH)
    cli("pretrain", method, "--dataset", "synthetic-ct", *train, *STRATEGIES[method], *r)
    manifest = json.loads((run / f"encoders/{method}/manifest.json").read_text())
    assert manifest["complete"] and all(np.isfinite(manifest["extra"]["loss_per_epoch"]))
    if method == "next-slice":  # every train slice has a neighbour in its series (phantom series are long)
        samples = pd.read_parquet(run / "prepared/synthetic-ct/samples.parquet")
        assert manifest["extra"]["images_with_partner"] == int((samples["split"] == "train").sum())
    cli("probe", "--dataset", "synthetic-ct", "--encoder", method, *r)
    assert (run / f"predictions/synthetic-ct/{method}/probe.parquet").is_file()
    cli("segment", "--dataset", "synthetic-lidc", "--encoder", method, "--epochs", "1", "--width", "4", *r)
    assert (run / f"segmentation/synthetic-lidc/{method}/segment.parquet").is_file()


def test_a_next_slice_encoder_finetunes_for_pe(ct_run: Path, tmp_path: Path, quiet) -> None:
    run = tmp_path / "run"
    shutil.copytree(ct_run, run)
    r = ("--run", str(run))
    cli("pretrain", "next-slice", "--dataset", "synthetic-ct", "--epochs", "1", "--arch", ARCH, *r)
    cli("finetune", "--dataset", "synthetic-ct", "--encoder", "next-slice", "--epochs", "1", "--batch-size", "16", *r)
    assert (run / "predictions/synthetic-ct/next-slice/finetune.parquet").is_file()


def test_next_slice_on_a_dataset_of_single_images_is_a_one_line_error(tmp_path: Path, capsys, quiet) -> None:
    r = ("--run", str(tmp_path / "run"))
    cli("prepare", "synthetic", "--n-patients", "20", "--size", "32", "--workers", "1", *r)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["pretrain", "next-slice", "--dataset", "synthetic", "--epochs", "1", "--arch", ARCH, *r])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert len(err.splitlines()) == 1 and "dataset 'synthetic' has no series_id" in err
    assert not (tmp_path / "run/encoders/next-slice").exists()
