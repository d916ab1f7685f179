"""Tests for the generic CSV adapter."""

from __future__ import annotations

import gzip
import math

import numpy as np
import pandas as pd
import pytest

from cxrbench.data.adapters import csv as csv_adapter
from cxrbench.errors import CxrbenchError

TABLE = (
    "image,pid,projection,fold,Effusion,Nodule,note,sex,age\r\n"
    "imgs/a.png,007,PA,train,1,0,first,Male,58\r\n"
    "imgs/b.png,007,AP supine,valid,-1,,second,female,058Y\r\n"
    "{root}/abs/c.png,012,lateral,TEST,0,1,third,,\r\n"
    "imgs/d.png,013,,,,0,fourth,Unknown,412\r\n"
)


def _vals(series: pd.Series) -> list:
    """Return the series as a list with every missing value as None (pandas 3 strings use NaN)."""
    return [None if pd.isna(v) else v for v in series]


@pytest.fixture()
def root(tmp_path):
    (tmp_path / "meta.csv").write_bytes(TABLE.replace("{root}", str(tmp_path)).encode())
    return tmp_path


def test_auto_labels_views_splits_and_passthrough(root):
    ds = csv_adapter.load(
        root,
        csv="meta.csv",
        path_column="image",
        patient_column="pid",
        view_column="projection",
        split_column="fold",
    )
    f = ds.frame
    # 'note' is text and 'age' is a passthrough column, so only the 1/0/-1 columns are labels.
    assert ds.labels == ["Effusion", "Nodule"]
    assert ds.task == "multilabel"
    np.testing.assert_array_equal(f["Effusion"].to_numpy(), [1.0, -1.0, 0.0, np.nan])
    np.testing.assert_array_equal(f["Nodule"].to_numpy(), [0.0, np.nan, 1.0, 0.0])
    assert list(f["patient_id"]) == ["007", "007", "012", "013"]  # padding kept: ids are strings
    assert _vals(f["view"]) == ["PA", "AP", "LATERAL", None]
    assert _vals(f["split"]) == ["train", "val", "test", None]
    assert f["path"].iloc[0] == str(root.resolve() / "imgs" / "a.png")
    assert f["path"].iloc[2] == str(root.resolve() / "abs" / "c.png")  # absolute, inside the root
    assert _vals(f["sex"]) == ["M", "F", None, None]
    ages = f["age"].to_numpy()
    assert ages[0] == 58.0 and ages[1] == 58.0 and math.isnan(ages[2]) and math.isnan(ages[3])
    assert "note" not in f.columns


def test_explicit_label_columns_and_semicolon_gz(tmp_path):
    text = "file;patient;A;B\nx.png;p1;1;0\ny.png;p2;0;1\n"
    with gzip.open(tmp_path / "m.csv.gz", "wt") as fh:
        fh.write(text)
    ds = csv_adapter.load(
        tmp_path,
        csv="m.csv.gz",
        path_column="file",
        patient_column="patient",
        label_columns=["B"],
        sep=";",
    )
    assert ds.labels == ["B"]
    assert list(ds.frame["B"]) == [0.0, 1.0]
    assert ds.frame["view"].isna().all() and ds.frame["split"].isna().all()
    as_text = csv_adapter.load(
        tmp_path,
        csv="m.csv.gz",
        path_column="file",
        patient_column="patient",
        label_columns="A, B",
        sep=";",
    )
    assert as_text.labels == ["A", "B"]


def test_missing_column_error_names_column_and_lists_available(root):
    with pytest.raises(CxrbenchError) as err:
        csv_adapter.load(root, csv="meta.csv", path_column="Path", patient_column="pid")
    msg = err.value.message
    assert "'Path'" in msg and "path_column" in msg and "image, pid, projection" in msg
    assert "\n" not in msg


def test_bad_label_values_and_bad_split_are_one_line_errors(root):
    with pytest.raises(CxrbenchError, match="label column 'note' has value 'first'"):
        csv_adapter.load(root, csv="meta.csv", path_column="image", patient_column="pid", label_columns=["note"])
    (root / "bad.csv").write_text("image,pid,y,fold\na.png,1,2,train\n")
    with pytest.raises(CxrbenchError, match="label column 'y' has value '2'"):
        csv_adapter.load(root, csv="bad.csv", path_column="image", patient_column="pid", label_columns=["y"])
    (root / "bad2.csv").write_text("image,pid,y,fold\na.png,1,1,holdout\n")
    with pytest.raises(CxrbenchError, match="unknown split value 'holdout'"):
        csv_adapter.load(root, csv="bad2.csv", path_column="image", patient_column="pid", split_column="fold")


def test_missing_file_and_no_labels(tmp_path):
    with pytest.raises(CxrbenchError, match="nope.csv"):
        csv_adapter.load(tmp_path, csv="nope.csv", path_column="a", patient_column="b")
    (tmp_path / "t.csv").write_text("image,pid,comment\na.png,1,hello\n")
    with pytest.raises(CxrbenchError, match="no label column"):
        csv_adapter.load(tmp_path, csv="t.csv", path_column="image", patient_column="pid")


def test_header_whitespace_and_trailing_comma(tmp_path):
    # SIIM-style leading space in a header, NIH-style trailing comma (an all-blank extra column).
    (tmp_path / "t.csv").write_text("image, pid, Mass,\na.png,1,1\nb.png,2,0\n")
    ds = csv_adapter.load(tmp_path, csv="t.csv", path_column="image", patient_column="pid")
    assert ds.labels == ["Mass"]
    assert list(ds.frame["patient_id"]) == ["1", "2"]


def test_frame_matches_independent_pandas_read(root):
    ds = csv_adapter.load(root, csv="meta.csv", path_column="image", patient_column="pid")
    ref = pd.read_csv(root / "meta.csv")
    np.testing.assert_array_equal(ds.frame["Effusion"].to_numpy(), ref["Effusion"].to_numpy(dtype=float))
    assert len(ds.frame) == len(ref)


# ---------------------------------------------------------------- the table is not trusted
def _write(root, text: str, name: str = "t.csv", encoding: str = "utf-8"):
    (root / name).write_bytes(text.encode(encoding))
    return name


def _load(root, name="t.csv", **options):
    return csv_adapter.load(root, csv=name, path_column="image", patient_column="pid", **options)


@pytest.mark.parametrize("path", ["../outside.png", "img/../../outside.png", "/etc/outside.png"])
def test_image_paths_may_not_lead_outside_the_root(tmp_path, path):
    root = tmp_path / "ds"
    root.mkdir()
    _write(root, f"image,pid,y\nimg/a.png,1,1\n{path},2,0\n")
    with pytest.raises(CxrbenchError, match=r"t.csv line 3: image path '.*outside.png' leads outside the dataset root"):
        _load(root)


def test_one_image_has_one_path_so_the_duplicate_check_sees_it(tmp_path):
    from cxrbench.data.samples import LabelPolicy, build_samples

    real = tmp_path / "real"
    (real / "img").mkdir(parents=True)
    root = tmp_path / "link"
    root.symlink_to(real)  # the root as given is a symlink: its absolute paths are the same files
    _write(root, f"image,pid,y\nimg/x.png,1,1\n./img//y.png,2,0\n{root}/img/z.png,3,1\nimg/q/../y.png,4,1\n")
    ds = _load(root)
    assert list(ds.frame["path"]) == [str(real / "img" / n) for n in ("x.png", "y.png", "z.png", "y.png")]
    with pytest.raises(CxrbenchError, match="listed more than once"):
        build_samples(ds, LabelPolicy(views="all"), root=root)  # one image would otherwise land in two splits


@pytest.mark.parametrize(("row", "blank"), [("a.png,  ,1", "pid"), ("  ,7,1", "image")])
def test_whitespace_only_patient_id_or_path_is_refused(tmp_path, row, blank):
    _write(tmp_path, f"image,pid,y\nb.png,1,0\n{row}\n")
    with pytest.raises(CxrbenchError, match=f"t.csv: blank '{blank}' on line 3"):
        _load(tmp_path)


@pytest.mark.parametrize(
    ("options", "hint"),
    [
        ({"path_column": "image", "patient_column": "pid"}, "--option csv=FILE"),
        ({"csv": "t.csv", "patient_column": "pid"}, "--option path_column=COL"),
        ({"csv": "t.csv", "path_column": "image"}, "--option patient_column=COL"),
        ({"csv": "", "path_column": "image", "patient_column": "pid"}, "--option csv=FILE"),
    ],
)
def test_missing_required_option_names_the_option_to_give(tmp_path, options, hint):
    from cxrbench.data.adapters import load_dataset

    _write(tmp_path, "image,pid,y\na.png,1,1\n")
    with pytest.raises(CxrbenchError, match=f"csv adapter: give .* with {hint}$"):
        load_dataset("csv", tmp_path, options)


def test_latin1_table_needs_its_encoding_and_then_reads(tmp_path):
    from cxrbench.data.adapters import load_dataset

    _write(tmp_path, "image,pid,y\nimágenes/a.png,José,1\nb.png,Zoë,0\n", encoding="latin-1")
    with pytest.raises(CxrbenchError) as err:
        _load(tmp_path)
    msg = err.value.message
    assert "t.csv: not utf-8 text (it holds byte 0xe1)" in msg and "--option encoding=latin-1" in msg
    assert "\n" not in msg
    ds = load_dataset(
        "csv", tmp_path, {"csv": "t.csv", "path_column": "image", "patient_column": "pid", "encoding": "latin-1"}
    )
    assert list(ds.frame["patient_id"]) == ["José", "Zoë"]
    assert ds.frame["path"].iloc[0] == str(tmp_path.resolve() / "imágenes" / "a.png")
    with pytest.raises(CxrbenchError, match="unknown encoding 'klingon'"):
        _load(tmp_path, encoding="klingon")
