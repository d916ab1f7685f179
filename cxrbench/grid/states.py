"""Each cell's state, read back from the run directory: for ``--dry-run`` and ``cxrbench status``.

A cell is ``done`` when its record says so and the manifest it recorded is still complete, intact
and built from the current outputs of its inputs; ``stale`` when the suite now asks something else
of it or an input was redone; ``running`` while its lock is held (by whom); ``failed`` with its
error line and log; ``interrupted`` when it was running and its process is gone; ``waiting`` when
it has not run; ``missing input`` when a data root or weights it needs are absent.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cxrbench.config import Suite
from cxrbench.grid.plan import Cell
from cxrbench.locks import holder
from cxrbench.rundir import Manifest, RunLayout, current_outputs, stale_inputs, write_json

STATES = ("done", "running", "failed", "interrupted", "stale", "waiting", "missing input")


@dataclass(frozen=True)
class CellState:
    """One row of the status table."""

    id: str
    kind: str
    state: str
    where: str = ""
    detail: str = ""
    log: str = ""


class Manifests:
    """Every complete manifest of the run by key, and the current hash of every output (read once)."""

    def __init__(self, run: RunLayout) -> None:
        self.run = run
        self.by_key: dict[str, Manifest] = {}
        for path in run.manifests():
            manifest = Manifest.read(path)
            if manifest is not None and manifest.complete:
                self.by_key[manifest.key] = manifest
        self.current = current_outputs(run)

    def problem(self, key: str | None) -> str | None:
        """None when the manifest ``key`` is complete, intact and from current inputs; else what is wrong."""
        manifest = self.by_key.get(key or "")
        if manifest is None:
            return "its outputs were redone or removed since"
        broken = manifest.intact(self.run)
        if broken is not None:
            return broken
        redone = stale_inputs(manifest, self.current)
        if redone:
            return f"input {redone[0]} was redone since"
        return None


def read_record(run: RunLayout, suite: str, cell_file: str) -> dict[str, Any] | None:
    try:
        return json.loads(run.cell_record(suite, cell_file).read_text())
    except (OSError, ValueError):
        return None


def is_done(run: RunLayout, suite: str, cell: Cell, manifests: Manifests) -> bool:
    """True when ``cell`` finished with the settings the suite asks now, and nothing since undid it."""
    record = read_record(run, suite, cell.file)
    return (
        record is not None
        and record.get("status") == "done"
        and record.get("digest") == cell.digest
        and manifests.problem(record.get("key")) is None
    )


def cell_state(run: RunLayout, suite: str, entry: dict[str, Any], manifests: Manifests) -> CellState:
    """The state of one cell of a plan (``entry`` as written by ``write_plan``)."""
    record = read_record(run, suite, entry["file"])
    running = holder(run.cell_lock(suite, entry["file"]))
    base = {"id": entry["id"], "kind": entry["kind"]}
    if running is not None:
        job = f" (job {record['job']})" if record and record.get("job") else ""
        since = f" since {record['started']}" if record and record.get("started") else ""
        return CellState(**base, state="running", where=running + job, detail=since.strip(), log=_log(record))
    if record is None:
        if entry.get("missing"):
            return CellState(**base, state="missing input", detail=entry["missing"])
        return CellState(**base, state="waiting")
    where = f"pid {record.get('pid')} on {record.get('host')}" + (
        f" (job {record['job']})" if record.get("job") else ""
    )
    status = record.get("status")
    if status == "done":
        if record.get("digest") != entry["digest"]:
            return CellState(**base, state="stale", where=where, detail="the suite's settings for it changed")
        problem = manifests.problem(record.get("key"))
        if problem is not None:
            return CellState(**base, state="stale", where=where, detail=problem)
        return CellState(**base, state="done", where=where, detail=f"{record.get('seconds', 0):.1f} s")
    if status == "failed":
        return CellState(**base, state="failed", where=where, detail=record.get("error") or "", log=_log(record))
    return CellState(
        **base, state="interrupted", where=where, detail="its process is gone; rerun to resume", log=_log(record)
    )


def _log(record: dict[str, Any] | None) -> str:
    return (record or {}).get("log") or ""


# ---------------------------------------------------------------------------------------------
# What is missing before anything starts, and the plan saved for `status`.


def missing_inputs(suite: Suite, cells: list[Cell], run: RunLayout) -> dict[str, str]:
    """Cell id -> what it lacks: an unset or absent data root, or weights not on this machine."""
    from cxrbench.data.adapters import get_adapter
    from cxrbench.errors import CxrbenchError
    from cxrbench.grid.plan import dataset_spec
    from cxrbench.roots import dataset_root

    missing: dict[str, str] = {}
    for cell in cells:
        if cell.kind != "prepare":
            continue
        spec = dataset_spec(suite, cell.params["dataset"])
        try:
            generated = hasattr(get_adapter(spec.name), "generate")
        except CxrbenchError as exc:
            missing[cell.id] = exc.message
            continue
        if generated:
            continue
        root = dataset_root(spec.name, spec.root)
        if root.path is None:
            missing[cell.id] = f"data root {root.origin}"
        elif not Path(root.path).is_dir():
            missing[cell.id] = f"data root {root.path} (from {root.origin}) not found"
    weights: dict[str, str] = {}
    for encoder in suite.encoders:
        if encoder in suite.pretrain:
            continue
        from cxrbench.models.sources import check_weights

        try:
            (spec,) = check_weights([(encoder, suite.arch)], run=run.root)
        except CxrbenchError as exc:
            weights[encoder] = exc.message
            continue
        if not spec.present:
            weights[encoder] = spec.missing_message
    for cell in cells:
        encoder = cell.params.get("encoder")
        if cell.kind in ("features", "probe", "finetune") and encoder in weights:
            missing[cell.id] = weights[encoder]
    return missing


def write_plan(run: RunLayout, suite: Suite, cells: list[Cell], missing: dict[str, str]) -> Path:
    """Save the cells and their dependencies, so ``cxrbench status`` needs the run directory alone."""
    entries = [
        {
            "id": c.id,
            "kind": c.kind,
            "file": c.file,
            "digest": c.digest,
            "deps": list(c.deps),
            "missing": missing.get(c.id),
        }
        for c in cells
    ]
    return write_json(run.suite_plan(suite.name), {"suite": suite.name, "cells": entries})


def suite_states(run: RunLayout, suite: str) -> list[CellState]:
    """Every cell of the saved plan of ``suite`` with its state; a cell whose inputs are not done waits."""
    plan = json.loads(run.suite_plan(suite).read_text())
    manifests = Manifests(run)
    rows = {e["id"]: cell_state(run, suite, e, manifests) for e in plan["cells"]}
    out = []
    for entry in plan["cells"]:
        row = rows[entry["id"]]
        if row.state == "waiting":
            pending = [d for d in entry["deps"] if rows[d].state != "done"]
            if pending:
                more = f" (+{len(pending) - 1})" if len(pending) > 1 else ""
                row = CellState(row.id, row.kind, "waiting", detail=f"for {pending[0]}{more}")
        out.append(row)
    return out


def recorded_suites(run: RunLayout) -> list[str]:
    """Suites with a saved plan in the run."""
    return sorted(p.parent.name for p in (run.root / "suites").glob("*/plan.json"))


def dry_run(run: RunLayout, suite: Suite) -> list[CellState]:
    """Every cell of ``suite`` before anything starts: done, stale (to redo) or missing (to do), and
    what it lacks (data roots, weights). Writes nothing."""
    from cxrbench.grid.plan import plan

    cells = plan(suite)
    lacking = missing_inputs(suite, cells, run)
    manifests = Manifests(run)
    rows = []
    for cell in cells:
        record = read_record(run, suite.name, cell.file)
        if is_done(run, suite.name, cell, manifests):
            state = "done"
        elif record is not None and record.get("status") == "done":
            state = "stale"
        else:
            state = "missing"
        needs = "" if state == "done" else lacking.get(cell.id, "")
        rows.append(CellState(cell.id, cell.kind, state, detail=needs))
    return rows
