"""TB Portals adapter: CXR table joined to patient cases, smear from the DST table, file discovery."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from cxrbench.data.adapters import tbportals
from cxrbench.data.adapters.base import coerce_options
from cxrbench.errors import CxrbenchError

CXRS = (
    "patient_id,identifier,condition_id,imagingstudy_id,series_instance_content_url,country,cxr_outlier\r\n"
    "p1,11,c1,s1,p1/st1/se1/i1.dcm,Moldova,\r\n"
    "p1,11,c1,s2,p1/st2/se2/i2.dcm,Moldova,\r\n"
    "p2,12,c2,s3,p2/st3/se3/i3.dcm,Georgia,outlier\r\n"
    ",13,c3,s4,p3/st4/se4/i4.dcm,Belarus,\r\n"
    "p4,14,c4,,p4/st5/se5/i5.dcm,Romania,\r\n"
)
CASES = (
    "patient_id,identifier,registration_date,condition_id,type_of_resistance,gender,age_of_onset,country\n"
    "p1,11,0,c1,MDR non XDR,Male,34,Moldova\n"
    "p2,12,0,c2,Sensitive,Female,51,Georgia\n"
    "p3,13,0,c3,Sensitive,Female,,Belarus\n"
    "p4,14,0,c4,Not Reported,Unknown,130,Romania\n"
)
DST = (
    "condition_id,specimen_id,specimen_collection_date,microscopyresults,cultureresults\n"
    "c1,x1,5,Negative,Positive\n"
    "c1,x2,0,Not done,Positive\n"  # earliest day, but indeterminate
    "c1,x3,2,10 to 99 in 100 (1+),Positive\n"  # earliest determinate: positive
    "c2,x4,0,Negative,Negative\n"
    "c2,x5,30,Positive,Negative\n"
    "c3,x6,0,Unknown result,NULL\n"
)


def _write(root: Path, release: str = "August_2023") -> None:
    (root / f"TB_Portals_CXRs_{release}.csv").write_bytes(CXRS.encode())
    (root / f"TB_Portals_Patient_Cases_{release}.csv").write_text(CASES)
    (root / f"TB_Portals_DST_{release}.csv").write_text(DST)


def test_smear_labels_ids_demographics(tmp_path: Path) -> None:
    _write(tmp_path)
    raw = tbportals.load(tmp_path)
    f = raw.frame
    assert raw.labels == ["smear"] and raw.task == "multilabel"
    assert len(f) == 4  # the outlier row is dropped
    assert f["patient_id"].tolist() == [
        "p1",
        "p1",
        "p3",
        "p4",
    ]  # blank id taken from the case table
    assert f["study_id"].tolist()[:3] == ["s1", "s2", "s4"] and pd.isna(f["study_id"].iloc[3])
    smear = f["smear"].tolist()
    assert smear[:2] == [1.0, 1.0] and math.isnan(smear[2]) and math.isnan(smear[3])
    assert f["sex"].tolist()[:3] == ["M", "M", "F"] and pd.isna(f["sex"].iloc[3])
    ages = f["age"].tolist()
    assert ages[:2] == [34.0, 34.0] and math.isnan(ages[2]) and math.isnan(ages[3])  # 130: impossible
    assert f["split"].isna().all() and f["view"].isna().all()
    assert f["path"].iloc[0] == str(tmp_path.resolve() / "p1/st1/se1/i1.dcm")
    assert f["sample_id"].iloc[0] == "p1/st1/se1/i1.dcm"
    assert raw.notes["dropped_outliers"] == "1"


def test_outliers_kept_and_first_smear_rule(tmp_path: Path) -> None:
    _write(tmp_path)
    f = tbportals.load(tmp_path, drop_outliers=False).frame
    # c2: Negative on day 0 comes before Positive on day 30
    assert f.loc[f["patient_id"] == "p2", "smear"].tolist() == [0.0]
    dst = pd.read_csv(tmp_path / "TB_Portals_DST_August_2023.csv")
    assert tbportals.case_smear(dst.astype(str)).to_dict() == {"c1": 1.0, "c2": 0.0}
    assert tbportals.smear_result("More than 99 in 1 (4+)") == 1.0
    assert math.isnan(tbportals.smear_result("Nonspecific microflora"))


def test_resistance_multiclass(tmp_path: Path) -> None:
    _write(tmp_path)
    raw = tbportals.load(tmp_path, labels="resistance", drop_outliers=False)
    assert raw.task == "multiclass" and raw.labels == ["Sensitive", "MDR non XDR"]
    f = raw.frame
    assert f["MDR non XDR"].tolist()[:2] == [1.0, 1.0] and f["Sensitive"].tolist()[2:4] == [
        1.0,
        1.0,
    ]
    assert f.iloc[4][raw.labels].isna().all()  # Not Reported -> unknown


def test_image_folder_found_by_probing(tmp_path: Path) -> None:
    _write(tmp_path)
    images = tmp_path / "TB_Portals_Published_CXRs_August_2023" / "p1/st1/se1"
    images.mkdir(parents=True)
    (images / "i1.dcm").write_bytes(b"")
    f = tbportals.load(tmp_path).frame
    assert f["path"].iloc[1] == str(tmp_path.resolve() / "TB_Portals_Published_CXRs_August_2023/p1/st2/se2/i2.dcm")
    other = tmp_path / "elsewhere"
    other.mkdir()
    f = tbportals.load(tmp_path, image_dir=Path("elsewhere")).frame
    assert f["path"].iloc[0] == str(other.resolve() / "p1/st1/se1/i1.dcm")


def test_old_spaced_names_and_separate_clinical_release(tmp_path: Path) -> None:
    (tmp_path / "TB Portals CXRs_20210202.csv").write_text(CXRS)
    (tmp_path / "TB_Portals_Patient_Cases_January_2021.csv").write_text(CASES)
    (tmp_path / "TB Portals DST_20210202.csv").write_text(DST)
    (tmp_path / "TB_Portals_CXRs_March_2026_manifest.csv").write_text("file\nx.dcm\n")  # not the table
    raw = tbportals.load(tmp_path)
    assert raw.frame["sex"].iloc[0] == "M" and raw.frame["smear"].iloc[0] == 1.0


def test_missing_files_and_ambiguous_release(tmp_path: Path) -> None:
    with pytest.raises(CxrbenchError, match=r"TB_Portals_CXRs_<release>\.csv .*not found"):
        tbportals.load(tmp_path)
    with pytest.raises(CxrbenchError, match="is not a directory"):
        tbportals.load(tmp_path / "nope")
    _write(tmp_path)
    (tmp_path / "TB_Portals_DST_August_2023.csv").unlink()
    with pytest.raises(CxrbenchError, match="TB_Portals_DST_August_2023.csv"):
        tbportals.load(tmp_path)
    tbportals.load(tmp_path, labels="resistance")  # needs no DST table
    _write(tmp_path, "March_2025")
    with pytest.raises(CxrbenchError, match="several TB Portals CXRs tables .*release="):
        tbportals.load(tmp_path)
    assert len(tbportals.load(tmp_path, release="March_2025").frame) == 4
    with pytest.raises(CxrbenchError, match="TB_Portals_CXRs_May_2030.csv"):
        tbportals.load(tmp_path, release="May_2030")


def test_missing_columns_and_text_options(tmp_path: Path) -> None:
    _write(tmp_path)
    opts = coerce_options(tbportals.load, {"drop_outliers": "false", "labels": "resistance"})
    assert len(tbportals.load(tmp_path, **opts).frame) == 5
    with pytest.raises(CxrbenchError, match="cannot read 'grade'"):
        coerce_options(tbportals.load, {"labels": "grade"})
    (tmp_path / "TB_Portals_CXRs_August_2023.csv").write_text("patient_id,condition_id\np1,c1\n")
    with pytest.raises(CxrbenchError, match=r"lacks columns \['series_instance_content_url'\]"):
        tbportals.load(tmp_path)
