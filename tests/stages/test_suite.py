"""`run_suite` without training: settings checked before any work, and the no-op fingerprint."""

from __future__ import annotations

from pathlib import Path

import pytest

from cxrbench.config import DatasetSpec, Suite
from cxrbench.errors import CxrbenchError
from cxrbench.stages.suite import run_suite


def _suite(*datasets: DatasetSpec) -> Suite:
    return Suite(name="two", description="", datasets=datasets, encoders=("random",), baseline="random")


@pytest.mark.parametrize(("split", "named"), [("50/50/10", "sum to 110, not 100"), ("80/0/20", "the val split")])
def test_bad_split_of_a_later_dataset_fails_before_the_first_is_prepared(tmp_path: Path, split: str, named: str):
    suite = _suite(
        DatasetSpec("synthetic", None, {"n_patients": 20, "size": 16}),
        DatasetSpec("other", None, {"split": split}),
    )
    with pytest.raises(CxrbenchError) as info:
        run_suite(tmp_path / "run", suite)
    message = info.value.message
    assert message.startswith("suites.two.prepare.other: --split") and named in message and "\n" not in message
    assert not (tmp_path / "run" / "prepared").exists()


def test_fingerprint_follows_the_settings_not_where_the_suite_was_defined(tmp_path: Path, monkeypatch):
    from cxrbench.config import builtin_suites, get_suite
    from cxrbench.stages.suite import _fingerprint

    monkeypatch.chdir(tmp_path)
    builtin = _fingerprint(builtin_suites()["smoke"])
    assert _fingerprint(get_suite("smoke")) == builtin
    packaged = (Path(__file__).resolve().parents[2] / "cxrbench" / "suites.toml").read_text()
    local = tmp_path / "benchmarks.toml"
    local.write_text(packaged)  # the same settings from a local file: the finished run stays finished
    assert _fingerprint(get_suite("smoke")) == builtin
    local.write_text(packaged.replace("n_boot = 200", "n_boot = 100"))  # an override that changes a setting
    assert _fingerprint(get_suite("smoke")) != builtin


def test_finding_a_suite_loads_no_model_stack(tmp_path: Path):
    """The no-op rerun of a finished suite stays fast: reading suites must not import torch."""
    import os
    import subprocess
    import sys

    code = (
        "import sys; from cxrbench.config import available_suites, get_suite; import cxrbench.cli, "
        "cxrbench.stages.suite; available_suites(); get_suite('smoke'); "
        "print(sorted(m for m in ('torch', 'torchvision', 'timm', 'matplotlib') if m in sys.modules))"
    )
    env_path = str(Path(__file__).resolve().parents[2])
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": env_path},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
