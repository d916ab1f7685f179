"""Methods beyond SimCLR through the CLI on the phantom run: options reach the method, the encoder probes."""

from __future__ import annotations

import json
from pathlib import Path

from tests.stages.conftest import ARCH, cli


def test_moco_cxr_preset_pretrains_an_encoder_that_probes(run_copy: Path, one_torch_thread) -> None:
    r = ("--run", str(run_copy))
    options = ("--option", "preset=moco-cxr", "--option", "queue_size=64")
    cli("pretrain", "moco", "--dataset", "synthetic", "--epochs", "1", "--arch", ARCH, *options, *r)
    manifest = json.loads((run_copy / "encoders/moco/manifest.json").read_text())
    settings = manifest["settings"]
    assert settings["options"] == {"preset": "moco-cxr", "queue_size": 64}
    assert (settings["lr"], settings["batch_size"]) == (1e-4, 16)  # the preset's training defaults
    cli("probe", "--dataset", "synthetic", "--encoder", "moco", *r)


def test_supervised_gets_the_train_labels_from_the_stage_and_continues_from_init(run_copy: Path, one_torch_thread):
    r = ("--run", str(run_copy))
    cli("pretrain", "supervised", "--dataset", "synthetic", "--epochs", "1", "--arch", ARCH, "--name", "sup0", *r)
    cli("pretrain", "supervised", "--dataset", "synthetic", "--epochs", "1", "--init", "sup0", "--name", "sup1", *r)
    manifest = json.loads((run_copy / "encoders/sup1/manifest.json").read_text())
    assert manifest["settings"]["init"] == "sup0" and manifest["settings"]["method"] == "supervised"
    assert all(v == v for v in manifest["extra"]["loss_per_epoch"])  # finite, not NaN
    cli("probe", "--dataset", "synthetic", "--encoder", "sup1", *r)
