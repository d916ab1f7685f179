"""Tests for the RANZCR CLiP adapter: the eleven labels as named, shared patients, paths."""

from __future__ import annotations

import numpy as np
import pytest

from cxrbench.data.adapters import ranzcr_clip
from cxrbench.errors import CxrbenchError

HEADER = (
    "StudyInstanceUID,ETT - Abnormal,ETT - Borderline,ETT - Normal,NGT - Abnormal,NGT - Borderline,"
    "NGT - Incompletely Imaged,NGT - Normal,CVC - Abnormal,CVC - Borderline,CVC - Normal,"
    "Swan Ganz Catheter Present,PatientID\n"
)
U1 = "1.2.826.0.1.3680043.8.498.26697628953273228189375557799582420561"
U2 = "1.2.826.0.1.3680043.8.498.46302891597398758759818628675365157729"
U3 = "1.2.826.0.1.3680043.8.498.23819260719748494858948050424870692577"
ROWS = f"{U1},0,0,0,0,0,0,1,0,0,0,0,ec89415d1\n{U2},0,0,1,0,0,1,0,0,0,1,0,bf4c6da3c\n{U3},0,0,0,0,0,0,0,0,1,0,0,ec89415d1\n"


def test_labels_patients_paths(tmp_path):
    (tmp_path / "train.csv").write_text(HEADER + ROWS)
    ds = ranzcr_clip.load(tmp_path)
    f = ds.frame
    assert len(ds.labels) == 11 and ds.labels[0] == "ETT - Abnormal" and ds.labels[-1] == "Swan Ganz Catheter Present"
    np.testing.assert_array_equal(f[ds.labels].sum().to_numpy(), [0, 0, 1, 0, 0, 1, 1, 0, 1, 1, 0])
    assert f.loc[1, "NGT - Incompletely Imaged"] == 1.0 and f.loc[2, "CVC - Borderline"] == 1.0
    assert list(f["patient_id"]) == ["ec89415d1", "bf4c6da3c", "ec89415d1"]
    assert f["path"].iloc[0] == str(tmp_path.resolve() / "train" / f"{U1}.jpg")
    assert f["sample_id"].iloc[0] == U1 and f["sample_id"].iloc[2] == U3
    assert f["study_id"].iloc[2] == U3 and f["split"].isna().all() and f["view"].isna().all()


def test_errors(tmp_path):
    with pytest.raises(CxrbenchError, match="train.csv"):
        ranzcr_clip.load(tmp_path)
    (tmp_path / "train.csv").write_text("StudyInstanceUID,PatientID\nx,y\n")
    with pytest.raises(CxrbenchError, match="lacks column.*ETT - Abnormal"):
        ranzcr_clip.load(tmp_path)
    (tmp_path / "train.csv").write_text(HEADER + ROWS.replace(",0,0,0,0,0,0,1,", ",0,0,0,0,0,0,2,", 1))
    with pytest.raises(CxrbenchError, match="'NGT - Normal' has value '2'"):
        ranzcr_clip.load(tmp_path)
