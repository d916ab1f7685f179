"""The method tests train tiny models: one torch thread each (several are slower on a shared 2-core box)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    yield


@pytest.fixture(scope="session")
def phantom_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run with 24 phantom patients prepared at 32 px, lateral views kept (several studies and
    images per patient, for the methods that pair images of one patient)."""
    from cxrbench.cli import main

    run = tmp_path_factory.mktemp("phantoms")
    argv = ["prepare", "synthetic", "--n-patients", "24", "--size", "32", "--views", "all", "--workers", "1"]
    try:
        main([*argv, "--run", str(run)])
    except SystemExit as exc:
        assert exc.code in (0, None), exc.code
    return run
