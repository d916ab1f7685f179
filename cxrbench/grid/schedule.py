"""Start each cell once its inputs are done, through a backend, until the grid is done or stuck.

Cells already done (by their record and manifests) are skipped without starting anything; a failed
cell is started again up to ``retries`` times; the cells that need a failed one are left waiting.
Backends (``local``: a process pool; ``slurm``: submitit) start cells and report how they ended.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from cxrbench.config import Suite
from cxrbench.console import info
from cxrbench.grid.plan import Cell, plan
from cxrbench.grid.states import Manifests, is_done, missing_inputs, write_plan
from cxrbench.locks import holder
from cxrbench.rundir import RunLayout


class Backend(Protocol):
    name: str

    def start(self, cells: list[Cell], attempts: dict[str, int]) -> None:
        """Start these cells (their inputs are done)."""

    def finished(self) -> list[tuple[str, dict[str, Any]]]:
        """Block until at least one started cell has ended; ``(id, {"status", "error"})`` of each."""

    def close(self) -> None: ...


@dataclass
class Outcome:
    """How a grid run ended: cells done now, skipped as already done, failed (id -> error), not reached."""

    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    not_reached: list[str] = field(default_factory=list)


def run_grid(
    run: RunLayout, suite: Suite, backend: Backend, *, retries: int = 1, force: bool = False, poll: float = 5.0
) -> Outcome:
    """Run every cell of ``suite`` through ``backend`` in dependency order. A cell another process is
    running (its lock is held: a second driver, a user's own command) is not started again: the
    driver waits for it and then takes its result from the record and manifest."""
    cells = plan(suite)
    write_plan(run, suite, cells, missing_inputs(suite, cells, run))
    outcome = Outcome()
    manifests = Manifests(run)
    done = set() if force else {c.id for c in cells if is_done(run, suite.name, c, manifests)}
    outcome.skipped = [c.id for c in cells if c.id in done]
    if done:
        info(f"suite {suite.name}: {len(done)} of {len(cells)} cells already done")
    attempts: dict[str, int] = {}
    running: set[str] = set()
    failed: dict[str, str] = {}
    try:
        while True:
            ready = [
                c
                for c in cells
                if c.id not in done and c.id not in running and c.id not in failed and all(d in done for d in c.deps)
            ]
            ready, elsewhere = _not_running_elsewhere(run, suite, ready)
            if elsewhere and not running and not ready:  # only cells running elsewhere are left: wait
                time.sleep(poll)
                finished_elsewhere = [c for c in elsewhere if holder(run.cell_lock(suite.name, c.file)) is None]
                if finished_elsewhere:
                    manifests = Manifests(run)
                    for c in finished_elsewhere:
                        if is_done(run, suite.name, c, manifests):
                            done.add(c.id)
                            outcome.skipped.append(c.id)
                continue
            if ready:
                for c in ready:
                    attempts[c.id] = attempts.get(c.id, 0) + 1
                backend.start(ready, attempts)
                running.update(c.id for c in ready)
            if not running:
                break
            for cell_id, result in backend.finished():
                running.discard(cell_id)
                if result["status"] == "done":
                    done.add(cell_id)
                    outcome.ran.append(cell_id)
                elif attempts[cell_id] <= retries:
                    info(f"cell {cell_id} failed ({result.get('error')}); starting it again")
                else:
                    failed[cell_id] = result.get("error") or "failed"
    finally:
        backend.close()
    outcome.failed = failed
    outcome.not_reached = [c.id for c in cells if c.id not in done and c.id not in failed]
    return outcome


def _not_running_elsewhere(run: RunLayout, suite: Suite, ready: list[Cell]) -> tuple[list[Cell], list[Cell]]:
    """``ready`` split into cells free to start and cells whose lock another process holds."""
    free, elsewhere = [], []
    for cell in ready:
        (elsewhere if holder(run.cell_lock(suite.name, cell.file)) is not None else free).append(cell)
    return free, elsewhere
