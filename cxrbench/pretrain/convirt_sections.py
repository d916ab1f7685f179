"""Modified ConVIRT (report-sections paper): one text branch per section (FINDINGS, IMPRESSION) plus a local section loss."""

from __future__ import annotations

from typing import ClassVar

from cxrbench.engine.data import Batch
from cxrbench.engine.loop import Loss, Step
from cxrbench.models.encoders import Encoder
from cxrbench.pretrain._image_text import ImageTextMethod
from cxrbench.pretrain.losses.convirt_sections import sections_loss


class Method(ImageTextMethod):
    """FINDINGS and IMPRESSION each go through the shared text encoder and projection; their mean is the
    report (global ConVIRT loss against the image), and the two sections are contrasted with each other
    (local). Every loss scalar defaults to the paper's 0.75 (global λ, local α, total λ) and τ = 0.1.
    A study missing one section uses the other for both branches."""

    fields: ClassVar[tuple[str, ...]] = ("findings", "impression")

    def __init__(
        self,
        encoder: Encoder,
        *,
        text_model: str,
        temperature: float = 0.1,
        global_weight: float = 0.75,
        local_weight: float = 0.75,
        total_weight: float = 0.75,
        train_layers: int = 6,
        pool: str = "max",
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
        self.temperature = temperature
        self.weights = (global_weight, local_weight, total_weight)

    def loss(self, batch: Batch, step: Step) -> Loss:
        dist, total = step.dist, step.total
        findings = [
            f if isinstance(f, str) and f else i for f, i in zip(batch["findings"], batch["impression"], strict=True)
        ]
        impression = [i if isinstance(i, str) and i else f for f, i in zip(findings, batch["impression"], strict=True)]
        v = self.embed_images(self.image_views(batch, step))
        both = self.embed_texts([*findings, *impression])
        f, i = both.chunk(2)
        gather = lambda x: dist.gather_batch(x, total)  # noqa: E731
        g_w, l_w, t_w = self.weights
        loss, glob, loc = sections_loss(
            gather(v),
            gather(f),
            gather(i),
            temperature=self.temperature,
            global_weight=g_w,
            local_weight=l_w,
            total_weight=t_w,
        )
        return Loss(loss * dist.world_size, loss, {"global": glob.detach(), "local": loc.detach()})
