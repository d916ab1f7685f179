"""DINO's loss (Caron et al. 2021): the student's distribution over K prototypes for every crop against
the teacher's centred and sharpened distribution for every other (global) crop."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def teacher_targets(teacher: torch.Tensor, center: torch.Tensor, temperature: float) -> torch.Tensor:
    """``softmax((teacher - center) / temperature)``: centring keeps one prototype from dominating,
    a low temperature sharpens; the two together avoid collapse. No gradient flows to the teacher."""
    return F.softmax((teacher.detach().float() - center.float()) / temperature, dim=-1)


@torch.no_grad()
def sinkhorn_targets(
    teacher: torch.Tensor,
    temperature: float,
    *,
    iterations: int = 3,
    all_sum: Callable[[torch.Tensor], torch.Tensor] = lambda t: t,
    total: int | None = None,
) -> torch.Tensor:
    """DINOv2's centring (Oquab et al. 2023, after SwAV): ``exp(teacher / temperature)`` scaled by
    ``iterations`` rounds of Sinkhorn-Knopp so that the batch's ``[N, K]`` assignment puts equal
    mass on every prototype and each row sums to 1. Unlike the EMA centre (a running mean, which
    lags behind the teacher), it balances each batch as it is: no prototype takes more than its share.

    ``all_sum`` sums over ranks and ``total`` is the whole batch's N (defaults: one process), so a
    rank's rows come out as they would in one process. Computed in float64 without a shift (a shift
    would have to be common to all ranks); logits of a normalised last layer are cosines, far from
    overflow.
    """
    q = torch.exp(teacher.detach().double() / temperature)  # [n, K]
    n = int(total) if total is not None else q.shape[0]
    k = q.shape[1]
    q = q / all_sum(q.sum())
    for _ in range(iterations):
        q = q / all_sum(q.sum(dim=0, keepdim=True)) / k  # each prototype: mass 1/K over the whole batch
        q = q / q.sum(dim=1, keepdim=True) / n  # each row: mass 1/N
    return (q * n).to(teacher.dtype)


def dino_loss(student: torch.Tensor, targets: torch.Tensor, *, temperature: float) -> torch.Tensor:
    """Per-image loss ``[B]``: the cross-entropy ``-sum_k t_k log softmax(s / temperature)_k`` averaged
    over every (teacher crop i, student crop v) pair with ``v != i``.

    ``student``: ``[V, B, K]`` logits of V crops (the teacher's crops first, in the same order);
    ``targets``: ``[G, B, K]`` teacher distributions (``teacher_targets``) of the G global crops.
    """
    views, globals_ = student.shape[0], targets.shape[0]
    if targets.shape[1:] != student.shape[1:] or globals_ > views or views < 2:
        raise ValueError(f"dino: student {tuple(student.shape)} and teacher {tuple(targets.shape)} do not pair up")
    log_p = F.log_softmax(student.float() / temperature, dim=-1)
    cross = -torch.einsum("gbk,vbk->gvb", targets, log_p)  # [G, V, B]
    pairs = ~torch.eye(globals_, views, dtype=torch.bool, device=student.device)
    return cross[pairs].view(-1, student.shape[1]).mean(dim=0)
