"""The image cache: equals serial preprocessing, quarantines bad files, resumes, bounded in flight."""

from __future__ import annotations

import contextlib
import errno
import multiprocessing
import os
import subprocess
import sys
import textwrap
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxrbench import processes
from cxrbench.data import cache as cache_mod
from cxrbench.data import cache_rows
from cxrbench.data.cache import build_cache, open_cache
from cxrbench.data.images import read_image
from cxrbench.data.transforms import Preprocess, preprocess
from cxrbench.errors import CxrbenchError

SETTINGS = Preprocess(size=16)


def make_pngs(folder: Path, n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        h, w = rng.integers(20, 40, 2)
        arr = rng.integers(0, 65536, (h, w), dtype=np.uint16)
        path = folder / f"img{i:03d}.png"
        Image.fromarray(arr).save(path)
        paths.append(str(path))
    return paths


def serial_reference(paths: list[str], settings: Preprocess) -> np.ndarray:
    return np.stack([preprocess(read_image(p), settings) for p in paths])


def test_in_process_equals_serial_and_quarantines(tmp_path):
    paths = make_pngs(tmp_path, 6)
    (tmp_path / "empty.png").write_bytes(b"")
    Image.fromarray(np.full((20, 20), 3, np.uint8)).save(tmp_path / "flat.png")
    bad = [str(tmp_path / "missing.png"), str(tmp_path / "empty.png"), str(tmp_path / "flat.png")]
    all_paths = paths[:3] + bad + paths[3:]
    reasons = build_cache(all_paths, tmp_path / "c", settings=SETTINGS, workers=0, chunk_size=4)
    assert reasons[:3] == [None] * 3 and reasons[6:] == [None] * 3
    assert reasons[3] == "file not found"
    assert reasons[4].startswith("empty file")
    assert reasons[5].startswith("constant image")
    images = open_cache(tmp_path / "c")
    assert images.shape == (9, 16, 16) and images.dtype == np.uint8
    np.testing.assert_array_equal(images[:3], serial_reference(paths[:3], SETTINGS))
    np.testing.assert_array_equal(images[6:], serial_reference(paths[3:], SETTINGS))
    assert not images[3:6].any()  # quarantined rows are zeros


def test_images_over_the_pixel_limit_are_quarantined_with_the_reason(tmp_path, monkeypatch):
    paths = make_pngs(tmp_path, 3)  # 20-39 pixels a side
    big = tmp_path / "big.png"
    Image.fromarray(np.arange(60 * 50, dtype=np.uint16).reshape(60, 50)).save(big)
    monkeypatch.setenv("CXRBENCH_MAX_PIXELS", "2000")  # spawned workers inherit it
    reasons = build_cache([*paths, str(big)], tmp_path / "c", settings=SETTINGS, workers=2, chunk_size=2)
    assert reasons == [None, None, None, "PNG declares 60x50 pixels (0.003 Mpx) > limit 0.002 Mpx"]
    monkeypatch.setenv("CXRBENCH_MAX_PIXELS", "-1")
    with pytest.raises(CxrbenchError, match="CXRBENCH_MAX_PIXELS must be a positive integer"):
        build_cache(paths, tmp_path / "d", settings=SETTINGS, workers=0)


def test_parallel_processes_equal_serial(tmp_path):
    paths = make_pngs(tmp_path, 8)
    reasons = build_cache(paths, tmp_path / "c", settings=SETTINGS, workers=2, chunk_size=3)
    assert reasons == [None] * 8
    np.testing.assert_array_equal(open_cache(tmp_path / "c"), serial_reference(paths, SETTINGS))


class _Killed(Exception):
    pass


def test_resume_after_interruption_decodes_only_the_rest(tmp_path, monkeypatch):
    monkeypatch.setattr(cache_mod, "SYNC_SECONDS", 0.0)  # sync (and mark done) after every chunk
    paths = make_pngs(tmp_path, 10)
    paths[2] = str(tmp_path / "gone.png")  # a quarantined row in the first chunk
    finished = []

    def die_after_two_chunks(n):
        finished.append(n)
        if len(finished) == 2:
            raise _Killed

    with pytest.raises(_Killed):
        build_cache(
            paths,
            tmp_path / "c",
            settings=SETTINGS,
            workers=0,
            chunk_size=3,
            progress=die_after_two_chunks,
        )
    with pytest.raises(CxrbenchError, match="incomplete"):
        open_cache(tmp_path / "c")

    decoded = []
    real_read = cache_mod.read_image
    monkeypatch.setattr(cache_mod, "read_image", lambda p, **kw: decoded.append(p) or real_read(p, **kw))
    progress = []
    reasons = build_cache(paths, tmp_path / "c", settings=SETTINGS, workers=0, chunk_size=3, progress=progress.append)
    assert decoded == paths[6:]  # the first two chunks (6 rows) were not decoded again
    assert progress[0] == 6 and sum(progress) == 10
    assert reasons[2] == "file not found"  # the earlier run's reason survives the resume
    assert [r is None for r in reasons] == [i != 2 for i in range(10)]
    ok = [p for i, p in enumerate(paths) if i != 2]
    got = open_cache(tmp_path / "c")
    np.testing.assert_array_equal(np.delete(got, 2, axis=0), serial_reference(ok, SETTINGS))

    decoded.clear()  # a finished cache: nothing decoded, same answer
    assert build_cache(paths, tmp_path / "c", settings=SETTINGS, workers=0) == reasons
    assert decoded == []


def _counting(monkeypatch) -> list[str]:
    """The files the cache decodes (in this process: ``workers=0``)."""
    decoded: list[str] = []
    real_read = cache_mod.read_image
    monkeypatch.setattr(cache_mod, "read_image", lambda p, **kw: decoded.append(p) or real_read(p, **kw))
    return decoded


def test_changed_settings_start_over(tmp_path, monkeypatch):
    paths = make_pngs(tmp_path, 4)
    build_cache(paths, tmp_path / "c", settings=SETTINGS, workers=0)
    decoded = _counting(monkeypatch)
    equalized = Preprocess(size=16, equalize=True)
    build_cache(paths, tmp_path / "c", settings=equalized, workers=0)
    assert decoded == paths
    np.testing.assert_array_equal(open_cache(tmp_path / "c"), serial_reference(paths, equalized))


def test_other_paths_reuse_the_rows_of_files_already_decoded(tmp_path, monkeypatch):
    paths = make_pngs(tmp_path, 6)
    missing = str(tmp_path / "gone.png")
    first = build_cache([*paths[:4], missing], tmp_path / "c", settings=SETTINGS, workers=0)
    assert first[4] == "file not found"
    decoded = _counting(monkeypatch)
    order = [paths[5], missing, paths[3], paths[0], paths[4]]  # two new files, three reordered, one dropped
    reasons = build_cache(order, tmp_path / "c", settings=SETTINGS, workers=0)
    assert decoded == [paths[5], missing, paths[4]]  # a file that was not there is looked for again
    assert reasons == [None, "file not found", None, None, None]  # the reason is reused with its row
    kept = [p for p in order if p != missing]
    got = np.delete(open_cache(tmp_path / "c"), 1, axis=0)
    np.testing.assert_array_equal(got, serial_reference(kept, SETTINGS))
    assert not list((tmp_path / "c").glob("*.next"))
    decoded.clear()  # and that cache resumes as any other: nothing left to do
    assert build_cache(order, tmp_path / "c", settings=SETTINGS, workers=0) == reasons and decoded == []


@pytest.mark.parametrize("kernel", ["whole", "partial", "unsupported"])
def test_kept_rows_are_copied_a_run_at_a_time(tmp_path, monkeypatch, kernel):
    """Rows consecutive in both caches are one copy, by the kernel (which may copy less than asked
    per call) or, where it cannot, through a buffer: the same pixels either way."""
    if kernel != "unsupported" and not hasattr(os, "copy_file_range"):
        pytest.skip("no os.copy_file_range on this platform")
    paths = make_pngs(tmp_path, 12)
    build_cache(paths[:10], tmp_path / "c", settings=SETTINGS, workers=0)
    real, calls = getattr(os, "copy_file_range", None), []

    def copy_file_range(src, dst, count, offset_src=None, offset_dst=None):
        calls.append(count)
        if kernel == "unsupported":
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return real(src, dst, min(count, 100) if kernel == "partial" else count, offset_src, offset_dst)

    monkeypatch.setattr(os, "copy_file_range", copy_file_range, raising=False)
    decoded = _counting(monkeypatch)
    order = [*paths[2:6], paths[11], *paths[7:10], paths[0]]  # kept runs 2-5, 7-9 and 0; one new file
    assert build_cache(order, tmp_path / "c", settings=SETTINGS, workers=0) == [None] * 9
    assert decoded == [paths[11]]
    np.testing.assert_array_equal(open_cache(tmp_path / "c"), serial_reference(order, SETTINGS))
    row = 16 * 16
    if kernel == "whole":
        assert calls == [4 * row, 3 * row, row]
    elif kernel == "partial":
        assert sum(c == 4 * row for c in calls) == 1 and len(calls) > 8  # asked again for the rest


def test_a_changed_file_is_decoded_again(tmp_path, monkeypatch):
    paths = make_pngs(tmp_path, 4)
    build_cache(paths, tmp_path / "c", settings=SETTINGS, workers=0)
    Image.fromarray(np.arange(30 * 30, dtype=np.uint16).reshape(30, 30)).save(paths[1])  # edited in place
    decoded = _counting(monkeypatch)
    build_cache(paths, tmp_path / "c", settings=SETTINGS, workers=0)
    assert decoded == [paths[1]]
    np.testing.assert_array_equal(open_cache(tmp_path / "c"), serial_reference(paths, SETTINGS))
    decoded.clear()  # reused into a cache of other rows: not from the old pixels either
    Image.fromarray(np.arange(20 * 30, dtype=np.uint16).reshape(20, 30)).save(paths[2])
    build_cache(paths[1:], tmp_path / "c", settings=SETTINGS, workers=0)
    assert decoded == [paths[2]]
    np.testing.assert_array_equal(open_cache(tmp_path / "c"), serial_reference(paths[1:], SETTINGS))


def test_a_crash_while_copying_rows_leaves_the_old_cache_usable(tmp_path, monkeypatch):
    paths = make_pngs(tmp_path, 5)
    build_cache(paths[:4], tmp_path / "c", settings=SETTINGS, workers=0)
    real_copy = cache_mod._copy_range

    def dies(*args, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(cache_mod, "_copy_range", dies)
    with pytest.raises(KeyboardInterrupt):
        build_cache(paths[1:], tmp_path / "c", settings=SETTINGS, workers=0)
    monkeypatch.setattr(cache_mod, "_copy_range", real_copy)
    assert list((tmp_path / "c").glob("*.next"))  # the cut-short copy
    decoded = _counting(monkeypatch)
    assert build_cache(paths[:4], tmp_path / "c", settings=SETTINGS, workers=0) == [None] * 4 and decoded == []
    assert not list((tmp_path / "c").glob("*.next"))  # cleared by the next build
    build_cache(paths[1:], tmp_path / "c", settings=SETTINGS, workers=0)
    assert decoded == [paths[4]]
    np.testing.assert_array_equal(open_cache(tmp_path / "c"), serial_reference(paths[1:], SETTINGS))


@pytest.mark.parametrize("damage", ["paths.json", "stamps.npy", "cache.json"])
def test_an_old_cache_that_cannot_be_read_is_not_reused(tmp_path, monkeypatch, damage):
    paths = make_pngs(tmp_path, 4)
    build_cache(paths, tmp_path / "c", settings=SETTINGS, workers=0)
    (tmp_path / "c" / damage).write_bytes(b"\x00garbage")
    decoded = _counting(monkeypatch)
    build_cache(paths[::-1], tmp_path / "c", settings=SETTINGS, workers=0)
    assert decoded == paths[::-1]
    np.testing.assert_array_equal(open_cache(tmp_path / "c"), serial_reference(paths[::-1], SETTINGS))


def test_resume_after_a_real_kill(tmp_path):
    """A separate process building the cache is killed hard (os._exit) mid-way; a rerun finishes."""
    paths = make_pngs(tmp_path, 9)
    script = textwrap.dedent(
        f"""
        import os
        import cxrbench.data.cache
        from cxrbench.data.cache import build_cache
        from cxrbench.data.transforms import Preprocess
        cxrbench.data.cache.SYNC_SECONDS = 0.0  # every chunk synced and marked done
        seen = []
        def progress(n):
            seen.append(n)
            if len(seen) == 2:
                os._exit(9)
        build_cache({paths!r}, {str(tmp_path / "c")!r}, settings=Preprocess(size=16), workers=0,
                    chunk_size=2, progress=progress)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert proc.returncode == 9, proc.stderr.decode()
    done = np.load(tmp_path / "c" / cache_mod.DONE_FILE)
    assert int((done != 0).sum()) == 4
    progress = []
    assert (
        build_cache(
            paths,
            tmp_path / "c",
            settings=SETTINGS,
            workers=0,
            chunk_size=2,
            progress=progress.append,
        )
        == [None] * 9
    )
    assert progress[0] == 4
    np.testing.assert_array_equal(open_cache(tmp_path / "c"), serial_reference(paths, SETTINGS))


def test_bounded_chunks_in_flight(tmp_path, monkeypatch):
    """Parallel mode never holds more than 2 * workers chunks of at most chunk_size images."""
    paths = make_pngs(tmp_path, 30)
    state = {"submitted": 0, "recorded": 0, "max_in_flight": 0, "max_chunk": 0}

    class CountingPool(ThreadPoolExecutor):
        def __init__(self, max_workers, mp_context=None, **process_only):  # initializer: for processes
            super().__init__(max_workers=max_workers)

        def submit(self, fn, chunk_paths, *args):
            state["submitted"] += 1
            state["max_chunk"] = max(state["max_chunk"], len(chunk_paths))
            in_flight = state["submitted"] - state["recorded"]
            state["max_in_flight"] = max(state["max_in_flight"], in_flight)
            return super().submit(fn, chunk_paths, *args)

    def count(n):
        state["recorded"] += 1

    monkeypatch.setattr(processes, "ProcessPoolExecutor", CountingPool)
    reasons = build_cache(paths, tmp_path / "c", settings=SETTINGS, workers=2, chunk_size=2, progress=count)
    assert reasons == [None] * 30
    assert state["submitted"] == 15 and state["max_chunk"] == 2
    assert state["max_in_flight"] <= 4
    np.testing.assert_array_equal(open_cache(tmp_path / "c"), serial_reference(paths, SETTINGS))


def test_a_parallel_build_decodes_on_while_a_sync_runs_and_marks_rows_only_once_synced(tmp_path, monkeypatch):
    """With workers the images file is synced on a thread: chunks keep being recorded while an fsync
    is in flight (here each waits for two more), and at every moment the rows marked done are among
    those written before an fsync that has returned."""
    import threading

    paths = make_pngs(tmp_path, 24)
    images_file = tmp_path / "c" / cache_mod.IMAGES_FILE
    written: set[int] = set()  # rows a worker has finished writing
    durable: set[int] = set()  # rows written before an fsync that returned
    recorded = [0]  # rows handed to progress
    lock = threading.Condition()
    waits = []

    class Pool(ThreadPoolExecutor):
        def __init__(self, max_workers, mp_context=None, **process_only):
            super().__init__(max_workers=max_workers)

    real_chunk, real_fsync = cache_mod._process_chunk, os.fsync

    def chunk(paths, settings, image_format, target, layouts=None):
        reasons = real_chunk(paths, settings, image_format, target, layouts)
        with lock:
            written.update(int(r) for r in target[2])
        return reasons

    def fsync(fd):
        if not threading.current_thread().name.startswith("cache-sync"):
            return real_fsync(fd)  # the reasons log, the final sync
        assert os.path.samefile(f"/proc/self/fd/{fd}", images_file)
        with lock:
            covered, start = set(written), recorded[0]
            waits.append(lock.wait_for(lambda: recorded[0] >= min(start + 4, 24), timeout=30))
        real_fsync(fd)
        with lock:
            durable.update(covered)

    def progress(n):
        with lock:
            recorded[0] += n
            lock.notify_all()
            done = set(np.flatnonzero(np.load(tmp_path / "c" / cache_mod.DONE_FILE)).tolist())
            assert done <= durable

    monkeypatch.setattr(processes, "ProcessPoolExecutor", Pool)
    monkeypatch.setattr(cache_mod, "_process_chunk", chunk)
    monkeypatch.setattr(os, "fsync", fsync)
    assert (
        build_cache(paths, tmp_path / "c", settings=SETTINGS, workers=2, chunk_size=2, progress=progress) == [None] * 24
    )
    assert waits and all(waits)  # every background fsync saw two more chunks recorded meanwhile
    assert np.load(tmp_path / "c" / cache_mod.DONE_FILE).all()
    np.testing.assert_array_equal(open_cache(tmp_path / "c"), serial_reference(paths, SETTINGS))


def test_rows_are_marked_done_only_once_synced(tmp_path, monkeypatch):
    """Between syncs decoded rows are pending: a kill before the next sync loses them (they are
    decoded again); none of them is marked done."""
    monkeypatch.setattr(cache_mod, "SYNC_SECONDS", 3600.0)
    paths = make_pngs(tmp_path, 9)
    events = []

    def kill_after_two_chunks(n):
        events.append(n)
        if len(events) == 2:
            raise _Killed

    with pytest.raises(_Killed):
        build_cache(paths, tmp_path / "c", settings=SETTINGS, workers=0, chunk_size=3, progress=kill_after_two_chunks)
    assert not np.load(tmp_path / "c" / cache_mod.DONE_FILE).any()  # decoded, written, not synced: not done
    decoded = []
    real_read = cache_mod.read_image
    monkeypatch.setattr(cache_mod, "read_image", lambda p, **kw: decoded.append(p) or real_read(p, **kw))
    assert build_cache(paths, tmp_path / "c", settings=SETTINGS, workers=0, chunk_size=3) == [None] * 9
    assert decoded == paths  # nothing had been marked done: all decoded again, once
    np.testing.assert_array_equal(open_cache(tmp_path / "c"), serial_reference(paths, SETTINGS))


def _crash_on_marker(paths, settings, image_format, *target):
    """Worker body that dies like a segfaulting decoder on any path containing CRASH."""
    if any("CRASH" in p for p in paths):
        os._exit(3)
    return cache_mod._process_chunk(paths, settings, image_format, *target)


class _CrashingPool(ProcessPoolExecutor):
    """A real process pool (fork, so the test module's function is there) running the crasher."""

    def __init__(self, max_workers, mp_context=None, **options):  # the real initializer runs too
        super().__init__(max_workers=max_workers, mp_context=multiprocessing.get_context("fork"), **options)

    def submit(self, fn, *args):
        return super().submit(_crash_on_marker, *args)


@pytest.mark.skipif(sys.platform != "linux", reason="uses fork to run a test-module worker")
@pytest.mark.parametrize("shared", [False, True])
def test_worker_crash_quarantines_only_the_culprit(tmp_path, monkeypatch, shared):
    paths = make_pngs(tmp_path, 7)
    culprit = tmp_path / "CRASH.png"
    Image.fromarray(np.full((20, 20), 9, np.uint8)).save(culprit)
    paths.insert(3, str(culprit))
    monkeypatch.setattr(processes, "ProcessPoolExecutor", _CrashingPool)
    with processes.shared_pool(2) if shared else contextlib.nullcontext():  # prepare's pool is retired, not reused
        reasons = build_cache(paths, tmp_path / "c", settings=SETTINGS, workers=2, chunk_size=2)
    assert reasons == [None] * 3 + [cache_mod.CRASH_REASON] + [None] * 4
    ok = paths[:3] + paths[4:]
    got = open_cache(tmp_path / "c")
    np.testing.assert_array_equal(np.delete(got, 3, axis=0), serial_reference(ok, SETTINGS))


@pytest.mark.skipif(sys.platform != "linux", reason="uses fork to run a test-module worker")
def test_a_crash_in_a_block_task_quarantines_only_the_culprit_and_keeps_the_digests_true(tmp_path, monkeypatch):
    """A fresh build of many hash blocks goes a block a task; the task that dies is retried an
    image at a time like any chunk, and the blocks it had are hashed from the file instead."""
    import blake3

    from cxrbench import rundir

    monkeypatch.setattr(rundir, "HASH_BLOCK", 4300)  # rows of 256 bytes: 9 blocks
    paths = make_pngs(tmp_path, 119)
    culprit = tmp_path / "CRASH.png"
    Image.fromarray(np.full((20, 20), 9, np.uint8)).save(culprit)
    paths.insert(50, str(culprit))
    monkeypatch.setattr(processes, "ProcessPoolExecutor", _CrashingPool)
    planned = []
    monkeypatch.setattr(cache_mod, "plan_blocks", lambda *a: planned.append(cache_rows.plan_blocks(*a)) or planned[-1])
    reasons = build_cache(paths, tmp_path / "c", settings=SETTINGS, workers=2)
    assert len(planned) == 1 and len(planned[0]) == 9
    assert reasons == [None] * 50 + [cache_mod.CRASH_REASON] + [None] * 69
    got = open_cache(tmp_path / "c")
    np.testing.assert_array_equal(np.delete(got, 50, axis=0), serial_reference(paths[:50] + paths[51:], SETTINGS))
    file = tmp_path / "c" / cache_mod.IMAGES_FILE
    data, stat = file.read_bytes(), file.stat()
    known = rundir._KNOWN_BLOCKS[(stat.st_dev, stat.st_ino)][1]
    assert known == {s: blake3.blake3(data[s : s + 4300]).digest() for s in range(0, len(data), 4300)}


def test_open_cache_is_read_only_and_checks_presence(tmp_path):
    with pytest.raises(CxrbenchError, match="no image cache"):
        open_cache(tmp_path / "nothing")
    paths = make_pngs(tmp_path, 2)
    build_cache(paths, tmp_path / "c", settings=SETTINGS, workers=0)
    images = open_cache(tmp_path / "c")
    assert isinstance(images, np.memmap)
    with pytest.raises(ValueError):
        images[0, 0, 0] = 1


def test_empty_path_list(tmp_path):
    assert build_cache([], tmp_path / "c", settings=SETTINGS, workers=0) == []
    assert open_cache(tmp_path / "c").shape == (0, 16, 16)


def test_parameters_validated(tmp_path):
    with pytest.raises(CxrbenchError, match="workers"):
        build_cache([], tmp_path, settings=SETTINGS, workers=-1)
    with pytest.raises(CxrbenchError, match="chunk_size"):
        build_cache([], tmp_path, settings=SETTINGS, chunk_size=0)
    with pytest.raises(CxrbenchError, match="image_format"):
        build_cache([], tmp_path, settings=SETTINGS, image_format="gif")
    with pytest.raises(CxrbenchError, match="settings"):
        build_cache([], tmp_path, settings={"size": 16})


def test_file_stamp_is_the_size_and_time_of_the_file_or_of_a_nifti_slices_volume(tmp_path):
    from cxrbench.data.images import file_stamp

    volume = tmp_path / "ct.nii.gz"
    volume.write_bytes(b"x" * 123)
    os.utime(volume, ns=(1_000_000_000, 2_000_000_000))
    assert file_stamp(volume) == (123, 2_000_000_000)
    assert file_stamp(f"{volume}#7") == (123, 2_000_000_000)  # slice 7 of the volume
    assert file_stamp(tmp_path / "missing.png") is None


def test_block_hasher_hashes_a_block_once_all_its_rows_are_done(tmp_path, monkeypatch):
    from cxrbench import rundir

    monkeypatch.setattr(rundir, "HASH_BLOCK", 1024)
    file = tmp_path / "images.npy"
    file.write_bytes(os.urandom(128 + 50 * 100))  # a 128-byte header, 50 rows of 100 bytes: 6 blocks
    done = np.zeros(50, np.uint8)
    with cache_mod._BlockHasher(file, 128, 100, 50) as hasher:
        hasher.update(done)
        assert hasher.digests == {}
        done[:9] = cache_mod._OK  # rows 0-8 end inside block 0 (bytes 128 + 900 > 1024)
        hasher.update(done)
        assert list(hasher.digests) == [0]
        done[9:] = cache_mod._BAD  # quarantined rows are final too
        done[30] = cache_mod._TODO  # but one row left blocks 3.. waiting (row 30: bytes 3128-3228)
        hasher.update(done)
        assert list(hasher.digests) == [0, 1024, 2048]
        done[30] = cache_mod._OK
        hasher.update(done)
    assert list(hasher.digests) == [0, 1024, 2048, 3072, 4096, 5120]
    assert rundir.output_hash(file) == rundir.output_hash(file, fresh=True)
    assert rundir._KNOWN_BLOCKS[(file.stat().st_dev, file.stat().st_ino)][1] == {
        start: rundir.block_digest(file, start, 1024) for start in range(0, 5128, 1024)
    }


@pytest.mark.parametrize("workers", [0, 2])
def test_a_build_hands_its_block_digests_to_the_manifest(tmp_path, monkeypatch, workers):
    from cxrbench import rundir

    monkeypatch.setattr(rundir, "HASH_BLOCK", 1000)  # rows of 256 bytes
    paths = make_pngs(tmp_path, 12)
    build_cache(paths, tmp_path / "c", settings=SETTINGS, workers=workers, chunk_size=2)
    file = tmp_path / "c" / cache_mod.IMAGES_FILE
    known = rundir._KNOWN_BLOCKS[(file.stat().st_dev, file.stat().st_ino)]
    assert known[0][2] == 1000 and sorted(known[1]) == list(range(0, file.stat().st_size, 1000))
    assert known[1] == {start: rundir.block_digest(file, start, 1000) for start in known[1]}
    assert rundir.output_hash(file) == rundir.output_hash(file, fresh=True)


def test_a_block_the_hasher_could_not_read_is_left_to_output_hash(tmp_path, monkeypatch):
    from cxrbench import rundir

    monkeypatch.setattr(rundir, "HASH_BLOCK", 1024)
    real = rundir.block_digest

    def flaky(path, start, block):
        if start == 1024:
            raise OSError("read error")
        return real(path, start, block)

    file = tmp_path / "images.npy"
    file.write_bytes(os.urandom(128 + 50 * 100))
    with monkeypatch.context() as m:
        m.setattr(rundir, "block_digest", flaky)
        with cache_mod._BlockHasher(file, 128, 100, 50) as hasher:
            hasher.update(np.full(50, cache_mod._OK, np.uint8))
    known = rundir._KNOWN_BLOCKS[(file.stat().st_dev, file.stat().st_ino)][1]
    assert sorted(known) == [0, 2048, 3072, 4096, 5120]
    assert rundir.output_hash(file) == rundir.output_hash(file, fresh=True)
