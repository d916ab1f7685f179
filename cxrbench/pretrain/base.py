"""The base class of a pretraining method, and the engine task that trains one.

A method is a small composition, as in lightly and solo-learn: views (``cxrbench.data.augment``),
heads, and a loss from ``pretrain/losses``. It implements ``loss(batch, step)``; the shared engine
does the rest (precision, DDP, accumulation, schedule, checkpoints, the per-step log).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import nn

from cxrbench.data.adapters.base import coerce_options
from cxrbench.engine.data import Batch, EpochBatches, step_seed
from cxrbench.engine.device import Device
from cxrbench.engine.distributed import Dist
from cxrbench.engine.log import StepLog
from cxrbench.engine.loop import Loss, Step, Task, TrainConfig, fit
from cxrbench.errors import CxrbenchError
from cxrbench.models.encoders import Encoder

if TYPE_CHECKING:
    import pandas as pd

    from cxrbench.data.partners import Partners


class Method(nn.Module):
    """A self-supervised method around ``encoder``; subclasses set ``defaults`` and implement ``loss``.

    ``defaults``: the training settings (epochs, batch_size, lr, optimizer, weight_decay,
    warmup_steps) a user may override. Keyword arguments of ``__init__`` are the method's own
    options (``--option temperature=0.2``). ``fields`` names per-image columns the method needs
    beyond the pixels (``patient_id``, ``report``). ``drop_last``: contrastive losses need full batches.
    A method that pairs each image with another one (MedAug) returns candidates from
    ``partner_candidates``; its batches then carry ``partner_images``. A method that reconstructs
    images takes ``channels`` (not an option: the pretrain stage passes the cached images' channels,
    3 for CT prepared in three windows).
    """

    defaults: ClassVar[dict[str, Any]] = {
        "epochs": 100,
        "batch_size": 64,
        "lr": 1e-3,
        "optimizer": "adamw",
        "weight_decay": 1e-4,
        "warmup_steps": 0,
    }
    fields: ClassVar[tuple[str, ...]] = ()
    drop_last: ClassVar[bool] = True

    def __init__(self, encoder: Encoder) -> None:
        super().__init__()
        self.encoder = encoder

    def loss(self, batch: Batch, step: Step) -> Loss:
        """The loss of this rank's part of a batch (``batch['images']``: ``[B, 1, H, W]`` in [0, 1])."""
        raise NotImplementedError

    def forward(self, batch: Batch, step: Step) -> Loss:  # DDP calls forward
        return self.loss(batch, step)

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Parameter groups for the optimizer (e.g. no weight decay on norms); default: one group."""
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]

    def after_step(self, step: Step) -> None:
        """After each optimizer step: EMA teachers, queues, schedules of the method's own."""

    def phases(self) -> int:
        """Consecutive training phases (a curriculum such as the progressive masking ratios): each
        trains all epochs with a fresh optimizer and schedule, starting from the weights the previous
        one ended with. Default: one."""
        return 1

    def enter_phase(self, phase: int) -> None:
        """Set the method up for ``phase`` (0-based) before it trains."""

    @classmethod
    def partner_candidates(cls, rows: pd.DataFrame, options: Mapping[str, Any], *, dataset: str) -> Partners | None:
        """Per train row (of the prepared ``rows``), the rows whose image may be its partner; None
        (the default): the method takes no partner images."""
        return None

    @classmethod
    def training_defaults(cls, options: Mapping[str, Any]) -> dict[str, Any]:
        """The training settings for these (coerced) options; a preset may change them."""
        return dict(cls.defaults)

    @classmethod
    def options(cls, given: Mapping[str, Any], *, hidden: tuple[str, ...] = ()) -> dict[str, Any]:
        """``--option KEY=VALUE`` pairs checked against ``__init__``'s keywords and typed by its
        annotations; an unknown key is a one-line error listing the known ones. ``hidden``: keywords
        the stage fills in itself (``num_labels``)."""
        name = cls.__module__.rsplit(".", 1)[-1].replace("_", "-")
        return coerce_options(cls, given, what=f"method {name}", skip=1, hidden=hidden)


def momentum_copy(module: nn.Module) -> nn.Module:
    """A frozen copy of ``module`` (a momentum/EMA teacher): same weights, no gradients."""
    twin = copy.deepcopy(module)
    for p in twin.parameters():
        p.requires_grad_(False)
    return twin


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """``target <- momentum * target + (1 - momentum) * online``, parameter by parameter (buffers,
    such as BatchNorm statistics, stay the target's own, as in MoCo and BYOL)."""
    for t, o in zip(target.parameters(), online.parameters(), strict=True):
        t.mul_(momentum).add_(o.detach(), alpha=1 - momentum)


class PretrainTask(Task):
    """Trains a ``Method``; keeps the mean loss of each epoch."""

    def __init__(self, method: Method) -> None:
        self.model = method
        self.history: list[float] = []

    def parameter_groups(self) -> list[dict[str, Any]]:
        return self.model.parameter_groups()

    def loss(self, net: nn.Module, batch: Batch, step: Step) -> Loss:
        return net(batch, step)

    def after_step(self, step: Step) -> None:
        self.model.after_step(step)

    def end_epoch(self, epoch: int, *, mean_loss: float, last_loss: float) -> None:
        self.history.append(mean_loss)

    def state_dict(self) -> dict[str, Any]:
        return {"history": list(self.history)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = list(state.get("history", []))


def train_config(
    method: type[Method], overrides: dict[str, Any], options: Mapping[str, Any] | None = None
) -> TrainConfig:
    """The method's defaults (for its ``options``) with the user's ``overrides`` (None values ignored)."""
    defaults = method.training_defaults(options or {})
    settings = {**defaults, **{k: v for k, v in overrides.items() if v is not None}}
    return TrainConfig(
        epochs=int(settings["epochs"]),
        batch_size=int(settings["batch_size"]),
        lr=float(settings["lr"]),
        optimizer=str(settings.get("optimizer", "adamw")),
        weight_decay=float(settings.get("weight_decay", 0.0)),
        warmup_steps=int(settings.get("warmup_steps", 0)),
        accumulate=int(settings.get("accumulate", 1)),
        drop_last=method.drop_last,
    )


def pretrain_loop(
    method: Method,
    images: np.ndarray,
    rows: np.ndarray,
    config: TrainConfig,
    *,
    seed: int,
    device: Device,
    checkpoint_dir: Path,
    fields: Mapping[str, Any] | None = None,
    partners: Partners | None = None,
    checkpoint_every: int = 0,
    advance: Callable[[int], None] = lambda n=1: None,
    dist: Dist | None = None,
    num_workers: int = 0,
) -> tuple[list[float], StepLog]:
    """Train ``method`` on cached ``images[rows]`` (plus per-row ``fields``); returns the mean loss
    per epoch and the per-step log (``partners``: see ``Method.partner_candidates``). Resumes from
    ``checkpoint_dir``; under DDP each rank holds its slice of every batch (``Method.loss`` gathers
    what the loss needs from the whole batch). A method of several ``phases`` trains them in turn
    (epoch losses and log rows appended)."""
    dist = dist or Dist()
    if len(rows) == 0:
        raise CxrbenchError("pretraining needs images in the train split")
    batch_size = min(config.batch_size, len(rows))
    if dist.enabled and batch_size < dist.world_size:
        raise CxrbenchError(f"batch size {batch_size} is smaller than the {dist.world_size} processes")
    phases = method.phases()
    history: list[float] = []
    log = StepLog()
    for phase in range(phases):
        # each phase has a checkpoint folder of its own: a finished phase resumes as finished (its
        # last checkpoint restores the weights the next phase starts from), the cut one mid-phase
        method.enter_phase(phase)
        phase_seed = seed if phase == 0 else step_seed(seed, -2, phase)  # new batch order and masks
        data = EpochBatches(
            images,
            rows,
            fields,
            seed=phase_seed,
            batch_size=batch_size,
            epochs=config.epochs,
            drop_last=config.drop_last,
            shard=dist.shard if dist.enabled else None,
            partners=partners,
        )
        task = PretrainTask(method)
        part = fit(
            task,
            data,
            config,
            seed=phase_seed,
            device=device,
            checkpoint_dir=checkpoint_dir if phases == 1 else checkpoint_dir / f"phase-{phase}",
            checkpoint_every=checkpoint_every,
            advance=advance,
            dist=dist,
            num_workers=num_workers,
        )
        history += task.history
        if phases == 1:
            log = part
        else:  # one log: steps counted on across phases, each row naming its phase
            offset = log.rows[-1]["step"] if log.rows else 0
            log.rows += [{**row, "step": row["step"] + offset, "phase": phase} for row in part.rows]
    return history, log
