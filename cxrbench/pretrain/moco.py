"""MoCo v2 (He et al. 2020; Chen et al. 2020): momentum key encoder, a queue of negatives, MLP head, InfoNCE."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from cxrbench.data.augment import ViewSettings, part_views
from cxrbench.engine.data import Batch
from cxrbench.engine.loop import Loss, Step
from cxrbench.errors import CxrbenchError
from cxrbench.models.encoders import Encoder
from cxrbench.pretrain.base import Method as MethodBase
from cxrbench.pretrain.base import ema_update, momentum_copy
from cxrbench.pretrain.losses.info_nce import info_nce

#: per preset: the method's own settings, the views, and the training defaults.
#: moco-v2: the ImageNet recipe (SGD 0.03 for batch 256, 200 epochs, T 0.2, m 0.999, K 65536) with
#: the package's radiograph views. moco-cxr (Sowrirajan et al. 2021, their training scripts): no
#: colour jitter or blur -- rotation up to 10 degrees, horizontal flip, a mild crop; Adam 1e-4,
#: batch 16, 20 epochs, K 24576, T 0.2.
PRESETS: dict[str, dict[str, Any]] = {
    "moco-v2": {
        "settings": {"temperature": 0.2, "momentum": 0.999, "queue_size": 65536},
        "views": ViewSettings(),
        "training": {"epochs": 200, "batch_size": 256, "lr": 0.03, "optimizer": "sgd", "weight_decay": 1e-4},
    },
    "moco-cxr": {
        "settings": {"temperature": 0.2, "momentum": 0.999, "queue_size": 24576},
        "views": ViewSettings(min_scale=0.8, max_rotation_deg=10.0, flip=True, brightness=0.0, contrast=0.0, noise=0.0),
        "training": {"epochs": 20, "batch_size": 16, "lr": 1e-4, "optimizer": "adamw", "weight_decay": 1e-4},
    },
}


class Method(MethodBase):
    """MoCo v2 around an encoder; ``preset=moco-cxr`` for MoCo-CXR's views and settings.

    Options left at None take the preset's value. The key encoder and head follow the query ones by
    EMA after every optimizer step; the queue (a buffer, so checkpoints carry it) holds the
    L2-normalised keys of the last ``queue_size`` images. Under DDP each rank encodes its slice; the
    queries and keys of all ranks are gathered, so the loss and the enqueued keys are the whole
    batch's, as in one process. Keys are encoded with MoCo's shuffled BatchNorm: the key views of all
    ranks are gathered, permuted (drawn from the step's generator, the same on every rank), each rank
    encodes its slice of the permuted batch, and the keys are gathered and put back in order, so a
    query and its key are normalised with statistics of different images and BatchNorm cannot leak
    which key is the positive (``shuffled_keys``). In one process (one BatchNorm batch) shuffling
    would change nothing and is skipped: there the leak remains, as in MoCo's own single-GPU runs;
    a BatchNorm-free encoder such as a ViT does not have it.
    """

    defaults: ClassVar[dict[str, Any]] = {**MethodBase.defaults, **PRESETS["moco-v2"]["training"]}
    default_preset: ClassVar[str] = "moco-v2"  # the preset whose training defaults apply when none is given

    def __init__(
        self,
        encoder: Encoder,
        *,
        preset: Literal["moco-v2", "moco-cxr"] = "moco-v2",
        temperature: float | None = None,
        momentum: float | None = None,
        queue_size: int | None = None,
        projection_dim: int = 128,
    ) -> None:
        super().__init__(encoder)
        chosen = PRESETS[preset]["settings"]
        self.preset = preset
        self.temperature = float(temperature if temperature is not None else chosen["temperature"])
        self.momentum = float(momentum if momentum is not None else chosen["momentum"])
        size = int(queue_size if queue_size is not None else chosen["queue_size"])
        if size < 1 or not 0 <= self.momentum <= 1 or self.temperature <= 0:
            raise CxrbenchError("moco: queue_size >= 1, momentum in [0, 1] and temperature > 0 are needed")
        self.views = PRESETS[preset]["views"]
        width = encoder.num_features
        self.projector = nn.Sequential(nn.Linear(width, width), nn.ReLU(inplace=True), nn.Linear(width, projection_dim))
        self.key_encoder = momentum_copy(self.encoder)
        self.key_projector = momentum_copy(self.projector)
        self.register_buffer("queue", F.normalize(torch.randn(size, projection_dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self._pending: list[torch.Tensor] = []  # keys of this optimizer step's batches, enqueued after it

    @classmethod
    def training_defaults(cls, options: dict[str, Any]) -> dict[str, Any]:
        return {**cls.defaults, **PRESETS[options.get("preset") or cls.default_preset]["training"]}

    def loss(self, batch: Batch, step: Step) -> Loss:
        return self.contrast(batch["images"], batch["images"], step)

    def contrast(self, queries: torch.Tensor, keys: torch.Tensor, step: Step) -> Loss:
        """InfoNCE of a view of each ``queries`` image against a view of the same row of ``keys``
        (the image itself in MoCo, a partner image in MedAug) and the queue."""
        dist, total = step.dist, step.total
        bounds = dist.bounds(total)
        v1 = part_views(queries, step.generator, self.views, bounds, total)
        v2 = part_views(keys, step.generator, self.views, bounds, total)
        q = dist.gather_batch(self.projector(self.encoder(v1)), total)
        k = self.shuffled_keys(v2, step)
        loss = info_nce(q, k, self.queue.detach(), temperature=self.temperature)
        self._pending.append(F.normalize(k.detach().float(), dim=1))
        return Loss(loss * dist.world_size, loss)

    @torch.no_grad()
    def shuffled_keys(self, views: torch.Tensor, step: Step) -> torch.Tensor:
        """The whole batch's keys, in order, from this rank's key ``views``; under DDP encoded with
        shuffled BatchNorm (each rank encodes a random slice of the whole batch's views)."""
        dist, total = step.dist, step.total
        if not dist.enabled:
            return self.key_projector(self.key_encoder(views))
        whole = dist.gather_batch(views, total)
        order = torch.randperm(total, generator=step.generator).to(whole.device)
        lo, hi = dist.bounds(total)
        shuffled = dist.gather_batch(self.key_projector(self.key_encoder(whole[order[lo:hi]])), total)
        keys = torch.empty_like(shuffled)
        keys[order] = shuffled  # row i of the shuffled batch is image order[i]
        return keys

    def after_step(self, step: Step) -> None:
        ema_update(self.key_encoder, self.encoder, self.momentum)
        ema_update(self.key_projector, self.projector, self.momentum)
        for keys in self._pending:
            self.enqueue(keys)
        self._pending.clear()

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Replace the oldest keys of the queue by ``keys`` (the newest last), wrapping around."""
        size = self.queue.shape[0]
        keys = keys[-size:]
        idx = (self.queue_ptr + torch.arange(len(keys), device=keys.device)) % size
        self.queue[idx] = keys.to(self.queue.dtype)
        self.queue_ptr.copy_((self.queue_ptr + len(keys)) % size)
