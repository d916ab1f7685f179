"""DINO (Caron et al. 2021): self-distillation with an EMA teacher, multi-crop, centring and sharpening."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from cxrbench.data.augment import ViewSettings, part_views
from cxrbench.engine.data import Batch
from cxrbench.engine.loop import Loss, Step
from cxrbench.engine.schedule import cosine_value
from cxrbench.errors import CxrbenchError
from cxrbench.models.encoders import Encoder
from cxrbench.pretrain.base import Method as MethodBase
from cxrbench.pretrain.base import ema_update, momentum_copy
from cxrbench.pretrain.losses.dino import dino_loss, sinkhorn_targets, teacher_targets

#: How the teacher's outputs are centred: DINO's EMA of the batch mean, or DINOv2's Sinkhorn-Knopp.
CENTERINGS = ("ema", "sinkhorn")
#: What the crops vary besides their box: ``crops`` only flips them (MoCo-CXR's views have no
#: intensity jitter either); ``radiograph`` adds the package's brightness, contrast, noise and rotation.
VIEWS = ("crops", "radiograph")


class DinoHead(nn.Module):
    """DINO's projection head: a 3-layer MLP (GELU) to a bottleneck, L2-normalised, then a
    weight-normalised linear layer to ``out_dim`` prototypes (its norms fixed at 1 when
    ``norm_last_layer``, which the paper finds stabilises training)."""

    def __init__(
        self, width: int, out_dim: int, *, hidden_dim: int, bottleneck_dim: int, norm_last_layer: bool
    ) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(width, hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, bottleneck_dim),
        )
        for layer in self.mlp:
            if isinstance(layer, nn.Linear):
                nn.init.trunc_normal_(layer.weight, std=0.02)
                nn.init.zeros_(layer.bias)
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        scale = self.last_layer.parametrizations.weight.original0  # g, one norm per prototype
        with torch.no_grad():
            scale.fill_(1.0)
        scale.requires_grad_(not norm_last_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last_layer(F.normalize(self.mlp(x), dim=-1))


def local_crop_size(input_size: int, patch: int | None) -> int:
    """DINO's local crop side, 96/224 of the global one, rounded to whole patches for a ViT (>= 1)."""
    side = input_size * 96 / 224
    step = patch or 1
    return max(step, round(side / step) * step)


class Method(MethodBase):
    """DINO around an encoder (ResNets and ViTs): a student (encoder + ``DinoHead``) matches an EMA
    teacher's output distribution across crops.

    Multi-crop: 2 global crops at the encoder's input size (crop area ``global_min_scale``-1) and
    ``local_crops`` smaller ones (``local_size``, default 96/224 of the input; area
    ``local_min_scale``-``global_min_scale``) encoded at their own size (a timm ViT interpolates its
    position embeddings; backbones that cannot take other sizes see them resized back up). The
    teacher sees only the global crops; its outputs are centred (an EMA of the batch mean, a buffer)
    and sharpened with a temperature warmed up linearly from ``teacher_temp_start`` to
    ``teacher_temp`` over the first ``teacher_temp_warmup`` of training (both 0.04 by default, the
    official code's default; its ViT-S recipe warms up to 0.07); its momentum rises from
    ``momentum`` to 1 along a cosine. The student's last layer is frozen over the first
    ``freeze_last_layer`` of training (the paper's first epoch of 100), which stabilises its start.
    ``centering="sinkhorn"`` replaces the EMA centre by DINOv2's Sinkhorn-Knopp normalisation of the
    teacher's batch (``losses.dino.sinkhorn_targets``): each batch is spread evenly over the
    prototypes, so none can take it all (on the phantoms it did not stop the collapse: CHANGELOG).
    ``out_dim`` defaults to 4096 prototypes rather than the paper's 65536 (a 1M- instead of a
    17M-weight last layer, practical on CPU and for datasets of thousands of images).

    The paper's views add colour jitter, blur and solarisation. Here the crops are only flipped by
    default (``views="crops"``): with the package's brightness, contrast and noise jitter as well
    (``views="radiograph"``) a random-init teacher's batch-centred outputs for two views of one
    phantom radiograph agreed at a cosine of 0.03-0.08, too little for the student to predict, and it
    collapsed to one output for every image (CHANGELOG). The paper's weight-decay schedule
    (0.04 -> 0.4) and gradient clipping are not applied.
    Under DDP the views are drawn as for the whole batch, the loss is normalised by the whole batch
    and the centre is updated from the whole batch's teacher outputs, as in one process; BatchNorm
    (ResNets) stays per rank.
    """

    defaults: ClassVar[dict[str, Any]] = {
        **MethodBase.defaults,
        "epochs": 100,
        "batch_size": 64,
        "lr": 5e-4 * 64 / 256,  # the paper's 0.0005 x batch / 256
        "optimizer": "adamw",
        "weight_decay": 0.04,
    }

    def __init__(
        self,
        encoder: Encoder,
        *,
        out_dim: int = 4096,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        norm_last_layer: bool = True,
        local_crops: int = 8,
        local_size: int | None = None,
        global_min_scale: float = 0.4,
        local_min_scale: float = 0.05,
        momentum: float = 0.996,
        student_temp: float = 0.1,
        teacher_temp: float = 0.04,
        teacher_temp_start: float = 0.04,
        teacher_temp_warmup: float = 0.3,
        center_momentum: float = 0.9,
        centering: str = "ema",
        freeze_last_layer: float = 0.01,
        views: str = "crops",
    ) -> None:
        super().__init__(encoder)
        if min(out_dim, hidden_dim, bottleneck_dim) < 1 or local_crops < 0:
            raise CxrbenchError("dino: out_dim, hidden_dim and bottleneck_dim must be >= 1 and local_crops >= 0")
        if not 0 < local_min_scale < global_min_scale <= 1:
            raise CxrbenchError("dino: 0 < local_min_scale < global_min_scale <= 1 is needed")
        if min(student_temp, teacher_temp, teacher_temp_start) <= 0 or not 0 <= teacher_temp_warmup <= 1:
            raise CxrbenchError("dino: temperatures must be > 0 and teacher_temp_warmup in [0, 1]")
        if not 0 <= freeze_last_layer <= 1:
            raise CxrbenchError("dino: freeze_last_layer is a fraction of training, in [0, 1]")
        if not (0 <= momentum <= 1 and 0 <= center_momentum <= 1):
            raise CxrbenchError("dino: momentum and center_momentum must be in [0, 1]")
        if views not in VIEWS:
            raise CxrbenchError(f"dino: views {views!r}: choose {' or '.join(VIEWS)}")
        if centering not in CENTERINGS:
            raise CxrbenchError(f"dino: centering {centering!r}: choose {' or '.join(CENTERINGS)}")
        self.centering = centering
        self.local_crops = int(local_crops)
        self.base_momentum, self.center_momentum = float(momentum), float(center_momentum)
        self.student_temp, self.teacher_temp = float(student_temp), float(teacher_temp)
        self.teacher_temp_start, self.teacher_temp_warmup = float(teacher_temp_start), float(teacher_temp_warmup)
        plain = (
            {} if views == "radiograph" else {"max_rotation_deg": 0.0, "brightness": 0.0, "contrast": 0.0, "noise": 0.0}
        )
        self.global_views = ViewSettings(min_scale=global_min_scale, **plain)
        self.local_views = ViewSettings(min_scale=local_min_scale, max_scale=global_min_scale, **plain)
        size = self.global_size = getattr(encoder, "input_size", None)  # None: crops keep the images' size
        self.local_size = local_size or (local_crop_size(size, getattr(encoder, "patch_size", None)) if size else None)
        if self.local_crops and isinstance(encoder, Encoder) and self.local_size:
            encoder.allow_any_size(self.local_size)  # else local crops are resized up to input_size
        self.head = DinoHead(
            encoder.num_features,
            out_dim,
            hidden_dim=hidden_dim,
            bottleneck_dim=bottleneck_dim,
            norm_last_layer=norm_last_layer,
        )
        self.teacher_encoder = momentum_copy(self.encoder)
        self.teacher_head = momentum_copy(self.head)
        self.freeze_last_layer, self._frozen = float(freeze_last_layer), False
        for p in self.head.last_layer.parameters():  # zero gradients while frozen (DDP-safe: still used)
            if p.requires_grad:
                p.register_hook(self._last_layer_grad)
        self.register_buffer("center", torch.zeros(out_dim))
        self._pending: list[torch.Tensor] = []  # this optimizer step's batch centres, applied after it

    def parameter_groups(self) -> list[dict[str, Any]]:
        """As DINO: no weight decay on biases and norm weights (1-d parameters)."""
        named = [(n, p) for n, p in self.named_parameters() if p.requires_grad]
        decay = [p for n, p in named if p.ndim > 1 and not n.endswith(".bias")]
        rest = [p for n, p in named if not (p.ndim > 1 and not n.endswith(".bias"))]
        return [{"params": decay}, {"params": rest, "weight_decay": 0.0}]

    def _last_layer_grad(self, grad: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(grad) if self._frozen else grad

    def momentum(self, step: Step) -> float:
        """The teacher's momentum at this step: ``momentum`` at the start, 1 at the end (cosine)."""
        return cosine_value(self.base_momentum, 1.0, step.progress)

    def teacher_temperature(self, step: Step) -> float:
        """``teacher_temp_start`` rising linearly to ``teacher_temp`` over the first
        ``teacher_temp_warmup`` of training, then constant."""
        if step.progress >= self.teacher_temp_warmup:
            return self.teacher_temp
        frac = step.progress / self.teacher_temp_warmup
        return self.teacher_temp_start + (self.teacher_temp - self.teacher_temp_start) * frac

    def crops(self, images: torch.Tensor, step: Step) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """This rank's rows of the 2 global and ``local_crops`` local crops, drawn for the whole batch."""
        bounds, total, gen = step.dist.bounds(step.total), step.total, step.generator
        big = [part_views(images, gen, self.global_views, bounds, total, size=self.global_size) for _ in range(2)]
        small = [
            part_views(images, gen, self.local_views, bounds, total, size=self.local_size)
            for _ in range(self.local_crops)
        ]
        return big, small

    def loss(self, batch: Batch, step: Step) -> Loss:
        big, small = self.crops(batch["images"], step)
        self._frozen = step.progress < self.freeze_last_layer
        rows, dist = big[0].shape[0], step.dist
        student = [self.head(self.encoder(torch.cat(big)))]
        if small:  # local crops share a size: one forward for all of them
            student.append(self.head(self.encoder(torch.cat(small))))
        student_out = torch.cat(student).view(2 + len(small), rows, -1)
        with torch.no_grad():
            teacher_out = self.teacher_head(self.teacher_encoder(torch.cat(big))).float()
            if self.centering == "sinkhorn":  # over the whole batch's global crops, as in one process
                targets = sinkhorn_targets(
                    teacher_out, self.teacher_temperature(step), all_sum=dist.all_sum, total=2 * step.total
                )
            else:
                targets = teacher_targets(teacher_out, self.center, self.teacher_temperature(step))
                # the centre follows the whole batch's teacher outputs (both global crops of every image)
                self._pending.append(dist.all_sum(teacher_out.sum(dim=0)) / (2 * step.total))
        per_image = dino_loss(student_out, targets.view(2, rows, -1), temperature=self.student_temp)
        local = per_image.sum() / step.total  # this rank's share of the whole batch's mean
        value = dist.all_sum(local.detach())
        return Loss(local * dist.world_size, value, {"teacher_temp": self.teacher_temperature(step)})

    @torch.no_grad()
    def after_step(self, step: Step) -> None:
        m = self.momentum(step)
        ema_update(self.teacher_encoder, self.encoder, m)
        ema_update(self.teacher_head, self.head, m)
        for batch_center in self._pending:
            self.center.mul_(self.center_momentum).add_(
                batch_center.to(self.center.dtype), alpha=1 - self.center_momentum
            )
        self._pending.clear()
