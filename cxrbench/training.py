"""What every training loop shares: device/AMP choice, batches from the image cache, reproducible
per-step randomness, and checkpoints that make a killed run resume where it stopped.

Randomness is derived from (seed, epoch, step) rather than carried along, so a run resumed from a
checkpoint at a step boundary draws exactly what the uninterrupted run would have drawn.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cxrbench.errors import CxrbenchError
from cxrbench.rundir import atomic_path

CHECKPOINT = "last.pt"
PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass(frozen=True)
class Device:
    """Where to train and in which precision: ``bf16`` autocast by default on GPU, ``fp32`` on CPU,
    ``fp16`` autocast with loss scaling for GPUs without fast bf16 (V100, T4)."""

    device: torch.device
    precision: str = "fp32"

    @classmethod
    def choose(cls, name: str | None = None, *, precision: str | None = None) -> Device:
        device = torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))
        precision = precision or ("bf16" if device.type == "cuda" else "fp32")
        if precision not in PRECISIONS:
            raise CxrbenchError(f"--precision {precision!r}: must be one of {', '.join(PRECISIONS)}")
        return cls(device, precision)

    @property
    def amp(self) -> bool:
        return self.precision != "fp32"

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp:
            dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
            return torch.autocast(device_type=self.device.type, dtype=dtype)
        return contextlib.nullcontext()

    def grad_scaler(self) -> torch.amp.GradScaler:
        """Loss scaling against fp16 gradient underflow; a pass-through (disabled) for bf16 and fp32."""
        return torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")


def step_seed(seed: int, *parts: int) -> int:
    """A 63-bit seed derived from the run seed and position (epoch, step, ...)."""
    text = ":".join(str(p) for p in (seed, *parts))
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big") >> 1


def epoch_order(n: int, *, seed: int, epoch: int) -> np.ndarray:
    """The sample order of one epoch: a permutation fixed by (seed, epoch)."""
    return np.random.default_rng(step_seed(seed, epoch, -1)).permutation(n)


def batches(order: np.ndarray, batch_size: int, *, drop_last: bool = False) -> list[np.ndarray]:
    """Consecutive slices of ``order``; the last short one dropped if asked (contrastive losses)."""
    stop = len(order) - (len(order) % batch_size if drop_last else 0)
    return [order[i : i + batch_size] for i in range(0, stop, batch_size)]


def read_rows(images: np.ndarray, rows: Sequence[int]) -> np.ndarray:
    """Cached uint8 images at ``rows`` as one ``[B, H, W]`` array, read in file order."""
    rows = np.asarray(rows)
    order = np.argsort(rows, kind="stable")  # memmap reads are fastest in file order
    block = np.empty((len(rows), *images.shape[1:]), dtype=np.uint8)
    block[order] = images[rows[order]]
    return block


def to_device(block: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 ``[B, H, W]`` -> float ``[B, 1, H, W]`` in [0, 1] on ``device`` (converted there)."""
    tensor = torch.as_tensor(block).to(device, non_blocking=True)
    return tensor.unsqueeze(1).float().div_(255.0)


def load_batch(images: np.ndarray, rows: Sequence[int], device: torch.device) -> torch.Tensor:
    """Cached uint8 images at ``rows`` -> float tensor ``[B, 1, H, W]`` in [0, 1] on ``device``."""
    return to_device(torch.from_numpy(read_rows(images, rows)), device)


class _CacheReader(torch.utils.data.Dataset):
    """Holds the image cache; a memmap is reopened with ``open_cache`` in each worker, never pickled
    (an in-memory array, as in tests, travels to the workers as it is)."""

    def __init__(self, images: np.ndarray) -> None:
        filename = getattr(images, "filename", None)
        self._cache_dir = Path(filename).parent if isinstance(images, np.memmap) and filename else None
        self._images: np.ndarray | None = images
        self._pid = os.getpid()

    @property
    def images(self) -> np.ndarray:
        if self._cache_dir is not None and (self._images is None or self._pid != os.getpid()):
            from cxrbench.data.cache import open_cache

            self._images, self._pid = open_cache(self._cache_dir), os.getpid()
        return self._images

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        if self._cache_dir is not None:
            state["_images"] = None
        return state


class EpochBatches(_CacheReader):
    """Item ``k``: ``(epoch, step, uint8 images, targets)`` of the ``k``-th step of the whole run.

    Steps follow ``epoch_order``/``batches`` for (seed, epoch), so iterating items in order is the
    single-process plan; ``shard(idx)`` (a ``Dist.shard``) keeps this rank's part of each batch.
    """

    def __init__(self, images: np.ndarray, rows: np.ndarray, targets: np.ndarray | None, *, seed: int,
                 batch_size: int, epochs: int, drop_last: bool = False,
                 shard: Callable[[np.ndarray], np.ndarray] | None = None) -> None:
        super().__init__(images)
        self.rows, self.targets = np.asarray(rows), targets
        self.seed, self.batch_size, self.drop_last, self.shard = seed, batch_size, drop_last, shard
        n = len(self.rows)
        per_epoch = (n // batch_size) if drop_last else -(-n // batch_size)
        self.steps_per_epoch, self.epochs = per_epoch, epochs
        self._plan: tuple[int, list[np.ndarray]] | None = None

    def __len__(self) -> int:
        return self.steps_per_epoch * self.epochs

    def position(self, epoch: int, step: int) -> int:
        """The item index of (epoch, step)."""
        return epoch * self.steps_per_epoch + step

    def plan(self, epoch: int) -> list[np.ndarray]:
        """The global batches (indices into ``rows``) of ``epoch``."""
        if self._plan is None or self._plan[0] != epoch:
            order = epoch_order(len(self.rows), seed=self.seed, epoch=epoch)
            self._plan = (epoch, batches(order, self.batch_size, drop_last=self.drop_last))
        return self._plan[1]

    def __getitem__(self, k: int) -> tuple[int, int, torch.Tensor, torch.Tensor]:
        epoch, step = divmod(int(k), self.steps_per_epoch)
        idx = self.plan(epoch)[step]
        if self.shard is not None:
            idx = self.shard(idx)
        images = torch.from_numpy(read_rows(self.images, self.rows[idx]))
        targets = torch.from_numpy(self.targets[idx]) if self.targets is not None else torch.empty(0)
        return epoch, step, images, targets


class RowBatches(_CacheReader):
    """Item ``k``: the uint8 images of ``rows[k*batch_size:(k+1)*batch_size]`` (for prediction)."""

    def __init__(self, images: np.ndarray, rows: np.ndarray, *, batch_size: int) -> None:
        super().__init__(images)
        self.rows, self.batch_size = np.asarray(rows), batch_size

    def __len__(self) -> int:
        return -(-len(self.rows) // self.batch_size)

    def __getitem__(self, k: int) -> torch.Tensor:
        return torch.from_numpy(read_rows(self.images, self.rows[k * self.batch_size : (k + 1) * self.batch_size]))


def batch_workers(num_workers: int | None, device: Device) -> int:
    """Processes that read batches from the cache: ``num_workers`` (validated), else 4 on CUDA and
    0 on CPU, where the main process keeps up and worker start-up would cost more than it saves."""
    if num_workers is None:
        return 4 if device.device.type == "cuda" else 0
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise CxrbenchError(f"--num-workers {num_workers!r}: must be an integer >= 0")
    return num_workers


def loader(dataset: torch.utils.data.Dataset, *, start: int = 0, num_workers: int = 0,
           device: torch.device | None = None) -> torch.utils.data.DataLoader:
    """Items ``start, start+1, ...`` of ``dataset`` in order, read by ``num_workers`` processes.

    Order never depends on the worker count, so batches (and a resumed run) are the same with any;
    pinned memory on CUDA so ``to_device(..., non_blocking=True)`` overlaps the copy.
    """
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise CxrbenchError(f"num_workers must be an integer >= 0, got {num_workers!r}")
    return torch.utils.data.DataLoader(
        dataset, batch_size=None, sampler=range(start, len(dataset)), num_workers=num_workers,
        pin_memory=device is not None and device.type == "cuda",
        prefetch_factor=4 if num_workers else None, persistent_workers=False,
    )


def save_checkpoint(directory: Path, state: dict[str, Any]) -> Path:
    """Write ``state`` (tensors, numbers, strings, nested dicts) atomically to ``directory/last.pt``."""
    path = Path(directory) / CHECKPOINT
    with atomic_path(path) as tmp:
        torch.save({**state, "torch_rng": torch.get_rng_state()}, tmp)
    return path


def load_checkpoint(directory: Path) -> dict[str, Any] | None:
    """The last checkpoint, loaded with ``weights_only=True``; None if there is none."""
    path = Path(directory) / CHECKPOINT
    if not path.exists():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    torch.set_rng_state(state.pop("torch_rng"))
    return state


def optimizer_step(
    scaler: torch.amp.GradScaler, optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler
) -> None:
    """Apply the (unscaled) gradients and advance the schedule by one step.

    With fp16 the scaler skips a step whose gradients overflowed (the first ones, while it finds
    its scale); the schedule still advances, so it stays aligned with the step plan that resuming
    relies on, and torch's warning about that order is silenced.
    """
    scaler.step(optimizer)
    scaler.update()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()` before"))
        scheduler.step()


def cosine_schedule(optimizer: torch.optim.Optimizer, total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    """Cosine annealing of the learning rate from its initial value to 0 over ``total_steps``."""
    total = max(total_steps, 1)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total) / total))
    )
