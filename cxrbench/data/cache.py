"""The image cache: every image decoded and preprocessed once into one uint8 memmap.

Built in chunks by parallel worker processes with bounded memory, and resumable: a done-mask
flushed after every chunk lets a killed build continue where it stopped. A fresh parallel build of
a large cache goes a hash block a chunk: the workers write the rows directly and hash them on the
way (``cache_rows``).
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np

from cxrbench.data.cache_rows import ALIGN, Block, BlockDigest, BlockDone, RowWriter, plan_blocks
from cxrbench.data.images import (
    CT_PREFIX,
    ImageError,
    PixelLayout,
    check_image_format,
    file_stamp,
    image_channels,
    pixel_limit,
    read_image,
)
from cxrbench.data.transforms import Preprocess, preprocess
from cxrbench.errors import CxrbenchError
from cxrbench.processes import retire, worker_pool

IMAGES_FILE = "images.npy"
DONE_FILE = "done.npy"  # uint8 per row: 0 to do, 1 ok, 2 quarantined
REASONS_FILE = "reasons.jsonl"  # one {"row": i, "reason": str} per quarantined row
STAMPS_FILE = "stamps.npy"  # int64 [n, 2] per row: its file's size and modification time (ns)
PATHS_FILE = "paths.json"  # the rows' files, in order: what a cache with other rows can reuse
STATE_FILE = "cache.json"  # fingerprint of paths + settings; written once the files exist
CACHE_VERSION = 2  # 2: per-row file stamps (caches of 1 start over)
#: An in-process build syncs decoded rows to disk (and only then marks them done) at most this often;
#: a parallel one syncs on a thread, back to back.
SYNC_SECONDS = 2.0
#: A redone prepare's copy of kept rows starts a sync on a thread after about this many bytes.
_COPY_SYNC_BYTES = 256 << 20
_TODO, _OK, _BAD = 0, 1, 2


def build_cache(
    paths: Sequence[str],
    out_dir: Path,
    *,
    settings: Preprocess,
    image_format: str | None = None,
    workers: int | None = None,
    chunk_size: int = 64,
    progress: Callable[[int], None] | None = None,
    layouts: Sequence[PixelLayout | None] | None = None,
) -> list[str | None]:
    """Return per path None (cached) or the quarantine reason; writes ``out_dir/images.npy``.

    Row ``i`` of the uint8 ``[len(paths), size, size]`` array (``[len(paths), C, size, size]`` for
    CT in C windows) is ``paths[i]`` preprocessed (zeros for a quarantined image). A rerun with the
    same paths, settings and format decodes only the rows not yet done or whose file changed since
    (size or modification time; reasons from the earlier run are kept); with the same settings and
    other paths, the rows of files the cache already holds unchanged are copied, not decoded; other
    settings start over.
    ``workers``: None for ``os.cpu_count()``, 0 or 1 to work in-process. At most ``2 * workers``
    chunks of ``chunk_size`` images are in flight. ``progress(n)`` is called with the number of
    rows finished since the last call (rows already done by an earlier run come first).
    An image declaring more pixels than ``pixel_limit()`` ($CXRBENCH_MAX_PIXELS, which the workers
    inherit) is quarantined with that reason before it is decoded.
    ``layouts``: per path, where a CT slice's pixel bytes lie (from its header read), or None; the
    pixels are the same either way, only faster to read.
    """
    if not isinstance(settings, Preprocess):
        raise CxrbenchError(f"settings must be a Preprocess, got {type(settings).__name__}")
    check_image_format(image_format)
    if workers is None:
        workers = os.cpu_count() or 1
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise CxrbenchError(f"workers must be None or an integer >= 0, got {workers!r}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise CxrbenchError(f"chunk_size must be an integer >= 1, got {chunk_size!r}")
    pixel_limit()  # a bad $CXRBENCH_MAX_PIXELS stops here, not as a reason on every image
    paths = [os.fspath(p) for p in paths]
    if layouts is not None and len(layouts) != len(paths):
        raise CxrbenchError(f"layouts must have one entry per path ({len(layouts)} for {len(paths)})")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    offset, done, reasons = _open_or_create(paths, out_dir, settings, image_format)
    if progress is not None and int(np.count_nonzero(done)):
        progress(int(np.count_nonzero(done)))
    todo = np.flatnonzero(done == _TODO)
    if todo.size:
        row_bytes = math.prod(row_shape(settings, image_format))
        tasks = _plan(todo, len(paths), out_dir / IMAGES_FILE, offset, row_bytes, workers, chunk_size)
        # Rows on disk but not yet synced are marked done only after an fsync that began after they
        # were written (``_Syncer``), so a kill or a power cut can lose decoded rows, never mark a
        # row done whose pixels are not durable. With workers the fsync runs on a thread, back to
        # back: the parent keeps handing out chunks meanwhile (a blocking fsync of a few hundred MB
        # left the workers idle), and the last one has little left to write.
        hasher = _BlockHasher(out_dir / IMAGES_FILE, offset, row_bytes, len(paths))
        with (
            open(out_dir / IMAGES_FILE, "r+b") as images,
            open(out_dir / REASONS_FILE, "a+", encoding="utf-8") as log,
            hasher,
            _Syncer(images, done, background=workers > 1, hasher=hasher) as sync,
        ):
            if log.tell():  # end a line a kill may have cut short, so the next one parses
                log.seek(log.tell() - 1)
                if log.read(1) != "\n":
                    log.write("\n")

            def record(rows: np.ndarray, pixels: np.ndarray | None, bad: list[str | None] | BlockDone) -> None:
                # pixels None: _process_chunk has written the rows itself (zeros come for crashes)
                if isinstance(bad, BlockDone):
                    hasher.offer(bad)
                    bad = bad.reasons
                if pixels is not None:  # plain writes (synced with the rest), as a worker's without a block
                    with RowWriter(str(out_dir / IMAGES_FILE), offset, row_bytes, direct=False) as writer:
                        for r, image in zip(rows, pixels, strict=True):
                            writer.put(int(r), image)
                lines = [
                    json.dumps({"row": int(r), "reason": why}) + "\n"
                    for r, why in zip(rows, bad, strict=True)
                    if why is not None
                ]
                if lines:
                    log.writelines(lines)
                    log.flush()
                    os.fsync(log.fileno())
                for r, why in zip(rows, bad, strict=True):
                    reasons[int(r)] = why
                sync.add(rows, bad)
                sync.commit()
                if progress is not None:
                    progress(len(rows))

            target = (str(out_dir / IMAGES_FILE), offset)
            if workers <= 1:
                for rows, _ in tasks:
                    chunk = [paths[r] for r in rows]
                    record(
                        rows, None, _process_chunk(chunk, settings, image_format, (*target, rows), _take(layouts, rows))
                    )
            else:
                _run_parallel(tasks, paths, settings, image_format, workers, record, target, layouts)
            sync.commit(force=True)
    return [reasons.get(i) for i in range(len(paths))]


def _plan(
    todo: np.ndarray, n_rows: int, file: Path, offset: int, row_bytes: int, workers: int, chunk_size: int
) -> list[tuple[np.ndarray, Block | None]]:
    """The build's tasks, ``(rows, Block or None)``: a fresh parallel build of a file of several hash
    blocks goes a block a task (``cache_rows.plan_blocks``: written directly, hashed by the
    worker); otherwise chunks of at most ``chunk_size`` rows, about 4 per worker when few."""
    if workers > 1 and todo.size == n_rows:
        from cxrbench.rundir import HASH_BLOCK

        with open(file, "rb") as fh:
            header = fh.read(offset)
        blocks = plan_blocks(n_rows, offset, row_bytes, workers, header, HASH_BLOCK)
        if blocks is not None:
            return blocks
    per_task = chunk_size
    if workers > 1:  # small jobs: about 4 chunks per worker, so none sits idle at the end
        per_task = max(1, min(chunk_size, math.ceil(todo.size / (4 * workers))))
    return [(todo[i : i + per_task], None) for i in range(0, todo.size, per_task)]


class _Syncer:
    """Marks decoded rows done once an fsync of the images file that began after they were written
    has returned. ``background``: that fsync runs on a thread while decoding goes on, and a new one
    starts as soon as the last returned; else in the caller, at most every SYNC_SECONDS."""

    def __init__(self, images, done: np.ndarray, *, background: bool, hasher: _BlockHasher | None = None) -> None:
        self.images, self.done, self.hasher = images, done, hasher
        self.pending: list[tuple[np.ndarray, list[str | None]]] = []  # written, not yet in an fsync
        self.syncing: list[tuple[np.ndarray, list[str | None]]] = []  # in the fsync now running
        self.running: Future | None = None
        self.thread = ThreadPoolExecutor(1, thread_name_prefix="cache-sync") if background else None
        self.synced = time.monotonic()

    def add(self, rows: np.ndarray, bad: list[str | None]) -> None:
        self.pending.append((rows, bad))

    def commit(self, *, force: bool = False) -> None:
        """Mark what a finished fsync covered; start the next one when due (``force``: now, and wait)."""
        if self.running is not None and (force or self.running.done()):
            self.running.result()  # an fsync error stops the build: nothing it covered is marked
            self._mark(self.syncing)
            self.running, self.syncing = None, []
        if not self.pending:
            return
        if self.thread is not None and not force:
            if self.running is None:
                self.syncing, self.pending = self.pending, []
                self.running = self.thread.submit(os.fsync, self.images.fileno())
        elif force or time.monotonic() - self.synced >= SYNC_SECONDS:
            os.fsync(self.images.fileno())  # every writer's pages of the file, workers' included
            self._mark(self.pending)
            self.pending = []

    def __enter__(self) -> _Syncer:
        return self

    def __exit__(self, *exc) -> None:
        """Wait for a running fsync (its file must stay open); on an error what it covered stays
        not done (the caller's ``commit(force=True)`` marks everything on success)."""
        if self.thread is not None:
            self.thread.shutdown(wait=True)

    def _mark(self, batches: list[tuple[np.ndarray, list[str | None]]]) -> None:
        for rows, bad in batches:
            self.done[rows] = [_OK if why is None else _BAD for why in bad]
        self.done.flush()
        self.synced = time.monotonic()
        if self.hasher is not None:
            self.hasher.update(self.done)


class _BlockHasher:
    """Hashes the images file's blocks as ``rundir.output_hash`` does, on a thread, as soon as every
    row in a block is durable and marked done (never written again by this build), and hands the
    digests to ``rundir`` for the stage's manifest: the blocks are read while still in the page
    cache and while the workers wait on I/O, instead of all 2.5 GB (9,657 CT slices at 512 px)
    read again after the decode. Blocks it has not hashed when the build ends (an error, or never
    complete) are left to ``output_hash``."""

    def __init__(self, file: Path, offset: int, row_bytes: int, n_rows: int) -> None:
        from cxrbench.rundir import HASH_BLOCK  # here: decode workers need not import rundir

        self.file, self.offset, self.row_bytes, self.n_rows = file, offset, row_bytes, n_rows
        self.block, self.size = HASH_BLOCK, file.stat().st_size
        self.n_blocks = math.ceil(self.size / self.block) if self.size > self.block else 0  # else one plain hash
        self.next = 0
        self.digests: dict[int, Future] = {}
        self.thread = ThreadPoolExecutor(1, thread_name_prefix="cache-hash") if self.n_blocks else None
        self.given: dict[int, BlockDone] = {}  # digests the workers took, by block start
        self.tails: dict[int, bytes] = {}  # row -> fingerprint of the bytes its writer wrote

    def offer(self, done: BlockDone) -> None:
        """A block task's result: its digest stands in for reading the block once its rows are done,
        if the row it shares with the previous block's task was decoded alike by both."""
        self.given[done.start] = done
        if done.tail is not None:
            self.tails[done.tail[0]] = done.tail[1]

    def update(self, done: np.ndarray) -> None:
        """Take the digests of the blocks, in order, whose rows are all done: the worker's, or read
        back and hashed on a thread."""
        from cxrbench.rundir import block_digest

        while self.next < self.n_blocks:
            start = self.next * self.block
            end = min(start + self.block, self.size)
            first = max(0, (start - self.offset) // self.row_bytes)
            last = min(self.n_rows, -(-(end - self.offset) // self.row_bytes))
            if first < last and bool((done[first:last] == _TODO).any()):
                return
            given = self.given.pop(start, None)
            if given is not None and (given.head is None or self.tails.pop(given.head[0], None) == given.head[1]):
                self.digests[start] = taken = Future()
                taken.set_result(given.digest)
            else:
                self.digests[start] = self.thread.submit(block_digest, self.file, start, self.block)
            self.next += 1

    def __enter__(self) -> _BlockHasher:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        """On success wait for the digests and hand over those taken (a block that could not be read
        is left to ``output_hash``, which says why); on an error drop them."""
        if self.thread is None:
            return
        self.thread.shutdown(wait=exc_type is None, cancel_futures=exc_type is not None)
        if exc_type is not None:
            return
        taken = {start: f.result() for start, f in self.digests.items() if not f.exception()}
        if taken:
            from cxrbench.rundir import remember_block_digests

            remember_block_digests(self.file, self.block, taken)


def row_shape(settings: Preprocess, image_format: str | None) -> tuple[int, ...]:
    """One cached image's shape: ``(size, size)``, or ``(C, size, size)`` for CT in C windows."""
    channels = image_channels(image_format)
    return (settings.size, settings.size) if channels == 1 else (channels, settings.size, settings.size)


def open_cache(out_dir: Path) -> np.ndarray:
    """Return the finished cache ``out_dir/images.npy`` as a read-only memmap ``[n, size, size]``
    (``[n, C, size, size]`` for CT in C windows)."""
    out_dir = Path(out_dir)
    file = out_dir / IMAGES_FILE
    if not file.is_file() or not (out_dir / STATE_FILE).is_file():
        raise CxrbenchError(f"no image cache in {out_dir} (run the prepare stage first)")
    done = np.load(out_dir / DONE_FILE)
    if (done == _TODO).any():
        missing = int((done == _TODO).sum())
        raise CxrbenchError(
            f"image cache in {out_dir} is incomplete ({missing} of {done.size} rows not done); "
            "rerun the prepare stage to finish it"
        )
    if done.size == 0:
        return np.load(file)
    return np.load(file, mmap_mode="r")


# ---------------------------------------------------------------- state on disk
def _settings_key(settings: Preprocess, image_format: str | None) -> str:
    """What decides a row's pixels besides its file: rows of a cache with the same key can be reused."""
    head = {"version": CACHE_VERSION, "settings": settings.to_dict(), "format": image_format}
    if (image_format or "").startswith(CT_PREFIX) and settings.scaling == "fixed":
        head["ct_decode"] = 2  # 2: windowed to uint8, then resampled in 8 bits (1: float resampling)
    return hashlib.sha256(json.dumps(head, sort_keys=True).encode()).hexdigest()


def _fingerprint(paths: list[str], settings: Preprocess, image_format: str | None) -> str:
    h = hashlib.sha256(_settings_key(settings, image_format).encode())
    for p in paths:
        h.update(b"\0" + p.encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def _stamps(paths: list[str]) -> np.ndarray:
    """``int64 [n, 2]``: each file's ``file_stamp`` (-1 where it cannot be stat'ed)."""
    out = np.full((len(paths), 2), -1, dtype=np.int64)
    for i, path in enumerate(paths):
        mark = file_stamp(path)
        if mark is not None:
            out[i] = mark
    return out


def _open_or_create(
    paths: list[str], out_dir: Path, settings: Preprocess, image_format: str | None
) -> tuple[int, np.ndarray, dict[int, str]]:
    """Return (byte offset of the images' data, done mask, reasons so far).

    Same paths and settings: resumes, redoing the rows whose file changed (size or modification
    time) since it was decoded. Same settings, other paths (a redone prepare that keeps other
    rows): a new cache starts with the rows of files the old one holds unchanged, copied. Else
    it starts over."""
    key = _fingerprint(paths, settings, image_format)
    shape = (len(paths), *row_shape(settings, image_format))
    now = _stamps(paths)
    for name in (IMAGES_FILE, DONE_FILE, STAMPS_FILE, REASONS_FILE):  # a copy a kill cut short
        (out_dir / f"{name}.next").unlink(missing_ok=True)
    state_file = out_dir / STATE_FILE
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        state = {}  # missing or damaged state: nothing to resume or reuse
    if isinstance(state, dict) and state.get("fingerprint") == key and state.get("shape") == list(shape):
        try:
            offset = _data_offset(out_dir / IMAGES_FILE, shape)
            done = _open_array(out_dir / DONE_FILE, shape[:1], np.uint8)
            stamps = _open_array(out_dir / STAMPS_FILE, (len(paths), 2), np.int64)
            changed = (stamps != now).any(axis=1)
            if changed.any():  # redo rows whose file changed; remember the stamps they are redone from
                done[changed] = _TODO
                done.flush()
                stamps[changed] = now[changed]
                stamps.flush()
            return offset, done, _read_reasons(out_dir / REASONS_FILE, done)
        except (OSError, ValueError, KeyError, TypeError):
            pass
    reuse = _reusable(out_dir, state, settings, image_format, paths, now) if isinstance(state, dict) else None
    suffix = ".next" if reuse is not None else ""  # built beside the old cache, which stays valid until swapped
    files = {name: out_dir / f"{name}{suffix}" for name in (IMAGES_FILE, DONE_FILE, STAMPS_FILE, REASONS_FILE)}
    if not suffix:  # start over: remove the state first, so a crash from here on leaves nothing that matches
        state_file.unlink(missing_ok=True)
        for name in (DONE_FILE, REASONS_FILE, IMAGES_FILE, STAMPS_FILE, PATHS_FILE):
            (out_dir / name).unlink(missing_ok=True)
    _create_images(files[IMAGES_FILE], shape)
    offset = _data_offset(files[IMAGES_FILE], shape)
    done = _create_array(files[DONE_FILE], shape[:1], np.uint8)
    stamps = _create_array(files[STAMPS_FILE], (len(paths), 2), np.int64)
    if len(paths):
        stamps[:] = now
        stamps.flush()
    reasons: dict[int, str] = {}
    files[REASONS_FILE].write_text("", encoding="utf-8")
    if reuse is not None:
        reasons = _copy_rows(out_dir, files, offset, done, *reuse, row_bytes=math.prod(shape[1:]))
        state_file.unlink(missing_ok=True)  # the old cache ends here; a crash from here on starts over
        for name, file in files.items():
            os.replace(file, out_dir / name)
        del done, stamps  # the memmaps of the renamed files stay valid; reopen for clarity
        done = _open_array(out_dir / DONE_FILE, shape[:1], np.uint8)
    from cxrbench.rundir import write_text  # here, not at the top: decode workers need not import it

    write_text(out_dir / PATHS_FILE, json.dumps(paths))
    state = {
        "fingerprint": key,
        "settings_key": _settings_key(settings, image_format),
        "shape": list(shape),
        "settings": settings.to_dict(),
        "image_format": image_format,
        "n": len(paths),
    }
    write_text(state_file, json.dumps(state, indent=1))
    return offset, done, reasons


def _reusable(
    out_dir: Path, state: dict, settings: Preprocess, image_format: str | None, paths: list[str], now: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[int, str]] | None:
    """``(new rows, old rows, their done states, new rows' reasons)``: the rows whose file the old
    cache in ``out_dir`` holds done and unchanged, when it was made with the same settings; None
    when there is nothing to reuse (or the old cache cannot be read)."""
    if state.get("settings_key") != _settings_key(settings, image_format):
        return None
    try:
        old_paths = json.loads((out_dir / PATHS_FILE).read_text(encoding="utf-8"))
        n = len(old_paths)
        old_done = np.load(out_dir / DONE_FILE) if n else np.zeros(0, np.uint8)
        old_stamps = np.load(out_dir / STAMPS_FILE) if n else np.zeros((0, 2), np.int64)
        _data_offset(out_dir / IMAGES_FILE, (n, *row_shape(settings, image_format)))
        if old_done.shape != (n,) or old_stamps.shape != (n, 2):
            return None
        old_reasons = _read_reasons(out_dir / REASONS_FILE, old_done)
    except (OSError, ValueError, TypeError):
        return None
    where = {p: i for i, p in enumerate(old_paths) if old_done[i] != _TODO}
    pairs = [(i, where[p]) for i, p in enumerate(paths) if p in where]
    pairs = [(i, j) for i, j in pairs if (old_stamps[j] == now[i]).all() and now[i, 0] >= 0]
    if not pairs:
        return None
    new_rows, old_rows = (np.array(side, dtype=np.int64) for side in zip(*pairs, strict=True))
    reasons = {i: old_reasons[j] for i, j in pairs if j in old_reasons}
    return new_rows, old_rows, old_done[old_rows], reasons


def _copy_rows(
    out_dir: Path,
    files: dict[str, Path],
    offset: int,
    done: np.ndarray,
    new_rows: np.ndarray,
    old_rows: np.ndarray,
    states: np.ndarray,
    reasons: dict[int, str],
    *,
    row_bytes: int,
) -> dict[int, str]:
    """Copy the old cache's ``old_rows`` (pixels) to ``new_rows`` of the new files with their done
    ``states`` and ``reasons``, durably (synced before anything is marked done); return the reasons.

    Rows consecutive in both caches (a redone prepare keeps whole series) are copied as one range,
    inside the kernel where it can (``os.copy_file_range``), and synced on a thread as the copy goes
    on: no pixels pass through this process, and the last sync has little left to write."""
    source = out_dir / IMAGES_FILE
    old_offset = _npy_header(source)[1]
    # runs of rows consecutive on both sides: (new row, old row, count)
    breaks = np.flatnonzero((np.diff(new_rows) != 1) | (np.diff(old_rows) != 1)) + 1
    starts = np.concatenate([[0], breaks]).astype(np.int64)
    counts = np.diff(np.concatenate([starts, [len(new_rows)]]))
    with (
        open(source, "rb") as src,
        open(files[IMAGES_FILE], "r+b") as images,
        ThreadPoolExecutor(1, thread_name_prefix="cache-copy-sync") as syncer,
    ):
        running = None
        since_sync = 0
        for first, count in zip(starts.tolist(), counts.tolist(), strict=True):
            nbytes = count * row_bytes
            _copy_range(
                src,
                old_offset + int(old_rows[first]) * row_bytes,
                images,
                offset + int(new_rows[first]) * row_bytes,
                nbytes,
            )
            since_sync += nbytes
            if since_sync >= _COPY_SYNC_BYTES and (running is None or running.done()):
                if running is not None:
                    running.result()
                running, since_sync = syncer.submit(os.fsync, images.fileno()), 0
        if running is not None:
            running.result()
        os.fsync(images.fileno())
    with open(files[REASONS_FILE], "w", encoding="utf-8") as log:
        log.writelines(json.dumps({"row": row, "reason": why}) + "\n" for row, why in sorted(reasons.items()))
        log.flush()
        os.fsync(log.fileno())
    done[new_rows] = states
    done.flush()
    return reasons


def _copy_range(src, src_at: int, dst, dst_at: int, nbytes: int) -> None:
    """Copy ``nbytes`` from offset ``src_at`` of the open file ``src`` to ``dst_at`` of ``dst``: in the
    kernel where the platform and file system allow, else through a reused buffer."""
    done = 0
    if hasattr(os, "copy_file_range"):
        try:
            while done < nbytes:
                n = os.copy_file_range(src.fileno(), dst.fileno(), nbytes - done, src_at + done, dst_at + done)
                if n == 0:
                    break  # the source ends early: the loop below says so
                done += n
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL, errno.ENOTSUP):
                raise
    buffer = memoryview(bytearray(min(nbytes - done, 8 << 20))) if done < nbytes else None
    while done < nbytes:
        src.seek(src_at + done)
        n = src.readinto(buffer[: min(len(buffer), nbytes - done)])
        if not n:
            raise OSError(f"{src.name}: ends before the rows it should hold")
        dst.seek(dst_at + done)
        dst.write(buffer[:n])
        done += n
    dst.flush()


def _create_images(file: Path, shape: tuple[int, ...]) -> None:
    """A new images file: a uint8 .npy of ``shape``, zeros (sparse), its header padded so the data
    starts at ``ALIGN`` bytes (rows of a multiple of it can be written with direct I/O)."""
    text = repr({"descr": "|u1", "fortran_order": False, "shape": tuple(shape)})
    room = ALIGN - 10  # magic 6, version 2, header length 2
    with open(file, "wb") as fh:
        fh.write(b"\x93NUMPY\x01\x00" + room.to_bytes(2, "little") + (text.ljust(room - 1) + "\n").encode("latin1"))
        fh.truncate(ALIGN + math.prod(shape))


def _create_array(file: Path, shape: tuple[int, ...], dtype) -> np.ndarray:
    if math.prod(shape) == 0:  # an empty memmap cannot be mapped; a plain array stands in
        np.save(file, np.zeros(shape, dtype=dtype))
        return np.zeros(shape, dtype=dtype)
    arr = np.lib.format.open_memmap(file, mode="w+", dtype=dtype, shape=shape)
    arr.flush()
    return arr


def _open_array(file: Path, shape: tuple[int, ...], dtype) -> np.ndarray:
    if math.prod(shape) == 0:
        arr = np.load(file)
    else:
        arr = np.lib.format.open_memmap(file, mode="r+")
    if arr.shape != shape or arr.dtype != dtype:
        raise ValueError(f"{file} has shape {arr.shape} {arr.dtype}, expected {shape} {dtype}")
    return arr


def _npy_header(file: Path) -> tuple[tuple, int]:
    """The .npy ``file``'s header (shape, fortran order, dtype) and where its data starts."""
    with open(file, "rb") as fh:
        version = np.lib.format.read_magic(fh)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        return read(fh), fh.tell()


def _data_offset(file: Path, shape: tuple[int, ...]) -> int:
    """Return where the uint8 data of the .npy ``file`` starts, after checking its shape."""
    header, offset = _npy_header(file)
    if tuple(header[0]) != shape or header[1] or header[2] != np.uint8:
        raise ValueError(f"{file} holds {header[0]} {header[2]}, expected {shape} uint8")
    return offset


def _read_reasons(file: Path, done: np.ndarray) -> dict[int, str]:
    reasons: dict[int, str] = {}
    if file.is_file():
        with open(file, encoding="utf-8") as fh:
            for line in fh:
                try:
                    item = json.loads(line)
                    reasons[int(item["row"])] = str(item["reason"])
                except (ValueError, KeyError, TypeError):
                    continue  # a line cut short by a kill; its row is not marked done
    bad = set(np.flatnonzero(done == _BAD).tolist())
    missing = bad - reasons.keys()
    if missing:
        raise ValueError(f"{len(missing)} quarantined rows have no recorded reason")
    return {r: why for r, why in reasons.items() if r in bad}


# ---------------------------------------------------------------- the work
def _take(layouts: Sequence[PixelLayout | None] | None, rows: np.ndarray) -> list[PixelLayout | None] | None:
    return None if layouts is None else [layouts[int(r)] for r in rows]


def _process_chunk(
    paths: list[str],
    settings: Preprocess,
    image_format: str | None,
    target: tuple[str, int, np.ndarray],
    layouts: list[PixelLayout | None] | None = None,
    block: Block | None = None,
) -> list[str | None] | BlockDone:
    """Decode ``paths`` into rows ``target[2]`` of the images file ``target[0]`` (data at byte
    ``target[1]``); return per image None or the reason it was quarantined. Top-level so spawn can
    pickle it. The worker writes its rows itself: shipping every decoded image through a pipe to
    the parent cost as much as a tenth of the decode for 512-px CT slices.
    ``block``: the rows make up that hash block (the first ``block.skip`` decoded only); they are
    hashed as they are written and the result is a ``BlockDone``."""
    shape = row_shape(settings, image_format)
    row_bytes = math.prod(shape)
    reasons: list[str | None] = []
    # windowed CT under fixed scaling: decoded straight to 0..255 and resampled in 8 bits
    ct_uint8 = settings.scaling == "fixed" and (image_format or "").startswith(CT_PREFIX)
    file, offset, rows = target
    digest = None if block is None else BlockDigest(block, offset, row_bytes)
    skip = 0 if block is None else block.skip
    # each row goes out as soon as it is decoded (a quarantined one as zeros): no chunk-sized
    # buffer to fill and copy, a tenth of a 512-px CT slice's decode
    with RowWriter(file, offset, row_bytes, direct=block is not None) as writer:
        for i, path in enumerate(paths):
            row = None
            try:
                layout = layouts[i] if layouts is not None else None
                image = read_image(path, image_format=image_format, ct_uint8=ct_uint8, layout=layout)
                if float(image.max()) <= float(image.min()):
                    raise ImageError("constant image (all pixels equal)")
                row = (
                    preprocess(image, settings)
                    if image.ndim == 2
                    else np.stack([preprocess(c, settings) for c in image])
                )
                if row.shape != shape:
                    raise ImageError(f"decoded to shape {row.shape}, the cache holds {shape}")
                reasons.append(None)
            except ImageError as exc:
                reasons.append(exc.reason)
            except MemoryError:
                reasons.append("out of memory while decoding")
            except Exception as exc:  # one odd file must never stop the stage
                reasons.append(f"unexpected error ({type(exc).__name__}: {exc})")
            if reasons[-1] is not None:
                row = np.zeros(shape, dtype=np.uint8)
            if digest is not None:
                digest.add(int(rows[i]), row)
            if i >= skip:
                writer.put(int(rows[i]), row)
    return reasons if digest is None else digest.done(reasons[skip:])


CRASH_REASON = "decoder crashed (worker process died)"


def _run_parallel(tasks, paths, settings, image_format, workers, record, target, layouts) -> None:
    """Run ``tasks`` (arrays of rows) on spawn workers, ``record``-ing each result as it comes.

    When a worker dies (a decoder segfault, the OOM killer), the chunks it took down are retried
    one image at a time in a single-worker pool; an image that kills that too is quarantined with
    ``CRASH_REASON``, and the rest carry on in a fresh pool.
    """
    queue: deque[tuple[np.ndarray, Block | None]] = deque(tasks)
    suspects: deque[tuple[np.ndarray, Block | None]] = deque()
    while queue or suspects:
        if suspects:
            for rows in _pool_pass(suspects, paths, settings, image_format, 1, 1, record, target, layouts):
                record(
                    rows,
                    np.zeros((len(rows), *row_shape(settings, image_format)), np.uint8),
                    [CRASH_REASON] * len(rows),
                )
        else:
            lost = _pool_pass(queue, paths, settings, image_format, workers, 2 * workers, record, target, layouts)
            suspects.extend((np.array([r]), None) for rows in lost for r in rows)


def _pool_pass(queue, paths, settings, image_format, workers, window, record, target, layouts) -> list[np.ndarray]:
    """Take tasks from ``queue`` with at most ``window`` in flight; return the tasks lost when the
    pool broke (empty when all were done). The pool is ``prepare``'s shared one when it has the same
    size (``processes.worker_pool``); a broken one is retired."""
    pending: dict[Future, np.ndarray] = {}
    with worker_pool(workers) as pool:
        while queue or pending:
            while queue and len(pending) < window:
                rows, block = task = queue.popleft()
                decode = rows if block is None else np.arange(block.first, block.stop)
                job = (
                    [paths[r] for r in decode],
                    settings,
                    image_format,
                    (*target, decode),
                    _take(layouts, decode),
                    *([] if block is None else [block]),
                )
                try:
                    pending[pool.submit(_process_chunk, *job)] = rows
                except BrokenProcessPool:
                    queue.appendleft(task)
                    retire(pool)
                    return _lost(pending, record)
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                if isinstance(fut.exception(), BrokenProcessPool):
                    retire(pool)
                    return _lost(pending, record)
                record(pending.pop(fut), None, fut.result())
        return []


def _lost(pending: dict[Future, np.ndarray], record) -> list[np.ndarray]:
    """Record the futures that finished before the pool broke; return the rows of the rest."""
    lost = []
    for fut, rows in pending.items():
        if fut.done() and fut.exception() is None:
            record(rows, None, fut.result())
        else:
            lost.append(rows)
    return lost
