"""MedAug and the mean teacher under torchrun (2 CPU ranks, gloo) against one process: the partner
draws, gathered keys (several per image for the mean teacher) and queues reproduce a single run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cxrbench.rundir import Manifest
from tests.engine.test_distributed import _torchrun_and_single

# a ViT: no BatchNorm, so half-batches on 2 ranks compute the single-process gradient
ARCH = "vit_tiny_patch16_224"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("method", "options"),
    [("medaug", ["--option", "study=all"]), ("mean-teacher", ["--option", "key_views=2"])],
)
def test_two_cpu_ranks_pretrain_equals_single_process(phantom_run: Path, tmp_path: Path, method, options) -> None:
    run, name = tmp_path / "ddp", f"ddp-{method}"
    import shutil

    shutil.copytree(phantom_run, run)
    args = ["pretrain", method, "--dataset", "synthetic", "--arch", ARCH, "--epochs", "1", "--batch-size", "10"]
    args += ["--lr", "0.001", "--name", name, "--option", "queue_size=32", *options]
    _torchrun_and_single(run, tmp_path / "single", args)
    manifest = Manifest.read(run / f"encoders/{name}/manifest.json")
    reference = Manifest.read(tmp_path / f"single/encoders/{name}/manifest.json")
    assert manifest.complete and manifest.extra["world_size"] == 2 and reference.key == manifest.key
    assert manifest.extra["loss_per_epoch"] == pytest.approx(reference.extra["loss_per_epoch"], rel=1e-4)
    ddp, one = (load_file(r / f"encoders/{name}/encoder.safetensors") for r in (run, tmp_path / "single"))
    for key in one:  # AdamW: weights with rounding-noise gradients drift by up to ~lr (see the SimCLR test)
        torch.testing.assert_close(ddp[key], one[key], rtol=0, atol=2e-3, msg=key)
