"""Decode workers die with their parent: a SIGKILLed `prepare --workers N` leaves no process behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cxrbench.data.adapters import get_adapter
from cxrbench.data.transforms import Preprocess
from cxrbench.rundir import Manifest, RunLayout
from cxrbench.stages.prepare import generate
from tests.stages import procs

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

REPO = Path(__file__).resolve().parents[2]
GONE_WITHIN = 5.0  # seconds after the parent's death


def _env() -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "CXRBENCH_QUIET": "1"}


def _first_row_written(cache: Path) -> bool:
    """True once a worker has written the cache's first row (workers write their rows themselves;
    the parent marks them done only at its next sync, seconds later)."""
    try:
        images = np.load(cache / "images.npy", mmap_mode="r")
        return bool(images.shape[0] and np.asarray(images[0]).any())
    except (OSError, ValueError):  # not created yet, or its header is being written
        return False


def test_sigkilled_prepare_takes_its_decode_workers_with_it(tmp_path: Path) -> None:
    """Without die_with_parent the spawn workers sat blocked on the task queue for good."""
    run = tmp_path / "run"
    # phantoms first, in this process, so the CLI below only decodes (small phantoms, big output: slow decode)
    options = {"n_patients": 250, "phantom_size": 64}
    image = Preprocess(size=384, equalize=True)
    generate(RunLayout(run), "synthetic", get_adapter("synthetic"), root=None, options=options, image=image, seed=0)
    command = [
        sys.executable,
        "-m",
        "cxrbench",
        "prepare",
        "synthetic",
        "--n-patients",
        "250",
        "--size",
        "384",
        "--equalize",
        "--option",
        "phantom_size=64",
        "--workers",
        "2",
        "--run",
        str(run),
    ]
    proc = subprocess.Popen(command, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    cache = run / "prepared/synthetic/cache"
    family: dict[int, str] = {}
    try:
        deadline = time.monotonic() + 120
        while not _first_row_written(cache):  # workers started, imported, and decoded their first chunk
            if proc.poll() is not None:
                raise AssertionError(f"prepare ended before decoding: {proc.stderr.read().decode()}")
            assert time.monotonic() < deadline, "no decoded chunk within 120 s"
            time.sleep(0.01)
        family = procs.descendants(proc.pid)
        commands = [procs.cmdline(pid) for pid in family]
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert sum("spawn_main" in c for c in commands) == 2, f"expected 2 decode workers among {commands}"
        manifest = Manifest.read(run / "prepared/synthetic/manifest.json")
        assert manifest is not None and not manifest.complete, "prepare finished before the kill; use more images"

        deadline = time.monotonic() + GONE_WITHIN
        while procs.alive(family) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not procs.alive(family), f"still running {GONE_WITHIN} s after the parent died: {procs.alive(family)}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in procs.alive(family):  # a failed test leaves nothing behind either
            os.kill(pid, signal.SIGKILL)

    # and the killed build resumes: a rerun finishes the cache it started
    subprocess.run(command, env=_env(), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert Manifest.read(run / "prepared/synthetic/manifest.json").complete


_MIDDLE = """
import subprocess, sys, time
subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2]])
time.sleep(120)
"""

_WORKER = """
import os, sys, time
from pathlib import Path
from cxrbench import processes
processes.sys = type("NotLinux", (), {"platform": "darwin"})  # no prctl: the getppid watchdog alone
processes.die_with_parent(os.getppid())
Path(sys.argv[1]).write_text(str(os.getpid()))
time.sleep(120)
"""


def test_watchdog_ends_a_worker_without_the_death_signal(tmp_path: Path) -> None:
    """Where PR_SET_PDEATHSIG is missing (not Linux) the getppid watchdog ends the worker."""
    armed = tmp_path / "armed"
    middle = subprocess.Popen([sys.executable, "-c", _MIDDLE, _WORKER, str(armed)], env=_env())
    worker: dict[int, str] = {}
    try:
        deadline = time.monotonic() + 60
        while not armed.exists() or not armed.read_text():
            assert middle.poll() is None and time.monotonic() < deadline, "worker never started"
            time.sleep(0.02)
        worker = procs.descendants(middle.pid)
        assert list(worker) == [int(armed.read_text())]
        middle.send_signal(signal.SIGKILL)
        middle.wait()
        deadline = time.monotonic() + 3
        while procs.alive(worker) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not procs.alive(worker), "worker outlived its parent by 3 s"
    finally:
        if middle.poll() is None:
            middle.kill()
            middle.wait()
        for pid in procs.alive(worker):
            os.kill(pid, signal.SIGKILL)


def test_worker_whose_parent_already_died_exits_at_once() -> None:
    """The death signal is armed after the worker starts; a parent gone before that is caught too."""
    code = "from cxrbench.processes import die_with_parent; import time; die_with_parent(-1); time.sleep(60)"
    done = subprocess.run([sys.executable, "-c", code], env=_env(), timeout=60, capture_output=True)
    assert (done.returncode, done.stderr) == (1, b"")
