"""How a cache worker puts its decoded rows on disk, and hashes whole blocks of them on the way.

A parallel build of a large cache hands each worker one hash block of the images file at a time
(``plan_blocks``): the worker writes the block's rows straight to the file, in batches, with
``O_DIRECT`` where the file system takes it (no copy into the page cache, no writeback, no memory
the host must hand back first), and hashes the block's bytes as it writes them, so nobody reads
the 2.5 GB of a CT cache back to hash it for the stage's manifest (``rundir.output_hash``).
"""

from __future__ import annotations

import errno
import math
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from cxrbench.digests import new_block_digest

#: Direct I/O needs buffer, file offset and length aligned to the device's logical block size;
#: 4 KiB covers 512-byte and 4K-native disks. The cache's .npy header is padded to it.
ALIGN = 4096
#: A worker's direct writes go out this many bytes at a time (consecutive rows), on a thread, from
#: two buffers: one fills while the other is written.
BATCH_BYTES = 4 << 20


@dataclass(frozen=True, slots=True)
class Block:
    """One hash block of the images file, whole in one task: its bytes ``[start, end)``, which rows
    ``first`` to ``stop - 1`` cover. The first ``skip`` (0 or 1) of them begins before ``start``:
    the previous block's to write, decoded here for its bytes inside this block. ``head``: the
    file's bytes in the block before the first row (the .npy header, block 0 only)."""

    start: int
    end: int
    first: int
    stop: int
    skip: int
    head: bytes


@dataclass(frozen=True, slots=True)
class BlockDone:
    """What a block task hands back: per written row None or its quarantine reason, the block's
    digest (``rundir.block_digest`` of its bytes), and fingerprints ``(row, digest of its bytes)`` of
    the row it decoded but did not write (``head``) and of the written row that runs on into the
    next block (``tail``): the block's digest holds for the file only if both tasks decoded the
    shared row to the same bytes."""

    start: int
    reasons: list[str | None]
    digest: bytes
    head: tuple[int, bytes] | None
    tail: tuple[int, bytes] | None


def plan_blocks(
    n_rows: int, offset: int, row_bytes: int, workers: int, header: bytes, block: int
) -> list[tuple[np.ndarray, Block]] | None:
    """The tasks of a fresh parallel build, one per ``block`` bytes of the images file (data from
    ``offset``, rows of ``row_bytes``, ``header`` its first ``offset`` bytes): ``(rows to write,
    Block)``, the rows in order and each written by exactly one task (the last block may hold only
    the end of the last row: then its task writes none). None when the file is one block, or too
    few for about 4 per worker (the tail of the build would leave workers idle)."""
    size = offset + n_rows * row_bytes
    n_blocks = math.ceil(size / block)
    if n_rows < 1 or size <= block or n_blocks < 4 * workers or row_bytes > block or offset >= block:
        return None
    tasks = []
    for k in range(n_blocks):
        start, end = k * block, min(size, (k + 1) * block)
        own = max(0, -(-(start - offset) // row_bytes))  # the first row that begins in the block
        stop = min(n_rows, -(-(end - offset) // row_bytes))
        skip = int(own > 0 and offset + own * row_bytes > start)
        head = header[start : min(end, offset)]
        tasks.append((np.arange(own, stop), Block(start, end, own - skip, stop, skip, head)))
    return tasks


class BlockDigest:
    """Hashes the part of each decoded row that lies in ``block`` (rows given in file order), as
    ``rundir.block_digest`` hashes those bytes of the file."""

    def __init__(self, block: Block, offset: int, row_bytes: int) -> None:
        self.block, self.offset, self.row_bytes = block, offset, row_bytes
        self.digest = new_block_digest()
        self.digest.update(block.head)
        self.head: tuple[int, bytes] | None = None
        self.tail: tuple[int, bytes] | None = None

    def add(self, row: int, pixels: np.ndarray) -> None:
        data = memoryview(np.ascontiguousarray(pixels)).cast("B")
        at = self.offset + row * self.row_bytes
        lo, hi = max(self.block.start, at) - at, min(self.block.end, at + self.row_bytes) - at
        if hi > lo:
            self.digest.update(data[lo:hi])
        if lo > 0 or hi < self.row_bytes:  # shared with the neighbouring task
            mark = (row, new_block_digest(data).digest())
            if lo > 0:
                self.head = mark
            else:
                self.tail = mark

    def done(self, reasons: list[str | None]) -> BlockDone:
        return BlockDone(self.block.start, reasons, self.digest.digest(), self.head, self.tail)


_local = threading.local()  # per thread: the direct-write buffers, kept across tasks


def _buffers(nbytes: int) -> list:
    """Two page-aligned private buffers of ``nbytes`` for this thread, made once: fresh memory costs
    a page fault a page (2.6 us here), more than the write it replaces."""
    import mmap

    held = getattr(_local, "buffers", None)
    if held is None or len(held[0]) != nbytes:
        flags = getattr(mmap, "MAP_PRIVATE", 0) | getattr(mmap, "MAP_ANONYMOUS", 0)
        held = _local.buffers = [
            mmap.mmap(-1, nbytes, flags=flags) if flags else mmap.mmap(-1, nbytes) for _ in range(2)
        ]
    return held


def _open_direct(file: str) -> int | None:
    try:
        return os.open(file, os.O_WRONLY | os.O_DIRECT)
    except OSError:  # tmpfs and some network file systems refuse it: buffered writes
        return None


def _pwrite_all(fd: int, data, at: int) -> None:
    done = 0
    while done < len(data):
        n = os.pwrite(fd, data[done:], at + done)
        if n <= 0:
            raise OSError(errno.EIO, "short write to the image cache")
        done += n


class RowWriter:
    """Writes rows of the images file ``file`` (data at ``offset``, ``row_bytes`` a row) from a
    worker. ``direct``: consecutive rows are gathered into page-aligned buffers and written with
    ``O_DIRECT`` on a thread while decoding goes on; where direct I/O is refused (or the layout is
    not aligned) each row is a plain positioned write. Either way the parent's fsync makes them
    durable before they are marked done."""

    def __init__(self, file: str, offset: int, row_bytes: int, *, direct: bool) -> None:
        self.offset, self.row_bytes = offset, row_bytes
        self.plain = os.open(file, os.O_WRONLY)
        aligned = offset % ALIGN == 0 and row_bytes % ALIGN == 0 and hasattr(os, "O_DIRECT")
        self.direct = _open_direct(file) if direct and aligned else None
        if self.direct is not None:
            self.per = max(1, BATCH_BYTES // row_bytes)
            self.slots = [
                np.frombuffer(b, np.uint8).reshape(self.per, row_bytes) for b in _buffers(self.per * row_bytes)
            ]
            self.writing: list[Future | None] = [None, None]
            self.thread = ThreadPoolExecutor(1, thread_name_prefix="cache-write")
            self.slot, self.count, self.first = 0, 0, 0

    def put(self, row: int, pixels: np.ndarray) -> None:
        """Write ``pixels`` (uint8, one row's bytes) at row ``row``."""
        data = memoryview(np.ascontiguousarray(pixels)).cast("B")
        if self.direct is None:
            _pwrite_all(self.plain, data, self.offset + row * self.row_bytes)
            return
        if self.count and (row != self.first + self.count or self.count == self.per):
            self._send()
        if not self.count:
            if self.writing[self.slot] is not None:
                self.writing[self.slot].result()  # the buffer's last batch is out
            self.first = row
        self.slots[self.slot][self.count] = np.frombuffer(data, np.uint8)
        self.count += 1

    def _send(self) -> None:
        nbytes = self.count * self.row_bytes
        data = memoryview(self.slots[self.slot]).cast("B")[:nbytes]
        at = self.offset + self.first * self.row_bytes
        self.writing[self.slot] = self.thread.submit(self._write, data, at)
        self.slot, self.count = 1 - self.slot, 0

    def _write(self, data, at: int) -> None:
        try:
            _pwrite_all(self.direct, data, at)
        except OSError as exc:
            if exc.errno != errno.EINVAL:  # EINVAL: this file or device wants other alignment
                raise
            _pwrite_all(self.plain, data, at)

    def __enter__(self) -> RowWriter:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        try:
            if self.direct is not None:
                if exc_type is None and self.count:
                    self._send()
                self.thread.shutdown(wait=True)
                for job in self.writing:
                    if job is not None and exc_type is None:
                        job.result()  # a failed write fails the task
        finally:
            if self.direct is not None:
                os.close(self.direct)
            os.close(self.plain)
