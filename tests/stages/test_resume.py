"""Interrupted stages: a SIGKILLed finetune resumes to the same result; a finished suite is a no-op."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cxrbench.config import get_suite
from cxrbench.rundir import Manifest
from cxrbench.stages.evaluate import prediction_files
from cxrbench.stages.suite import run_suite
from tests.stages.conftest import ARCH, PREPARE, cli

FINETUNE = [
    "finetune",
    "--dataset",
    "synthetic",
    "--encoder",
    "random",
    "--arch",
    ARCH,
    "--epochs",
    "2",
    "--optimizer",
    "adamw",
    "--lr",
    "0.001",
    "--checkpoint-every",
    "2",
]


def _kill_after_first_checkpoint(run: Path) -> None:
    import torch

    # same intra-op thread count as the in-process runs: float sums must be ordered alike
    env = {**os.environ, "CXRBENCH_QUIET": "1", "OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.Popen(
        [sys.executable, "-m", "cxrbench", *FINETUNE, "--run", str(run)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 120
    while not list((run / "checkpoints").rglob("last.pt")):
        if proc.poll() is not None:
            raise AssertionError(f"finetune ended before its first checkpoint: {proc.stderr.read().decode()}")
        if time.time() > deadline:
            proc.kill()
            raise AssertionError("no checkpoint within 120 s")
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_sigkilled_finetune_resumes_to_identical_result(run_copy: Path, tmp_path: Path) -> None:
    import shutil

    reference = tmp_path / "reference"
    shutil.copytree(run_copy, reference)
    cli(*FINETUNE, "--run", str(reference))

    _kill_after_first_checkpoint(run_copy)
    out = run_copy / "predictions/synthetic/random/finetune.parquet"
    manifest = Manifest.read(out.with_name("finetune.manifest.json"))
    assert manifest is not None and not manifest.complete  # marked unfinished before any work
    assert not out.exists()
    assert prediction_files(run_copy) == []  # nothing half-written is read as finished

    cli(*FINETUNE, "--run", str(run_copy))  # resumes from the checkpoint
    assert Manifest.read(out.with_name("finetune.manifest.json")).complete
    assert out.read_bytes() == (reference / "predictions/synthetic/random/finetune.parquet").read_bytes()
    weights = "finetuned/synthetic/random/finetune.safetensors"
    assert (run_copy / weights).read_bytes() == (reference / weights).read_bytes()
    assert not (run_copy / "checkpoints").exists()  # finished: no training state, not even empty folders


def test_same_seed_gives_byte_identical_predictions(run_copy: Path, tmp_path: Path) -> None:
    import shutil

    other = tmp_path / "other"
    shutil.copytree(run_copy, other)
    for run in (run_copy, other):
        cli("probe", "--dataset", "synthetic", "--encoder", "random", "--arch", ARCH, "--run", str(run))
    rel = "predictions/synthetic/random/probe.parquet"
    assert (run_copy / rel).read_bytes() == (other / rel).read_bytes()


SUITE = """
[suites.mini]
datasets = ["synthetic"]
encoders = ["random", "simclr"]
baseline = "random"
adaptations = ["probe"]
arch = "resnet10t"
[suites.mini.prepare.synthetic]
n_patients = 200
size = 64
[suites.mini.pretrain.simclr]
epochs = 1
[suites.mini.evaluate]
n_boot = 50
[suites.mini.compare]
n_boot = 50
plots = false
"""


def test_second_run_of_finished_suite_recomputes_nothing(run_copy: Path, tmp_path: Path) -> None:
    config = tmp_path / "benchmarks.toml"
    config.write_text(SUITE)
    suite = get_suite("mini", config)
    first = run_suite(run_copy, suite)
    assert set(first) >= {"prepare/synthetic", "pretrain/simclr", "evaluate", "compare"}
    manifests = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in run_copy.rglob("*manifest.json")}
    assert len(manifests) >= 9
    second = run_suite(run_copy, suite)
    assert {k: m.key for k, m in second.items()} == {k: m.key for k, m in first.items()}
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in run_copy.rglob("*manifest.json")} == manifests

    lost = run_copy / "predictions/synthetic/simclr/probe.parquet"
    lost.unlink()  # a missing output defeats the fast path; only that stage (and its dependants) rerun
    third = run_suite(run_copy, suite)
    assert lost.exists()
    assert third["prepare/synthetic"].created == first["prepare/synthetic"].created
    assert third["pretrain/simclr"].created == first["pretrain/simclr"].created


def test_changed_settings_redo_the_stage(run_copy: Path) -> None:
    args = ["probe", "--dataset", "synthetic", "--encoder", "random", "--arch", ARCH, "--run", str(run_copy)]
    cli(*args)
    manifest = run_copy / "predictions/synthetic/random/probe.manifest.json"
    before = Manifest.read(manifest)
    cli(*args)
    assert Manifest.read(manifest).created == before.created  # up to date: untouched
    cli(*args, "--force")
    assert Manifest.read(manifest).key == before.key
    cli(*PREPARE, "--uncertain", "positive", "--run", str(run_copy))
    cli(*args)  # prepared data changed, so the probe's key changes and it is redone
    assert Manifest.read(manifest).key != before.key


@pytest.mark.parametrize("stage", ["probe", "finetune"])
def test_stage_needs_prepared_dataset(tmp_path: Path, stage: str, capsys: pytest.CaptureFixture) -> None:
    from cxrbench.cli import main

    with pytest.raises(SystemExit) as exc:
        main([stage, "--dataset", "nih", "--encoder", "random", "--run", str(tmp_path)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "cxrbench prepare nih" in err
