"""Running a CLI command under torchrun with 2 CPU ranks and again in one process, for the DDP tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from tests.stages.conftest import cli


def torchrun_and_single(run: Path, single: Path, args: list[str]) -> None:
    """Run ``cxrbench ARGS`` under torchrun with 2 CPU ranks on ``run``, then in this process on
    ``single`` (a copy of the same prepared run), both with one intra-op thread."""
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
