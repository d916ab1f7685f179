"""Tests for the MURA adapter: labels from study folder names, official split, patient and study ids."""

from __future__ import annotations

import pytest

from cxrbench.data.adapters import mura
from cxrbench.errors import CxrbenchError

TRAIN = (
    "MURA-v1.1/train/XR_SHOULDER/patient00001/study1_positive/image1.png\n"
    "MURA-v1.1/train/XR_SHOULDER/patient00001/study1_positive/image2.png\n"
    "MURA-v1.1/train/XR_HUMERUS/patient00001/study2_negative/image1.png\n"
    "MURA-v1.1/train/XR_WRIST/patient00147/study1_negative/image3.png\n"
)
VALID = "MURA-v1.1/valid/XR_WRIST/patient11185/study1_positive/image1.png\n"


@pytest.fixture()
def root(tmp_path):
    folder = tmp_path / "MURA-v1.1"
    folder.mkdir()
    (folder / "train_image_paths.csv").write_text(TRAIN)
    (folder / "valid_image_paths.csv").write_text(VALID)
    return tmp_path


def test_labels_split_ids_paths(root):
    ds = mura.load(root)
    f = ds.frame
    assert ds.labels == ["Abnormal"]
    assert list(f["Abnormal"]) == [1.0, 1.0, 0.0, 0.0, 1.0]
    assert list(f["split"]) == ["trainval"] * 4 + ["test"]
    assert list(f["patient_id"]) == ["patient00001"] * 3 + ["patient00147", "patient11185"]
    assert f["study_id"].iloc[2] == "XR_HUMERUS/patient00001/study2"
    assert f["sample_id"].iloc[2].startswith("MURA-v1.1/train/XR_HUMERUS/patient00001/study2_")
    assert f["path"].iloc[4] == str(
        root.resolve() / "MURA-v1.1" / "valid" / "XR_WRIST" / "patient11185" / "study1_positive" / "image1.png"
    )
    assert f["view"].isna().all()


def test_root_may_be_the_mura_folder(root):
    assert len(mura.load(root / "MURA-v1.1").frame) == 5


def test_errors(tmp_path, root):
    with pytest.raises(CxrbenchError, match="MURA-v1.1/train_image_paths.csv"):
        (tmp_path / "empty").mkdir()
        mura.load(tmp_path / "empty")
    (root / "MURA-v1.1" / "valid_image_paths.csv").write_text("MURA-v1.1/valid/XR_WRIST/patient1/study1/image1.png\n")
    with pytest.raises(CxrbenchError, match="studyN_<positive|negative>"):
        mura.load(root)
