"""MIMIC edema severity adapter: source priority, one-hot classes, study-to-image mapping, real files."""

from __future__ import annotations

import csv
import gzip
from pathlib import Path

import numpy as np
import pytest

from cxrbench.data.adapters import mimic_edema
from cxrbench.errors import CxrbenchError

META_HEADER = "dicom_id,subject_id,study_id,PerformedProcedureStepDescription,ViewPosition,Rows,Columns"


def _meta(root: Path, rows: list[tuple[str, str, str, str]]) -> None:
    with gzip.open(root / "mimic-cxr-2.0.0-metadata.csv.gz", "wt") as fh:
        fh.write(META_HEADER + "\n")
        for dicom, subject, study, view in rows:
            fh.write(f"{dicom},{subject},{study},CHEST,{view},3056,2544\n")


def _fixture(root: Path) -> None:
    _meta(
        root,
        [
            ("d1", "10000001", "50000001", "PA"),
            ("d2", "10000001", "50000001", "LATERAL"),
            ("d3", "10000002", "50000002", "AP"),
            ("d4", "10000003", "50000003", "AP"),
            ("d5", "10000003", "50000003", "AP"),
            ("d9", "10000009", "50000009", "AP"),  # not an edema study: left out
        ],
    )
    (root / mimic_edema.REGEX).write_text(
        "subject_id,study_id,edema_severity\n10000001,50000001,0\n10000002,50000002,3\n10000003,50000003,1\n"
    )
    (root / mimic_edema.EXPERT).write_text("subject_id,study_id,edema_severity\n10000002,50000002,2\n")
    (root / mimic_edema.CONSENSUS).write_text(
        "subject_id,study_id,dicom_id,edema_severity\n10000003,50000003,d5,2\n10000004,50000004,d6,1\n"
    )


def test_priority_and_one_hot(tmp_path: Path) -> None:
    _fixture(tmp_path)
    raw = mimic_edema.load(tmp_path)
    assert raw.task == "multiclass" and raw.labels == list(mimic_edema.CLASSES)
    f = raw.frame.set_index(raw.frame["path"].str.rsplit("/", n=1).str[-1].str[:-4])
    severity = {d: int(np.argmax(f.loc[d, raw.labels].to_numpy())) for d in f.index}
    assert severity == {"d1": 0, "d2": 0, "d3": 2, "d4": 1, "d5": 2, "d6": 1}
    assert (f[raw.labels].sum(axis=1) == 1.0).all()
    assert f.loc["d2", "view"] == "LATERAL" and f.loc["d3", "view"] == "AP"
    assert f.loc["d6", "patient_id"] == "10000004"
    assert f.loc["d1", "path"] == str(tmp_path / "files/p10/p10000001/s50000001/d1.jpg")
    assert (f["sample_id"] == f.index).all()  # the dicom_id
    assert f["split"].isna().all()


def test_regex_only_and_mimic_root(tmp_path: Path) -> None:
    edema, mimic = tmp_path / "edema", tmp_path / "mimic"
    edema.mkdir(), mimic.mkdir()
    _meta(mimic, [("d1", "10000001", "50000001", "PA")])
    (edema / mimic_edema.REGEX).write_text("subject_id,study_id,edema_severity\n10000001,50000001,3\n")
    raw = mimic_edema.load(edema, mimic_root=mimic)
    assert raw.frame["alveolar edema"].tolist() == [1.0]
    assert raw.frame["path"].iloc[0].startswith(str(mimic / "files"))


def test_errors(tmp_path: Path) -> None:
    with pytest.raises(CxrbenchError, match="regex_report_edema_severity.csv"):
        mimic_edema.load(tmp_path)
    (tmp_path / mimic_edema.REGEX).write_text("subject_id,study_id,edema_severity\n1,5,2\n")
    with pytest.raises(CxrbenchError, match="mimic-cxr-2.0.0-metadata"):
        mimic_edema.load(tmp_path)
    _meta(tmp_path, [("d1", "1", "5", "PA")])
    (tmp_path / mimic_edema.REGEX).write_text("subject_id,study_id,edema_severity\n1,5,4\n")
    with pytest.raises(CxrbenchError, match="edema_severity '4'"):
        mimic_edema.load(tmp_path)


def test_real_label_files(realdata: Path, tmp_path: Path) -> None:
    src = realdata / "mimic_edema"
    for name in (mimic_edema.REGEX, mimic_edema.EXPERT, mimic_edema.CONSENSUS):
        (tmp_path / name).symlink_to(src / name)
    with open(src / mimic_edema.REGEX, newline="") as fh:
        regex = {(r["subject_id"], r["study_id"]): int(r["edema_severity"]) for r in csv.DictReader(fh)}
    with open(src / mimic_edema.EXPERT, newline="") as fh:
        expert = {(r["subject_id"], r["study_id"]): int(r["edema_severity"]) for r in csv.DictReader(fh)}
    with open(src / mimic_edema.CONSENSUS, newline="") as fh:
        consensus = {
            r["dicom_id"]: (r["subject_id"], r["study_id"], int(r["edema_severity"])) for r in csv.DictReader(fh)
        }
    # metadata written in tmp: one synthetic frontal image per report-level study, plus the consensus images
    rows = [(f"x{sid}", subj, sid, "AP") for subj, sid in regex]
    rows += [(d, subj, sid, "PA") for d, (subj, sid, _) in consensus.items()]
    _meta(tmp_path, rows)
    raw = mimic_edema.load(tmp_path)
    f = raw.frame
    assert len(f) == len(regex) + len(consensus) == 6_710 + 141
    expected = [0, 0, 0, 0]
    for subj, sid in regex:
        expected[expert.get((subj, sid), regex[(subj, sid)])] += 1
    for _, _, sev in consensus.values():
        expected[sev] += 1
    assert f[raw.labels].sum().astype(int).tolist() == expected
    assert f["patient_id"].nunique() == len({s for s, _ in regex})
