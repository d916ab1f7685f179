"""Tests for the Indiana/OpenI adapter: report XML parsing, MeSH heading labels, image layouts."""

from __future__ import annotations

import io
import re
import tarfile

import numpy as np
import pandas as pd
import pytest

from cxrbench.data.adapters import indiana
from cxrbench.errors import CxrbenchError


def _xml(uid, majors, images, findings="No acute disease.", impression="Normal chest x-XXXX."):
    mesh = "".join(f"<major>{m}</major>" for m in majors)
    imgs = "".join(f'<parentImage id="{i}"><caption>Xray Chest PA and Lateral</caption></parentImage>' for i in images)
    return (
        f'<?xml version="1.0" encoding="utf-8"?><eCitation><uId id="{uid}"/><MedlineCitation><Article><Abstract>'
        f'<AbstractText Label="COMPARISON">None.</AbstractText><AbstractText Label="INDICATION">XXXX</AbstractText>'
        f'<AbstractText Label="FINDINGS">{findings}</AbstractText><AbstractText Label="IMPRESSION">{impression}</AbstractText>'
        f"</Abstract></Article></MedlineCitation><MeSH>{mesh}</MeSH>{imgs}</eCitation>"
    )


REPORTS = {
    "1.xml": _xml("CXR1", ["normal"], ["CXR1_1_IM-0001-3001", "CXR1_1_IM-0001-4001"]),
    "2.xml": _xml(
        "CXR2",
        ["Cardiomegaly/mild", "Cardiomegaly/borderline", "Lung/hypoinflation"],
        ["CXR2_1_IM-0652-1001"],
    ),
    "3.xml": _xml("CXR3", ["No Indexing"], ["CXR3_1_IM-1384-1001"], findings=""),
    "4.xml": _xml("CXR4", ["Cardiomegaly"], []),
}


def _tgz(path):
    with tarfile.open(path, "w:gz") as archive:
        for name, text in REPORTS.items():
            data = text.encode()
            info = tarfile.TarInfo(f"ecgen-radiology/{name}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))


def test_tgz_labels_reports_paths(tmp_path):
    _tgz(tmp_path / "NLMCXR_reports.tgz")
    ds = indiana.load(tmp_path, top=None)
    f = ds.frame.sort_values("path").reset_index(drop=True)
    # Counted over reports with images: Cardiomegaly 1 (CXR4 has no image), Lung 1, normal 1.
    assert ds.labels == ["Cardiomegaly", "Lung", "normal"]
    assert list(f["patient_id"]) == ["CXR1", "CXR1", "CXR2", "CXR3"]
    np.testing.assert_array_equal(f[ds.labels].to_numpy(), [[0, 0, 1], [0, 0, 1], [1, 1, 0], [np.nan, np.nan, np.nan]])
    assert f["path"].iloc[0] == str(tmp_path.resolve() / "NLMCXR_png" / "CXR1_1_IM-0001-3001.png")
    assert f["report"].iloc[0] == "FINDINGS: No acute disease.\nIMPRESSION: Normal chest x-XXXX."
    assert f["report"].iloc[3] == "IMPRESSION: Normal chest x-XXXX."
    assert f["view"].isna().all() and f["split"].isna().all()
    assert indiana.load(tmp_path, top=1).labels == ["Cardiomegaly"]


def test_unpacked_folder_and_dicom_layout(tmp_path):
    folder = tmp_path / "ecgen-radiology"
    folder.mkdir()
    for name, text in REPORTS.items():
        (folder / name).write_text(text)
    (tmp_path / "NLMCXR_dcm").mkdir()
    (tmp_path / "NLMCXR_dcm" / "1_1_IM-0001-3001.dcm").write_bytes(b"not a dicom")
    f = indiana.load(tmp_path).frame
    assert f["path"].iloc[0] == str(tmp_path.resolve() / "NLMCXR_dcm" / "1_1_IM-0001-3001.dcm")
    assert f["view"].isna().all()  # unreadable header: view unknown, no crash


def test_errors(tmp_path):
    with pytest.raises(CxrbenchError, match="NLMCXR_reports.tgz"):
        indiana.load(tmp_path)
    with pytest.raises(CxrbenchError, match="top must be"):
        indiana.load(tmp_path, top=0)
    (tmp_path / "ecgen-radiology").mkdir()
    with pytest.raises(CxrbenchError, match="no report XML"):
        indiana.load(tmp_path)


def _regex_counts(texts):
    """Return (images, images of reports coded normal, reports with images) counted with regexes."""
    n_images = normal_images = n_reports = 0
    for text in texts:
        k = len(re.findall(r"<parentImage id=", text))
        n_images += k
        n_reports += k > 0
        if re.search(r"<major>normal</major>", text):
            normal_images += k
    return n_images, normal_images, n_reports


def test_real_reports_subset(realdata, tmp_path):
    folder = tmp_path / "ecgen-radiology"
    folder.mkdir()
    texts = []
    with tarfile.open(realdata / "openi" / "NLMCXR_reports.tgz") as archive:
        for member in archive:
            if member.name.endswith(".xml"):
                texts.append(archive.extractfile(member).read().decode())
                (folder / member.name.rsplit("/", 1)[-1]).write_text(texts[-1])
            if len(texts) == 300:
                break
    ds = indiana.load(tmp_path, top=None)
    n_images, normal_images, n_reports = _regex_counts(texts)
    assert len(ds.frame) == n_images
    assert ds.frame["normal"].sum() == normal_images
    assert ds.frame["patient_id"].nunique() == n_reports
    assert ds.frame["report"].str.contains("XXXX").any()


@pytest.mark.slow
def test_real_reports_full(realdata, tmp_path):
    real = realdata / "openi" / "NLMCXR_reports.tgz"
    (tmp_path / "NLMCXR_reports.tgz").symlink_to(real)
    ds = indiana.load(tmp_path)
    with tarfile.open(real) as archive:
        texts = [archive.extractfile(m).read().decode() for m in archive if m.name.endswith(".xml")]
    n_images, normal_images, n_reports = _regex_counts(texts)
    assert len(ds.frame) == n_images == 7470
    assert len(ds.labels) == 20 and ds.labels[0] == "normal"
    assert ds.frame["normal"].sum() == normal_images
    assert ds.frame["patient_id"].nunique() == n_reports == 3955 - 104


def _folder(root, reports):
    folder = root / "ecgen-radiology"
    folder.mkdir(parents=True)
    for name, text in reports.items():
        (folder / name).write_text(text)


def test_views_from_kaggle_projections_refined_by_dicom_metadata(tmp_path):
    _folder(tmp_path, REPORTS)
    images = tmp_path / "images" / "images_normalized"
    images.mkdir(parents=True)
    # Kaggle names drop report 1's repeated number: CXR1_1_IM-0001-3001 -> 1_IM-0001-3001.dcm.png
    (images / "1_IM-0001-3001.dcm.png").write_bytes(b"")
    (tmp_path / "indiana_projections.csv").write_text(
        "uid,filename,projection\n"
        "1,1_IM-0001-3001.dcm.png,Frontal\n"
        "1,1_IM-0001-4001.dcm.png,Lateral\n"
        "2,2_1_IM-0652-1001.dcm.png,Frontal\n"
    )
    ds = indiana.load(tmp_path)
    f = ds.frame.set_index("sample_id")
    assert f.loc["CXR1_1_IM-0001-3001", "path"] == str(images.resolve() / "1_IM-0001-3001.dcm.png")
    views = f["view"].to_dict()
    assert views["CXR1_1_IM-0001-3001"] == "FRONTAL" and views["CXR1_1_IM-0001-4001"] == "LATERAL"
    assert views["CXR2_1_IM-0652-1001"] == "FRONTAL" and pd.isna(views["CXR3_1_IM-1384-1001"])
    assert ds.notes["views"] == "indiana_projections.csv"
    # the DICOM header table says which frontal is PA/AP; the projections table wins on lateral
    (tmp_path / "nlmcxr_dicom_metadata.csv").write_text(
        "imageid,View Position,filename\nCXR1_IM-0001-3001,PA,./1_IM-0001-3001.dcm\n"
        "CXR1_IM-0001-4001,PA,./1_IM-0001-4001.dcm\nCXR3_1_IM-1384-1001,LL,./3_1_IM-1384-1001.dcm\n"
    )
    views = indiana.load(tmp_path).frame.set_index("sample_id")["view"].to_dict()
    assert views["CXR1_1_IM-0001-3001"] == "PA" and views["CXR1_1_IM-0001-4001"] == "LATERAL"
    assert views["CXR2_1_IM-0652-1001"] == "FRONTAL" and views["CXR3_1_IM-1384-1001"] == "LL"


def test_frontal_filter_counts_images_without_a_view(tmp_path):
    from cxrbench.data.samples import LabelPolicy, build_samples

    _folder(tmp_path, REPORTS)
    ds = indiana.load(tmp_path, top=None)  # PNG layout, no view source: every view unknown
    with pytest.raises(CxrbenchError, match=r"4 image\(s\) have no recorded view.*frontal\+unknown"):
        build_samples(ds, LabelPolicy(views="frontal"), root=tmp_path)
    samples, summary = build_samples(ds, LabelPolicy(views="frontal+unknown"), root=tmp_path)
    assert len(samples) == 4 and summary["excluded_unknown_view"] == 0


def test_headings_differing_by_case_or_spacing_are_one_label(tmp_path):
    reports = {
        "1.xml": _xml("CXR1", ["Thoracic Vertebrae/degenerative"], ["CXR1_IM-1"]),
        "2.xml": _xml("CXR2", ["Thoracic Vertebrae", "Lymph Nodes"], ["CXR2_IM-1"]),
        "3.xml": _xml("CXR3", ["Thoracic vertebrae/mild", "Subcutaneous  Emphysema"], ["CXR3_IM-1"]),
        "4.xml": _xml("CXR4", ["Lymph nodes", "Subcutaneous Emphysema"], ["CXR4_IM-1"]),
        "5.xml": _xml("CXR5", ["Subcutaneous Emphysema", "Lymph Nodes", "lymph  nodes"], ["CXR5_IM-1"]),
    }
    _folder(tmp_path, reports)
    ds = indiana.load(tmp_path, top=None)
    assert ds.labels == ["Lymph Nodes", "Subcutaneous Emphysema", "Thoracic Vertebrae"]
    f = ds.frame.set_index("sample_id")
    assert f["Thoracic Vertebrae"].tolist() == [1.0, 1.0, 1.0, 0.0, 0.0]
    assert f["Lymph Nodes"].tolist() == [0.0, 1.0, 0.0, 1.0, 1.0]


def _link_real(realdata, tmp_path, *names):
    for name in names:
        (tmp_path / name).symlink_to(realdata / "openi" / name)
    return tmp_path


def test_real_reports_all_headings_prepare_cleanly(realdata, tmp_path):
    import warnings

    from cxrbench.data.samples import LabelPolicy, build_samples

    root = _link_real(realdata, tmp_path, "NLMCXR_reports.tgz", "nlmcxr_dicom_metadata.csv.gz")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = indiana.load(root, top=None)
        samples, summary = build_samples(ds, LabelPolicy(views="frontal"), root=root)
    # 121 spellings: 3 pairs differ only by case or spacing, and "No Indexing" is no label
    assert len(ds.labels) == 117
    assert "Thoracic Vertebrae" in ds.labels and "Thoracic vertebrae" not in ds.labels
    assert ds.frame["sample_id"].is_unique and len(ds.frame) == 7470
    # views from the DICOM header table: PA 3,593, AP 423, blank 2,586 (+1 image it lacks)
    assert ds.notes["views"] == "nlmcxr_dicom_metadata.csv.gz"
    assert len(samples) == 3593 + 423
    assert summary["excluded_unknown_view"] == 2586 + 1
    assert summary["excluded_non_frontal"] == 717 + 119 + 29 + 2  # LL, LATERAL, RL, LARGE LATERAL
