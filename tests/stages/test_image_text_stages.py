"""Image–report pretraining through the CLI on the phantom run (whose reports prepare parsed into
sections): the encoder probes like any other, its text tower scores zero-shot, evaluate adds
image→report retrieval, and bad input is one line."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from cxrbench.cli import main
from cxrbench.data.prepared import load_prepared
from cxrbench.errors import CxrbenchError
from cxrbench.stages.pretrain import check_text
from tests.models.tiny_text import tiny_bert
from tests.stages.conftest import ARCH, cli

SMALL = ("--option", "projection_dim=16", "--option", "hidden_dim=32", "--option", "max_length=48")


@pytest.fixture(scope="module")
def bert(tmp_path_factory) -> str:
    return str(tiny_bert(tmp_path_factory.mktemp("bert"), width=32))


def test_convirt_on_impressions_pretrains_an_encoder_that_probes_scores_zero_shot_and_retrieves(
    run_copy: Path, bert, one_torch_thread
) -> None:
    r = ("--run", str(run_copy))
    samples = load_prepared(run_copy, "synthetic").samples
    assert samples["findings"].notna().all() and samples["impression"].notna().all()
    cli(
        "pretrain", "convirt", "--dataset", "synthetic", "--epochs", "1", "--arch", ARCH, "--batch-size", "16",
        "--text-model", bert, "--sections", "impression", *SMALL, *r,
    )  # fmt: skip
    home = run_copy / "encoders" / "convirt-synthetic"  # "convirt" names the published checkpoint
    manifest = json.loads((home / "manifest.json").read_text())
    assert manifest["settings"]["sections"] == ["impression"] and manifest["settings"]["text_model"] == bert
    assert "text:weights" in manifest["inputs"]
    assert (home / "text" / "config.json").is_file() and (home / "projection.safetensors").is_file()
    assert all(v == v for v in manifest["extra"]["loss_per_epoch"])
    cli("probe", "--dataset", "synthetic", "--encoder", "convirt-synthetic", *r)
    assert (run_copy / "predictions" / "synthetic" / "convirt-synthetic" / "probe.parquet").is_file()
    cli("probe", "--dataset", "synthetic", "--encoder", "convirt-synthetic", "--adaptation", "zeroshot", *r)
    cli("evaluate", "--n-boot", "20", *r)
    metrics = pd.read_parquet(run_copy / "evaluation" / "metrics.parquet")
    assert {"probe", "zeroshot"} <= set(metrics["adaptation"].astype(str))
    retrieval = pd.read_parquet(run_copy / "evaluation" / "retrieval.parquet")
    assert retrieval["metric"].tolist() == ["recall@1", "recall@5", "recall@10"]
    assert (retrieval["encoder"] == "convirt-synthetic").all() and (retrieval["split"] == "test").all()
    # ranked among the distinct IMPRESSIONs of the test split, the sections this encoder trained on
    test = load_prepared(run_copy, "synthetic").split("test")
    assert retrieval["n_reports"].iloc[0] == test["impression"].nunique() > 2
    assert retrieval["value"].is_monotonic_increasing
    cli("compare", "--baseline", "convirt-synthetic", *r)  # evaluate's retrieval inputs do not stop compare


def _fails(*args: str) -> str:
    with pytest.raises(SystemExit) as info:
        main(list(args))
    assert info.value.code not in (0, None)
    return str(info.value.code)


def test_one_line_errors(run_copy: Path, bert, capsys) -> None:
    r = ("--run", str(run_copy))
    base = ("pretrain", "convirt", "--dataset", "synthetic", "--epochs", "1", "--arch", ARCH, *r)
    _fails(*base)
    assert "convirt needs --text-model" in capsys.readouterr().err
    _fails(*base, "--text-model", bert, "--sections", "history")
    assert "choose from findings, impression" in capsys.readouterr().err
    _fails(*base, "--text-model", str(run_copy / "nowhere"))
    assert "not available" in capsys.readouterr().err
    _fails("pretrain", "simclr", "--dataset", "synthetic", "--text-model", bert, *r)
    assert "apply to image-report methods" in capsys.readouterr().err


def test_a_dataset_without_reports_names_those_with_them(run_copy: Path, bert) -> None:
    prepared = load_prepared(run_copy, "synthetic")
    prepared.samples = prepared.samples.assign(findings=None, impression=None)
    from cxrbench.pretrain import get_method

    with pytest.raises(CxrbenchError, match="need a dataset with reports: indiana, mimic-cxr"):
        check_text("convirt", get_method("convirt"), prepared, bert, None)


def test_weights_check_lists_text_models_with_the_download_command(tmp_path, bert, capsys, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("CXRBENCH_WEIGHTS_DIR", str(tmp_path / "w"))
    with pytest.raises(SystemExit) as info:
        main(["weights", "check", "--text-model", bert, "--text-model", "emilyalsentzer/Bio_ClinicalBERT"])
    assert info.value.code == 1
    out = " ".join(capsys.readouterr().out.split())
    assert "hf download emilyalsentzer/Bio_ClinicalBERT" in out
