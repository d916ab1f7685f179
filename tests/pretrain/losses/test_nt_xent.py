"""NT-Xent against its definition (a direct double loop over the 2B anchors)."""

from __future__ import annotations

import math

import pytest
import torch

from cxrbench.pretrain.losses.nt_xent import nt_xent


def _nt_xent_by_definition(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> float:
    """Mean over the 2B anchors of -log(exp(sim(i, pos)/t) / sum_{k != i} exp(sim(i, k)/t))."""
    z = torch.cat([z1, z2]).double()
    n = z1.shape[0]
    total = 0.0
    for i in range(2 * n):
        pos = i + n if i < n else i - n
        sims = [float(torch.nn.functional.cosine_similarity(z[i], z[k], dim=0)) / temperature for k in range(2 * n)]
        denom = sum(math.exp(s) for k, s in enumerate(sims) if k != i)
        total += -(sims[pos] - math.log(denom))
    return total / (2 * n)


@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_nt_xent_matches_its_definition(temperature: float) -> None:
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g)
    got = float(nt_xent(z1, z2, temperature=temperature))
    assert got == pytest.approx(_nt_xent_by_definition(z1, z2, temperature), rel=1e-5)


def test_nt_xent_is_low_for_matching_views_and_rejects_mismatched_shapes() -> None:
    z = torch.randn(6, 4, generator=torch.Generator().manual_seed(1))
    assert float(nt_xent(z, z)) < float(nt_xent(z, z.flip(0)))
    with pytest.raises(ValueError, match="differ in shape"):
        nt_xent(z, z[:5])
