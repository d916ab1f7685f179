"""Block tasks of a parallel cache build: rows written by the workers (directly where the file
system allows) and hashed on the way, digests checked against the file's own bytes."""

from __future__ import annotations

import errno
import fcntl
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import blake3
import numpy as np
import pytest

from cxrbench import processes, rundir
from cxrbench.data import cache as cache_mod
from cxrbench.data import cache_rows
from cxrbench.data.cache import build_cache, open_cache
from cxrbench.data.cache_rows import ALIGN, Block, RowWriter, plan_blocks
from cxrbench.data.transforms import Preprocess
from tests.data.test_cache import make_pngs, serial_reference


class ThreadPool(ThreadPoolExecutor):
    """The spawn pool's stand-in: workers are threads, so spies in this process see their calls."""

    def __init__(self, max_workers, mp_context=None, **process_only):
        super().__init__(max_workers=max_workers)


def direct_io_works(folder: Path) -> bool:
    probe = folder / "probe"
    probe.write_bytes(b"\0" * ALIGN)
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_DIRECT))
        return True
    except (OSError, AttributeError):
        return False


def file_blocks(file: Path, block: int) -> dict[int, bytes]:
    """Each block's BLAKE3 digest, from the file's bytes (the reference for the workers' digests)."""
    data = file.read_bytes()
    return {start: blake3.blake3(data[start : start + block]).digest() for start in range(0, len(data), block)}


def spy_block_reads(monkeypatch) -> list[int]:
    """The starts of the blocks read back from the file to hash them, in order."""
    starts: list[int] = []
    real = rundir.block_digest

    def block_digest(path, start, block, **kw):
        starts.append(start)
        return real(path, start, block, **kw)

    monkeypatch.setattr(rundir, "block_digest", block_digest)
    return starts


def known_blocks(file: Path) -> dict[int, bytes]:
    stat = file.stat()
    return rundir._KNOWN_BLOCKS[(stat.st_dev, stat.st_ino)][1]


def test_blocks_are_planned_by_hand_computed_boundaries():
    """10 rows of 100 bytes after a 64-byte header, blocks of 256 bytes: rows start at 64, 164, ...;
    a row that begins before its block is decoded by both neighbours and written by the first; the
    last block holds only the end of row 9."""
    header = bytes(range(64))
    tasks = plan_blocks(10, 64, 100, 1, header, 256)
    assert [rows.tolist() for rows, _ in tasks] == [[0, 1], [2, 3, 4], [5, 6, 7], [8, 9], []]
    assert [b for _, b in tasks] == [
        Block(0, 256, 0, 2, 0, header),
        Block(256, 512, 1, 5, 1, b""),
        Block(512, 768, 4, 8, 1, b""),
        Block(768, 1024, 7, 10, 1, b""),
        Block(1024, 1064, 9, 10, 1, b""),
    ]
    # rows of 96 bytes: row 2 begins exactly where block 1 does, so no row is shared there
    assert [(rows.tolist(), b.first, b.skip) for rows, b in plan_blocks(8, 64, 96, 1, header, 256)] == [
        ([0, 1], 0, 0),
        ([2, 3, 4], 2, 0),
        ([5, 6, 7], 4, 1),
        ([], 7, 1),
    ]
    assert plan_blocks(10, 64, 100, 2, header, 256) is None  # 5 blocks: too few for 2 workers
    assert plan_blocks(1, 64, 100, 1, header, 256) is None  # one block
    assert plan_blocks(0, 64, 100, 1, header, 256) is None
    assert plan_blocks(10, 300, 100, 1, bytes(300), 256) is None  # a header longer than a block


@pytest.mark.parametrize("seed", range(40))
def test_planned_blocks_cover_every_byte_and_write_every_row_once(seed):
    rng = np.random.default_rng(seed)
    n, row_bytes = int(rng.integers(1, 400)), int(rng.integers(1, 5000))
    offset = int(rng.integers(0, 3)) * 64 + 128
    block = int(rng.integers(max(offset + 1, row_bytes), 4 * row_bytes + offset + 2))
    tasks = plan_blocks(n, offset, row_bytes, 1, bytes(offset), block)
    size = offset + n * row_bytes
    if tasks is None:
        assert size <= block or -(-size // block) < 4
        return
    assert np.concatenate([rows for rows, _ in tasks]).tolist() == list(range(n))
    assert [b.start for _, b in tasks] == list(range(0, size, block)) and tasks[-1][1].end == size
    for rows, b in tasks:
        assert rows.tolist() == list(range(b.first + b.skip, b.stop))
        begins = offset + b.first * row_bytes
        assert begins <= max(b.start, offset) and offset + b.stop * row_bytes >= b.end  # decoded rows cover it
        assert (begins < b.start) == bool(b.skip)  # only a row begun in the block before is skipped
        assert b.head == bytes(offset)[b.start : min(b.end, offset)]


@pytest.mark.parametrize(("size", "n", "block"), [(16, 120, 4300), (64, 24, 10_000)])
def test_a_block_build_is_hashed_by_its_workers(tmp_path, monkeypatch, size, n, block):
    """Rows of 256 bytes (written plainly) or 4 KiB (directly, where the file system allows): the
    cache equals serial preprocessing, no block is read back to hash it, and every digest the
    workers took is the file's own."""
    monkeypatch.setattr(rundir, "HASH_BLOCK", block)
    monkeypatch.setattr(processes, "ProcessPoolExecutor", ThreadPool)
    monkeypatch.setattr(cache_rows, "BATCH_BYTES", 3 * size * size)  # several batches a block
    read_back = spy_block_reads(monkeypatch)
    direct_writes = []
    real_pwrite = os.pwrite

    def pwrite(fd, data, at):
        direct_writes.append(bool(fcntl.fcntl(fd, fcntl.F_GETFL) & getattr(os, "O_DIRECT", 0)))
        return real_pwrite(fd, data, at)

    monkeypatch.setattr(os, "pwrite", pwrite)
    paths = make_pngs(tmp_path, n)
    settings = Preprocess(size=size)
    assert build_cache(paths, tmp_path / "c", settings=settings, workers=2) == [None] * n
    np.testing.assert_array_equal(open_cache(tmp_path / "c"), serial_reference(paths, settings))
    file = tmp_path / "c" / cache_mod.IMAGES_FILE
    assert open_cache(tmp_path / "c").offset == ALIGN
    assert read_back == []
    assert known_blocks(file) == file_blocks(file, block) and len(known_blocks(file)) >= 8
    assert rundir.output_hash(file) == rundir.output_hash(file, fresh=True)
    aligned = size * size % ALIGN == 0
    assert direct_writes and set(direct_writes) == {aligned and direct_io_works(tmp_path)}


def test_a_block_build_in_spawned_workers_hands_over_the_files_digests(tmp_path, monkeypatch):
    monkeypatch.setattr(rundir, "HASH_BLOCK", 10_000)
    read_back = spy_block_reads(monkeypatch)
    paths = make_pngs(tmp_path, 24)
    settings = Preprocess(size=64)
    assert build_cache(paths, tmp_path / "c", settings=settings, workers=2) == [None] * 24
    np.testing.assert_array_equal(open_cache(tmp_path / "c"), serial_reference(paths, settings))
    file = tmp_path / "c" / cache_mod.IMAGES_FILE
    assert read_back == [] and known_blocks(file) == file_blocks(file, 10_000)


def test_a_shared_row_decoded_differently_leaves_its_block_to_be_read_back(tmp_path, monkeypatch):
    """The two tasks that decode a row crossing a block boundary must agree on its bytes for the
    second block's worker digest to stand; here the second decode differs (a file changed between
    them), so that block is read back from the file, and every digest still matches the file."""
    block = 4300
    monkeypatch.setattr(rundir, "HASH_BLOCK", block)
    monkeypatch.setattr(processes, "ProcessPoolExecutor", ThreadPool)
    read_back = spy_block_reads(monkeypatch)
    paths = make_pngs(tmp_path, 120)
    tasks = plan_blocks(120, ALIGN, 256, 2, bytes(ALIGN), block)
    shared = next(b for _, b in tasks if b.skip)  # the first block whose first row began before it
    calls: dict[str, int] = {}
    real_preprocess = cache_mod.preprocess

    def preprocess(image, settings):
        out = real_preprocess(image, settings)
        key = out.tobytes()
        calls[key] = calls.get(key, 0) + 1
        return out ^ 1 if calls[key] == 2 and key == target else out

    target = real_preprocess(cache_mod.read_image(paths[shared.first]), Preprocess(size=16)).tobytes()
    monkeypatch.setattr(cache_mod, "preprocess", preprocess)
    assert build_cache(paths, tmp_path / "c", settings=Preprocess(size=16), workers=2) == [None] * 120
    file = tmp_path / "c" / cache_mod.IMAGES_FILE
    assert read_back == [shared.start]
    assert known_blocks(file) == file_blocks(file, block)


def rows_of(file: Path, offset: int, row_bytes: int, rows: list[int]) -> list[bytes]:
    data = file.read_bytes()
    return [data[offset + r * row_bytes : offset + (r + 1) * row_bytes] for r in rows]


@pytest.mark.parametrize("direct", [True, False])
def test_the_row_writer_puts_each_row_at_its_place(tmp_path, monkeypatch, direct):
    """Runs of consecutive rows and jumps, more rows than a batch holds: each lands where it
    belongs, with direct I/O or plain writes."""
    monkeypatch.setattr(cache_rows, "BATCH_BYTES", 2 * ALIGN)
    file = tmp_path / "images.npy"
    file.write_bytes(b"h" * ALIGN + bytes(12 * ALIGN))
    order = [3, 4, 5, 9, 0, 1, 11]
    rows = {r: np.full(ALIGN, r + 1, np.uint8) for r in order}
    with RowWriter(str(file), ALIGN, ALIGN, direct=direct) as writer:
        assert (writer.direct is not None) == (direct and direct_io_works(tmp_path))
        for r in order:
            writer.put(r, rows[r])
    assert file.read_bytes()[:ALIGN] == b"h" * ALIGN
    expected = [rows[r].tobytes() if r in rows else bytes(ALIGN) for r in range(12)]
    assert rows_of(file, ALIGN, ALIGN, list(range(12))) == expected
    for offset, row_bytes in ((128, ALIGN), (ALIGN, 3000)):  # rows off the 4 KiB grid: plain writes
        with RowWriter(str(file), offset, row_bytes, direct=direct) as writer:
            assert writer.direct is None
            writer.put(1, np.full(row_bytes, 5, np.uint8))
        assert rows_of(file, offset, row_bytes, [1]) == [bytes([5]) * row_bytes]


def test_a_device_that_refuses_a_direct_write_gets_it_plainly(tmp_path, monkeypatch):
    if not direct_io_works(tmp_path):
        pytest.skip("this file system refuses O_DIRECT: the writer writes plainly from the start")
    real_pwrite = os.pwrite

    def pwrite(fd, data, at):
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_pwrite(fd, data, at)

    monkeypatch.setattr(os, "pwrite", pwrite)
    file = tmp_path / "images.npy"
    file.write_bytes(bytes(5 * ALIGN))
    with RowWriter(str(file), ALIGN, ALIGN, direct=True) as writer:
        for r in range(4):
            writer.put(r, np.full(ALIGN, 7 + r, np.uint8))
    assert rows_of(file, ALIGN, ALIGN, [0, 3]) == [bytes([7]) * ALIGN, bytes([10]) * ALIGN]


@pytest.mark.parametrize("direct", [True, False])
def test_a_failed_row_write_fails_the_task(tmp_path, monkeypatch, direct):
    def full(fd, data, at):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwrite", full)
    file = tmp_path / "images.npy"
    file.write_bytes(bytes(3 * ALIGN))
    with pytest.raises(OSError, match="No space left"), RowWriter(str(file), ALIGN, ALIGN, direct=direct) as writer:
        writer.put(0, np.ones(ALIGN, np.uint8))


def test_a_block_task_runs_without_loading_pyarrow(tmp_path):
    """A decode worker hashes its block without importing ``rundir`` (which loads pyarrow, ~0.1 s
    a worker process)."""
    import subprocess
    import sys
    import textwrap

    paths = make_pngs(tmp_path, 3)
    file = tmp_path / "images.npy"
    file.write_bytes(bytes(ALIGN + 3 * 256))
    code = textwrap.dedent(
        f"""
        import sys
        import numpy as np
        from cxrbench.data.cache import _process_chunk
        from cxrbench.data.cache_rows import Block
        from cxrbench.data.transforms import Preprocess
        block = Block(0, {ALIGN + 3 * 256}, 0, 3, 0, bytes({ALIGN}))
        done = _process_chunk({paths!r}, Preprocess(size=16), None, ({str(file)!r}, {ALIGN}, np.arange(3)), None, block)
        assert done.reasons == [None] * 3, done
        print(sorted(m for m in ("pyarrow", "cxrbench.rundir", "pandas") if m in sys.modules), done.digest.hex())
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["[]", blake3.blake3(file.read_bytes()).hexdigest()]
