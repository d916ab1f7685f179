"""Multi-process training under ``torchrun``: the process group, each rank's share of a batch, and
the few collective calls the training loops need so that rank 0 alone owns the run directory."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as td

from cxrbench.engine.device import device_name
from cxrbench.errors import CxrbenchError

if TYPE_CHECKING:
    from cxrbench.rundir import Stage


@dataclass(frozen=True)
class Dist:
    """This process's place in the group: ``rank`` of ``world_size``; one process is ``world_size`` 1."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, idx: np.ndarray) -> np.ndarray:
        """This rank's contiguous slice of a global batch (sizes differ by at most one)."""
        if not self.enabled:
            return idx
        lo, hi = self.bounds(len(idx))
        return idx[lo:hi]

    def bounds(self, n: int) -> tuple[int, int]:
        """Start and stop of this rank's slice of ``n`` items (``np.array_split`` layout)."""
        base, extra = divmod(n, self.world_size)
        lo = self.rank * base + min(self.rank, extra)
        return lo, lo + base + (self.rank < extra)

    def barrier(self) -> None:
        if self.enabled:
            td.barrier()

    def broadcast(self, value: Any = None) -> Any:
        """Rank 0's ``value`` on every rank (any picklable object; other ranks' values are ignored)."""
        if not self.enabled:
            return value
        box = [value if self.is_main else None]
        td.broadcast_object_list(box, src=0)
        return box[0]

    def gather_batch(self, part: torch.Tensor, total: int) -> torch.Tensor:
        """The whole batch's rows, in order, from each rank's ``part`` (its ``bounds(total)`` slice).

        Differentiable: the gradient of the result flows back to this rank's slice only. Every
        rank computes the same loss from the same gathered batch, so the slice of that gradient is
        this rank's share of the single-process gradient; DDP's averaging then needs the loss
        multiplied by ``world_size`` (as for any loss normalised by the whole batch).
        """
        if not self.enabled:
            return part
        return _GatherBatch.apply(part, self, total)

    def all_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum of ``tensor`` over ranks (a new tensor; ``tensor`` itself on one process)."""
        if not self.enabled:
            return tensor
        total = tensor.detach().clone()
        td.all_reduce(total, op=td.ReduceOp.SUM)
        return total


class _GatherBatch(torch.autograd.Function):
    """all_gather of unequal contiguous slices (padded to the largest), trimmed back in order."""

    @staticmethod
    def forward(ctx: Any, part: torch.Tensor, dist: Dist, total: int) -> torch.Tensor:
        sizes = [Dist(r, dist.world_size).bounds(total) for r in range(dist.world_size)]
        widest = max(hi - lo for lo, hi in sizes)
        padded = part.new_zeros((widest, *part.shape[1:]))
        padded[: len(part)] = part
        slots = [torch.empty_like(padded) for _ in range(dist.world_size)]
        td.all_gather(slots, padded.contiguous())
        ctx.bounds = dist.bounds(total)
        return torch.cat([slot[: hi - lo] for slot, (lo, hi) in zip(slots, sizes, strict=True)])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        lo, hi = ctx.bounds
        return grad[lo:hi], None, None


def stage_on_rank0(
    dist: Dist, stage: Stage, *, force: bool, work: Callable[[], Any], write: Callable[[Any], None]
) -> None:
    """Run ``stage`` on every rank: all ranks ``work`` (train); rank 0 alone holds the stage's lock,
    ``write``s its result to the run directory, and tells the others whether there is work at all.

    One process: ``stage.open`` then ``write(work())`` when the stage is not already complete.
    """
    if not dist.is_main:  # never touches the run directory; learns from rank 0 whether to train
        todo = dist.broadcast(None)
        if todo is None:
            raise CxrbenchError(f"rank {dist.rank}: rank 0 could not start {stage.what}; see its message")
        if todo:
            work()
        dist.barrier()
        return
    told = False
    try:
        with stage.open(force=force) as todo:
            told = dist.broadcast(bool(todo)) is not None
            if todo:
                write(work())
    finally:
        if not told:
            dist.broadcast(None)  # the others stop instead of waiting for a stage that never opened
    dist.barrier()


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise CxrbenchError(f"environment variable {name}={value!r}: expected an integer") from None


def current() -> Dist:
    """The running group's ranks, or a single process when no group is initialised."""
    if td.is_available() and td.is_initialized():
        return Dist(td.get_rank(), td.get_world_size(), _env_int("LOCAL_RANK", 0))
    return Dist()


def setup(device: str | None = None) -> tuple[Dist, str | None]:
    """Join the group ``torchrun`` describes (WORLD_SIZE > 1); return it and the device to train on.

    nccl on CUDA with the ``LOCAL_RANK`` GPU, gloo on CPU. Without WORLD_SIZE > 1 nothing happens and
    ``device`` comes back unchanged. Calling it again once the group exists is a no-op.
    """
    world = _env_int("WORLD_SIZE", 1)
    if world <= 1:
        return Dist(), device
    if not td.is_available():
        raise CxrbenchError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    local = _env_int("LOCAL_RANK", 0)
    cuda = device_name(device).startswith("cuda")
    if cuda:
        if local >= torch.cuda.device_count():
            raise CxrbenchError(f"LOCAL_RANK {local}: only {torch.cuda.device_count()} CUDA devices visible")
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    else:
        device = "cpu"
    if not td.is_initialized():
        td.init_process_group(backend="nccl" if cuda else "gloo", device_id=torch.device(device) if cuda else None)
    return current(), device


def teardown() -> None:
    """Leave the process group if this process joined one."""
    if td.is_available() and td.is_initialized():
        td.destroy_process_group()


@contextlib.contextmanager
def group(device: str | None = None) -> Iterator[tuple[Dist, str | None]]:
    """``setup`` for the duration of a command; the group is destroyed on the way out."""
    try:
        yield setup(device)
    finally:
        teardown()
