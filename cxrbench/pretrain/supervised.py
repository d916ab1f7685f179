"""Supervised on CXR: multi-label BCE on the prepared dataset's train labels (the supervised initialisation)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from cxrbench.adapt.finetune import _loss_terms
from cxrbench.data.augment import ViewSettings, part_views
from cxrbench.engine.data import Batch
from cxrbench.engine.loop import Loss, Step
from cxrbench.models.encoders import Encoder
from cxrbench.pretrain.base import Method as MethodBase


class Method(MethodBase):
    """A linear head on the pooled features trained with BCE over the known labels (unknown, NaN,
    targets are left out), or cross entropy for a multiclass dataset, as finetuning computes it; the
    encoder is what is kept. The stage passes the label matrix (field ``targets``), ``num_labels``
    and ``task``. ``augment``: mild rotation (10 degrees), horizontal flip and crop.

    The loss is normalised by the whole batch's known targets, so DDP reproduces one process. Use it
    as the "supervised on chest X-rays" baseline, pretraining on one dataset and probing another.
    """

    fields: ClassVar[tuple[str, ...]] = ("targets",)
    drop_last: ClassVar[bool] = False
    defaults: ClassVar[dict[str, Any]] = {**MethodBase.defaults, "epochs": 30, "batch_size": 32, "lr": 1e-4}

    def __init__(self, encoder: Encoder, *, num_labels: int, task: str = "multilabel", augment: bool = True) -> None:
        super().__init__(encoder)
        self.task = task
        self.head = nn.Linear(encoder.num_features, num_labels)
        self.views = ViewSettings(
            min_scale=0.8, max_rotation_deg=10.0, flip=True, brightness=0.0, contrast=0.0, noise=0.0
        )
        self.augment = augment

    def loss(self, batch: Batch, step: Step) -> Loss:
        images, dist = batch["images"], step.dist
        if self.augment:
            images = part_views(images, step.generator, self.views, dist.bounds(step.total), step.total)
        logits = self.head(self.encoder(images))
        total, denom = _loss_terms(logits, batch["targets"].float(), task=self.task, pos_weight=None)
        sums = dist.all_sum(torch.stack([total.detach(), denom]))
        scale = sums[1].clamp(min=torch.finfo(torch.float32).tiny)  # nothing known: loss 0
        return Loss(total * (dist.world_size / scale), sums[0] / scale)
