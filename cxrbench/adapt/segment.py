"""Segmentation with any encoder as the down branch of a U-Net, trained on the engine: BCE + soft
Dice, selection on validation Dice, Dice and IoU per case (a CT series, or an image).

The down branch is the encoder itself (its weights are what is being compared); the up branch is
new and random, as in the chest CT study's nodule segmentation. CNNs give a pyramid of feature maps
(timm's ``forward_intermediates``); a ViT's maps all have the patch stride, so they are resized
into a pyramid first (as UNETR does).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from cxrbench.engine.data import Batch, EpochBatches, RowBatches, loader, to_device
from cxrbench.engine.device import Device
from cxrbench.engine.log import StepLog
from cxrbench.engine.loop import Loss, Step, Task, TrainConfig, fit
from cxrbench.errors import CxrbenchError
from cxrbench.models.encoders import Encoder

#: How many of the encoder's feature maps the up branch joins (the deepest last).
LEVELS = 4


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """``encoder`` as the down branch; an up branch of ``width``-channel blocks joining the encoder's
    last ``LEVELS`` feature maps (skip connections), ending in one logit per pixel at input size."""

    def __init__(self, encoder: Encoder, *, width: int = 32) -> None:
        super().__init__()
        self.encoder = encoder
        with torch.no_grad():
            was = encoder.training
            encoder.eval()
            probe = encoder.feature_maps(torch.zeros(1, 1, encoder.input_size, encoder.input_size))
            encoder.train(was)
        if not probe:
            raise CxrbenchError(f"encoder {encoder.name!r} gives no feature maps to build a U-Net on")
        maps = probe[-LEVELS:]
        self.pyramid = len({m.shape[-1] for m in maps}) == 1  # a ViT: one stride for every map
        channels = [m.shape[1] for m in maps]
        self.lateral = nn.ModuleList(nn.Conv2d(c, width, 1) for c in channels)
        self.up = nn.ModuleList(_block(2 * width, width) for _ in channels[:-1])
        self.head = nn.Sequential(_block(width, width), nn.Conv2d(width, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, 1, H, W]`` for images ``x`` ``[B, 1, H, W]`` in [0, 1]."""
        maps = self.encoder.feature_maps(x)[-LEVELS:]
        if self.pyramid:  # shallower ViT blocks become finer levels: x8, x4, x2, x1
            maps = [
                F.interpolate(m, scale_factor=2 ** (len(maps) - 1 - i), mode="bilinear", align_corners=False)
                if i < len(maps) - 1
                else m
                for i, m in enumerate(maps)
            ]
        feats = [lat(m) for lat, m in zip(self.lateral, maps, strict=True)]
        y = feats[-1]
        for block, skip in zip(reversed(self.up), reversed(feats[:-1]), strict=True):
            y = F.interpolate(y, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            y = block(torch.cat([y, skip], dim=1))
        y = F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return self.head(y)


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """``1 - (2 |P.T| + eps) / (|P| + |T| + eps)`` per image (P the sigmoid probabilities), ``[B]``."""
    p = logits.float().sigmoid().flatten(1)
    t = target.float().flatten(1)
    return 1 - (2 * (p * t).sum(1) + eps) / (p.sum(1) + t.sum(1) + eps)


def overlap_counts(pred: np.ndarray, truth: np.ndarray, cases: np.ndarray) -> pd.DataFrame:
    """Per case (pixels of all its slices pooled): true positives, false positives, false negatives."""
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    flat_p, flat_t = pred.reshape(len(pred), -1), truth.reshape(len(truth), -1)
    per_image = pd.DataFrame(
        {
            "case": cases,
            "tp": (flat_p & flat_t).sum(1),
            "fp": (flat_p & ~flat_t).sum(1),
            "fn": (~flat_p & flat_t).sum(1),
        }
    )
    return per_image.groupby("case", sort=False)[["tp", "fp", "fn"]].sum().reset_index()


def dice_iou(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dice ``2TP / (2TP + FP + FN)`` and IoU ``TP / (TP + FP + FN)``; both 1 when the case has
    neither truth nor prediction (nothing to find, nothing found)."""
    tp, fp, fn = (np.asarray(v, dtype=np.float64) for v in (tp, fp, fn))
    empty = (tp + fp + fn) == 0
    with np.errstate(invalid="ignore", divide="ignore"):
        dice = np.where(empty, 1.0, 2 * tp / (2 * tp + fp + fn))
        iou = np.where(empty, 1.0, tp / (tp + fp + fn))
    return dice, iou


@torch.no_grad()
def predict_masks(
    model: UNet, images: np.ndarray, rows: np.ndarray, *, device: Device, batch_size: int = 32, num_workers: int = 0
) -> np.ndarray:
    """Hard masks ``[len(rows), H, W]`` (bool): probability above one half."""
    model.eval()
    out = []
    for block in loader(RowBatches(images, rows, batch_size=batch_size), num_workers=num_workers, device=device.device):
        with device.autocast():
            logits = model(to_device(block, device.device)).float()
        out.append((logits[:, 0] > 0).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, *images.shape[-2:]), dtype=bool)


def case_scores(
    model: UNet,
    images: np.ndarray,
    masks: np.ndarray,
    frame: pd.DataFrame,
    *,
    device: Device,
    num_workers: int = 0,
) -> pd.DataFrame:
    """Dice and IoU per case of ``frame`` (a series, else the image), with its counts."""
    rows = frame["cache_index"].to_numpy(dtype=np.int64)
    pred = predict_masks(model, images, rows, device=device, num_workers=num_workers)
    cases = case_ids(frame)
    counts = overlap_counts(pred, RowsOf(masks, rows)[np.arange(len(rows))], cases)
    counts["dice"], counts["iou"] = dice_iou(counts["tp"], counts["fp"], counts["fn"])
    return counts


def case_ids(frame: pd.DataFrame) -> np.ndarray:
    """The case of each row: its CT series where the dataset has series, else the image."""
    if "series_id" in frame and frame["series_id"].notna().all():
        return frame["series_id"].astype(str).to_numpy()
    return frame["sample_id"].astype(str).to_numpy()


class SegmentTask(Task):
    """U-Net training: BCE + soft Dice per image (mean over the whole batch), optional random flips
    applied to image and mask alike; rank 0 validates after each epoch (mean case
    Dice) and keeps the best epoch's weights. ``curve`` gets each epoch's validation Dice (and the
    test split's, reported for learning curves, never used for selection)."""

    def __init__(
        self,
        model: UNet,
        *,
        images: np.ndarray,
        masks: np.ndarray,
        val: pd.DataFrame,
        test: pd.DataFrame | None,
        device: Device,
        augment: bool,
        num_workers: int,
    ) -> None:
        self.model, self.images, self.masks, self.val, self.test = model, images, masks, val, test
        self.device, self.augment, self.num_workers = device, augment, num_workers
        self.curve: list[dict[str, float]] = []
        self.best_dice, self.best_epoch = -1.0, -1
        self.best: dict[str, torch.Tensor] | None = None

    def loss(self, net: nn.Module, batch: Batch, step: Step) -> Loss:
        images, target = batch["images"], batch["masks"].to(batch["images"].dtype).unsqueeze(1)
        if self.augment:
            images, target = _flip_pair(images, target, step.generator, step.dist.bounds(step.total), step.total)
        logits = net(images)
        bce = F.binary_cross_entropy_with_logits(logits.float(), target.float(), reduction="none").flatten(1).mean(1)
        per_image = bce + soft_dice_loss(logits, target)
        total = per_image.sum() / step.total
        value = step.dist.all_sum(total.detach())
        return Loss(total * step.dist.world_size, value)

    def end_epoch(self, epoch: int, *, mean_loss: float, last_loss: float) -> None:
        val = case_scores(
            self.model, self.images, self.masks, self.val, device=self.device, num_workers=self.num_workers
        )
        point = {"epoch": epoch, "loss": last_loss, "val_dice": float(val["dice"].mean())}
        if self.test is not None and len(self.test):
            test = case_scores(
                self.model, self.images, self.masks, self.test, device=self.device, num_workers=self.num_workers
            )
            point["test_dice"] = float(test["dice"].mean())
        self.curve = [*self.curve, point]
        if point["val_dice"] > self.best_dice or self.best is None:
            self.best_dice, self.best_epoch = point["val_dice"], epoch
            self.best = copy.deepcopy({k: v.detach().cpu() for k, v in self.model.state_dict().items()})
        self.model.train()

    def state_dict(self) -> dict[str, Any]:
        return {"curve": self.curve, "best_dice": self.best_dice, "best_epoch": self.best_epoch, "best": self.best}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.curve, self.best_dice = state["curve"], state["best_dice"]
        self.best_epoch, self.best = state["best_epoch"], state["best"]


def _flip_pair(images, target, generator: torch.Generator, bounds: tuple[int, int], total: int):
    """The same random horizontal/vertical flip for each image and its mask (drawn for the whole
    batch, sliced to this rank's rows)."""
    lo, hi = bounds
    draws = torch.rand(total, 2, generator=generator)[lo:hi].to(images.device)
    h = (draws[:, 0] < 0.5).view(-1, 1, 1, 1)
    v = (draws[:, 1] < 0.5).view(-1, 1, 1, 1)
    images = torch.where(h, images.flip(-1), images)
    target = torch.where(h, target.flip(-1), target)
    return torch.where(v, images.flip(-2), images), torch.where(v, target.flip(-2), target)


def segment_loop(
    model: UNet,
    images: np.ndarray,
    masks: np.ndarray,
    train: pd.DataFrame,
    val: pd.DataFrame,
    test: pd.DataFrame | None,
    config: TrainConfig,
    *,
    seed: int,
    device: Device,
    checkpoint_dir: Path,
    augment: bool = True,
    checkpoint_every: int = 0,
    advance: Callable[[int], None] = lambda n=1: None,
    num_workers: int = 0,
) -> tuple[dict[str, torch.Tensor] | None, list[dict[str, float]], StepLog]:
    """Train on the ``train`` slices, select the epoch with the best mean validation case Dice;
    returns the selected weights, the per-epoch curve and the per-step log. Resumes exactly from
    ``checkpoint_dir``."""
    if len(train) == 0 or len(val) == 0:
        raise CxrbenchError("segment needs images in both the train and val splits")
    rows = train["cache_index"].to_numpy(dtype=np.int64)
    data = EpochBatches(
        images,
        rows,
        {"masks": RowsOf(masks, rows)},
        seed=seed,
        batch_size=min(config.batch_size, len(rows)),
        epochs=config.epochs,
    )
    job = SegmentTask(
        model,
        images=images,
        masks=masks,
        val=val,
        test=test,
        device=device,
        augment=augment,
        num_workers=num_workers,
    )
    log = fit(
        job,
        data,
        config,
        seed=seed,
        device=device,
        checkpoint_dir=checkpoint_dir,
        checkpoint_every=checkpoint_every,
        advance=advance,
        num_workers=num_workers,
    )
    return job.best, job.curve, log


class RowsOf:
    """``array[rows[i]]`` as a per-row batch field, read on demand (a mask memmap stays on disk);
    reopened by file name in loader workers rather than pickled whole."""

    def __init__(self, array: np.ndarray, rows: np.ndarray) -> None:
        self.rows = np.asarray(rows)
        self.dtype = array.dtype
        filename = getattr(array, "filename", None)
        self._file = str(filename) if isinstance(array, np.memmap) and filename else None
        self._array: np.ndarray | None = array

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, idx) -> np.ndarray:
        if self._array is None:
            self._array = np.load(self._file, mmap_mode="r")
        picked = self.rows[idx]
        order = np.argsort(picked, kind="stable")
        out = np.empty((len(picked), *self._array.shape[1:]), dtype=self.dtype)
        out[order] = self._array[picked[order]]
        return out

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        if self._file is not None:
            state["_array"] = None
        return state
