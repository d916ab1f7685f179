"""REFLACX adapter: certainty mapping, reader majority, phases with different labels, split, paths."""

from __future__ import annotations

import gzip
from pathlib import Path

import pandas as pd
import pytest

from cxrbench.data.adapters import reflacx
from cxrbench.errors import CxrbenchError

META = "id,split,eye_tracking_data_discarded,image,dicom_id,subject_id,image_size_x,image_size_y"
IMG = "physionet.org/files/mimic-cxr/2.0.0/files/p18/p18004941/s58821758/{d}.dcm"
D1, D2, D3 = (
    "8e3f9e9a-5c5b1b3c-0ee5d2a4-5d1f0b9e-4f6a3c1d",
    "a1b2c3d4-11111111-22222222-33333333-44444444",
    "ffffffff-00000000-11111111-22222222-33333333",
)


def _write(root: Path) -> None:
    main = root / "main_data"
    main.mkdir(parents=True)
    labels2 = ",".join(reflacx.SSL13_LABELS) + ",Support devices"
    zeros = ",".join(["0"] * 9)

    def row(rid: str, split: str, d: str, certs: str) -> str:
        return f"{rid},{split},False,{IMG.format(d=d)},{d},18004941,2544,3056,{certs}"

    phase2 = [
        # three readers of D1: Atelectasis 5/4/0 -> 2 of 3 positive; Consolidation 3/2/0 -> no majority
        row("P300R1", "train", D1, "5,3," + ",".join(["0"] * 7) + ",1"),
        row("P300R2", "train", D1, "4,2," + ",".join(["0"] * 7) + ",0"),
        row("P300R3", "train", D1, "0,0," + ",".join(["0"] * 7) + ",0"),
        row("P300R4", "validate", D2, "1," + zeros[2:] + ",5"),
    ]
    (main / "metadata_phase_2.csv").write_text("\n".join([f"{META},{labels2}", *phase2]) + "\n")
    phase1 = [
        f"P100R1,test,True,{IMG.format(d=D3)},{D3},18004941,2544,3056,4,5",
    ]
    (main / "metadata_phase_1.csv").write_text(
        "\n".join([f"{META},Airway wall thickening,Enlarged cardiac silhouette", *phase1]) + "\n"
    )


def test_majority_certainty_and_split(tmp_path: Path) -> None:
    _write(tmp_path)
    raw = reflacx.load(tmp_path)
    f = raw.frame.set_index(raw.frame["path"].str.rsplit("/", n=1).str[-1].str[:-4])
    assert raw.labels == list(reflacx.SSL13_LABELS)
    assert list(f.index) == [D3, D1, D2]
    assert f.loc[D1, "Atelectasis"] == 1.0
    assert f.loc[D1, "Consolidation"] == -1.0
    assert f.loc[D1, "Pneumothorax"] == 0.0
    assert f.loc[D2, "Atelectasis"] == 0.0  # certainty 1, "unlikely"
    # phase 1 image: only the labels phase 1 has are known
    assert f.loc[D3, "Enlarged cardiac silhouette"] == 1.0
    assert pd.isna(f.loc[D3, "Atelectasis"])
    assert f["split"].tolist() == ["test", "train", "val"]
    assert f["patient_id"].iloc[0] == "18004941" and f["study_id"].iloc[0] == "58821758"
    assert f.loc[D1, "path"] == str(tmp_path / f"files/p18/p18004941/s58821758/{D1}.jpg")
    assert f.loc[D1, "sample_id"] == D1
    assert f["view"].isna().all()


def test_all_labels_and_views_from_mimic(tmp_path: Path) -> None:
    _write(tmp_path)
    with gzip.open(tmp_path / "mimic-cxr-2.0.0-metadata.csv.gz", "wt") as fh:
        fh.write(f"dicom_id,subject_id,study_id,ViewPosition\n{D1},18004941,58821758,AP\n{D2},18004941,58821758,PA\n")
    raw = reflacx.load(tmp_path, labels="all")
    assert "Support devices" in raw.labels and "Airway wall thickening" in raw.labels
    f = raw.frame
    assert f["Support devices"].tolist()[1:] == [0.0, 1.0]
    assert f["view"].tolist()[1:] == ["AP", "PA"] and pd.isna(f["view"].iloc[0])


def test_certainty_to_label() -> None:
    c = pd.DataFrame({"x": [0, 1, 2, 3, 4, 5, None]})
    out = reflacx.certainty_to_label(c)["x"].tolist()
    assert out[:6] == [0.0, 0.0, -1.0, -1.0, 1.0, 1.0] and pd.isna(out[6])


def test_errors(tmp_path: Path) -> None:
    with pytest.raises(CxrbenchError, match="metadata_phase_1.csv"):
        reflacx.load(tmp_path)
    with pytest.raises(CxrbenchError, match="labels must be one of"):
        reflacx.load(tmp_path, labels="nine")
    _write(tmp_path)
    path = tmp_path / "main_data/metadata_phase_1.csv"
    path.write_text(path.read_text().replace(",4,5", ",4,7"))
    with pytest.raises(CxrbenchError, match="certainty '7'"):
        reflacx.load(tmp_path)
