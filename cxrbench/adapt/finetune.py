"""Full finetuning of an encoder with a linear head: the papers' recipes, selection on validation AUC,
early stopping, and per-epoch checkpoints so a killed run continues where it stopped."""

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

from cxrbench.distributed import Dist
from cxrbench.errors import CxrbenchError
from cxrbench.models.encoders import Encoder
from cxrbench.pretrain.views import ViewSettings, part_views
from cxrbench.stats.auc import roc_auc
from cxrbench.training import (
    Device,
    EpochBatches,
    RowBatches,
    cosine_schedule,
    load_checkpoint,
    loader,
    optimizer_step,
    save_checkpoint,
    step_seed,
    to_device,
)


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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: ``ssl-cxr``: SGD lr 1e-3 momentum 0.9, batch 32, cosine, 100 epochs (ssl-cxr-13-datasets).
#: ``vit``: AdamW lr 1e-5, BCE weighted by inverse label frequency, rotation 0-8° + horizontal
#: flip (dinov2-vs-imagenet-vit); that paper gives no epoch count, so 30 with patience 5.
RECIPES = {
    "ssl-cxr": Recipe(),
    "vit": Recipe(optimizer="adamw", lr=1e-5, weight_decay=0.05, epochs=30, patience=5,
                  weighted_loss=True, rotation_deg=8.0, hflip=True),
}


def recipe(name: str, **overrides: Any) -> Recipe:
    """The named recipe with ``overrides`` (None values ignored); one-line errors for bad names."""
    if name not in RECIPES:
        raise CxrbenchError(f"--recipe {name!r}: choose one of {', '.join(RECIPES)}")
    fields = Recipe.__dataclass_fields__
    unknown = [k for k in overrides if k not in fields]
    if unknown:
        raise CxrbenchError(f"unknown finetune settings {unknown} (known: {', '.join(fields)})")
    chosen = replace(RECIPES[name], **{k: v for k, v in overrides.items() if v is not None})
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


def mean_auc(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """Mean AUC over labels that have both classes among known (non-NaN) targets; NaN if none."""
    aucs = []
    for k in range(y_true.shape[1]):
        known = ~np.isnan(y_true[:, k])
        t = y_true[known, k]
        if t.min(initial=1) == 0 and t.max(initial=0) == 1:
            aucs.append(roc_auc(t, y_score[known, k]))
    return float(np.mean(aucs)) if aucs else float("nan")


def positive_weights(targets: np.ndarray) -> np.ndarray:
    """Inverse-frequency weight of the positive class per label: n_neg / n_pos on known targets."""
    pos = np.nansum(targets == 1, axis=0).astype(np.float64)
    neg = np.nansum(targets == 0, axis=0).astype(np.float64)
    return np.where(pos > 0, neg / np.maximum(pos, 1), 1.0)


def _loss_terms(logits: torch.Tensor, targets: torch.Tensor, *, task: str,
                pos_weight: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
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
def predict(model: nn.Module, images: np.ndarray, rows: np.ndarray, *, task: str, device: Device,
            batch_size: int = 64, num_workers: int = 0) -> np.ndarray:
    """Probabilities ``[len(rows), K]``: sigmoid per label, or softmax for multiclass."""
    model.eval()
    out = []
    for block in loader(RowBatches(images, rows, batch_size=batch_size), num_workers=num_workers,
                        device=device.device):
        batch = to_device(block, device.device)
        with device.autocast():
            logits = model(batch).float()
        out.append((logits.softmax(1) if task == "multiclass" else logits.sigmoid()).cpu().numpy())
    return np.concatenate(out) if out else np.empty((0, 0), np.float32)


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
) -> tuple[dict[str, torch.Tensor] | None, list[dict[str, float]]]:
    """Train on ``train`` (cache rows, targets), select the epoch with the best mean val AUC.

    Returns the selected weights and the per-epoch history (``val_auc`` and last-step ``loss``).
    Checkpoints every epoch (and every ``checkpoint_every`` steps); a rerun with the same
    ``checkpoint_dir`` resumes exactly. ``num_workers`` processes read batches from the cache.

    With ``dist`` (several ranks) every rank trains on its slice of each global batch under
    DistributedDataParallel; the loss is normalised by the whole batch's denominator, so the averaged
    gradient is the single-process one (BatchNorm statistics stay per rank). Rank 0 alone validates,
    selects and checkpoints; other ranks return ``(None, [])``.
    """
    dist = dist or Dist()
    train_rows, train_targets = train
    val_rows, val_targets = val
    if len(train_rows) == 0 or len(val_rows) == 0:
        raise CxrbenchError("finetune needs images in both the train and val splits")
    if checkpoint_every < 0:
        raise CxrbenchError(f"checkpoint_every must be >= 0, got {checkpoint_every}")
    batch_size = min(recipe.batch_size, len(train_rows))
    if dist.enabled and min(batch_size, len(train_rows) % batch_size or batch_size) < dist.world_size:
        raise CxrbenchError(
            f"batch size {batch_size} with {len(train_rows)} train images leaves a batch smaller than "
            f"the {dist.world_size} processes; use a batch size (and train set) of at least {dist.world_size}"
        )
    data = EpochBatches(images, train_rows, train_targets, seed=seed, batch_size=batch_size,
                        epochs=recipe.epochs, shard=dist.shard if dist.enabled else None)
    model.to(device.device)
    if device.device.type == "cuda":  # convolutions run fastest on NHWC with bf16 tensor cores
        model.to(memory_format=torch.channels_last)
    if recipe.optimizer == "sgd":
        optimizer = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                                    weight_decay=recipe.weight_decay)
    else:
        optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    scheduler = cosine_schedule(optimizer, len(data))
    scaler = device.grad_scaler()
    pos_weight = None
    if recipe.weighted_loss:
        pos_weight = torch.tensor(positive_weights(train_targets), dtype=torch.float32, device=device.device)
    views = ViewSettings(min_scale=1.0, max_rotation_deg=recipe.rotation_deg, flip=recipe.hflip,
                         brightness=0.0, contrast=0.0, noise=0.0)
    augment = recipe.rotation_deg > 0 or recipe.hflip

    state = {"epoch": 0, "step": 0, "history": [], "best_auc": -1.0, "best_epoch": -1, "best": None}
    saved = dist.broadcast(load_checkpoint(checkpoint_dir) if dist.is_main else None)
    if saved is not None:
        model.load_state_dict(saved.pop("model"))
        optimizer.load_state_dict(saved.pop("optimizer"))
        scheduler.load_state_dict(saved.pop("scheduler"))
        scaler.load_state_dict(saved.pop("scaler", {}))  # a disabled scaler ignores it
        state.update(saved)
        advance(data.position(state["epoch"], state["step"]))
    if not dist.is_main:
        state["history"], state["best"] = [], None  # only rank 0 selects
    net: nn.Module = model
    if dist.enabled:
        ids = [device.device.index] if device.device.type == "cuda" else None
        net = nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def checkpoint(epoch: int, step: int) -> None:
        if dist.is_main:
            save_checkpoint(checkpoint_dir, {
                **state, "epoch": epoch, "step": step, "model": model.state_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
            })

    def stop(epoch: int) -> bool:
        best = state["best_epoch"]
        return bool(dist.broadcast(best >= 0 and epoch - best > recipe.patience))

    loss = torch.zeros(())
    first = True
    for epoch, step, block, targets in loader(data, start=data.position(state["epoch"], state["step"]),
                                              num_workers=num_workers, device=device.device):
        if step == 0 or first:
            if stop(epoch):
                break
            net.train()
            first = False
        torch.manual_seed(step_seed(seed, epoch, step, 1))
        batch = to_device(block, device.device)
        if augment:
            generator = torch.Generator().manual_seed(step_seed(seed, epoch, step))
            total = len(data.plan(epoch)[step])
            batch = part_views(batch, generator, views, dist.bounds(total), total)
        targets = targets.to(device.device, non_blocking=True)
        with device.autocast():
            logits = net(batch)
        total, denom = _loss_terms(logits, targets, task=task, pos_weight=pos_weight)
        sums = dist.all_sum(torch.stack([total.detach(), denom]))
        scale = sums[1].clamp(min=torch.finfo(torch.float32).tiny)  # nothing known: loss 0, no sync
        loss = sums[0] / scale
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(total * (dist.world_size / scale)).backward()  # DDP averages over ranks: x world_size
        optimizer_step(scaler, optimizer, scheduler)
        advance(1)
        last = step + 1 == data.steps_per_epoch
        if checkpoint_every and (step + 1) % checkpoint_every == 0 and not last:
            state["step"] = step + 1
            checkpoint(epoch, step + 1)
        if last:
            if dist.is_main:
                auc = mean_auc(val_targets, predict(model, images, val_rows, task=task, device=device,
                                                    num_workers=num_workers))
                state["history"] = [*state["history"], {"epoch": epoch, "val_auc": auc, "loss": float(loss)}]
                if auc > state["best_auc"] or state["best"] is None:
                    state["best_auc"], state["best_epoch"] = auc, epoch
                    state["best"] = copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
            state["step"] = 0
            checkpoint(epoch + 1, 0)
            state["epoch"] = epoch + 1
    return state["best"], state["history"]
