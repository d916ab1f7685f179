"""prepare's shared worker pool: one set of processes for the header pass and the decode, retired
when broken or when a pass fails, and never leaking past its scope."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cxrbench import processes
from cxrbench.data.transforms import Preprocess


def test_worker_pools_inside_a_shared_scope_are_one_pool() -> None:
    with processes.shared_pool(2):
        with processes.worker_pool(2) as first:
            pids = {first.submit(os.getpid).result() for _ in range(6)}
        with processes.worker_pool(2) as second:
            assert second is first
            assert second.submit(os.getpid).result() in pids  # the same processes, started once
        with processes.worker_pool(1) as other:  # another size: a pool of its own
            assert other is not first
    assert processes._shared == {}
    with pytest.raises(RuntimeError, match="shutdown"):  # the scope shut its pool down
        first.submit(os.getpid)


def test_a_retired_or_failed_shared_pool_is_replaced() -> None:
    with processes.shared_pool(2):
        with processes.worker_pool(2) as first:
            processes.retire(first)
        with processes.worker_pool(2) as second:
            assert second is not first
            assert second.submit(os.getpid).result() != os.getpid()
        with pytest.raises(ZeroDivisionError), processes.worker_pool(2) as third:
            assert third is second
            raise ZeroDivisionError
        with processes.worker_pool(2) as fourth:
            assert fourth is not second


def test_without_a_scope_each_pass_has_its_own_pool() -> None:
    with processes.worker_pool(2) as one, processes.worker_pool(2) as two:
        assert one is not two
    assert processes._shared == {}


def test_ct_prepare_starts_one_pool_for_headers_and_decode(tmp_path: Path, monkeypatch) -> None:
    """The header pass and the decode of `prepare rsna-pe --workers 2` share their processes."""
    from cxrbench.data.ct_phantoms import write_ct_phantoms
    from cxrbench.stages.prepare import prepare

    made = []
    real = processes._new_pool

    def counting(workers):
        made.append(workers)
        return real(workers)

    monkeypatch.setattr(processes, "_new_pool", counting)
    root = tmp_path / "ct"
    write_ct_phantoms(root, n_patients=3, size=32, seed=0)
    manifest = prepare(tmp_path / "run", "rsna-pe", root=root, image=Preprocess(size=32), workers=2)
    assert manifest.complete and manifest.extra["quarantined"] == 0
    assert made == [2]


def test_pool_workers_run_numeric_libraries_on_one_thread_unless_the_user_said(monkeypatch) -> None:
    """The workers are the parallelism: OpenBLAS's per-core threads (which spin ~0.1 s of CPU each
    when numpy is imported) would take cores from the workers beside them."""
    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    with processes.worker_pool(2) as pool:
        assert pool.submit(os.getenv, "OPENBLAS_NUM_THREADS").result() == "1"
        assert pool.submit(os.getenv, "OMP_NUM_THREADS").result() == "3"
    assert os.getenv("OPENBLAS_NUM_THREADS") is None  # the parent's own libraries keep their threads
