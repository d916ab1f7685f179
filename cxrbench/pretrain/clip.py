"""CLIP (Radford et al. 2021) on image–report pairs: linear projections, symmetric loss, learned temperature."""

from __future__ import annotations

import torch
from torch import nn

from cxrbench.engine.data import Batch
from cxrbench.engine.loop import Loss, Step
from cxrbench.models.encoders import Encoder
from cxrbench.pretrain._image_text import ImageTextMethod, after_gather
from cxrbench.pretrain.losses.clip import INIT_LOGIT_SCALE, clip_loss


class Method(ImageTextMethod):
    """CLIP: linear projections (``projection_dim``), the text's class token, a learned log temperature
    starting at 1/0.07 and capped at 100 (CXR-RePaiR's CLIP is this on MIMIC-CXR reports). Under DDP
    the embeddings of every rank are gathered."""

    def __init__(
        self,
        encoder: Encoder,
        *,
        text_model: str,
        train_layers: int = -1,
        pool: str = "cls",
        max_length: int = 128,
        projection_dim: int = 512,
        sample_sentences: bool = False,
        augment: bool = True,
    ) -> None:
        super().__init__(
            encoder,
            text_model=text_model,
            train_layers=train_layers,
            pool=pool,
            max_length=max_length,
            projection_dim=projection_dim,
            hidden_dim=0,
            sample_sentences=sample_sentences,
            augment=augment,
        )
        self.logit_scale = nn.Parameter(torch.tensor(INIT_LOGIT_SCALE))

    def loss(self, batch: Batch, step: Step) -> Loss:
        dist, total = step.dist, step.total
        v = self.embed_images(self.image_views(batch, step))
        u = self.embed_texts(self.texts(batch["report"], step))
        loss = clip_loss(dist.gather_batch(v, total), dist.gather_batch(u, total), after_gather(self.logit_scale, step))
        return Loss(loss * dist.world_size, loss, {"logit_scale": self.logit_scale.detach()})
