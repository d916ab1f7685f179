"""The slurm executor through submitit's DebugExecutor (no SLURM): array submission, a failed cell
reported with its error and log, then submitted again; resources; preemption requeue; no submitit."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from cxrbench.errors import CxrbenchError
from cxrbench.grid import cells as cells_module
from cxrbench.grid.plan import plan
from cxrbench.grid.schedule import run_grid
from cxrbench.grid.slurm import CellJob, SlurmBackend, parameters_for, parse_resources
from cxrbench.grid.states import suite_states
from cxrbench.rundir import RunLayout
from tests.grid.phantom import phantom

FLAKY = "probe/synthetic/simclr/f=1/s=0"


def test_a_failed_cell_is_reported_then_resubmitted_and_finished_cells_are_skipped(
    tmp_path: Path, monkeypatch, one_torch_thread
):
    monkeypatch.setenv("CXRBENCH_QUIET", "1")
    suite = phantom(tmp_path)
    run = RunLayout(tmp_path / "run")
    real, calls, failures = cells_module.execute, [], [2]

    def flaky(run, suite, cell, **options):  # the node running this cell loses its GPU, twice
        calls.append(cell.id)
        if cell.id == FLAKY and failures[0] > 0:
            failures[0] -= 1
            raise RuntimeError("CUDA error: device lost")
        return real(run, suite, cell, **options)

    monkeypatch.setattr(cells_module, "execute", flaky)

    def backend():
        return SlurmBackend(run.root, suite, resources=parse_resources(suite.slurm, None), cluster="debug", poll=0.01)

    # no retries: the cell fails, the cells that read it are not reached, the rest are done
    first = run_grid(run, suite, backend(), retries=0)
    everything = [c.id for c in plan(suite)]
    assert first.failed == {FLAKY: "RuntimeError: CUDA error: device lost"}
    assert first.not_reached == ["evaluate", "compare"]
    assert sorted(first.ran) == sorted(set(everything) - {FLAKY, "evaluate", "compare"})
    rows = {row.id: row for row in suite_states(run, "phantom")}
    assert rows[FLAKY].state == "failed" and rows[FLAKY].detail == "RuntimeError: CUDA error: device lost"
    log = run.root / rows[FLAKY].log
    assert "RuntimeError: CUDA error: device lost" in log.read_text()  # the traceback is in the cell's log
    assert rows["evaluate"].state == "waiting" and rows["evaluate"].detail == f"for {FLAKY}"
    assert [r.state for r in rows.values()].count("done") == len(everything) - 3

    # rerun with one retry: it fails once more, is submitted again and finishes; nothing else reruns
    calls.clear()
    second = run_grid(run, suite, backend(), retries=1)
    assert not second.failed and not second.not_reached
    assert calls == [FLAKY, FLAKY, "evaluate", "compare"]
    assert second.ran == [FLAKY, "evaluate", "compare"] and len(second.skipped) == len(everything) - 3
    record = json.loads(run.cell_record("phantom", plan(suite)[-3].file).read_text())
    assert record["id"] == FLAKY and record["attempt"] == 2 and record["status"] == "done"
    assert record["executor"] == "slurm" and record["job"] is None  # no SLURM variables under the debug executor
    assert all(row.state == "done" for row in suite_states(run, "phantom"))

    # a third run finds every cell done by its record and manifest and submits nothing
    calls.clear()
    third = run_grid(run, suite, backend(), retries=1)
    assert calls == [] and third.ran == [] and len(third.skipped) == len(everything)


def test_resources_come_from_defaults_then_the_suite_then_flags():
    table = parse_resources(
        {"default": {"partition": "gpu"}, "finetune": {"timeout_min": 600}},
        ["finetune.gpus=2", "mem_gb=48", "probe.partition=cpu"],
    )
    assert parameters_for(table, "finetune") == {
        "gpus_per_node": 2,
        "cpus_per_task": 8,
        "mem_gb": 32,  # the finetune default beats the --slurm default given for every kind
        "timeout_min": 600,
        "slurm_partition": "gpu",
    }
    assert parameters_for(table, "probe")["slurm_partition"] == "cpu"
    assert parameters_for(table, "evaluate")["mem_gb"] == 48
    for bad, message in [
        (["finetune.vram=80"], "--slurm finetune.vram=80: unknown resource 'vram'"),
        (["train.gpus=1"], "--slurm train.gpus=1: unknown stage kind 'train'"),
        (["gpus"], "--slurm 'gpus': expected KEY=VALUE or KIND.KEY=VALUE"),
    ]:
        with pytest.raises(CxrbenchError) as info:
            parse_resources({}, bad)
        assert info.value.message.startswith(message) and "\n" not in info.value.message


def test_a_preempted_or_timed_out_job_is_requeued_as_the_next_attempt(tmp_path: Path):
    import submitit

    suite = phantom(tmp_path)
    cell = plan(suite)[3]
    job = CellJob(tmp_path / "run", suite, cell, 1, None, None)
    again = job.checkpoint()
    assert isinstance(again, submitit.helpers.DelayedSubmission)
    assert again.function.cell == cell and again.function.attempt == 2


def test_without_submitit_the_slurm_executor_is_a_one_line_error(tmp_path: Path, monkeypatch):
    monkeypatch.setitem(sys.modules, "submitit", None)  # as if not installed
    suite = phantom(tmp_path)
    with pytest.raises(CxrbenchError) as info:
        SlurmBackend(tmp_path / "run", suite, resources=parse_resources({}, None))
    assert info.value.message == (
        "--executor slurm needs submitit: pip install 'cxrbench[cluster]' (or pip install submitit)"
    )


def test_a_cell_runs_as_a_separate_job_through_submitits_local_executor(tmp_path: Path, monkeypatch):
    """The job is pickled, started in its own process by submitit and reports back (no SLURM)."""
    monkeypatch.setenv("CXRBENCH_QUIET", "1")
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[2]))
    suite = phantom(tmp_path)
    run = RunLayout(tmp_path / "run")
    prepare = plan(suite)[0]
    backend = SlurmBackend(run.root, suite, resources=parse_resources({}, None), cluster="local", poll=0.2)
    backend.start([prepare], {prepare.id: 1})
    ((cell_id, result),) = backend.finished()
    assert cell_id == prepare.id and result["status"] == "done" and result["error"] is None
    record = json.loads(run.cell_record("phantom", prepare.file).read_text())
    assert record["executor"] == "slurm" and record["status"] == "done"
    assert record["pid"] != __import__("os").getpid()  # it ran in submitit's job process
    assert (run.root / "prepared" / "synthetic" / "manifest.json").is_file()
    assert list((run.root / "logs" / "slurm" / "phantom").glob("*_submitted.pkl"))  # submitit's job files
