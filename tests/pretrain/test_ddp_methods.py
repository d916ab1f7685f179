"""MoCo and DINO under DDP on CPU (gloo): MoCo's shuffled BatchNorm puts the keys back in order, and
2 torchrun ranks pretrain the encoder one process does (the whole batch's negatives, centre, views)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from cxrbench.engine.distributed import Dist
from cxrbench.engine.loop import Step
from cxrbench.pretrain.moco import Method as Moco
from cxrbench.rundir import Manifest
from tests.engine.test_distributed import _torchrun_and_single
from tests.stages.conftest import cli

TOTAL, WORLD, SEED = 7, 2, 5  # unequal slices: 4 and 3 images


class BatchNormEncoder(nn.Module):
    """4x4 patches -> BatchNorm -> ReLU -> mean: each image's features depend on its batch in training."""

    num_features = 6

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(1, 6, kernel_size=4, stride=4)
        self.norm = nn.BatchNorm2d(6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.norm(self.patch(x))).mean(dim=(2, 3))


def _moco() -> Moco:
    torch.manual_seed(0)
    return Moco(BatchNormEncoder(), queue_size=8, projection_dim=4)


def _views() -> torch.Tensor:
    return torch.rand(TOTAL, 1, 16, 16, generator=torch.Generator().manual_seed(1))


def _keys(method: Moco, views: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return method.key_projector(method.key_encoder(views))


def _shuffle_worker(rank: int, world: int, init: str, out: str) -> None:
    import torch.distributed as td

    td.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        dist = Dist(rank, world)
        lo, hi = dist.bounds(TOTAL)
        method, part = _moco(), _views()[lo:hi]
        keys = {}
        for mode in ("eval", "train"):
            method.train(mode == "train")
            ctx = Step(0, 0, TOTAL, torch.Generator().manual_seed(SEED), dist, 0, 1)
            keys[mode] = method.shuffled_keys(part, ctx)
        torch.save(keys, f"{out}/{rank}.pt")
    finally:
        td.destroy_process_group()


def test_shuffled_batchnorm_returns_every_images_key_in_order(tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    mp.spawn(_shuffle_worker, args=(WORLD, f"file://{tmp_path / 'store'}", str(tmp_path)), nprocs=WORLD)
    got = [torch.load(tmp_path / f"{rank}.pt") for rank in range(WORLD)]
    method, views = _moco(), _views()
    # BatchNorm with running statistics encodes each image alone: shuffled keys = unshuffled ones
    method.eval()
    for keys in got:
        torch.testing.assert_close(keys["eval"], _keys(method, views))
    # in training each image's key is its encoding within the slice of the permuted batch that
    # encoded it -- not within its own rank's slice
    method.train()
    order = torch.randperm(TOTAL, generator=torch.Generator().manual_seed(SEED)).tolist()
    slices = [Dist(r, WORLD).bounds(TOTAL) for r in range(WORLD)]
    assert {*order[: slices[0][1]]} != {*range(slices[0][1])}  # the permutation mixes the ranks' images
    want = torch.empty_like(got[0]["train"])
    for lo, hi in slices:
        encoded = _keys(method, views[order[lo:hi]])
        for position in range(lo, hi):
            want[order[position]] = encoded[position - lo]
    unshuffled = torch.cat([_keys(method, views[lo:hi]) for lo, hi in slices])
    for keys in got:
        torch.testing.assert_close(keys["train"], want)
        assert not torch.allclose(keys["train"], unshuffled, atol=1e-3)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A prepared phantom run small enough for 3 pretrainings in a test (40 patients, 32 px)."""
    run = tmp_path_factory.mktemp("ddp-run")
    cli(
        "prepare", "synthetic", "--n-patients", "40", "--size", "32", "--seed", "0", "--workers", "1", "--run", str(run)
    )
    return run


# a ViT has no BatchNorm, so 2 ranks with half-batches compute the single-process gradient exactly
# (up to summation order), whatever the method couples across the batch
VIT = ["--dataset", "synthetic", "--arch", "vit_tiny_patch16_224", "--epochs", "1", "--batch-size", "10"]
DINO = ["--lr", "0.0005", *("--option", "out_dim=256", "--option", "hidden_dim=64", "--option", "local_crops=2")]
METHODS = {  # case: (method, its options)
    "moco": ("moco", ["--lr", "0.01", "--option", "queue_size=32", "--option", "projection_dim=16"]),
    "dino": ("dino", DINO),
    "dino-sinkhorn": ("dino", [*DINO, "--option", "centering=sinkhorn"]),
}


@pytest.mark.parametrize("case", sorted(METHODS))
def test_torchrun_two_cpu_ranks_pretrain_equals_single_process(case: str, small_run: Path, tmp_path: Path) -> None:
    # MoCo: queries and keys gathered (negatives and the enqueued keys are the whole batch's), keys
    # encoded with shuffled BatchNorm; DINO: the loss normalised by and the centre updated from the
    # whole batch (or its Sinkhorn-Knopp sums taken over it), multi-crop views drawn as for the whole batch
    method, options = METHODS[case]
    run, single, name = tmp_path / "run", tmp_path / "single", f"ddp-{case}"
    shutil.copytree(small_run, run)
    _torchrun_and_single(run, single, ["pretrain", method, *VIT, *options, "--name", name])
    manifest = Manifest.read(run / f"encoders/{name}/manifest.json")
    assert manifest.complete and manifest.extra["world_size"] == 2
    reference = Manifest.read(single / f"encoders/{name}/manifest.json")
    assert reference.key == manifest.key and reference.extra["world_size"] == 1
    assert manifest.extra["loss_per_epoch"] == pytest.approx(reference.extra["loss_per_epoch"], rel=1e-4)
    ddp, one = (
        load_file(run / f"encoders/{name}/encoder.safetensors"),
        load_file(single / f"encoders/{name}/encoder.safetensors"),
    )
    assert ddp.keys() == one.keys()
    # AdamW (DINO) moves every weight by about lr per step whatever its gradient's size, so weights
    # whose gradient is rounding noise drift by up to ~lr; the loss above is the sharp check
    for key in one:
        torch.testing.assert_close(ddp[key], one[key], rtol=0, atol=2e-3, msg=key)
