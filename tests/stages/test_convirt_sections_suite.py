"""The convirt-sections suite in benchmarks.toml: the paper's four arms, and a suite's pretrain entries
pass the text model and sections on to the pretrain stage."""

from __future__ import annotations

from pathlib import Path

from cxrbench.adapt.finetune import recipe
from cxrbench.config import load_config
from tests.models.tiny_text import tiny_bert
from tests.stages.conftest import cli

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks.toml"


def test_the_suite_has_the_papers_four_arms_and_selects_on_f1() -> None:
    suite = load_config(BENCHMARKS)["convirt-sections"]
    arms = {name: (s.method, s.dataset, s.options.get("sections")) for name, s in suite.pretrain.items()}
    assert arms == {
        "convirt-both": ("convirt", "mimic-cxr", "findings,impression"),
        "convirt-findings": ("convirt", "mimic-cxr", "findings"),
        "convirt-impression": ("convirt", "mimic-cxr", "impression"),
        "convirt-modified": ("convirt-sections", "mimic-cxr", None),
    }
    assert all(s.options["text_model"] == "emilyalsentzer/Bio_ClinicalBERT" for s in suite.pretrain.values())
    assert all((s.options["epochs"], s.options["lr"]) == (30, 1e-5) for s in suite.pretrain.values())
    assert (
        suite.arch == "resnet18" and suite.fractions == (0.1, 1.0) and set(suite.adaptations) == {"probe", "finetune"}
    )
    options = dict(suite.finetune)
    assert recipe("ssl-cxr", **options).select == "f1"


def test_a_suite_pretrains_on_report_sections(tmp_path: Path, one_torch_thread) -> None:
    bert = tiny_bert(tmp_path / "bert", width=32)
    config = tmp_path / "benchmarks.toml"
    config.write_text(
        f"""
[suites.tiny-reports]
description = "tiny"
datasets = ["synthetic"]
encoders = ["random", "cvt"]
baseline = "random"
adaptations = ["probe"]
arch = "resnet10t"

[suites.tiny-reports.prepare.synthetic]
n_patients = 40
size = 32

[suites.tiny-reports.pretrain.cvt]
method = "convirt"
text_model = "{bert}"
sections = "impression"
epochs = 1
batch_size = 16
projection_dim = 8
hidden_dim = 16
max_length = 32

[suites.tiny-reports.evaluate]
n_boot = 20
"""
    )
    cli("run", "--suite", "tiny-reports", "--config", str(config), "--run", str(tmp_path / "run"))
    import json

    manifest = json.loads((tmp_path / "run" / "encoders" / "cvt" / "manifest.json").read_text())
    assert manifest["settings"]["sections"] == ["impression"]
    assert (tmp_path / "run" / "evaluation" / "retrieval.parquet").is_file()
