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
