"""SimCLR (Chen et al. 2020): two random views per image, an MLP projection head, NT-Xent loss."""

from __future__ import annotations

import torch
from torch import nn

from cxrbench.data.augment import ViewSettings, part_views
from cxrbench.engine.data import Batch
from cxrbench.engine.loop import Loss, Step
from cxrbench.models.encoders import Encoder
from cxrbench.pretrain.base import Method as MethodBase
from cxrbench.pretrain.losses.nt_xent import nt_xent


class Method(MethodBase):
    """SimCLR around an encoder. Under DDP each rank encodes its slice of the batch and the projections
    of all ranks are gathered, so negatives come from the whole batch, as in one process."""

    defaults = {**MethodBase.defaults, "lr": 1e-3, "batch_size": 64, "epochs": 100}

    def __init__(self, encoder: Encoder, *, temperature: float = 0.1, projection_dim: int = 128) -> None:
        super().__init__(encoder)
        self.temperature = temperature
        width = encoder.num_features
        self.projector = nn.Sequential(nn.Linear(width, width), nn.ReLU(inplace=True), nn.Linear(width, projection_dim))
        self.views = ViewSettings()

    def loss(self, batch: Batch, step: Step) -> Loss:
        images, dist, total = batch["images"], step.dist, step.total
        bounds = dist.bounds(total)
        v1 = part_views(images, step.generator, self.views, bounds, total)
        v2 = part_views(images, step.generator, self.views, bounds, total)
        z = self.projector(self.encoder(torch.cat([v1, v2])))
        z1, z2 = z.chunk(2)
        loss = nt_xent(dist.gather_batch(z1, total), dist.gather_batch(z2, total), temperature=self.temperature)
        return Loss(loss * dist.world_size, loss)
