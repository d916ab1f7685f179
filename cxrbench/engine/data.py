"""Batches from the image cache, in an order fixed by (seed, epoch) so any worker count, any number
of ranks and a resumed run all see the same batches; per-step seeds for reproducible randomness.

Randomness is derived from (seed, epoch, step) rather than carried along, so a run resumed from a
checkpoint at a step boundary draws exactly what the uninterrupted run would have drawn.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from cxrbench.errors import CxrbenchError

if TYPE_CHECKING:
    from cxrbench.data.partners import Partners

#: one batch: ``images`` (uint8 ``[B, H, W]``) plus any per-row fields (``targets``, ``patient_id``, ...)
Batch = dict[str, Any]
#: the batch entries holding cached images (uint8 on the way, float ``[B, 1, H, W]`` on the device)
IMAGE_KEYS = ("images", "partner_images")
#: the ``step_seed`` part of the stream partner images are drawn from (the loop uses none and 1)
PARTNER_STREAM = 2


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
    """Cached uint8 images at ``rows`` as one ``[B, H, W]`` (or ``[B, C, H, W]``) array, read in file order."""
    rows = np.asarray(rows)
    order = np.argsort(rows, kind="stable")  # memmap reads are fastest in file order
    block = np.empty((len(rows), *images.shape[1:]), dtype=np.uint8)
    block[order] = images[rows[order]]
    return block


def to_device(block: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 ``[B, H, W]`` -> float ``[B, 1, H, W]`` in [0, 1] on ``device`` (converted there);
    ``[B, C, H, W]`` (CT in C windows) keeps its channels."""
    tensor = torch.as_tensor(block).to(device, non_blocking=True)
    return (tensor.unsqueeze(1) if tensor.ndim == 3 else tensor).float().div_(255.0)


def load_batch(images: np.ndarray, rows: Sequence[int], device: torch.device) -> torch.Tensor:
    """Cached uint8 images at ``rows`` -> float tensor ``[B, C, H, W]`` in [0, 1] on ``device``."""
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
    """Item ``k``: ``(epoch, step, batch)`` of the ``k``-th step of the whole run.

    ``batch`` holds the uint8 ``images`` and, for each entry of ``fields`` (per-row arrays such as
    ``targets``, ``patient_id`` or report text, or array-likes with a ``dtype`` such as segmentation
    masks read on demand), the values of the batch's rows: numeric arrays as tensors, anything else
    as a list. With ``partners`` (``cxrbench.data.partners``), ``partner_images`` holds one partner
    image per row, drawn from stream (seed, epoch, step, ``PARTNER_STREAM``) over the whole batch
    before sharding. Steps follow ``epoch_order``/``batches`` for (seed, epoch), so
    iterating items in order is the single-process plan; ``shard(idx)`` (a ``Dist.shard``) keeps
    this rank's part of each batch.
    """

    def __init__(
        self,
        images: np.ndarray,
        rows: np.ndarray,
        fields: Mapping[str, Any] | None = None,
        *,
        seed: int,
        batch_size: int,
        epochs: int,
        drop_last: bool = False,
        shard: Callable[[np.ndarray], np.ndarray] | None = None,
        partners: Partners | None = None,
    ) -> None:
        super().__init__(images)
        self.rows = np.asarray(rows)
        if partners is not None and len(partners) != len(self.rows):
            raise CxrbenchError(f"partner candidates cover {len(partners)} rows for {len(self.rows)} images")
        self.partners = partners
        self.fields = {name: values for name, values in (fields or {}).items() if values is not None}
        for name, values in self.fields.items():
            if len(values) != len(self.rows):
                raise CxrbenchError(f"batch field {name!r} has {len(values)} rows for {len(self.rows)} images")
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

    def __getitem__(self, k: int) -> tuple[int, int, Batch]:
        epoch, step = divmod(int(k), self.steps_per_epoch)
        whole = self.plan(epoch)[step]
        keep = self.shard(np.arange(len(whole))) if self.shard is not None else np.arange(len(whole))
        idx = whole[keep]
        batch: Batch = {"images": torch.from_numpy(read_rows(self.images, self.rows[idx]))}
        if self.partners is not None:
            rng = np.random.default_rng(step_seed(self.seed, epoch, step, PARTNER_STREAM))
            mates = self.partners.draw(whole, rng)[keep]
            batch["partner_images"] = torch.from_numpy(read_rows(self.images, self.rows[mates]))
        for name, values in self.fields.items():
            if getattr(values, "dtype", None) is not None and np.dtype(values.dtype).kind in "biuf":
                batch[name] = torch.from_numpy(np.ascontiguousarray(values[idx]))
            else:
                batch[name] = [values[i] for i in idx]
        return epoch, step, batch


class RowBatches(_CacheReader):
    """Item ``k``: the uint8 images of ``rows[k*batch_size:(k+1)*batch_size]`` (for prediction)."""

    def __init__(self, images: np.ndarray, rows: np.ndarray, *, batch_size: int) -> None:
        super().__init__(images)
        self.rows, self.batch_size = np.asarray(rows), batch_size

    def __len__(self) -> int:
        return -(-len(self.rows) // self.batch_size)

    def __getitem__(self, k: int) -> torch.Tensor:
        return torch.from_numpy(read_rows(self.images, self.rows[k * self.batch_size : (k + 1) * self.batch_size]))


def loader(
    dataset: torch.utils.data.Dataset, *, start: int = 0, num_workers: int = 0, device: torch.device | None = None
) -> torch.utils.data.DataLoader:
    """Items ``start, start+1, ...`` of ``dataset`` in order, read by ``num_workers`` processes.

    Order never depends on the worker count, so batches (and a resumed run) are the same with any;
    pinned memory on CUDA so ``to_device(..., non_blocking=True)`` overlaps the copy.
    """
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise CxrbenchError(f"num_workers must be an integer >= 0, got {num_workers!r}")
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=None,
        sampler=range(start, len(dataset)),
        num_workers=num_workers,
        pin_memory=device is not None and device.type == "cuda",
        prefetch_factor=4 if num_workers else None,
        persistent_workers=False,
    )
