"""Tests for the RSNA Pneumonia adapter: box rows collapsed per image, classes, DICOM header fields."""

from __future__ import annotations

import math
import zipfile

import numpy as np
import pandas as pd
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from cxrbench.data.adapters import rsna_pneumonia
from cxrbench.errors import CxrbenchError

A, B, C = (
    "0004cfab-14fd-4e49-80ba-63a80b6bddd6",
    "00436515-870c-4b36-a041-de91049b9ab4",
    "aaaa-bbbb",
)
LABELS = (
    "patientId,x,y,width,height,Target\n"
    f"{A},,,,,0\n"
    f"{B},264.0,152.0,213.0,379.0,1\n"
    f"{B},562.0,152.0,256.0,453.0,1\n"
    f"{C},,,,,0\n"
)
CLASSES = f"patientId,class\n{A},No Lung Opacity / Not Normal\n{B},Lung Opacity\n{B},Lung Opacity\n"


def write_dicom(path, *, patient_id, view, sex, age):
    """Write a header-only DICOM with the tags the adapter reads."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientID, ds.ViewPosition, ds.PatientSex, ds.PatientAge = patient_id, view, sex, age
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def test_one_row_per_image_with_max_target(tmp_path):
    (tmp_path / "stage_2_train_labels.csv").write_text(LABELS)
    ds = rsna_pneumonia.load(tmp_path)
    f = ds.frame
    assert ds.labels == ["Lung Opacity"] and ds.task == "multilabel"
    assert list(f["patient_id"]) == [A, B, C]
    assert list(f["Lung Opacity"]) == [0.0, 1.0, 0.0]
    assert f["path"].iloc[1] == str(tmp_path.resolve() / "stage_2_train_images" / f"{B}.dcm")
    assert list(f["sample_id"]) == [A, B, C]
    assert f["split"].isna().all() and f["view"].isna().all()


@pytest.mark.filterwarnings("ignore:Invalid value for VR AS")  # real RSNA headers store ages as "43"
def test_headers_give_view_sex_age(tmp_path):
    (tmp_path / "stage_2_train_labels.csv").write_text(LABELS)
    img = tmp_path / "stage_2_train_images"
    write_dicom(img / f"{A}.dcm", patient_id=A, view="PA", sex="F", age="43")
    write_dicom(img / f"{B}.dcm", patient_id=B, view="AP", sex="M", age="058Y")
    f = rsna_pneumonia.load(tmp_path).frame  # C has no file: header fields unknown
    assert [None if pd.isna(v) else v for v in f["view"]] == ["PA", "AP", None]
    assert [None if pd.isna(v) else v for v in f["sex"]] == ["F", "M", None]
    assert f["age"].iloc[0] == 43.0 and f["age"].iloc[1] == 58.0 and math.isnan(f["age"].iloc[2])


def test_classes_multiclass_and_zip(tmp_path):
    with zipfile.ZipFile(tmp_path / "stage_2_train_labels.csv.zip", "w") as zf:
        zf.writestr("stage_2_train_labels.csv", LABELS)
    (tmp_path / "stage_2_detailed_class_info.csv").write_text(CLASSES)
    ds = rsna_pneumonia.load(tmp_path, labels="classes")
    assert ds.task == "multiclass"
    assert ds.labels == ["Normal", "No Lung Opacity / Not Normal", "Lung Opacity"]
    got = ds.frame[ds.labels].to_numpy()
    np.testing.assert_array_equal(got[:2], [[0, 1, 0], [0, 0, 1]])
    assert np.isnan(got[2]).all()  # C is missing from the class file: unknown, not negative


def test_errors(tmp_path):
    with pytest.raises(CxrbenchError, match="stage_2_train_labels.csv"):
        rsna_pneumonia.load(tmp_path)
    with pytest.raises(CxrbenchError, match="labels must be"):
        rsna_pneumonia.load(tmp_path, labels="boxes")
    (tmp_path / "stage_2_train_labels.csv").write_text(LABELS)
    with pytest.raises(CxrbenchError, match="stage_2_detailed_class_info.csv"):
        rsna_pneumonia.load(tmp_path, labels="classes")


def test_real_labels_file(realdata, tmp_path):
    real = realdata / "rsna" / "kaggle_stage_2_train_labels.csv.zip"
    (tmp_path / "stage_2_train_labels.csv.zip").symlink_to(real)
    ds = rsna_pneumonia.load(tmp_path)
    ref = pd.read_csv(real)
    positives = set(ref.loc[ref["Target"] == 1, "patientId"])
    assert len(ds.frame) == ref["patientId"].nunique() == 26684
    assert ds.frame["Lung Opacity"].sum() == len(positives)
    assert ds.frame["patient_id"].is_unique


def test_real_class_file_agrees_with_target(realdata, tmp_path):
    (tmp_path / "stage_2_train_labels.csv").symlink_to(realdata / "rsna" / "stage_2_train_labels.sudishrestha.csv")
    (tmp_path / "stage_2_detailed_class_info.csv").symlink_to(realdata / "rsna" / "stage_2_detailed_class_info.csv")
    target = rsna_pneumonia.load(tmp_path).frame.set_index("patient_id")["Lung Opacity"]
    ds = rsna_pneumonia.load(tmp_path, labels="classes")
    f = ds.frame.set_index("patient_id")
    assert (f["Lung Opacity"] == target).all()
    assert (f[ds.labels].sum(axis=1) == 1).all()
    ref = pd.read_csv(realdata / "rsna" / "stage_2_detailed_class_info.csv").drop_duplicates("patientId")
    assert f["Normal"].sum() == (ref["class"] == "Normal").sum()
