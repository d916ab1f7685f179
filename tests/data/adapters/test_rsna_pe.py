"""RSNA STR PE adapter on CT phantoms in the Kaggle layout: one row per slice in position order,
the RSNA columns as labels, unsound series quarantined with the reason, and the prepared cache
holding windowed HU (fixed scaling)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxrbench.data.adapters import rsna_pe
from cxrbench.data.ct_phantoms import RSNA_COLUMNS, write_ct_phantoms
from cxrbench.data.volumes import read_header
from cxrbench.errors import CxrbenchError
from cxrbench.stages.prepare import prepare
from cxrbench.stages.verify import verify


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("rsna-pe")
    write_ct_phantoms(root, n_patients=6, size=16, seed=2)
    return root


def test_one_row_per_slice_in_position_order_with_the_csv_labels(phantoms: Path) -> None:
    raw = rsna_pe.load(phantoms, labels=["pe_present_on_image", "negative_exam_for_pe"], workers=0)
    table = pd.read_csv(phantoms / "train.csv", dtype=str)
    assert list(table.columns) == list(RSNA_COLUMNS)
    frame = raw.frame
    assert len(frame) == len(table) and raw.rejected.empty
    assert raw.image_format == "ct:50:350"
    by_sop = table.set_index("SOPInstanceUID")
    assert (
        frame["pe_present_on_image"].to_numpy()
        == by_sop.loc[frame["sample_id"], "pe_present_on_image"].astype(float).to_numpy()
    ).all()
    assert set(frame["study_id"]) == set(table["StudyInstanceUID"])
    for _, series in frame.groupby("series_id"):
        z = [read_header(p).position[2] for p in series["path"]]
        assert series["slice_index"].tolist() == list(range(len(series)))
        assert z == sorted(z) and series["slice_position"].tolist() == pytest.approx(z)
    # every exam has slices with and without PE or none at all; positive exams are not negative exams
    exams = frame.groupby("study_id").agg(pe=("pe_present_on_image", "max"), neg=("negative_exam_for_pe", "max"))
    assert ((exams["pe"] == 1) == (exams["neg"] == 0)).all() and exams["pe"].sum() == 3
    assert set(frame["sex"]) <= {"M", "F"} and frame["age"].between(25, 90).all()


def test_a_series_missing_a_slice_is_quarantined_whole_with_the_reason(phantoms: Path, tmp_path: Path) -> None:
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(phantoms, root)
    series_dir = sorted((root / "train").glob("*/*"))[0]
    files = sorted(series_dir.glob("*.dcm"), key=lambda p: read_header(p).position[2])
    files[len(files) // 2].unlink()  # a hole in the middle of the volume
    raw = rsna_pe.load(root, workers=0)
    assert len(raw.rejected) == len(files)  # the missing file (listed in train.csv) and its series' others
    assert raw.rejected["reason"].str.contains("not a DICOM|unreadable|No such file", regex=True).any()
    assert not raw.frame["path"].str.startswith(str(series_dir)).any()


def test_bad_input_gives_one_line_errors(phantoms: Path, tmp_path: Path) -> None:
    with pytest.raises(CxrbenchError, match="labels 'pe' unknown"):
        rsna_pe.load(phantoms, labels=["pe"], workers=0)
    with pytest.raises(CxrbenchError, match="train.csv"):
        rsna_pe.load(tmp_path, workers=0)
    (tmp_path / "train.csv").write_text("StudyInstanceUID,SOPInstanceUID\n1,2\n")
    with pytest.raises(CxrbenchError, match="missing columns 'SeriesInstanceUID'"):
        rsna_pe.load(tmp_path, workers=0)


def test_prepare_caches_windowed_slices_and_quarantines_rejected_series(phantoms: Path, tmp_path: Path) -> None:
    import shutil

    from cxrbench.data.transforms import Preprocess

    root = tmp_path / "data"
    shutil.copytree(phantoms, root)
    broken = sorted((root / "train").glob("*/*"))[1]
    first = sorted(broken.glob("*.dcm"))[0]
    first.write_bytes(b"garbage")
    run = tmp_path / "run"
    manifest = prepare(run, "rsna-pe", root=root, image=Preprocess(size=16), workers=0)
    assert manifest.settings["image"]["scaling"] == "fixed"
    home = run / "prepared" / "rsna-pe"
    samples = pd.read_parquet(home / "samples.parquet")
    quarantine = pd.read_parquet(home / "quarantine.parquet")
    assert set(quarantine["step"]) == {"scan"} and quarantine["path"].str.startswith(str(broken)).all()
    assert len(quarantine) == len(list(broken.glob("*.dcm")))
    assert {"series_id", "slice_index", "slice_position"} <= set(samples.columns)
    cache = np.load(home / "cache" / "images.npy", mmap_mode="r")
    assert cache.shape[0] == len(samples)
    # fixed scaling: air (-1000 HU) is 0 and contrast (320 HU, above the window) is 255 in every slice
    assert all(cache[i].min() == 0 and cache[i].max() == 255 for i in samples["cache_index"])
    assert [f.problem for f in verify(run) if f.problem] == []
