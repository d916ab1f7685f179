"""BYOL's normalised MSE against torch's own cosine similarity and a direct loop over rows."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cxrbench.pretrain.losses.byol import byol_loss


def test_byol_loss_is_the_mse_of_normalised_vectors() -> None:
    g = torch.Generator().manual_seed(0)
    p, z = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g)
    by_loop = sum(float(((p[i] / p[i].norm() - z[i] / z[i].norm()) ** 2).sum()) for i in range(5)) / 5
    assert float(byol_loss(p, z)) == pytest.approx(by_loop, rel=1e-5)
    assert float(byol_loss(p, z)) == pytest.approx(float((2 - 2 * F.cosine_similarity(p, z)).mean()), rel=1e-5)


def test_byol_loss_is_zero_for_aligned_vectors_stops_the_target_gradient_and_checks_shapes() -> None:
    p = torch.randn(4, 3, generator=torch.Generator().manual_seed(1), requires_grad=True)
    z = (3 * p.detach()).requires_grad_()
    assert float(byol_loss(p, z).detach()) == pytest.approx(0.0, abs=1e-6)
    byol_loss(p, -z).backward()
    assert p.grad is not None and z.grad is None
    with pytest.raises(ValueError, match="differ in shape"):
        byol_loss(p, z[:3])
