"""``cxrbench status`` from the run directory alone, and a cell running elsewhere is waited for, not
started twice. No training: cells are run with a stand-in stage."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cxrbench.cli import main
from cxrbench.grid import cells as cells_module
from cxrbench.grid.cells import run_cell
from cxrbench.grid.plan import plan
from cxrbench.grid.states import suite_states, write_plan
from cxrbench.rundir import RunLayout, Stage
from tests.grid.phantom import phantom

REPO = Path(__file__).resolve().parents[2]

_HOLD_CELL = """
import sys, time
from pathlib import Path
from cxrbench.locks import exclusive
with exclusive(Path(sys.argv[1]), what="cell"):
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def _hold(lock: Path, seconds: float) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLD_CELL, str(lock), str(seconds)], stdout=subprocess.PIPE, text=True, env=env
    )
    assert proc.stdout.readline().strip() == "locked"
    return proc


def _stand_in(run, suite, cell, **options):
    """A stage that writes one small file under a manifest in one of the run's areas, as every real
    stage does."""
    stage = Stage(
        run, cell.kind, run.root / "logs" / "stand-in" / cell.file / "manifest.json", settings={"id": cell.id}
    )
    with stage.open() as todo:
        if todo:
            if cell.id == "probe/synthetic/random/f=1/s=0":
                raise ValueError("probe diverged\nsecond line")
            stage.write_text(run.root / "logs" / "stand-in" / cell.file / "out.txt", cell.id)
    return stage.manifest


def test_status_shows_done_failed_running_interrupted_stale_and_waiting_with_totals(
    tmp_path: Path, monkeypatch, capsys
):
    monkeypatch.setenv("CXRBENCH_QUIET", "1")
    monkeypatch.setenv("COLUMNS", "300")
    monkeypatch.setattr(cells_module, "execute", _stand_in)
    suite = phantom(tmp_path)
    run = RunLayout(tmp_path / "run")
    cells = {c.id: c for c in plan(suite)}
    write_plan(run, suite, list(cells.values()), {})
    for cell_id in ("prepare/synthetic", "pretrain/simclr", "features/synthetic/random", "features/synthetic/simclr"):
        assert run_cell(run, suite, cells[cell_id], executor="local")["status"] == "done"
    failed = run_cell(run, suite, cells["probe/synthetic/random/f=1/s=0"], executor="local")
    assert failed["status"] == "failed" and failed["error"] == "ValueError: probe diverged"
    # a cell whose process was killed: its record says running, nobody holds its lock
    simclr = cells["probe/synthetic/simclr/f=1/s=0"]
    record = {"id": simclr.id, "status": "running", "host": "node-3", "pid": 4242, "digest": simclr.digest}
    run.cell_record("phantom", simclr.file).write_text(json.dumps(record))
    # a finished cell whose output was changed afterwards is stale
    (run.root / "logs" / "stand-in" / cells["features/synthetic/simclr"].file / "out.txt").write_text("edited")

    holder = _hold(run.cell_lock("phantom", cells["pretrain/simclr"].file), 30)
    try:
        rows = {row.id: row for row in suite_states(run, "phantom")}
        main(["status", "--suite", "phantom", "--run", str(run.root)])
    finally:
        holder.kill()
        holder.wait()
    shown = capsys.readouterr().out
    assert rows["prepare/synthetic"].state == "done"
    assert rows["prepare/synthetic"].where == f"pid {os.getpid()} on {platform.node()}"
    assert (rows["pretrain/simclr"].state, rows["pretrain/simclr"].where) == (
        "running",
        f"pid {holder.pid} on {platform.node()}",
    )
    failed_row = rows["probe/synthetic/random/f=1/s=0"]
    assert (failed_row.state, failed_row.detail) == ("failed", "ValueError: probe diverged")
    assert (run.root / failed_row.log).is_file() and "second line" in (run.root / failed_row.log).read_text()
    assert (rows[simclr.id].state, rows[simclr.id].where) == ("interrupted", "pid 4242 on node-3")
    assert (
        rows["features/synthetic/simclr"].state == "stale"
        and "has 6 bytes, 25 were written" in rows["features/synthetic/simclr"].detail
    )
    assert rows["evaluate"].state == "waiting" and rows["evaluate"].detail == "for probe/synthetic/random/f=1/s=0 (+1)"
    assert "8 cells: 2 done, 1 running, 1 failed, 1 interrupted, 1 stale, 2 waiting" in shown


def test_a_cell_running_elsewhere_is_waited_for_and_not_started_twice(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("CXRBENCH_QUIET", "1")
    monkeypatch.setattr(cells_module, "POLL_SECONDS", 0.05)
    started = []

    def counting(run, suite, cell, **options):
        started.append(time.monotonic())
        return _stand_in(run, suite, cell, **options)

    monkeypatch.setattr(cells_module, "execute", counting)
    suite = phantom(tmp_path)
    run = RunLayout(tmp_path / "run")
    cell = plan(suite)[0]
    holder = _hold(run.cell_lock("phantom", cell.file), 1.5)
    began = time.monotonic()
    result = run_cell(run, suite, cell, executor="local")
    holder.wait()
    assert result["status"] == "done" and len(started) == 1
    assert started[0] - began >= 1.0  # it ran only once the other process let go


@pytest.mark.parametrize("argv", [["status", "--suite", "nope"], ["status"]])
def test_status_of_a_run_without_that_suite_is_a_one_line_error(tmp_path: Path, capsys, argv):
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--run", str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cxrbench: error: ") and "\n" not in err and "run" in err


class _InProcess:
    """A backend that runs each cell at once in this process (the scheduler's logic, nothing else)."""

    name = "inline"

    def __init__(self, run, suite):
        self.run, self.suite, self.results = run, suite, []

    def start(self, cells, attempts):
        self.results += [(c.id, run_cell(self.run, self.suite, c, attempt=attempts[c.id])) for c in cells]

    def finished(self):
        results, self.results = self.results, []
        return results

    def close(self):
        pass


def test_the_driver_does_not_start_a_cell_another_process_is_running(tmp_path: Path, monkeypatch):
    from cxrbench.grid.schedule import run_grid

    monkeypatch.setenv("CXRBENCH_QUIET", "1")
    started: dict[str, float] = {}

    def recording(run, suite, cell, **options):
        started.setdefault(cell.id, time.monotonic())
        if cell.id.startswith("probe/synthetic/random"):
            raise ValueError("stop here")  # the rest of the grid is not needed for this test
        return _stand_in(run, suite, cell, **options)

    monkeypatch.setattr(cells_module, "execute", recording)
    suite = phantom(tmp_path)
    run = RunLayout(tmp_path / "run")
    prepare = plan(suite)[0]
    other = _hold(run.cell_lock("phantom", prepare.file), 1.5)  # another driver is preparing it
    began = time.monotonic()
    outcome = run_grid(run, suite, _InProcess(run, suite), retries=0, poll=0.05)
    other.wait()
    assert started["prepare/synthetic"] - began >= 1.0  # started only once the other let go
    assert outcome.failed == {"probe/synthetic/random/f=1/s=0": "ValueError: stop here"}
    assert "prepare/synthetic" in outcome.ran
