"""Run one cell under its lock and record who ran it, where, and how it ended.

The record (``suites/SUITE/cells/CELL.json``) holds the host, pid, SLURM job, start, end, the error
line of a failure and the log path: ``cxrbench status`` builds its table from these records and the
manifests alone. A cell whose lock is held elsewhere is waited for, never started twice.
"""

from __future__ import annotations

import contextlib
import os
import platform
import sys
import time
import traceback
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cxrbench.config import Suite
from cxrbench.console import info
from cxrbench.errors import CxrbenchError
from cxrbench.grid.plan import Cell, execute
from cxrbench.locks import LockBusy, exclusive
from cxrbench.rundir import RunLayout, layout_of, write_json

#: seconds between looks at a lock held elsewhere
POLL_SECONDS = 1.0


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def slurm_job() -> str | None:
    """``JOB_TASK`` of a SLURM array task, the job id of another SLURM job, else None."""
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array:
        return f"{array}_{os.environ.get('SLURM_ARRAY_TASK_ID')}"
    return os.environ.get("SLURM_JOB_ID")


def error_line(exc: BaseException) -> str:
    """The one line that says why a cell failed."""
    if isinstance(exc, CxrbenchError):
        return exc.message.splitlines()[0] if exc.message else type(exc).__name__
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


@contextlib.contextmanager
def logged_to(path: Path) -> Iterator[None]:
    """Send this process's output to ``path``, appended: file descriptors 1 and 2 (native code, child
    processes) and Python's ``sys.stdout``/``sys.stderr`` (which a host such as pytest may replace)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "a", buffering=1) as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                yield
        finally:
            log.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def run_cell(
    run: RunLayout | Path | str,
    suite: Suite,
    cell: Cell,
    *,
    device: str | None = None,
    precision: str | None = None,
    force: bool = False,
    executor: str = "sequential",
    attempt: int = 1,
    log: bool = True,
    raise_errors: bool = False,
) -> dict[str, Any]:
    """Run ``cell`` once it holds the cell's lock; returns ``{"id", "status", "error", "manifest"}``.

    A failure of the stage is recorded, then returned (a SLURM job or pool worker reports it in its
    result) or, with ``raise_errors``, raised. ``log``: the cell's output goes to its log file.
    """
    run = layout_of(run)
    lock = run.cell_lock(suite.name, cell.file)
    told = False
    while True:
        with contextlib.ExitStack() as stack:
            try:
                stack.enter_context(exclusive(lock, what=f"cell {cell.id}"))
            except LockBusy as busy:
                if not told:
                    info(f"cell {cell.id}: running in {busy.holder}; waiting for it")
                    told = True
                time.sleep(POLL_SECONDS)
                continue
            return _run_locked(run, suite, cell, device, precision, force, executor, attempt, log, raise_errors)


def _run_locked(
    run: RunLayout,
    suite: Suite,
    cell: Cell,
    device: str | None,
    precision: str | None,
    force: bool,
    executor: str,
    attempt: int,
    log: bool,
    raise_errors: bool,
) -> dict[str, Any]:
    record_path = run.cell_record(suite.name, cell.file)
    log_path = run.cell_log(suite.name, cell.file)
    record: dict[str, Any] = {
        "id": cell.id,
        "kind": cell.kind,
        "digest": cell.digest,
        "status": "running",
        "host": platform.node(),
        "pid": os.getpid(),
        "job": slurm_job(),
        "executor": executor,
        "attempt": attempt,
        "started": now(),
        "log": run.relative(log_path) if log else None,
    }
    write_json(record_path, record)
    started = time.monotonic()
    try:
        with logged_to(log_path) if log else contextlib.nullcontext():
            if log:
                print(f"== {now()} cell {cell.id} attempt {attempt} on {platform.node()} pid {os.getpid()}", flush=True)
            try:
                manifest = _execute_waiting(run, suite, cell, device, precision, force)
            except BaseException:
                if log:
                    traceback.print_exc()
                raise
    except BaseException as exc:  # noqa: BLE001 - every failure is recorded, then reported
        record.update(status="failed", error=error_line(exc), finished=now())
        record["seconds"] = round(time.monotonic() - started, 3)
        write_json(record_path, record)
        if raise_errors or isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        return {"id": cell.id, "status": "failed", "error": record["error"], "manifest": None}
    record.update(status="done", finished=now(), key=manifest.key, error=None)
    record["seconds"] = round(time.monotonic() - started, 3)
    write_json(record_path, record)
    return {"id": cell.id, "status": "done", "error": None, "manifest": manifest}


def _execute_waiting(run: RunLayout, suite: Suite, cell: Cell, device, precision, force):
    """``execute``, waiting while a stage it touches is locked by another process (two probes share
    one features file: the second waits for the first instead of failing)."""
    told = False
    while True:
        try:
            return execute(run, suite, cell, device=device, precision=precision, force=force)
        except LockBusy as busy:
            if not told:
                info(f"cell {cell.id}: {busy.message}; waiting")
                told = True
            time.sleep(POLL_SECONDS)
