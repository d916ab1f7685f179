"""REFERS (Zhou et al. 2022), contrastive part: a study's views fused by learned attention against its report."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from cxrbench.engine.data import Batch
from cxrbench.engine.loop import Loss, Step
from cxrbench.models.encoders import Encoder
from cxrbench.pretrain._image_text import ImageTextMethod
from cxrbench.pretrain.losses.refers import fuse_views, refers_loss


class Method(ImageTextMethod):
    """The views of one study present in a batch are fused by softmax attention weights (a learned score
    per view) into one study feature, contrasted with the study's report (bidirectional InfoNCE over
    the batch's studies). The stage passes each image's study (``study``, an integer code). REFERS's
    report-generation branch is not implemented: this is its study–report contrastive term. Batches
    are drawn per image, so a study's views share a batch only by chance (larger batches, more fusion).
    Under DDP embeddings, scores and study codes are gathered."""

    fields: ClassVar[tuple[str, ...]] = ("report", "study")

    def __init__(
        self,
        encoder: Encoder,
        *,
        text_model: str,
        temperature: float = 0.1,
        weight: float = 0.5,
        train_layers: int = 6,
        pool: str = "cls",
        max_length: int = 128,
        projection_dim: int = 512,
        hidden_dim: int = 1024,
        augment: bool = True,
    ) -> None:
        super().__init__(
            encoder,
            text_model=text_model,
            train_layers=train_layers,
            pool=pool,
            max_length=max_length,
            projection_dim=projection_dim,
            hidden_dim=hidden_dim,
            augment=augment,
        )
        self.temperature, self.weight = temperature, weight
        self.view_score = nn.Linear(encoder.num_features, 1)

    def loss(self, batch: Batch, step: Step) -> Loss:
        dist, total = step.dist, step.total
        feats = self.encoder(self.image_views(batch, step))
        v, scores = self.image_head(feats), self.view_score(feats).squeeze(1)
        u = self.embed_texts(self.texts(batch["report"], step))
        gather = lambda x: dist.gather_batch(x, total)  # noqa: E731
        study = gather(batch["study"].to(v.dtype)).round().long()
        groups, first = _groups(study)
        fused = fuse_views(gather(v), gather(scores), groups)
        loss = refers_loss(fused, gather(u)[first], temperature=self.temperature, weight=self.weight)
        return Loss(loss * dist.world_size, loss, {"studies": float(len(first))})


def _groups(study: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's group index (0..S-1 in order of first appearance) and the first row of each group."""
    _, inverse = torch.unique(study, return_inverse=True)
    first = torch.full((int(inverse.max()) + 1,), len(study), dtype=torch.long, device=study.device)
    first = first.scatter_reduce(0, inverse, torch.arange(len(study), device=study.device), reduce="amin")
    order = torch.argsort(first)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order), device=order.device)
    return rank[inverse], first[order]
