"""Batches from the image cache: they follow the (seed, epoch) plan whatever the worker count, carry
extra per-row fields, and never pickle the memory-mapped cache into workers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cxrbench.engine.data import EpochBatches, RowBatches, batches, epoch_order, loader
from cxrbench.errors import CxrbenchError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _images(n: int = 48, size: int = 16) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, size, size), dtype=np.uint8)


def test_epoch_batches_follow_the_plan_and_workers_do_not_change_them(tmp_path: Path) -> None:
    images = _images(30, 8)
    path = tmp_path / "images.npy"
    np.save(path, images)
    mm = np.load(path, mmap_mode="r")
    rows = np.arange(29, -1, -1)
    targets = np.random.default_rng(1).random((30, 2)).astype(np.float32)
    data = EpochBatches(images, rows, {"targets": targets}, seed=5, batch_size=7, epochs=2)
    assert len(data) == 2 * 5
    plan = [batches(epoch_order(30, seed=5, epoch=e), 7) for e in range(2)]
    got = list(loader(data, start=3))
    assert [(e, s) for e, s, _ in got] == [(e, s) for e in range(2) for s in range(5)][3:]
    for epoch, step, batch in got:
        idx = plan[epoch][step]
        np.testing.assert_array_equal(batch["images"].numpy(), images[rows[idx]])
        np.testing.assert_array_equal(batch["targets"].numpy(), targets[idx])
    data_mm = EpochBatches(mm, rows, {"targets": targets}, seed=5, batch_size=7, epochs=2)
    assert data_mm._cache_dir == tmp_path  # reopened in workers, never pickled
    assert data_mm.__getstate__()["_images"] is None
    rows_only = RowBatches(images, rows, batch_size=4)
    assert [b.shape[0] for b in loader(rows_only)] == [4] * 7 + [2]


def test_two_workers_give_the_same_batches_as_none(tmp_path: Path) -> None:
    from cxrbench.data.cache import STATE_FILE, open_cache

    images = _images(40, 8)
    np.save(tmp_path / "images.npy", images)
    np.save(tmp_path / "done.npy", np.ones(40, np.uint8))
    (tmp_path / STATE_FILE).write_text("{}")
    mm = open_cache(tmp_path)
    data = EpochBatches(mm, np.arange(40), {"targets": np.zeros((40, 1), np.float32)}, seed=2, batch_size=6, epochs=2)
    serial = [(e, s, b["images"].numpy().copy()) for e, s, b in loader(data, start=2)]
    parallel = [(e, s, b["images"].numpy().copy()) for e, s, b in loader(data, start=2, num_workers=2)]
    assert [x[:2] for x in serial] == [x[:2] for x in parallel]
    for (_, _, a), (_, _, b) in zip(serial, parallel, strict=True):
        np.testing.assert_array_equal(a, b)


def test_num_workers_is_validated() -> None:
    with pytest.raises(CxrbenchError, match="num_workers"):
        loader(RowBatches(_images(4), np.arange(4), batch_size=2), num_workers=-1)


def test_fields_that_are_not_numbers_come_as_lists_and_lengths_are_checked() -> None:
    images = _images(6, 4)
    ids = np.array([f"p{i}" for i in range(6)], dtype=object)
    data = EpochBatches(
        images, np.arange(6), {"patient_id": ids, "age": np.arange(6.0)}, seed=0, batch_size=4, epochs=1
    )
    _, _, batch = data[0]
    idx = data.plan(0)[0]
    assert batch["patient_id"] == [f"p{i}" for i in idx]
    np.testing.assert_array_equal(batch["age"].numpy(), idx.astype(float))
    with pytest.raises(CxrbenchError, match="'report' has 2 rows for 6 images"):
        EpochBatches(images, np.arange(6), {"report": ["a", "b"]}, seed=0, batch_size=4, epochs=1)
