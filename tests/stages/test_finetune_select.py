"""`finetune --select f1`: the epoch is chosen on validation mean F1, recorded in the history and the key."""

from __future__ import annotations

import json
from pathlib import Path

from tests.stages.conftest import ARCH, cli


def test_finetune_selects_on_validation_f1(run_copy: Path, one_torch_thread) -> None:
    r = ("--run", str(run_copy))
    args = (
        "finetune",
        "--dataset",
        "synthetic",
        "--encoder",
        "random",
        "--arch",
        ARCH,
        "--epochs",
        "1",
        "--batch-size",
        "64",
        *r,
    )
    cli(*args, "--select", "f1")
    manifest = json.loads((run_copy / "predictions/synthetic/random/finetune.manifest.json").read_text())
    history = manifest["extra"]["history"]
    assert manifest["settings"]["select"] == "f1" and all("val_f1" in h for h in history)
