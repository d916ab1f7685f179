"""A prepared phantom run shared by the stage tests (prepared once per session, copied per test)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cxrbench.cli import main

ARCH = "resnet10t"
#: the prepare of the shared phantom run (add --run; other options may follow to change it)
PREPARE = ("prepare", "synthetic", "--n-patients", "200", "--size", "64", "--seed", "0", "--workers", "1")


def prepare_ct_phantoms(run: Path, *options: str) -> None:
    """Tiny `synthetic-ct` and `synthetic-lidc` phantoms (6 patients each, 32 px) prepared in ``run``."""
    common = ("--size", "32", "--option", "phantom_size=32", "--workers", "1", *options, "--run", str(run))
    cli("prepare", "synthetic-ct", "--n-patients", "6", *common)
    cli("prepare", "synthetic-lidc", "--n-patients", "6", "--split", "50/25/25", *common)


def cli(*args: str) -> None:
    """Run the CLI in-process; fail the test on a non-zero exit."""
    try:
        main(list(args))
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise AssertionError(f"cxrbench {' '.join(args)} exited {exc.code}") from None


@pytest.fixture
def quiet(monkeypatch, one_torch_thread):
    """No progress bars or info lines, one torch thread, no --debug tracebacks."""
    monkeypatch.setenv("CXRBENCH_QUIET", "1")
    monkeypatch.delenv("CXRBENCH_DEBUG", raising=False)


@pytest.fixture(scope="session")
def phantom_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run with `prepare synthetic` (200 patients, 64 px) done."""
    run = tmp_path_factory.mktemp("phantom-run")
    cli(*PREPARE, "--run", str(run))
    return run


@pytest.fixture
def run_copy(phantom_run: Path, tmp_path: Path) -> Path:
    """A private copy of the prepared phantom run."""
    target = tmp_path / "run"
    shutil.copytree(phantom_run, target)
    return target
