"""BYOL (Grill et al. 2020): online network with predictor regresses an EMA target's projection; no negatives."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from cxrbench.data.augment import ViewSettings, part_views
from cxrbench.engine.data import Batch
from cxrbench.engine.loop import Loss, Step
from cxrbench.engine.schedule import cosine_value
from cxrbench.models.encoders import Encoder
from cxrbench.pretrain.base import Method as MethodBase
from cxrbench.pretrain.base import ema_update, momentum_copy
from cxrbench.pretrain.losses.byol import byol_loss


def mlp(width: int, hidden: int, out: int) -> nn.Sequential:
    """BYOL's projector and predictor: Linear, BatchNorm, ReLU, Linear."""
    return nn.Sequential(
        nn.Linear(width, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out)
    )


class Method(MethodBase):
    """BYOL around an encoder: projector and predictor MLPs (4096 hidden, 256 out), the target's
    momentum rising from ``momentum`` to 1 along a cosine over training (``cosine_value``), and the
    symmetric loss (each view's prediction against the other view's target projection).

    The paper trains with LARS at 0.2 x batch/256; here AdamW is the default optimizer. Under DDP the
    predictions and targets of all ranks are gathered (the loss is the whole batch's); BatchNorm in
    the encoder and heads stays per rank.
    """

    defaults: ClassVar[dict[str, Any]] = {
        **MethodBase.defaults,
        "epochs": 300,
        "batch_size": 256,
        "lr": 1e-3,
        "optimizer": "adamw",
        "weight_decay": 1.5e-6,
    }

    def __init__(
        self, encoder: Encoder, *, momentum: float = 0.996, hidden_dim: int = 4096, projection_dim: int = 256
    ) -> None:
        super().__init__(encoder)
        if not 0 <= momentum <= 1:
            raise ValueError(f"byol: momentum must be in [0, 1], got {momentum}")
        self.base_momentum = momentum
        self.projector = mlp(encoder.num_features, hidden_dim, projection_dim)
        self.predictor = mlp(projection_dim, hidden_dim, projection_dim)
        self.target_encoder = momentum_copy(self.encoder)
        self.target_projector = momentum_copy(self.projector)
        self.views = ViewSettings()

    def momentum(self, step: Step) -> float:
        """The target's momentum at this step: ``momentum`` at the start, 1 at the end (cosine)."""
        return cosine_value(self.base_momentum, 1.0, step.progress)

    def loss(self, batch: Batch, step: Step) -> Loss:
        images, dist, total = batch["images"], step.dist, step.total
        bounds = dist.bounds(total)
        v1 = part_views(images, step.generator, self.views, bounds, total)
        v2 = part_views(images, step.generator, self.views, bounds, total)
        views = torch.cat([v1, v2])
        p1, p2 = self.predictor(self.projector(self.encoder(views))).chunk(2)
        with torch.no_grad():
            z1, z2 = self.target_projector(self.target_encoder(views)).chunk(2)
        gather = dist.gather_batch
        one, two = byol_loss(gather(p1, total), gather(z2, total)), byol_loss(gather(p2, total), gather(z1, total))
        loss = one + two
        return Loss(loss * dist.world_size, loss)

    def after_step(self, step: Step) -> None:
        m = self.momentum(step)
        ema_update(self.target_encoder, self.encoder, m)
        ema_update(self.target_projector, self.projector, m)
