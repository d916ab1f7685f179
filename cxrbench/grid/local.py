"""``--executor local --jobs N``: cells in N worker processes on this machine.

Workers are spawned (no forked torch state), share the CPUs (``cpu_count // jobs`` torch threads
each) and end with the process that started them, even when it is SIGKILLed; each cell's output
goes to its log in ``logs/cells/SUITE/``.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
from pathlib import Path
from typing import Any

from cxrbench.config import Suite
from cxrbench.grid.cells import error_line, run_cell
from cxrbench.grid.plan import Cell
from cxrbench.processes import die_with_parent


def _worker_setup(parent: int, threads: int) -> None:
    """Pool initializer: end with the driver, and share the CPUs among the workers (torch reads
    ``OMP_NUM_THREADS`` when it is first imported; a value the user set is kept)."""
    die_with_parent(parent)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))


class LocalBackend:
    """A process pool that runs cells; a worker that dies fails its cell, and the pool is renewed."""

    name = "local"

    def __init__(
        self, run: Path, suite: Suite, *, jobs: int, device: str | None = None, precision: str | None = None
    ) -> None:
        self.run, self.suite, self.jobs = Path(run), suite, jobs
        self.options = {"device": device, "precision": precision}
        self.futures: dict[cf.Future, str] = {}
        self.pool = self._pool()

    def _pool(self) -> cf.ProcessPoolExecutor:
        return cf.ProcessPoolExecutor(
            self.jobs,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_worker_setup,
            initargs=(os.getpid(), max(1, (os.cpu_count() or 1) // self.jobs)),
        )

    def start(self, cells: list[Cell], attempts: dict[str, int]) -> None:
        for cell in cells:
            future = self.pool.submit(
                run_cell, self.run, self.suite, cell, executor="local", attempt=attempts[cell.id], **self.options
            )
            self.futures[future] = cell.id

    def finished(self) -> list[tuple[str, dict[str, Any]]]:
        ended, _ = cf.wait(list(self.futures), return_when=cf.FIRST_COMPLETED)
        results = []
        broken = False
        for future in ended:
            cell_id = self.futures.pop(future)
            try:
                results.append((cell_id, future.result()))
            except cf.process.BrokenProcessPool as exc:
                broken = True
                results.append((cell_id, {"status": "failed", "error": f"worker process died: {exc}"}))
            except Exception as exc:  # noqa: BLE001 - a cell that could not even start
                results.append((cell_id, {"status": "failed", "error": error_line(exc)}))
        if broken:  # every other cell of a broken pool ends the same way; start a fresh pool
            for cell_id in list(self.futures.values()):
                results.append((cell_id, {"status": "failed", "error": "worker pool broke"}))
            self.futures.clear()
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.pool = self._pool()
        return results

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
