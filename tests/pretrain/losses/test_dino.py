"""DINO's loss against a direct numpy loop over (teacher crop, student crop) pairs, and scipy's softmax."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.special import log_softmax, softmax

from cxrbench.pretrain.losses.dino import dino_loss, teacher_targets


def test_teacher_targets_are_the_centred_sharpened_softmax() -> None:
    teacher = torch.randn(2, 3, 6, generator=torch.Generator().manual_seed(0))
    center = torch.randn(6, generator=torch.Generator().manual_seed(1))
    want = softmax((teacher.numpy() - center.numpy()) / 0.04, axis=-1)
    np.testing.assert_allclose(teacher_targets(teacher, center, 0.04).numpy(), want, rtol=1e-5, atol=1e-7)


def test_dino_loss_averages_the_cross_entropy_over_pairs_of_different_crops() -> None:
    g = torch.Generator().manual_seed(2)
    views, rows, k = 5, 3, 7  # 2 global crops + 3 local ones
    student = torch.randn(views, rows, k, generator=g, requires_grad=True)
    targets = torch.softmax(torch.randn(2, rows, k, generator=g), dim=-1)
    got = dino_loss(student, targets, temperature=0.1)
    s, t = student.detach().numpy(), targets.numpy()
    want = np.zeros(rows)
    pairs = 0
    for i in range(2):
        for v in range(views):
            if v != i:  # a teacher crop is never matched with the student's view of the same crop
                want += -(t[i] * log_softmax(s[v] / 0.1, axis=-1)).sum(axis=-1)
                pairs += 1
    assert pairs == 2 * views - 2
    np.testing.assert_allclose(got.detach().numpy(), want / pairs, rtol=1e-5)
    got.sum().backward()
    assert student.grad is not None and torch.isfinite(student.grad).all()


def test_dino_loss_checks_shapes() -> None:
    with pytest.raises(ValueError, match="do not pair up"):
        dino_loss(torch.zeros(3, 2, 4), torch.zeros(2, 3, 4), temperature=0.1)
    with pytest.raises(ValueError, match="do not pair up"):
        dino_loss(torch.zeros(1, 2, 4), torch.zeros(1, 2, 4), temperature=0.1)
