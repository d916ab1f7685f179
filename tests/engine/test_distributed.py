"""DDP finetuning on CPU (gloo, 2 processes under torchrun) against a single-process run, and the
rank bookkeeping of ``cxrbench.engine.distributed``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from cxrbench.engine.distributed import Dist, setup
from cxrbench.rundir import Manifest
from tests.stages.conftest import cli, phantom_run, run_copy  # noqa: F401  (fixtures)

# A ViT has no BatchNorm, so 2 ranks with half-batches compute the single-process gradient exactly
# (up to summation order); resnet's per-rank batch statistics would not.
ARCH = "vit_tiny_patch16_224"
ARGS = [
    "finetune",
    "--dataset",
    "synthetic",
    "--encoder",
    "random",
    "--arch",
    ARCH,
    "--epochs",
    "2",
    "--batch-size",
    "16",
    "--fraction",
    "0.25",
    "--optimizer",
    "sgd",
    "--lr",
    "0.01",
    "--checkpoint-every",
    "2",
]
OUT = "predictions/synthetic/random/finetune-f0.25-s0.parquet"
WEIGHTS = "finetuned/synthetic/random/finetune-f0.25-s0.safetensors"
MANIFEST = "predictions/synthetic/random/finetune-f0.25-s0.manifest.json"


@pytest.mark.parametrize("n,world", [(16, 2), (13, 2), (10, 3), (2, 2), (7, 4)])
def test_shards_cover_the_batch_like_array_split(n: int, world: int) -> None:
    idx = np.arange(100, 100 + n)
    parts = [Dist(rank, world).shard(idx) for rank in range(world)]
    for got, want in zip(parts, np.array_split(idx, world), strict=True):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(Dist().shard(idx), idx)


def test_single_process_setup_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    dist, device = setup("cpu")
    assert (dist.world_size, dist.rank, dist.is_main, device) == (1, 0, True, "cpu")
    assert dist.broadcast({"a": 1}) == {"a": 1}
    t = torch.tensor([1.0, 2.0])
    assert dist.all_sum(t) is t


def _torchrun_and_single(run: Path, single: Path, args: list[str]) -> None:
    """Run ``cxrbench ARGS`` under torchrun with 2 CPU ranks on ``run``, then in this process on
    ``single`` (a copy of the same prepared run), both with one intra-op thread."""
    import shutil

    shutil.copytree(run, single)
    # torchrun's own parser takes `--run` for an abbreviation of its `--run-path`: the run directory
    # goes through $CXRBENCH_RUN instead.
    env = {**os.environ, "CXRBENCH_QUIET": "1", "OMP_NUM_THREADS": "1", "CXRBENCH_RUN": str(run)}
    env.pop("WORLD_SIZE", None)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "cxrbench",
        *args,
        "--device",
        "cpu",
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    wrote = [line for line in done.stdout.splitlines() if line.startswith("wrote ")]
    assert wrote and len(wrote) == len(set(wrote))  # rank 0 alone reports (and writes) the result
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cli(*args, "--run", str(single), "--device", "cpu")
    finally:
        torch.set_num_threads(before)  # later tests in this process must see the default again


def test_torchrun_two_cpu_ranks_equal_single_process(run_copy: Path, tmp_path: Path) -> None:  # noqa: F811
    single = tmp_path / "single"
    _torchrun_and_single(run_copy, single, ARGS)
    manifest = Manifest.read(run_copy / MANIFEST)
    assert manifest.complete and manifest.extra["world_size"] == 2
    assert set(manifest.outputs) == {OUT, WEIGHTS, "logs/finetune/synthetic/random/finetune-f0.25-s0.parquet"}
    assert not (run_copy / "checkpoints").exists()
    assert not list(run_copy.rglob(".*.tmp-*"))

    reference = Manifest.read(single / MANIFEST)
    assert reference.key == manifest.key  # the world size is not a setting: same result expected
    assert reference.extra["world_size"] == 1
    ddp, one = load_file(run_copy / WEIGHTS), load_file(single / WEIGHTS)
    assert ddp.keys() == one.keys()
    for key in one:
        torch.testing.assert_close(ddp[key], one[key], rtol=1e-4, atol=2e-5, msg=key)
    for a, b in zip(manifest.extra["history"], reference.extra["history"], strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)


PRETRAIN = [
    "pretrain",
    "simclr",
    "--dataset",
    "synthetic",
    "--arch",
    ARCH,
    "--epochs",
    "1",
    "--batch-size",
    "10",
    "--lr",
    "0.001",
    "--name",
    "ddp-simclr",
]
ENCODER = "encoders/ddp-simclr/encoder.safetensors"


def test_torchrun_two_cpu_ranks_pretrain_equals_single_process(run_copy: Path, tmp_path: Path) -> None:  # noqa: F811
    # SimCLR's loss couples the whole batch (negatives): the ranks gather each other's projections
    # and views are drawn as for the whole batch, so 2 ranks with 5 images each reproduce 1 x 10
    single = tmp_path / "single"
    _torchrun_and_single(run_copy, single, PRETRAIN)
    manifest = Manifest.read(run_copy / "encoders/ddp-simclr/manifest.json")
    assert manifest.complete and manifest.extra["world_size"] == 2
    assert not (run_copy / "checkpoints").exists()
    reference = Manifest.read(single / "encoders/ddp-simclr/manifest.json")
    assert reference.key == manifest.key
    assert manifest.extra["loss_per_epoch"] == pytest.approx(reference.extra["loss_per_epoch"], rel=1e-4)
    ddp, one = load_file(run_copy / ENCODER), load_file(single / ENCODER)
    assert ddp.keys() == one.keys()
    # AdamW moves every weight by about lr per step whatever its gradient's size, so weights whose
    # gradient is rounding noise (a ViT's key biases: softmax ignores them) drift by up to ~lr; the
    # loss above is the sharp check
    for key in one:
        torch.testing.assert_close(ddp[key], one[key], rtol=0, atol=2e-3, msg=key)


def _gather_worker(rank: int, world: int, init: str, out: str) -> None:
    import torch.distributed as td

    td.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        dist = Dist(rank, world)
        full = torch.arange(35, dtype=torch.float64).reshape(7, 5) / 10
        lo, hi = dist.bounds(7)
        part = full[lo:hi].clone().requires_grad_(True)
        gathered = dist.gather_batch(part, 7)
        loss = (gathered.sin() * torch.arange(7.0, dtype=torch.float64)[:, None]).sum()
        loss.backward()
        torch.save({"gathered": gathered.detach(), "grad": part.grad, "loss": loss.detach()}, f"{out}/{rank}.pt")
    finally:
        td.destroy_process_group()


def test_gather_batch_returns_the_whole_batch_and_this_ranks_gradient_slice(tmp_path: Path) -> None:
    # 3 ranks share 7 rows unequally (3, 2, 2); each gets the single-process gradient of its rows
    import torch.multiprocessing as mp

    world = 3
    mp.spawn(_gather_worker, args=(world, f"file://{tmp_path / 'store'}", str(tmp_path)), nprocs=world)
    full = (torch.arange(35, dtype=torch.float64).reshape(7, 5) / 10).requires_grad_(True)
    loss = (full.sin() * torch.arange(7.0, dtype=torch.float64)[:, None]).sum()
    loss.backward()
    for rank in range(world):
        got = torch.load(tmp_path / f"{rank}.pt")
        lo, hi = Dist(rank, world).bounds(7)
        torch.testing.assert_close(got["gathered"], full.detach())
        torch.testing.assert_close(got["grad"], full.grad[lo:hi])
        torch.testing.assert_close(got["loss"], loss.detach())
