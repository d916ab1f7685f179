"""``--executor slurm``: cells as SLURM jobs through submitit (``pip install cxrbench[cluster]``).

Cells of one kind that become ready together go out as one array job, with that kind's resources
(``[suites.NAME.slurm.KIND]`` in the suite, ``--slurm KIND.KEY=VALUE`` on the command line). The
driver submits a cell once the cells it reads are done, so dependencies hold whatever the queue
does; a failed cell is submitted again (``--retries``). A preempted or timed-out job is requeued by
submitit through ``CellJob.checkpoint``, and the stage resumes from its training checkpoint.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from cxrbench.config import Suite
from cxrbench.errors import CxrbenchError
from cxrbench.grid.cells import error_line, run_cell
from cxrbench.grid.plan import KINDS, Cell

#: resources by stage kind; "default" applies to every kind, then the kind's own entries
DEFAULT_RESOURCES: dict[str, dict[str, Any]] = {
    "default": {"cpus": 4, "mem_gb": 16, "timeout_min": 120, "gpus": 0},
    "prepare": {"cpus": 16, "mem_gb": 32, "timeout_min": 480},
    "pretrain": {"gpus": 1, "cpus": 8, "mem_gb": 64, "timeout_min": 2880},
    "features": {"gpus": 1, "cpus": 8, "mem_gb": 32, "timeout_min": 240},
    "finetune": {"gpus": 1, "cpus": 8, "mem_gb": 32, "timeout_min": 1440},
}
#: resource name -> submitit AutoExecutor parameter
PARAMETERS = {
    "gpus": "gpus_per_node",
    "cpus": "cpus_per_task",
    "mem_gb": "mem_gb",
    "timeout_min": "timeout_min",
    "partition": "slurm_partition",
    "account": "slurm_account",
    "qos": "slurm_qos",
    "constraint": "slurm_constraint",
    "array_parallelism": "slurm_array_parallelism",
}
POLL_SECONDS = 10.0


def submitit_module():
    """submitit, imported only when the slurm executor is used; a one-line error when absent."""
    try:
        import submitit
    except ImportError:
        raise CxrbenchError(
            "--executor slurm needs submitit: pip install 'cxrbench[cluster]' (or pip install submitit)"
        ) from None
    return submitit


def parse_resources(suite_table: dict[str, Any], flags: list[str] | None) -> dict[str, dict[str, Any]]:
    """Resources by kind: built-in defaults, then the suite's ``slurm`` tables, then ``--slurm`` flags
    (``KEY=VALUE`` for every kind, ``KIND.KEY=VALUE`` for one)."""
    table: dict[str, dict[str, Any]] = {k: dict(v) for k, v in DEFAULT_RESOURCES.items()}
    given: list[tuple[str, str, Any, str]] = []
    for kind, entries in suite_table.items():
        if not isinstance(entries, dict):
            raise CxrbenchError(f"slurm.{kind} must be a table of resources ({', '.join(PARAMETERS)})")
        given += [(kind, key, value, f"slurm.{kind}.{key}") for key, value in entries.items()]
    for flag in flags or []:
        name, sep, value = flag.partition("=")
        if not sep:
            raise CxrbenchError(f"--slurm {flag!r}: expected KEY=VALUE or KIND.KEY=VALUE")
        kind, _, key = name.rpartition(".")
        given.append((kind or "default", key.strip().replace("-", "_"), _number(value), f"--slurm {flag}"))
    for kind, key, value, where in given:
        if kind not in ("default", *KINDS):
            raise CxrbenchError(f"{where}: unknown stage kind '{kind}' (known: default, {', '.join(KINDS)})")
        if key not in PARAMETERS:
            raise CxrbenchError(f"{where}: unknown resource '{key}' (known: {', '.join(PARAMETERS)})")
        table.setdefault(kind, {})[key] = value
    return table


def _number(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parameters_for(resources: dict[str, dict[str, Any]], kind: str) -> dict[str, Any]:
    """submitit parameters for cells of ``kind``."""
    merged = {**resources.get("default", {}), **resources.get(kind, {})}
    return {PARAMETERS[k]: v for k, v in merged.items()}


class CellJob:
    """The callable a SLURM job runs: one cell. ``checkpoint`` makes submitit requeue it on preemption
    or timeout (the training stages resume from their checkpoints)."""

    def __init__(self, run: Path, suite: Suite, cell: Cell, attempt: int, device: str | None, precision: str | None):
        self.run, self.suite, self.cell, self.attempt = Path(run), suite, cell, attempt
        self.device, self.precision = device, precision

    def __call__(self) -> dict[str, Any]:
        return run_cell(
            self.run,
            self.suite,
            self.cell,
            device=self.device,
            precision=self.precision,
            executor="slurm",
            attempt=self.attempt,
        )

    def checkpoint(self, *args: Any, **kwargs: Any):
        submitit = submitit_module()
        again = CellJob(self.run, self.suite, self.cell, self.attempt + 1, self.device, self.precision)
        return submitit.helpers.DelayedSubmission(again)


class SlurmBackend:
    """Cells as submitit jobs; ``cluster`` None is SLURM where available, ``local``/``debug`` run here."""

    name = "slurm"

    def __init__(
        self,
        run: Path,
        suite: Suite,
        *,
        resources: dict[str, dict[str, Any]],
        cluster: str | None = None,
        device: str | None = None,
        precision: str | None = None,
        poll: float = POLL_SECONDS,
    ) -> None:
        submitit = submitit_module()
        from cxrbench.rundir import layout_of

        self.run, self.suite, self.resources, self.poll = Path(run), suite, resources, poll
        self.device, self.precision = device, precision
        self.executor = submitit.AutoExecutor(folder=layout_of(run).slurm_folder(suite.name), cluster=cluster)
        if cluster is None and self.executor.cluster != "slurm":  # submitit falls back to local jobs
            raise CxrbenchError(
                "--executor slurm: no SLURM on this machine (sbatch not found); run it on a cluster's login "
                "node, or add --slurm-cluster local to run the same jobs here"
            )
        self.jobs: dict[str, Any] = {}
        self.uncompleted = submitit.core.utils.UncompletedJobError

    def start(self, cells: list[Cell], attempts: dict[str, int]) -> None:
        by_kind: dict[str, list[Cell]] = {}
        for cell in cells:
            by_kind.setdefault(cell.kind, []).append(cell)
        for kind, group in by_kind.items():
            params = parameters_for(self.resources, kind)
            if self.executor.cluster != "slurm":
                params = {k: v for k, v in params.items() if not k.startswith("slurm_")}
            self.executor.update_parameters(name=f"cxrbench-{self.suite.name}-{kind}", **params)
            calls = [CellJob(self.run, self.suite, c, attempts[c.id], self.device, self.precision) for c in group]
            with self.executor.batch():  # one array job per kind and wave
                jobs = [self.executor.submit(call) for call in calls]
            for cell, job in zip(group, jobs, strict=True):
                self.jobs[cell.id] = job

    def finished(self) -> list[tuple[str, dict[str, Any]]]:
        while True:
            ended = [cell_id for cell_id, job in self.jobs.items() if job.done()]
            if ended:
                return [(cell_id, self._result(self.jobs.pop(cell_id))) for cell_id in ended]
            time.sleep(self.poll)

    def _result(self, job: Any) -> dict[str, Any]:
        try:
            return job.result()
        except self.uncompleted as exc:  # killed, out of memory, requeued too often: see its SLURM log
            return {"status": "failed", "error": f"job {job.job_id}: {error_line(exc)} (log {job.paths.stderr})"}
        except Exception as exc:  # noqa: BLE001 - reported as the cell's failure
            return {"status": "failed", "error": f"job {job.job_id}: {error_line(exc)}"}

    def close(self) -> None:
        pass
