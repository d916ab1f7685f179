"""DINO's loss against a direct numpy loop over (teacher crop, student crop) pairs, and scipy's softmax."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.special import log_softmax, softmax

from cxrbench.pretrain.losses.dino import dino_loss, sinkhorn_targets, teacher_targets


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


def _sinkhorn_numpy(logits: np.ndarray, temperature: float, iterations: int) -> np.ndarray:
    """Sinkhorn-Knopp written out on the [K, N] matrix, as in SwAV's paper (Caron et al. 2020)."""
    q = np.exp(logits.T.astype(np.float64) / temperature)  # prototypes x samples
    k, n = q.shape
    q /= q.sum()
    for _ in range(iterations):
        for row in range(k):  # each prototype gets 1/K of the mass
            q[row] /= q[row].sum() * k
        for col in range(n):  # each sample 1/N
            q[:, col] /= q[:, col].sum() * n
    return (q * n).T


@pytest.mark.parametrize("iterations", [1, 3, 10])
def test_sinkhorn_targets_match_the_algorithm_written_out(iterations: int) -> None:
    teacher = torch.randn(12, 7, generator=torch.Generator().manual_seed(3))
    got = sinkhorn_targets(teacher, 0.1, iterations=iterations)
    assert got.dtype == teacher.dtype
    np.testing.assert_allclose(got.numpy(), _sinkhorn_numpy(teacher.numpy(), 0.1, iterations), rtol=1e-5)


def test_sinkhorn_targets_share_the_batch_over_the_prototypes() -> None:
    # one prototype far ahead for every image (the collapse centring exists to prevent): the plain
    # sharpened softmax gives it all the mass, Sinkhorn-Knopp only 1/K of the batch's, rows still sum to 1
    g = torch.Generator().manual_seed(4)
    teacher = torch.randn(32, 16, generator=g)
    teacher[:, 0] += 3.0
    sk = sinkhorn_targets(teacher, 0.1, iterations=200)
    np.testing.assert_allclose(sk.sum(dim=1).numpy(), 1.0, rtol=1e-5)
    np.testing.assert_allclose(sk.sum(dim=0).numpy(), 32 / 16, rtol=5e-3)
    plain = teacher_targets(teacher, torch.zeros(16), 0.1)
    assert float(plain[:, 0].mean()) > 0.7 and float(sk[:, 0].mean()) == pytest.approx(1 / 16, rel=1e-2)


def test_sinkhorn_targets_over_two_ranks_equal_one_process() -> None:
    import threading

    teacher = torch.randn(10, 6, generator=torch.Generator().manual_seed(5))
    one = sinkhorn_targets(teacher, 0.1)
    halves = (teacher[:4], teacher[4:])
    barrier = threading.Barrier(2)
    posted: list[torch.Tensor | None] = [None, None]
    out: list[torch.Tensor | None] = [None, None]

    def rank(r: int) -> None:
        def all_sum(t: torch.Tensor) -> torch.Tensor:  # gloo's all_reduce, between two threads
            posted[r] = t.clone()
            barrier.wait()
            total = posted[0] + posted[1]
            barrier.wait()
            return total

        out[r] = sinkhorn_targets(halves[r], 0.1, all_sum=all_sum, total=10)

    threads = [threading.Thread(target=rank, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    np.testing.assert_allclose(torch.cat(out).numpy(), one.numpy(), rtol=1e-6)
