"""Full finetuning of an encoder with a linear head on the training engine: the papers' recipes,
selection on validation AUC, early stopping; a killed run continues where it stopped."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cxrbench.data.augment import ViewSettings, part_views
from cxrbench.engine.data import Batch, EpochBatches, RowBatches, loader, to_device
from cxrbench.engine.device import Device
from cxrbench.engine.distributed import Dist
from cxrbench.engine.log import StepLog
from cxrbench.engine.loop import Loss, Step, Task, TrainConfig, fit
from cxrbench.errors import CxrbenchError
from cxrbench.models.encoders import Encoder
from cxrbench.stats.auc import mean_auc
from cxrbench.stats.thresholds import mean_f1


@dataclass(frozen=True)
class Recipe:
    """Every finetuning hyper-parameter; the named recipes follow the papers, any field overridable."""

    optimizer: str = "sgd"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch_size: int = 32
    epochs: int = 100
    patience: int = 10
    weighted_loss: bool = False
    rotation_deg: float = 0.0
    hflip: bool = False
    #: the validation metric that picks the epoch: mean ``auc``, or mean ``f1`` at 0.5 (report-sections paper)
    select: str = "auc"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def train_config(self, batch_size: int) -> TrainConfig:
        return TrainConfig(
            epochs=self.epochs,
            batch_size=batch_size,
            lr=self.lr,
            optimizer=self.optimizer,
            weight_decay=self.weight_decay,
            momentum=self.momentum,
        )


#: ``ssl-cxr``: SGD lr 1e-3 momentum 0.9, batch 32, cosine, 100 epochs (ssl-cxr-13-datasets).
#: ``vit``: AdamW lr 1e-5, BCE weighted by inverse label frequency, rotation 0-8° + horizontal
#: flip (dinov2-vs-imagenet-vit); that paper gives no epoch count, so 30 with patience 5.
RECIPES = {
    "ssl-cxr": Recipe(),
    "vit": Recipe(
        optimizer="adamw",
        lr=1e-5,
        weight_decay=0.05,
        epochs=30,
        patience=5,
        weighted_loss=True,
        rotation_deg=8.0,
        hflip=True,
    ),
}


SELECT = ("auc", "f1")


def recipe(name: str, **overrides: Any) -> Recipe:
    """The named recipe with ``overrides`` (None values ignored); one-line errors for bad names."""
    if name not in RECIPES:
        raise CxrbenchError(f"--recipe {name!r}: choose one of {', '.join(RECIPES)}")
    fields = Recipe.__dataclass_fields__
    unknown = [k for k in overrides if k not in fields]
    if unknown:
        raise CxrbenchError(f"unknown finetune settings {unknown} (known: {', '.join(fields)})")
    chosen = replace(RECIPES[name], **{k: v for k, v in overrides.items() if v is not None})
    if chosen.select not in SELECT:
        raise CxrbenchError(f"--select {chosen.select!r}: choose {' or '.join(SELECT)}")
    if chosen.optimizer not in ("sgd", "adamw"):
        raise CxrbenchError(f"finetune optimizer {chosen.optimizer!r}: choose sgd or adamw")
    if chosen.epochs < 1 or chosen.batch_size < 1 or chosen.lr <= 0:
        raise CxrbenchError("finetune epochs, batch size and lr must be positive")
    return chosen


class Classifier(nn.Module):
    """Encoder + linear head producing one logit per label (or class)."""

    def __init__(self, encoder: Encoder, n_outputs: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.num_features, n_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))


def positive_weights(targets: np.ndarray) -> np.ndarray:
    """Inverse-frequency weight of the positive class per label: n_neg / n_pos on known targets."""
    pos = np.nansum(targets == 1, axis=0).astype(np.float64)
    neg = np.nansum(targets == 0, axis=0).astype(np.float64)
    return np.where(pos > 0, neg / np.maximum(pos, 1), 1.0)


def _loss_terms(
    logits: torch.Tensor, targets: torch.Tensor, *, task: str, pos_weight: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed loss and its denominator (known targets, or class weights for multiclass).

    Split so that ranks holding parts of one batch can share the denominator and reproduce the
    whole batch's mean exactly.
    """
    logits = logits.float()
    if task == "multiclass":
        classes = targets.argmax(1)
        total = F.cross_entropy(logits, classes, weight=pos_weight, reduction="sum")
        denom = pos_weight[classes].sum() if pos_weight is not None else torch.tensor(float(len(classes)))
        return total, denom.to(logits.device, torch.float32)
    known = ~torch.isnan(targets)
    loss = F.binary_cross_entropy_with_logits(
        logits, torch.nan_to_num(targets), pos_weight=pos_weight, reduction="none"
    )
    return (loss * known).sum(), known.sum().to(torch.float32)


def _loss(logits: torch.Tensor, targets: torch.Tensor, *, task: str, pos_weight: torch.Tensor | None) -> torch.Tensor:
    """Mean loss over known targets (weighted mean for multiclass); 0 when nothing is known."""
    total, denom = _loss_terms(logits, targets, task=task, pos_weight=pos_weight)
    return total / denom if float(denom) > 0 else total * 0


@torch.no_grad()
def predict(
    model: nn.Module,
    images: np.ndarray,
    rows: np.ndarray,
    *,
    task: str,
    device: Device,
    batch_size: int = 64,
    num_workers: int = 0,
) -> np.ndarray:
    """Probabilities ``[len(rows), K]``: sigmoid per label, or softmax for multiclass."""
    model.eval()
    out = []
    for block in loader(RowBatches(images, rows, batch_size=batch_size), num_workers=num_workers, device=device.device):
        batch = to_device(block, device.device)
        with device.autocast():
            logits = model(batch).float()
        out.append((logits.softmax(1) if task == "multiclass" else logits.sigmoid()).cpu().numpy())
    return np.concatenate(out) if out else np.empty((0, 0), np.float32)


class FinetuneTask(Task):
    """Classifier training: loss over known targets normalised by the whole batch, optional
    rotation/flip, and on rank 0 validation after each epoch, keeping the best epoch's weights."""

    def __init__(
        self,
        model: Classifier,
        *,
        recipe: Recipe,
        task: str,
        images: np.ndarray,
        val: tuple[np.ndarray, np.ndarray],
        device: Device,
        dist: Dist,
        num_workers: int,
        pos_weight: torch.Tensor | None,
    ) -> None:
        self.model, self.recipe, self.task, self.images, self.val = model, recipe, task, images, val
        self.device, self.dist, self.num_workers, self.pos_weight = device, dist, num_workers, pos_weight
        self.views = ViewSettings(
            min_scale=1.0,
            max_rotation_deg=recipe.rotation_deg,
            flip=recipe.hflip,
            brightness=0.0,
            contrast=0.0,
            noise=0.0,
        )
        self.augment = recipe.rotation_deg > 0 or recipe.hflip
        self.history: list[dict[str, float]] = []
        self.best_auc, self.best_epoch = -1.0, -1
        self.best: dict[str, torch.Tensor] | None = None

    def loss(self, net: nn.Module, batch: Batch, step: Step) -> Loss:
        images, dist = batch["images"], step.dist
        if self.augment:
            images = part_views(images, step.generator, self.views, dist.bounds(step.total), step.total)
        logits = net(images)
        total, denom = _loss_terms(logits, batch["targets"], task=self.task, pos_weight=self.pos_weight)
        sums = dist.all_sum(torch.stack([total.detach(), denom]))
        scale = sums[1].clamp(min=torch.finfo(torch.float32).tiny)  # nothing known: loss 0, no sync
        return Loss(total * (dist.world_size / scale), sums[0] / scale)

    def should_stop(self, epoch: int) -> bool:
        best = self.best_epoch
        return bool(self.dist.broadcast(best >= 0 and epoch - best > self.recipe.patience))

    def end_epoch(self, epoch: int, *, mean_loss: float, last_loss: float) -> None:
        if not self.dist.is_main:  # only rank 0 validates and selects
            return
        rows, targets = self.val
        scores = predict(
            self.model, self.images, rows, task=self.task, device=self.device, num_workers=self.num_workers
        )
        auc = mean_auc(targets, scores)
        entry = {"epoch": epoch, "val_auc": auc, "loss": last_loss}
        if self.recipe.select == "f1":
            entry["val_f1"] = mean_f1(targets, scores, task=self.task)
        self.history = [*self.history, entry]
        chosen = entry[f"val_{self.recipe.select}"]  # best_auc holds the selection metric's best
        if chosen > self.best_auc or self.best is None:
            self.best_auc, self.best_epoch = chosen, epoch
            self.best = copy.deepcopy({k: v.detach().cpu() for k, v in self.model.state_dict().items()})

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history, "best_auc": self.best_auc, "best_epoch": self.best_epoch, "best": self.best}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_auc, self.best_epoch = state["best_auc"], state["best_epoch"]
        if self.dist.is_main:
            self.history, self.best = state["history"], state["best"]


def finetune_loop(
    model: Classifier,
    images: np.ndarray,
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    *,
    recipe: Recipe,
    task: str,
    seed: int,
    device: Device,
    checkpoint_dir: Path,
    checkpoint_every: int = 0,
    advance: Callable[[int], None] = lambda n=1: None,
    num_workers: int = 0,
    dist: Dist | None = None,
) -> tuple[dict[str, torch.Tensor] | None, list[dict[str, float]], StepLog]:
    """Train on ``train`` (cache rows, targets), select the epoch with the best mean val AUC.

    Returns the selected weights, the per-epoch history (``val_auc`` and last-step ``loss``) and the
    per-step log. Checkpoints every epoch (and every ``checkpoint_every`` steps); a rerun with the
    same ``checkpoint_dir`` resumes exactly. With ``dist`` (several ranks) every rank trains on its
    slice of each global batch; the loss is normalised by the whole batch's denominator, so the
    averaged gradient is the single-process one. Rank 0 alone validates, selects and checkpoints;
    other ranks return ``(None, [], log)``.
    """
    dist = dist or Dist()
    train_rows, train_targets = train
    val_rows, _ = val
    if len(train_rows) == 0 or len(val_rows) == 0:
        raise CxrbenchError("finetune needs images in both the train and val splits")
    batch_size = min(recipe.batch_size, len(train_rows))
    if dist.enabled and min(batch_size, len(train_rows) % batch_size or batch_size) < dist.world_size:
        raise CxrbenchError(
            f"batch size {batch_size} with {len(train_rows)} train images leaves a batch smaller than "
            f"the {dist.world_size} processes; use a batch size (and train set) of at least {dist.world_size}"
        )
    data = EpochBatches(
        images,
        train_rows,
        {"targets": train_targets},
        seed=seed,
        batch_size=batch_size,
        epochs=recipe.epochs,
        shard=dist.shard if dist.enabled else None,
    )
    pos_weight = None
    if recipe.weighted_loss:
        pos_weight = torch.tensor(positive_weights(train_targets), dtype=torch.float32, device=device.device)
    job = FinetuneTask(
        model,
        recipe=recipe,
        task=task,
        images=images,
        val=val,
        device=device,
        dist=dist,
        num_workers=num_workers,
        pos_weight=pos_weight,
    )
    log = fit(
        job,
        data,
        recipe.train_config(batch_size),
        seed=seed,
        device=device,
        checkpoint_dir=checkpoint_dir,
        checkpoint_every=checkpoint_every,
        advance=advance,
        dist=dist,
        num_workers=num_workers,
    )
    return job.best, job.history, log
