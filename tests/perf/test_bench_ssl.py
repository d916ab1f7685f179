"""The SSL benchmark's table rows (``bench_ssl.bench_rows``), checked without training anything."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from statsmodels.stats.multitest import multipletests

from tests.perf.bench_ssl import bench_rows


def _comparisons(home: Path) -> None:
    """A run's comparisons: three encoders at 100 % (one seed) and 10 % (two seeds, pooled)."""
    single, pooled = [], []
    for i, encoder in enumerate(["simclr", "rotation", "old-32px-method"]):
        single.append(
            dict(encoder=encoder, fraction=np.nan, seed=0, label="mean", delta=0.01 * i, p_value=0.01 + i / 10)
        )
        single.append(dict(encoder=encoder, fraction=np.nan, seed=0, label="effusion", delta=0.5, p_value=0.5))
        for seed in (0, 1):
            single.append(
                dict(encoder=encoder, fraction=0.1, seed=seed, label="mean", delta=0.02 * seed - i / 100, p_value=0.3)
            )
        pooled.append(dict(encoder=encoder, fraction=0.1, delta=0.01 - i / 100, p_value=0.002 + i / 50))
    home.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(single).to_parquet(home / "synthetic.parquet")
    pd.DataFrame(pooled).to_parquet(home / "seeds.parquet")


def test_rows_are_the_benched_encoders_only_with_bh_over_them(tmp_path: Path) -> None:
    _comparisons(tmp_path)
    rows = bench_rows(tmp_path, "synthetic", ["simclr", "rotation"])
    assert sorted(set(rows["encoder"])) == ["rotation", "simclr"] and len(rows) == 4
    ten = rows[rows["fraction"] == 0.1].set_index("encoder")
    assert ten.loc["rotation", "p_value"] == 0.002 + 1 / 50  # the mean over seeds, not a seed's row
    assert ten.loc["rotation", "seed_deltas"] == [-0.01, 0.01]
    expected = multipletests(rows["p_value"].to_numpy(dtype=float), method="fdr_bh")[1]
    np.testing.assert_allclose(rows["p_adjusted"].to_numpy(dtype=float), expected)
    assert rows["significant"].tolist() == (expected < 0.05).tolist()
