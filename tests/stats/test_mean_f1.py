"""Mean F1 for model selection against scikit-learn's f1_score."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score

from cxrbench.adapt.finetune import recipe
from cxrbench.errors import CxrbenchError
from cxrbench.stats.thresholds import mean_f1


def test_multilabel_mean_f1_equals_sklearn_over_known_targets() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, (40, 3)).astype(float)
    y[rng.random((40, 3)) < 0.2] = np.nan
    y[:, 2] = np.where(np.isnan(y[:, 2]), np.nan, 0.0)  # no positives: left out
    s = rng.random((40, 3))
    want = []
    for j in range(2):
        known = ~np.isnan(y[:, j])
        want.append(f1_score(y[known, j], s[known, j] >= 0.5))
    assert mean_f1(y, s) == pytest.approx(np.mean(want))
    assert np.isnan(mean_f1(y[:, 2:], s[:, 2:]))


def test_multiclass_macro_f1_equals_sklearn() -> None:
    rng = np.random.default_rng(1)
    truth = rng.integers(0, 3, 50)
    s = rng.random((50, 3))
    want = f1_score(truth, s.argmax(1), average="macro")
    assert mean_f1(np.eye(3)[truth], s, task="multiclass") == pytest.approx(want)


def test_select_is_checked() -> None:
    assert recipe("ssl-cxr", select="f1").select == "f1"
    with pytest.raises(CxrbenchError, match="choose auc or f1"):
        recipe("ssl-cxr", select="loss")
