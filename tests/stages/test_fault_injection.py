"""Fault injection: every stage SIGKILLed at seeded random times, rerun until it finishes; the run it
ends with equals an uninterrupted run's, file by file.

One reference run (uninterrupted, each stage timed), then a second run of the same commands where
each stage is started as a process of its own and SIGKILLed after a delay drawn from
``random.Random(SEED)`` between 0.3 s and the stage's measured duration, again and again, then run to
completion with the same command. A stage that finishes before its kill (a no-op kill) is started
again with ``--force`` (redone from scratch; once killed, the plain command continues it), and its
duration as measured then bounds the next delays (caches of replicates and plots make evaluate and
compare redo in a fraction of their first time). So every stage gets its kills, ``MIN_KILLS`` in
all, counted when they land in a running process. Stage processes are
forked from a fork server that has imported torch and the stages once: the same CLI in a fresh
process, without 3 s of imports per kill (so the delays also fall in the stage's work, not its imports).

Both runs live at the same path (the reference is renamed away before the second starts): samples
hold absolute image paths, so only then are their bytes, and the keys built on them, comparable.

Compared: every file of the reference, and nothing more in the other run (no ``*.tmp-*`` left,
no ``checkpoints/``). Parquet: pandas-equal, exactly, and bytes; safetensors: every tensor bitwise;
manifests: key, settings, inputs, outputs hashes, seed and extra equal; every other file: bytes.
Not compared byte for byte, and why:

* ``.*.lock`` files: they name the pid that last held them.
* ``manifest.json``: ``created`` and ``timings`` are wall-clock; the rest is compared as above.
* ``logs/**.parquet`` (per-step training logs): ``images_per_s`` is a timing; every other column is
  compared exactly, and their hashes are left out of the manifests' outputs comparison.
* ``prepared/…/manifest.json``: its ``files`` input (and so its key) hashes the phantoms' mtimes,
  which differ between two generations of the same bytes; the phantoms themselves are compared.
PDF plots embed their creation time unless ``SOURCE_DATE_EPOCH`` is set, so both runs set it and
PDFs are compared byte for byte like PNGs.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxrbench.rundir import Manifest
from tests.stages import procs
from tests.stages.conftest import ARCH

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

SEED = 20240611
MIN_KILLS = 20
MIN_DELAY = 0.3  # or a third of a stage's duration, if less
ATTEMPTS = 8  # per kill wanted: a stage quicker than every delay fails the test, not loops
REPO = Path(__file__).resolve().parents[2]

#: (name, arguments, kills that must land); 50 patients is the fewest with val and test positives of
#: every label
STAGES: list[tuple[str, list[str], int]] = [
    ("prepare", ["prepare", "synthetic", "--n-patients", "50", "--size", "32", "--workers", "2"], 3),
    (
        "pretrain",
        ["pretrain", "simclr", "--dataset", "synthetic", "--arch", ARCH, "--epochs", "2", "--batch-size", "16"],
        3,
    ),
    ("probe random", ["probe", "--dataset", "synthetic", "--encoder", "random", "--arch", ARCH], 3),
    ("probe simclr", ["probe", "--dataset", "synthetic", "--encoder", "simclr"], 3),
    (
        "finetune",
        [
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
            "--checkpoint-every",
            "1",
            "--optimizer",
            "adamw",
            "--lr",
            "1e-3",
        ],
        3,
    ),
    ("evaluate", ["evaluate", "--n-boot", "50"], 3),
    ("compare", ["compare", "--baseline", "random", "--n-boot", "50"], 3),
]


ENV = {"CXRBENCH_QUIET": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "SOURCE_DATE_EPOCH": "0"}
#: imported once by the fork server, so a stage's process starts working at once (timm, imported
#: lazily by the encoder sources, alone takes 3 s)
PRELOAD = [
    "tests.stages.procs",
    "cxrbench.cli",
    "cxrbench.stages.prepare",
    "cxrbench.stages.pretrain",
    "cxrbench.pretrain.simclr",
    "cxrbench.stages.probe",
    "cxrbench.stages.finetune",
    "cxrbench.stages.evaluate",
    "cxrbench.stages.compare",
    "cxrbench.stats.engine",
    "cxrbench.report.plots",
    "timm",
    "scipy.stats",
    "scipy.sparse",
    "PIL.Image",
    "safetensors.torch",
    "sympy",
]


def _env() -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    # one intra-op thread: float sums are ordered alike in every process; PDFs without a wall-clock date
    return {**os.environ, "PYTHONPATH": path, **ENV}


@pytest.fixture
def stages(monkeypatch: pytest.MonkeyPatch) -> Iterator[multiprocessing.context.BaseContext]:
    """A fork server with the stages imported (a torch import per kill made the test 2x slower).

    Each stage still runs in a process of its own, killed with SIGKILL; only the imports are shared.
    """
    from multiprocessing import forkserver

    env = _env()
    for name in ("PYTHONPATH", *ENV):
        monkeypatch.setenv(name, env[name])  # the fork server's environment, so its children's
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    forkserver._forkserver._stop()  # a server started before has other imports and environment
    warm = context.Process(target=os.getpid)  # start it now: the stages' timings leave out its imports
    warm.start()
    warm.join()
    yield context
    forkserver._forkserver._stop()


class _Stage:
    """One stage's process, forked from the server; ``pid`` is also its process group."""

    def __init__(self, context, args: list[str], run: Path, what: str) -> None:
        self.what, self.err = what, run.parent / f"stderr-{time.monotonic_ns()}.txt"
        self.process = context.Process(target=procs.run_cli, args=([*args, "--run", str(run)], str(self.err)))
        self.process.start()
        self.started = time.monotonic()

    def killed_after(self, seconds: float) -> bool:
        """SIGKILL the stage's process after ``seconds``; False if it had finished (a no-op kill)."""
        self.process.join(seconds)
        if self.process.exitcode is None:
            self.process.kill()
            self.process.join()
        return self.process.exitcode == -signal.SIGKILL  # else it ended just before the signal

    def check(self) -> None:
        self.process.join()
        if self.process.exitcode != 0:
            raise AssertionError(f"{self.what} exited {self.process.exitcode}: {self.err.read_text()[-2000:]}")
        self.err.unlink()


def _run_to_end(context, args: list[str], run: Path, what: str) -> float:
    stage = _Stage(context, args, run, what)
    stage.check()
    return time.monotonic() - stage.started


def _complete_manifests_are_intact(run: Path, after: str) -> None:
    """What a kill leaves: a manifest that says complete always has all its outputs, as written."""
    for path in run.rglob("*manifest.json"):
        manifest = Manifest.read(path)
        if manifest is not None and manifest.complete:
            problem = manifest.intact(run)
            assert problem is None, f"after {after}: {path.relative_to(run)} is complete but {problem}"


def _files(run: Path) -> set[str]:
    return {p.relative_to(run).as_posix() for p in run.rglob("*") if p.is_file() and not p.name.endswith(".lock")}


def _is_log(rel: str) -> bool:
    return rel.startswith("logs/") and rel.endswith(".parquet")


def _manifest_view(path: Path) -> dict:
    data = json.loads(path.read_text())
    for name in ("created", "timings"):
        data.pop(name)
    for name in ("outputs", "sizes"):
        data[name] = {rel: v for rel, v in data[name].items() if not _is_log(rel)}
    if data["stage"] == "prepare":
        data["inputs"].pop("files")  # mtimes of the generated phantoms
        data.pop("key")
    return data


def _compare_file(rel: str, ref: Path, got: Path) -> None:
    if rel.endswith("cache/stamps.npy"):  # sizes and mtimes of the generated phantoms: the sizes agree
        np.testing.assert_array_equal(np.load(got)[:, 0], np.load(ref)[:, 0], err_msg=rel)
    elif rel.endswith("manifest.json"):
        assert _manifest_view(got) == _manifest_view(ref), rel
    elif rel.endswith(".parquet"):
        expected, actual = pd.read_parquet(ref), pd.read_parquet(got)
        if _is_log(rel):
            expected, actual = expected.drop(columns="images_per_s"), actual.drop(columns="images_per_s")
        else:
            assert got.read_bytes() == ref.read_bytes(), rel
        pd.testing.assert_frame_equal(actual, expected, check_exact=True, obj=rel)
    elif rel.endswith(".safetensors"):
        from safetensors import safe_open

        with safe_open(str(ref), "np") as a, safe_open(str(got), "np") as b:
            assert a.metadata() == b.metadata() and sorted(a.keys()) == sorted(b.keys()), rel
            for name in a.keys():
                x, y = a.get_tensor(name), b.get_tensor(name)
                assert x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes(), f"{rel}: {name}"
        assert got.read_bytes() == ref.read_bytes(), rel
    else:  # text tables, json, csv, npy, npz, png, pdf, ...
        assert got.read_bytes() == ref.read_bytes(), rel


def test_killed_stages_resume_to_the_uninterrupted_result(tmp_path: Path, stages) -> None:
    run = tmp_path / "run"
    durations = {name: _run_to_end(stages, args, run, f"reference {name}") for name, args, _ in STAGES}
    reference = tmp_path / "reference"
    run.rename(reference)

    rng = random.Random(SEED)
    landed: dict[str, int] = {}
    events: list[str] = []
    for name, args, wanted in STAGES:
        landed[name], force, duration = 0, [], durations[name]
        for _ in range(ATTEMPTS * wanted):
            if landed[name] == wanted:
                break
            delay = rng.uniform(min(MIN_DELAY, duration / 3), duration)
            what = " ".join([name, *force])
            stage = _Stage(stages, [*args, *force], run, what)
            if not stage.killed_after(delay):  # a no-op kill: the stage is done, so it is redone
                stage.check()
                duration = time.monotonic() - stage.started  # caches make a redo quicker than the first run
                events.append(f"{what}: finished in {duration:.2f} s, before the kill at {delay:.2f} s")
                force = ["--force"]
                continue
            procs.group_ends(stage.process.pid, f"{what} killed at {delay:.2f} s")
            landed[name] += 1
            events.append(f"{what}: killed at {delay:.2f} s")
            _complete_manifests_are_intact(run, f"killing {what} at {delay:.2f} s")
            force = []  # rerun the same command: it continues
        assert landed[name] == wanted, f"{name}: {landed[name]} kills landed in {ATTEMPTS * wanted} tries: {events}"
        _run_to_end(stages, args, run, name)
        events.append(f"{name}: ran to the end")

    summary = f"durations {', '.join(f'{k} {v:.1f} s' for k, v in durations.items())}; kills {landed}"
    print(summary, *events, sep="\n")
    assert sum(landed.values()) >= MIN_KILLS, summary

    files = _files(reference)
    assert _files(run) == files  # nothing missing, and no leftovers: *.tmp-*, checkpoints/
    assert not (run / "checkpoints").exists()
    for rel in sorted(files):
        _compare_file(rel, reference / rel, run / rel)


_KILLED_MID_WRITE = """
import os, signal, sys
import pyarrow.parquet as pq
from cxrbench import rundir

def write_then_die(table, where, **options):  # SIGKILLed after the temporary file, before its rename
    pq.write_table(table, where, **options)
    os.kill(os.getpid(), signal.SIGKILL)

rundir.pq = type("pq", (), {"write_table": staticmethod(write_then_die)})
from cxrbench.cli import main
main(sys.argv[1:])
"""


def test_a_write_killed_before_its_rename_leaves_no_temporary_file(tmp_path: Path) -> None:
    """A kill inside ``atomic_path`` leaves ``.NAME.tmp-PID``; the rerun that writes NAME again removes it."""
    run = tmp_path / "run"
    args = ["prepare", "synthetic", "--n-patients", "10", "--size", "32", "--workers", "1", "--run", str(run)]
    killed = subprocess.run([sys.executable, "-c", _KILLED_MID_WRITE, *args], env=_env(), capture_output=True)
    assert killed.returncode == -signal.SIGKILL
    left = [p.name for p in run.rglob("*.tmp-*")]
    assert len(left) == 1 and left[0].startswith(".samples.parquet.tmp-"), left
    subprocess.run([sys.executable, "-m", "cxrbench", *args], env=_env(), check=True, capture_output=True)
    assert list(run.rglob("*.tmp-*")) == []


def test_only_temporaries_of_writers_that_are_gone_are_removed(tmp_path: Path) -> None:
    from cxrbench.rundir import write_text

    gone = subprocess.Popen(["true"])
    gone.wait()
    target = tmp_path / "x.md"
    stale, live = tmp_path / f".x.md.tmp-{gone.pid}", tmp_path / f".x.md.tmp-{os.getppid()}"  # a running writer
    other = tmp_path / f".y.md.tmp-{gone.pid}"  # another file's: left for the writer of y.md
    for path in (stale, live, other):
        path.write_text("partial")
    write_text(target, "whole")
    assert target.read_text() == "whole"
    assert (stale.exists(), live.exists(), other.exists()) == (False, True, True)
