"""Each adapter against torchxrayvision's dataset class on the same real metadata file.

Both read the CSVs in ``shared/realdata`` (PadChest: the CSV torchxrayvision ships in its package);
torchxrayvision gets an empty image folder, since its classes read images only in ``__getitem__``.
Its classes are built with ``views=["*"]`` and ``unique_patients=False`` (its defaults keep PA
only and one image per patient), so images, patients, views and positives per label can be
compared one to one. Every difference that remains is a policy choice, asserted and explained
where it applies:

- CheXpert: torchxrayvision maps uncertain (-1) to NaN and sets findings of ``No Finding`` rows
  to 0; cxrbench keeps -1 for ``--uncertain`` and derives No Finding negatives (it drops No Finding).
- VinDr: torchxrayvision marks a finding if any of the three readers did; cxrbench takes the
  majority of readers.
- RSNA: torchxrayvision takes views from its own table of DICOM headers; cxrbench reads them from
  the DICOM files, so without images the view is unknown.
- SIIM: torchxrayvision keeps one row per mask component; cxrbench one row per image.
- Indiana: torchxrayvision labels from the automatic MeSH terms by substring, cxrbench from the
  major headings; the parse is compared through torchxrayvision's ``labels_major`` column.
- PadChest: torchxrayvision drops rows without labels, 21 broken images and patients under 10,
  and maps 174 findings to 28 pathologies by substring; cxrbench keeps every row and finding.

MIMIC-CXR (and the edema severity labels) are not compared: there are no real MIMIC-CXR metadata
or label rows in ``shared/realdata``, and torchxrayvision has no edema-severity class.
"""

from __future__ import annotations

import re
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxrbench.data.adapters import (
    chexpert,
    indiana,
    nih,
    nih_google,
    padchest,
    rsna_pneumonia,
    siim_acr,
    vindr_cxr,
)
from cxrbench.data.adapters.base import label_key, normalise_view

xrv = pytest.importorskip("torchxrayvision", reason="torchxrayvision is not installed (pip install .[test])")


@pytest.fixture
def no_images(tmp_path: Path) -> str:
    """An empty image folder for torchxrayvision (it only checks that the folder exists)."""
    folder = tmp_path / "txv-images"
    folder.mkdir()
    return str(folder)


def _root(tmp_path: Path, links: dict[str, Path]) -> Path:
    """A dataset root for cxrbench holding symlinks to the real files under the names it expects."""
    root = tmp_path / "root"
    root.mkdir(exist_ok=True)
    for name, target in links.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).symlink_to(target)
    return root


def _positives(ds, name: str) -> int:
    return int(np.nansum(ds.labels[:, ds.pathologies.index(name)] == 1))


def _load(load, *args, **kwargs):
    """Run an adapter with every warning an error: real files must load cleanly."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return load(*args, **kwargs)


def test_nih(realdata: Path, tmp_path: Path, no_images: str) -> None:
    entry = realdata / "nih" / "Data_Entry_2017_v2020.csv.gz"
    txv = xrv.datasets.NIH_Dataset(
        imgpath=no_images,
        csvpath=str(entry),
        bbox_list_path=str(realdata / "nih" / "BBox_List_2017.csv.gz"),
        views=["*"],
        unique_patients=False,
    )
    ours = _load(nih.load, _root(tmp_path, {entry.name: entry})).frame
    assert len(ours) == len(txv) == 112_120
    assert ours["sample_id"].tolist() == txv.csv["Image Index"].tolist()
    assert ours["patient_id"].nunique() == txv.csv["patientid"].nunique() == 30_805
    assert Counter(ours["view"]) == Counter(txv.csv["view"])
    for name in txv.pathologies:  # the same 14 names
        assert (ours[name] == 1).sum() == _positives(txv, name), name


def test_nih_google(realdata: Path, tmp_path: Path, no_images: str) -> None:
    path = realdata / "nih" / "google2019_nih-chest-xray-labels.csv.gz"
    txv = xrv.datasets.NIH_Google_Dataset(imgpath=no_images, csvpath=str(path), views=["*"], unique_patients=False)
    raw = _load(nih_google.load, _root(tmp_path, {path.name: path}))
    ours = raw.frame
    assert len(ours) == len(txv) == 4376
    assert ours["sample_id"].tolist() == txv.csv["Image Index"].tolist()
    assert ours["patient_id"].nunique() == txv.csv["Patient ID"].nunique()
    assert Counter(ours["view"]) == Counter(txv.csv["view"])
    # torchxrayvision renames two labels and pools val and test; cxrbench keeps names and Set Id
    renamed = {"Airspace opacity": "Lung Opacity", "Nodule or mass": "Nodule/Mass"}
    for name in raw.labels:
        assert (ours[name] == 1).sum() == _positives(txv, renamed.get(name, name)), name
    assert Counter(ours["split"]) == Counter(txv.csv["Set Id"])


def test_chexpert(realdata: Path, tmp_path: Path, no_images: str) -> None:
    train = realdata / "chexpert" / "chexpert_train.csv.gz"
    txv = xrv.datasets.CheX_Dataset(imgpath=no_images, csvpath=str(train), views=["*"], unique_patients=False)
    root = _root(tmp_path, {"CheXpert-v1.0-small/train.csv.gz": train})
    valid = pd.read_csv(realdata / "chexpert" / "valid.thoraxnet_modified_paths.csv", dtype=str)
    valid["Path"] = valid["Path"].str.replace(
        r"^chexpert/valid/(patient\d+)_(study\d+)_(view.+)$", r"CheXpert-v1.0-small/valid/\1/\2/\3", regex=True
    )
    valid.to_csv(root / "CheXpert-v1.0-small" / "valid.csv", index=False)
    ours = _load(chexpert.load, root).frame
    ours = ours[ours["split"] == "trainval"].reset_index(drop=True)  # torchxrayvision reads train.csv only
    assert len(ours) == len(txv) == 223_414
    assert ours["sample_id"].tolist() == txv.csv["Path"].tolist()
    assert ours["patient_id"].nunique() == txv.csv["patientid"].nunique()
    # torchxrayvision writes laterals as L; the AP/PA values (AP, PA, LL, RL) are the same
    assert Counter(ours["view"]) == Counter(txv.csv["view"].replace({"L": "LATERAL"}))
    healthy = (ours["No Finding"] == 1).to_numpy()
    for name in txv.pathologies:
        column = {"Effusion": "Pleural Effusion"}.get(name, name)
        values = ours[column]
        assert (values == 1).sum() == _positives(txv, name), name
        # uncertain: -1 here, NaN there; and torchxrayvision zeroes findings of No Finding rows
        # (Support Devices excepted), which the labeler leaves blank
        unknown = values.isna() | (values == -1)
        if name != "Support Devices":
            unknown &= ~healthy
        assert unknown.sum() == np.isnan(txv.labels[:, txv.pathologies.index(name)]).sum(), name
    # No Finding is not one of its labels; here its blanks are negative next to a positive or
    # uncertain finding (see test_chexpert.py), so it has negatives to evaluate against
    assert "No Finding" not in txv.pathologies and (ours["No Finding"] == 0).sum() == 194_934


def test_rsna(realdata: Path, tmp_path: Path, no_images: str) -> None:
    labels = realdata / "rsna" / "kaggle_stage_2_train_labels.csv.zip"
    headers = realdata / "rsna" / "kaggle_stage_2_train_images_dicom_headers.csv.gz"
    txv = xrv.datasets.RSNA_Pneumonia_Dataset(
        imgpath=no_images, csvpath=str(labels), dicomcsvpath=str(headers), views=["*"]
    )
    ours = _load(rsna_pneumonia.load, _root(tmp_path, {"stage_2_train_labels.csv.zip": labels})).frame
    assert len(ours) == len(txv) == 26_684
    assert set(ours["sample_id"]) == set(txv.csv["patientId"])
    assert ours["patient_id"].nunique() == txv.csv["patientid"].nunique() == 26_684
    # the pneumonia target: torchxrayvision's Pneumonia and Lung Opacity are both Target
    assert (ours["Lung Opacity"] == 1).sum() == _positives(txv, "Lung Opacity") == _positives(txv, "Pneumonia")
    # views: torchxrayvision joins its own dump of the DICOM headers; cxrbench reads the DICOM
    # files' headers, which are not here, so every view is unknown (--views frontal+unknown)
    assert Counter(txv.csv["view"]) == {"PA": 14_511, "AP": 12_173}
    assert ours["view"].isna().all()


def test_siim(realdata: Path, tmp_path: Path, no_images: str) -> None:
    rle = realdata / "siim" / "siim-pneumothorax-train-rle.csv.gz"
    txv = xrv.datasets.SIIM_Pneumothorax_Dataset(imgpath=no_images, csvpath=str(rle))
    ours = _load(siim_acr.load, _root(tmp_path, {"train-rle.csv.gz": rle})).frame
    # torchxrayvision: one row per mask component (12,954); cxrbench: one row per image
    assert len(txv) == 12_954 and len(ours) == txv.csv["ImageId"].nunique() == 12_047
    assert set(ours["sample_id"]) == set(txv.csv["ImageId"])
    positive_images = txv.csv.loc[txv.labels[:, 0] == 1, "ImageId"].nunique()
    assert (ours["Pneumothorax"] == 1).sum() == positive_images


def _reader_votes(path: Path) -> tuple[pd.DataFrame, pd.Series]:
    """Readers who marked each (image, finding), and readers per image, from the raw rows."""
    raw = pd.read_csv(path, usecols=["image_id", "class_name", "rad_id"]).drop_duplicates()
    votes = raw.groupby(["image_id", "class_name"]).size().unstack(fill_value=0)
    return votes, raw.groupby("image_id")["rad_id"].nunique()


def test_vindr(realdata: Path, tmp_path: Path, no_images: str) -> None:
    path = realdata / "vindr" / "vinbigdata-train.csv.gz"
    txv = xrv.datasets.VinDr_Dataset(imgpath=no_images, csvpath=str(path))
    raw = _load(vindr_cxr.load, _root(tmp_path, {"train.csv.gz": path}))
    ours = raw.frame.set_index("sample_id")
    assert len(ours) == len(txv) == 15_000
    assert set(ours.index) == set(txv.csv["image_id"])
    votes, readers = _reader_votes(path)
    assert (readers == 3).all()  # three readers per image: no majority ties
    # the release has no patient ids (cxrbench uses the image id) and no views (PA by the paper)
    assert ours["patient_id"].nunique() == 15_000 and (ours["view"] == "PA").all()
    spelled = {"Effusion": "Pleural effusion", "Pleural_Thickening": "Pleural thickening"}
    for name in txv.pathologies:
        ours_name = next(n for n in raw.labels if n.lower() == spelled.get(name, name).lower())
        # torchxrayvision: any reader; cxrbench: the majority, two of three
        assert _positives(txv, name) == (votes[ours_name] >= 1).sum(), name
        assert (ours[ours_name] == 1).sum() == (votes[ours_name] >= 2).sum() <= _positives(txv, name), name


def test_indiana(realdata: Path, tmp_path: Path, no_images: str) -> None:
    files = {n: realdata / "openi" / n for n in ("NLMCXR_reports.tgz", "nlmcxr_dicom_metadata.csv.gz")}
    txv = xrv.datasets.Openi_Dataset(
        imgpath=no_images,
        xmlpath=str(files["NLMCXR_reports.tgz"]),
        dicomcsv_path=str(files["nlmcxr_dicom_metadata.csv.gz"]),
        tsnepacsv_path=str(realdata / "openi" / "nlmcxr_tsne_pa.csv.gz"),
        views=["*"],
        unique_patients=False,
    )
    raw = _load(indiana.load, _root(tmp_path, files))
    ours = raw.frame.set_index("sample_id")
    assert len(ours) == len(txv) == 7470
    assert set(ours.index) == set(txv.csv["imageid"])
    assert ours["patient_id"].nunique() == txv.csv["patientid"].nunique() == 3851
    # the same DICOM View Position; torchxrayvision writes a blank as UNKNOWN, and its join misses
    # report CXR1's two images (named CXR1_1_IM-... in the XML, CXR1_IM-... in the table)
    theirs = txv.csv.set_index("imageid")["view"]
    cxr1 = [i for i in ours.index if i.startswith("CXR1_1_")]
    assert (theirs[cxr1] == "UNKNOWN").all() and (ours.loc[cxr1, "view"] == "PA").all()
    rest = theirs.drop(cxr1)
    assert Counter(None if pd.isna(v) else v for v in ours["view"].drop(cxr1)) == Counter(
        normalise_view(None if v == "UNKNOWN" else v) for v in rest
    )
    # labels: the same major headings, read through torchxrayvision's own parse (labels_major)
    majors = txv.csv.set_index("imageid")["labels_major"].reindex(ours.index).fillna("")
    keys = majors.map(lambda text: {label_key(m.split("/")[0]) for m in text.split("|") if m})
    for name in raw.labels:
        key = label_key(name)
        assert (ours[name] == 1).sum() == sum(key in k for k in keys), name


def _padchest_csv() -> Path:
    path = Path(xrv.__file__).parent / "data" / "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz"
    if not path.exists():
        pytest.skip("this torchxrayvision release does not ship the PadChest CSV")
    return path


@pytest.mark.filterwarnings("ignore:Parsing integer or float values with a format")  # its to_datetime
def test_padchest(tmp_path: Path, no_images: str) -> None:
    path = _padchest_csv()
    txv = xrv.datasets.PC_Dataset(imgpath=no_images, csvpath=str(path), views=["*"], unique_patients=False)
    raw = _load(padchest.load, _root(tmp_path, {path.name: path}), labels="all")
    ours = raw.frame.set_index("sample_id")
    assert ours.index.is_unique and set(txv.csv["ImageID"]) <= set(ours.index)
    # torchxrayvision's three row filters, recomputed from the raw columns they use
    cols = pd.read_csv(path, usecols=["ImageID", "PatientBirth", "Labels"], low_memory=False)
    broken = 21  # images torchxrayvision lists as missing or truncated (cxrbench quarantines them)
    kept = cols["Labels"].notna() & (2019 - cols["PatientBirth"] > 10)
    assert len(ours) == len(cols) and len(txv) == kept.sum() - broken
    mine = ours.loc[txv.csv["ImageID"]]
    assert mine["patient_id"].nunique() == txv.csv["patientid"].nunique()
    projection = txv.csv["view"].replace({"UNKNOWN": None, "AP Supine": "AP_horizontal"})
    assert Counter(mine["view"]) == Counter(normalise_view(v) for v in projection)
    # its 28 pathologies are substrings of the finding names (plus synonyms): rebuilt from
    # cxrbench's parsed findings, they give its positives row for row
    synonyms = {
        "Infiltration": [
            "infiltrates",
            "interstitial pattern",
            "ground glass pattern",
            "reticular interstitial pattern",
            "reticulonodular interstitial pattern",
            "alveolar pattern",
            "consolidation",
            "air bronchogram",
        ],
        "Pleural_Thickening": ["pleural thickening"],
        "Consolidation": ["air bronchogram"],
        "Hilar Enlargement": ["adenopathy", "pulmonary artery enlargement"],
        "Support Devices": ["device", "pacemaker"],
    }
    present = mine[raw.labels].fillna(0).to_numpy() == 1
    for name in txv.pathologies:
        if name == "Tube":  # "tube'": findings whose name ends in tube (or stent)
            match = [bool(re.search(r"(tube|stent)$", n)) for n in raw.labels]
        else:
            terms = [name.lower(), *synonyms.get(name, [])]
            match = [any(t in n for t in terms) for n in raw.labels]
        expected = present[:, np.array(match)].any(axis=1).sum() if any(match) else 0
        assert _positives(txv, name) == expected, name
