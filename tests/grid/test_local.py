"""``--executor local --jobs 2`` on a phantom suite, SIGKILLed halfway and rerun: no finished cell is
recomputed, none is lost, and the tables equal those of a sequential run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from threadpoolctl import threadpool_limits

from cxrbench.cli import main
from cxrbench.grid.plan import plan
from cxrbench.grid.states import suite_states
from cxrbench.rundir import Manifest, RunLayout
from cxrbench.stages.suite import run_suite
from tests.grid.phantom import phantom, tables, write_suite
from tests.stages import procs

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def _env() -> dict[str, str]:
    one_thread = {k: "1" for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    return {**os.environ, **one_thread, "PYTHONPATH": str(REPO), "CXRBENCH_QUIET": "1", "HF_HUB_OFFLINE": "1"}


def _done(run: RunLayout) -> dict[Path, bytes]:
    """Every cell record that says done, with its bytes."""
    found = {}
    for path in (run.root / "suites" / "phantom" / "cells").glob("*.json"):
        text = path.read_bytes()
        if json.loads(text)["status"] == "done":
            found[path] = text
    return found


def _complete_manifests(run: RunLayout) -> dict[Path, bytes]:
    found = {}
    for path in run.root.rglob("*manifest.json"):
        manifest = Manifest.read(path)
        if manifest is not None and manifest.complete:
            found[path] = path.read_bytes()
    return found


def test_killed_parallel_run_resumes_without_recomputing_and_matches_a_sequential_run(
    tmp_path: Path, one_torch_thread, capsys
):
    config = write_suite(tmp_path)
    suite = phantom(tmp_path)
    cells = plan(suite)
    run = RunLayout(tmp_path / "parallel")
    argv = [sys.executable, "-m", "cxrbench", "run", "--suite", "phantom", "--config", str(config)]
    argv += ["--run", str(run.root), "--executor", "local", "--jobs", "2"]
    with open(tmp_path / "first.err", "w") as err:
        first = subprocess.Popen(argv, env=_env(), stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
    deadline = time.monotonic() + 240
    while len(_done(run)) < 3:  # prepare, pretrain and a first features or probe cell
        assert first.poll() is None, (tmp_path / "first.err").read_text()
        assert time.monotonic() < deadline, "the parallel run did not get going"
        time.sleep(0.05)
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    procs.group_ends(first.pid, "the driver was SIGKILLed", within=10)  # its workers end with it

    finished = _done(run)
    manifests = _complete_manifests(run)
    assert 3 <= len(finished) < len(cells)
    states = {row.id: row.state for row in suite_states(run, "phantom")}
    assert set(states.values()) <= {"done", "interrupted", "waiting"}
    assert list(states.values()).count("done") == len(finished)

    loud = {k: v for k, v in _env().items() if k != "CXRBENCH_QUIET"}
    again = subprocess.run(argv, env=loud, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"{len(finished)} of {len(cells)} cells already done" in again.stderr
    for path, text in finished.items():  # no finished cell was run again ...
        assert path.read_bytes() == text, path
    for path, text in manifests.items():  # ... nor any finished stage rewritten
        assert path.read_bytes() == text, path
    rows = suite_states(run, "phantom")
    assert [row.id for row in rows] == [c.id for c in cells] and all(row.state == "done" for row in rows)

    main(["status", "--run", str(run.root)])
    assert f"{len(cells)} cells: {len(cells)} done" in capsys.readouterr().out

    sequential = tmp_path / "sequential"
    # with the BLAS threads of the parallel run's processes (_env: 1): two OpenBLAS threads sum in
    # another order (probe scores ~1e-6 apart), enough to flip the probe's choice of C on 83 images
    with threadpool_limits(1):
        run_suite(sequential, suite)
    assert tables(sequential) == tables(run.root)
