"""S2MTS2's self-supervised mean teacher (Liu et al. 2021): student vs EMA teacher, JCL loss over many positive keys."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from cxrbench.data.augment import part_views
from cxrbench.engine.data import Batch
from cxrbench.engine.loop import Loss, Step
from cxrbench.errors import CxrbenchError
from cxrbench.models.encoders import Encoder
from cxrbench.pretrain.losses.jcl import jcl_loss
from cxrbench.pretrain.moco import PRESETS
from cxrbench.pretrain.moco import Method as MoCo


class Method(MoCo):
    """The pretraining stage of S2MTS2: the student (encoder + MLP head) encodes one view of each
    image; the teacher, an EMA of the student (``momentum``), encodes ``key_views`` further views, whose
    mean and covariance stand for infinitely many positive keys in the joint contrastive (JCL) loss
    against a queue of the teacher's past mean keys (``queue_size``).

    The covariance weight rises linearly from 0 to ``covariance_weight`` over training, as in JCL's
    reference code (whose 10 with T 0.2 is 2 in the paper's form used here); 1 is the exact Gaussian
    bound. Defaults follow JCL's ImageNet recipe (5 key views, T 0.2, queue 65536, m 0.999, SGD 0.03
    for batch 256, 200 epochs), which S2MTS2 builds on. On a CPU use fewer key views and a small
    queue (``--option key_views=2 --option queue_size=1024``). Under DDP queries and keys are gathered
    as in MoCo.
    """

    defaults: ClassVar[dict[str, Any]] = {**MoCo.defaults, **PRESETS["moco-v2"]["training"]}

    def __init__(
        self,
        encoder: Encoder,
        *,
        key_views: int = 5,
        covariance_weight: float = 2.0,
        temperature: float = 0.2,
        momentum: float = 0.999,
        queue_size: int = 65536,
        projection_dim: int = 128,
    ) -> None:
        if key_views < 2 or covariance_weight < 0:
            raise CxrbenchError("mean-teacher: key_views >= 2 (a covariance needs two) and covariance_weight >= 0")
        super().__init__(
            encoder,
            preset="moco-v2",
            temperature=temperature,
            momentum=momentum,
            queue_size=queue_size,
            projection_dim=projection_dim,
        )
        self.key_views, self.covariance_weight = key_views, covariance_weight

    def covariance_weight_at(self, step: Step) -> float:
        """The covariance weight of this step: ``covariance_weight`` times the fraction of training done."""
        return self.covariance_weight * min(1.0, (step.update + 1) / max(step.updates, 1))

    def loss(self, batch: Batch, step: Step) -> Loss:
        images, dist, total = batch["images"], step.dist, step.total
        bounds = dist.bounds(total)
        query = part_views(images, step.generator, self.views, bounds, total)
        views = [part_views(images, step.generator, self.views, bounds, total) for _ in range(self.key_views)]
        q = self.projector(self.encoder(query))
        with torch.no_grad():
            k = self.key_projector(self.key_encoder(torch.cat(views)))
            k = k.view(self.key_views, len(images), -1).transpose(0, 1)  # [b, M, D]
        q, k = dist.gather_batch(q, total), dist.gather_batch(k.contiguous(), total)
        weight = self.covariance_weight_at(step)
        loss = jcl_loss(q, k, self.queue.detach(), temperature=self.temperature, covariance_weight=weight)
        self._pending.append(F.normalize(F.normalize(k.detach().float(), dim=2).mean(dim=1), dim=1))
        return Loss(loss * dist.world_size, loss, {"covariance_weight": weight})
