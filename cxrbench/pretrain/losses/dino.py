"""DINO's loss (Caron et al. 2021): the student's distribution over K prototypes for every crop against
the teacher's centred and sharpened distribution for every other (global) crop."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def teacher_targets(teacher: torch.Tensor, center: torch.Tensor, temperature: float) -> torch.Tensor:
    """``softmax((teacher - center) / temperature)``: centring keeps one prototype from dominating,
    a low temperature sharpens; the two together avoid collapse. No gradient flows to the teacher."""
    return F.softmax((teacher.detach().float() - center.float()) / temperature, dim=-1)


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
