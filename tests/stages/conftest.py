"""A prepared phantom run shared by the stage tests (prepared once per session, copied per test)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cxrbench.cli import main

ARCH = "resnet10t"


def cli(*args: str) -> None:
    """Run the CLI in-process; fail the test on a non-zero exit."""
    try:
        main(list(args))
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise AssertionError(f"cxrbench {' '.join(args)} exited {exc.code}") from None


@pytest.fixture(scope="session")
def phantom_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run with `prepare synthetic` (200 patients, 64 px) done."""
    run = tmp_path_factory.mktemp("phantom-run")
    cli(
        "prepare",
        "synthetic",
        "--n-patients",
        "200",
        "--size",
        "64",
        "--seed",
        "0",
        "--run",
        str(run),
        "--workers",
        "1",
    )
    return run


@pytest.fixture
def run_copy(phantom_run: Path, tmp_path: Path) -> Path:
    """A private copy of the prepared phantom run."""
    target = tmp_path / "run"
    shutil.copytree(phantom_run, target)
    return target
