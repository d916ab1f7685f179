"""Retrieval recall@K against a hand-ranked case and a brute-force sort."""

from __future__ import annotations

import numpy as np
import pytest

from cxrbench.stats.retrieval import ranks, recall_table


def test_hand_computed_ranks_and_recall() -> None:
    sim = np.array([[0.9, 0.1, 0.5], [0.8, 0.2, 0.7], [0.3, 0.3, 0.3]])
    target = np.array([0, 1, 2])
    assert ranks(sim, target).tolist() == [1, 3, 1]  # a tie does not push the image's own report down
    rows = {r["metric"]: r for r in recall_table(sim, target, ks=(1, 2, 5), n_boot=0)}
    assert rows["recall@1"]["value"] == pytest.approx(2 / 3) and rows["recall@2"]["value"] == pytest.approx(2 / 3)
    assert "recall@5" not in rows  # more than the 3 reports


def test_recall_equals_a_brute_force_sort_and_the_interval_holds_it() -> None:
    rng = np.random.default_rng(0)
    sim = rng.random((60, 25))
    target = rng.integers(0, 25, 60)
    order = np.argsort(-sim, axis=1)
    for row in recall_table(sim, target, ks=(1, 5, 10), n_boot=200, seed=1):
        k = int(row["metric"].split("@")[1])
        want = np.mean([target[i] in order[i, :k] for i in range(60)])
        assert row["value"] == pytest.approx(want)
        assert row["ci_low"] <= row["value"] <= row["ci_high"]
