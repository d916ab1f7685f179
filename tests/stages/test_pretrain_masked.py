"""`masked` (progressive chain) and `mae` through the CLI on the phantom run: the encoders probe, the
chain's phases are in the log and the manifest, and mae on a CNN is a one-line error."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from cxrbench.cli import main
from cxrbench.rundir import RunLayout
from tests.stages.conftest import ARCH, cli


def test_progressive_masked_chain_pretrains_an_encoder_that_probes(run_copy: Path, one_torch_thread) -> None:
    r = ("--run", str(run_copy))
    options = ("--option", "ratios=0.05,0.2", "--option", "quantize=true", "--option", "decoder_width=16")
    cli("pretrain", "masked", "--dataset", "synthetic", "--epochs", "1", "--arch", ARCH, *options, *r)
    manifest = json.loads((run_copy / "encoders/masked/manifest.json").read_text())
    assert manifest["settings"]["options"] == {"ratios": [0.05, 0.2], "quantize": True, "decoder_width": 16}
    assert len(manifest["extra"]["loss_per_epoch"]) == 2  # one epoch per ratio
    log = pq.read_table(RunLayout(run_copy).training_log("pretrain", "masked"))
    assert set(log.column("phase").to_pylist()) == {0, 1} and "masked_mse" in log.column_names
    cli("probe", "--dataset", "synthetic", "--encoder", "masked", *r)


def test_mae_pretrains_a_vit_that_probes(run_copy: Path, one_torch_thread) -> None:
    r = ("--run", str(run_copy))
    options = ("--option", "decoder_dim=32", "--option", "decoder_depth=1", "--option", "decoder_heads=2")
    cli("pretrain", "mae", "--dataset", "synthetic", "--epochs", "1", "--arch", "vit_tiny_patch16_224", *options, *r)
    cli("probe", "--dataset", "synthetic", "--encoder", "mae", *r)


def test_mae_on_a_cnn_is_a_one_line_error(run_copy: Path, capsys, monkeypatch) -> None:
    monkeypatch.delenv("CXRBENCH_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        main(["pretrain", "mae", "--dataset", "synthetic", "--epochs", "1", "--arch", ARCH, "--run", str(run_copy)])
    err = capsys.readouterr().err
    assert exit_info.value.code != 0 and len(err.strip().splitlines()) == 1, err
    assert "use the method 'masked'" in err
