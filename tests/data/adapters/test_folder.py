"""Tests for the generic class-folder adapter."""

from __future__ import annotations

import numpy as np
import pytest

from cxrbench.data.adapters import folder
from cxrbench.errors import CxrbenchError


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")


def test_class_folders_without_splits(tmp_path):
    for rel in (
        "normal/a.png",
        "normal/sub/b.JPG",
        "tb/c.jpeg",
        "tb/notes.txt",
        "tb/.hidden.png",
        ".cache/x.png",
    ):
        _touch(tmp_path / rel)
    ds = folder.load(tmp_path)
    f = ds.frame.sort_values("path").reset_index(drop=True)
    assert ds.task == "multiclass" and ds.labels == ["normal", "tb"]
    assert [p.rsplit("/", 2)[-2:] for p in f["path"]] == [
        ["normal", "a.png"],
        ["sub", "b.JPG"],
        ["tb", "c.jpeg"],
    ]
    assert list(f["patient_id"]) == ["a", "b", "c"]
    assert list(f["sample_id"]) == ["normal/a.png", "normal/sub/b.JPG", "tb/c.jpeg"]
    np.testing.assert_array_equal(f[["normal", "tb"]].to_numpy(), [[1, 0], [1, 0], [0, 1]])
    assert (f[ds.labels].sum(axis=1) == 1).all()
    assert f["split"].isna().all() and f["view"].isna().all()


def test_split_folders_and_patients_csv(tmp_path):
    for rel in ("train/NORMAL/a.png", "train/PNEU/b.png", "valid/NORMAL/c.png", "test/PNEU/d.png"):
        _touch(tmp_path / rel)
    (tmp_path / "patients.csv").write_text("file,patient_id\ntrain/NORMAL/a.png,p1\nb.png,p1\nc.png,p2\nd.png,p3\n")
    ds = folder.load(tmp_path)
    f = ds.frame.set_index(ds.frame["path"].str.rsplit("/", n=1).str[-1])
    assert ds.labels == ["NORMAL", "PNEU"]
    assert f.loc["a.png", "split"] == "train" and f.loc["c.png", "split"] == "val" and f.loc["d.png", "split"] == "test"
    assert list(f.loc[["a.png", "b.png", "c.png", "d.png"], "patient_id"]) == [
        "p1",
        "p1",
        "p2",
        "p3",
    ]
    assert f.loc["d.png", "PNEU"] == 1.0 and f.loc["d.png", "NORMAL"] == 0.0


def test_patients_csv_must_cover_every_image(tmp_path):
    for rel in ("x/a.png", "y/b.png"):
        _touch(tmp_path / rel)
    (tmp_path / "patients.csv").write_text("file,patient_id\na.png,p1\n")
    with pytest.raises(CxrbenchError, match="no patient for 1 image.*y/b.png"):
        folder.load(tmp_path)
    (tmp_path / "patients.csv").write_text("image,patient\na.png,p1\n")
    with pytest.raises(CxrbenchError, match="lacks column"):
        folder.load(tmp_path)


def test_errors(tmp_path):
    with pytest.raises(CxrbenchError, match="not a directory"):
        folder.load(tmp_path / "missing")
    with pytest.raises(CxrbenchError, match="no images found"):
        folder.load(tmp_path)
    _touch(tmp_path / "only" / "a.png")
    with pytest.raises(CxrbenchError, match="only one class"):
        folder.load(tmp_path)
    _touch(tmp_path / "train" / "a" / "b.png")
    with pytest.raises(CxrbenchError, match="mixes split folders"):
        folder.load(tmp_path)
