"""InfoNCE against its definition (a direct loop over the queries)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from cxrbench.pretrain.losses.info_nce import info_nce


def _info_nce_by_definition(q, k, negatives, temperature: float) -> float:
    """Mean over queries of -log(exp(cos(q, k+)/t) / (exp(cos(q, k+)/t) + sum_n exp(cos(q, n)/t)))."""
    total = 0.0
    for i in range(len(q)):
        pos = float(F.cosine_similarity(q[i].double(), k[i].double(), dim=0)) / temperature
        negs = [float(F.cosine_similarity(q[i].double(), n.double(), dim=0)) / temperature for n in negatives]
        total += -(pos - math.log(math.exp(pos) + sum(math.exp(s) for s in negs)))
    return total / len(q)


@pytest.mark.parametrize("temperature", [0.07, 0.2, 1.0])
def test_info_nce_matches_its_definition(temperature: float) -> None:
    g = torch.Generator().manual_seed(0)
    q, k, negatives = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g), torch.randn(11, 8, generator=g)
    got = float(info_nce(q, k, negatives, temperature=temperature))
    assert got == pytest.approx(_info_nce_by_definition(q, k, negatives, temperature), rel=1e-5)


def test_info_nce_is_low_for_matching_keys_and_rejects_bad_shapes() -> None:
    g = torch.Generator().manual_seed(1)
    q, negatives = torch.randn(6, 4, generator=g), torch.randn(9, 4, generator=g)
    assert float(info_nce(q, q, negatives)) < float(info_nce(q, -q, negatives))
    with pytest.raises(ValueError, match="differ in shape"):
        info_nce(q, q[:5], negatives)
    with pytest.raises(ValueError, match="negatives must be"):
        info_nce(q, q, negatives[:, :3])
