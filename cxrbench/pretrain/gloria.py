"""GLoRIA (Huang et al. 2021): global image–report contrast plus word-to-region attention (local) contrast."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cxrbench.engine.data import Batch
from cxrbench.engine.loop import Loss, Step
from cxrbench.errors import CxrbenchError
from cxrbench.models.encoders import Encoder
from cxrbench.pretrain._image_text import ImageTextMethod
from cxrbench.pretrain.losses.gloria import gloria_loss


class Method(ImageTextMethod):
    """GLoRIA: the image's region tokens (a CNN's last feature map cells) and the report's word tokens are
    projected into one space; each word attends over the regions (τ1 = 4), word scores aggregate with
    τ2 = 5 and pair scores are contrasted with τ3 = 10, beside the same contrast of the global features;
    the two terms weigh 1:1. Special tokens ([CLS], [SEP]) are not words. Under DDP region and word
    tokens are gathered (words padded to ``max_length``)."""

    def __init__(
        self,
        encoder: Encoder,
        *,
        text_model: str,
        local_weight: float = 1.0,
        global_weight: float = 1.0,
        train_layers: int = -1,
        pool: str = "mean",
        max_length: int = 97,
        projection_dim: int = 768,
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
        self.local_weight, self.global_weight = local_weight, global_weight
        self.region_head = nn.Linear(encoder.num_features, projection_dim)
        self.word_head = nn.Linear(self.text.num_features, projection_dim)

    def loss(self, batch: Batch, step: Step) -> Loss:
        dist, total = step.dist, step.total
        images = self.image_views(batch, step)
        pooled = self.encoder(images)
        tokens = self.encoder.tokens(images)
        if tokens is None:
            raise CxrbenchError(f"gloria needs an encoder with region tokens; {self.encoder.name} has none")
        out = self.text(self.texts(batch["report"], step))
        mask = out.mask.clone()
        mask[:, 0] = 0  # [CLS]
        last = out.mask.sum(1).long() - 1
        mask[torch.arange(len(mask)), last.clamp(min=0)] = 0  # [SEP]
        v, u = self.image_head(pooled), self.text_head(out.pooled)
        regions, words = self.region_head(tokens), self.word_head(out.tokens)
        if dist.enabled:  # the same word length on every rank before gathering
            pad = self.text.max_length - words.shape[1]
            words, mask = F.pad(words, (0, 0, 0, pad)), F.pad(mask, (0, pad))
        gather = lambda x: dist.gather_batch(x, total)  # noqa: E731
        loss, glob, loc = gloria_loss(
            gather(v),
            gather(u),
            gather(regions),
            gather(words),
            gather(mask),
            local_weight=self.local_weight,
            global_weight=self.global_weight,
        )
        return Loss(loss * dist.world_size, loss, {"global": glob.detach(), "local": loc.detach()})
