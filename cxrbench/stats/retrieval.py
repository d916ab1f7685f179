"""Image→report retrieval: recall@K of each image's own report among the distinct reports of a split,
with percentile bootstrap intervals over images."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

KS = (1, 5, 10)


def ranks(similarity: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The 1-based rank of each image's own report (``target[i]``, a column of ``similarity`` ``[N, M]``):
    1 + the number of reports scored strictly higher (ties count for the image)."""
    sim = np.asarray(similarity, dtype=np.float64)
    own = sim[np.arange(len(sim)), np.asarray(target)]
    return 1 + (sim > own[:, None]).sum(1)


def recall_table(
    similarity: np.ndarray, target: np.ndarray, *, ks: Sequence[int] = KS, n_boot: int = 1000, seed: int = 0
) -> list[dict]:
    """Rows ``metric`` (``recall@K``), ``value``, ``ci_low``, ``ci_high`` (95% percentile bootstrap over
    images), ``n_images``, ``n_reports``; K larger than the number of reports is left out."""
    r = ranks(similarity, target)
    n, m = similarity.shape
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n, np.full(n, 1 / n), size=n_boot) if n_boot else np.zeros((0, n))
    rows = []
    for k in ks:
        if k > m:
            continue
        hits = (r <= k).astype(np.float64)
        boot = counts @ hits / n if n_boot else np.array([np.nan])
        low, high = np.percentile(boot, [2.5, 97.5]) if n_boot else (np.nan, np.nan)
        rows.append(
            {
                "metric": f"recall@{k}",
                "value": float(hits.mean()),
                "ci_low": float(low),
                "ci_high": float(high),
                "n_images": n,
                "n_reports": m,
            }
        )
    return rows
