"""Tests for the Kermany pediatric pneumonia adapter: folder labels, name-derived patients and subtypes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cxrbench.data.adapters import pediatric_pneumonia as pp
from cxrbench.errors import CxrbenchError

FILES = (
    "train/NORMAL/IM-0115-0001.jpeg",
    "train/NORMAL/IM-0439-0001-0002.jpeg",
    "train/NORMAL/NORMAL2-IM-0383-0001.jpeg",
    "train/NORMAL/.DS_Store",
    "train/PNEUMONIA/person1019_bacteria_2950.jpeg",
    "train/PNEUMONIA/person1019_virus_1707.jpeg",
    "val/PNEUMONIA/person1946_bacteria_4874.jpeg",
    "test/NORMAL/IM-0001-0001.jpeg",
    "test/PNEUMONIA/person1_virus_6.jpeg",
)


def _tree(base):
    for rel in FILES:
        (base / rel).parent.mkdir(parents=True, exist_ok=True)
        (base / rel).write_bytes(b"")


def _by_name(frame):
    return frame.set_index(frame["path"].str.rsplit("/", n=1).str[-1])


@pytest.mark.parametrize("nesting", ["chest_xray", "", "chest_xray/chest_xray"])
def test_labels_patients_splits(tmp_path, nesting):
    _tree(tmp_path / nesting)
    ds = pp.load(tmp_path)
    f = _by_name(ds.frame)
    assert len(f) == 8 and ds.labels == ["Pneumonia"]
    expected_patients = {
        "IM-0115-0001.jpeg": "IM-0115",
        "IM-0439-0001-0002.jpeg": "IM-0439",
        "NORMAL2-IM-0383-0001.jpeg": "NORMAL2-IM-0383",
        "person1019_bacteria_2950.jpeg": "person1019",
        "person1019_virus_1707.jpeg": "person1019",
        "person1946_bacteria_4874.jpeg": "person1946",
        "IM-0001-0001.jpeg": "test/IM-0001",
        "person1_virus_6.jpeg": "test/person1",
    }
    assert f["patient_id"].to_dict() == expected_patients
    assert f.loc["person1_virus_6.jpeg", "split"] == "test"
    # the path inside chest_xray/, whatever folder holds chest_xray
    assert f.loc["person1_virus_6.jpeg", "sample_id"] == "test/PNEUMONIA/person1_virus_6.jpeg"
    assert f.loc["person1946_bacteria_4874.jpeg", "split"] == "trainval"
    assert f.loc["IM-0115-0001.jpeg", "split"] == "trainval"
    assert f["Pneumonia"].sum() == 4 and f.loc["IM-0001-0001.jpeg", "Pneumonia"] == 0.0
    assert (f["view"] == "AP").all()


def test_subtypes_multiclass(tmp_path):
    _tree(tmp_path / "chest_xray")
    (tmp_path / "chest_xray/train/PNEUMONIA/odd name.jpeg").write_bytes(b"")
    ds = pp.load(tmp_path, labels="subtype")
    f = _by_name(ds.frame)
    assert ds.task == "multiclass" and ds.labels == ["Normal", "Bacteria", "Virus"]
    np.testing.assert_array_equal(f.loc["person1019_virus_1707.jpeg", ds.labels].to_numpy(float), [0, 0, 1])
    np.testing.assert_array_equal(f.loc["person1019_bacteria_2950.jpeg", ds.labels].to_numpy(float), [0, 1, 0])
    np.testing.assert_array_equal(f.loc["IM-0115-0001.jpeg", ds.labels].to_numpy(float), [1, 0, 0])
    assert f.loc["odd name.jpeg", ds.labels].isna().all()  # pneumonia, subtype unknown
    assert f.loc["odd name.jpeg", "patient_id"] == "odd name"


def test_errors(tmp_path):
    with pytest.raises(CxrbenchError, match="chest_xray/train"):
        pp.load(tmp_path)
    with pytest.raises(CxrbenchError, match="labels must be"):
        pp.load(tmp_path, labels="multiclass")
    (tmp_path / "train").mkdir()
    with pytest.raises(CxrbenchError, match="no images"):
        pp.load(tmp_path)


def test_real_file_names(realdata):
    listing = (realdata / "kermany" / "filenames_seen_lecuong1502_BTL_Machine_Learning.txt").read_text()
    names = [line.rsplit("/", 1)[-1] for line in listing.splitlines() if line and not line.startswith("#")]
    stems = pd.Series([n.rsplit(".", 1)[0] for n in names])
    patients = stems.map(pp.patient_from_name)
    # Independent rule: the patient is the name up to the first '_' for pneumonia files, and the
    # first two (or three for NORMAL2) dash groups for normals.
    expected = [
        s.split("_")[0] if s.startswith("person") else "-".join(s.split("-")[: 3 if s.startswith("NORMAL2") else 2])
        for s in stems
    ]
    assert list(patients) == expected
    assert (patients != stems).all()
