"""ConVIRT (Zhang et al. 2020): image and report projected by MLPs, bidirectional InfoNCE weighted λ = 0.75."""

from __future__ import annotations

from cxrbench.engine.data import Batch
from cxrbench.engine.loop import Loss, Step
from cxrbench.models.encoders import Encoder
from cxrbench.pretrain._image_text import ImageTextMethod
from cxrbench.pretrain.losses.convirt import convirt_loss


class Method(ImageTextMethod):
    """ConVIRT: τ = 0.1, λ = 0.75 on image→text, 512-d projections through a 1024-d hidden layer, the text
    max-pooled over tokens, BERT's first layers frozen (``train_layers=6``). ``sample_sentences``:
    ConVIRT's one random sentence per report; off by default, as in the report-sections paper, which
    trains on whole sections. Under DDP the projections of every rank are gathered."""

    def __init__(
        self,
        encoder: Encoder,
        *,
        text_model: str,
        temperature: float = 0.1,
        weight: float = 0.75,
        train_layers: int = 6,
        pool: str = "max",
        max_length: int = 128,
        projection_dim: int = 512,
        hidden_dim: int = 1024,
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
            hidden_dim=hidden_dim,
            sample_sentences=sample_sentences,
            augment=augment,
        )
        self.temperature, self.weight = temperature, weight

    def loss(self, batch: Batch, step: Step) -> Loss:
        dist, total = step.dist, step.total
        v = self.embed_images(self.image_views(batch, step))
        u = self.embed_texts(self.texts(batch["report"], step))
        loss = convirt_loss(
            dist.gather_batch(v, total), dist.gather_batch(u, total), temperature=self.temperature, weight=self.weight
        )
        return Loss(loss * dist.world_size, loss)
