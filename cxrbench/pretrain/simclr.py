"""SimCLR (Chen et al. 2020): two random views per image, an MLP projection head, NT-Xent loss."""

from __future__ import annotations

import torch
from torch import nn

from cxrbench.distributed import Dist
from cxrbench.models.encoders import Encoder
from cxrbench.pretrain.losses import nt_xent
from cxrbench.pretrain.views import ViewSettings, part_views


class Method(nn.Module):
    """SimCLR around an encoder; its forward (the loss of a batch) is all the shared loop needs."""

    defaults = {"temperature": 0.1, "projection_dim": 128, "lr": 1e-3, "batch_size": 64, "epochs": 100}

    def __init__(self, encoder: Encoder, *, temperature: float = 0.1, projection_dim: int = 128) -> None:
        super().__init__()
        self.encoder = encoder
        self.temperature = temperature
        width = encoder.num_features
        self.projector = nn.Sequential(
            nn.Linear(width, width), nn.ReLU(inplace=True), nn.Linear(width, projection_dim)
        )
        self.views = ViewSettings()

    def forward(
        self, batch: torch.Tensor, generator: torch.Generator, dist: Dist | None = None, total: int | None = None
    ) -> torch.Tensor:
        """NT-Xent between the projections of two random views of ``batch`` ``[B, 1, H, W]``.

        Under DDP ``batch`` is this rank's slice of a ``total``-image batch: the projections of
        all ranks are gathered, so negatives come from the whole batch, as in one process.
        """
        dist = dist or Dist()
        total = total or len(batch)
        bounds = dist.bounds(total)
        v1 = part_views(batch, generator, self.views, bounds, total)
        v2 = part_views(batch, generator, self.views, bounds, total)
        z = self.projector(self.encoder(torch.cat([v1, v2])))
        z1, z2 = z.chunk(2)
        return nt_xent(dist.gather_batch(z1, total), dist.gather_batch(z2, total), temperature=self.temperature)
