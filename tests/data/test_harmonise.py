"""The label harmonisation table against the adapters' label sets and torchxrayvision's names."""

from __future__ import annotations

import gzip
import importlib.util
import re
from pathlib import Path

import pytest

from cxrbench.data.adapters import chexpert, mimic_cxr, nih, padchest
from cxrbench.data.adapters.base import label_key
from cxrbench.data.harmonise import label_table, shared_labels
from cxrbench.data.synthetic import FINDINGS as SYNTHETIC
from cxrbench.errors import CxrbenchError

#: VinDr-CXR's Kaggle (VinBigData) class_name values, as in shared/realdata/LAYOUTS.md
VINDR_KAGGLE = (
    "Aortic enlargement", "Atelectasis", "Calcification", "Cardiomegaly", "Consolidation", "ILD",
    "Infiltration", "Lung Opacity", "Nodule/Mass", "Other lesion", "Pleural effusion",
    "Pleural thickening", "Pneumothorax", "Pulmonary fibrosis", "No finding",
)  # fmt: skip


def _txv_source() -> str:
    """torchxrayvision's datasets.py, read as text (not imported)."""
    spec = importlib.util.find_spec("torchxrayvision")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("torchxrayvision is not installed")
    return (Path(next(iter(spec.submodule_search_locations))) / "datasets.py").read_text()


def _quoted_list(source: str, start: str) -> list[str]:
    """The quoted strings of the first ``[...]`` after ``start`` in ``source``."""
    body = source[source.index(start) :]
    body = body[body.index("[") : body.index("]") + 1]
    return re.findall(r"[\"']([^\"']+)[\"']", body)


def _padchest_vocabulary(source: str) -> list[str]:
    """What torchxrayvision's PC_Dataset matches in PadChest's Labels (lower-cased pathology names
    and their synonyms, matched as substrings)."""
    init = source[source.index("class PC_Dataset") : source.index("class CheX_Dataset")]
    names = _quoted_list(init, "self.pathologies = [")
    synonyms = re.findall(r"mapping\[[^\]]+\] = \[([^\]]*)\]", init)
    return [n.lower().rstrip("'") for n in names] + [
        s.rstrip("'") for group in synonyms for s in re.findall(r"\"([^\"]+)\"", group)
    ]


ADAPTER_LABELS = {
    "nih": [*nih.FINDINGS, nih.NO_FINDING],
    "chexpert": list(chexpert.LABELS),
    "mimic-cxr": list(mimic_cxr.LABELS),
    "synthetic": list(SYNTHETIC),
    "vindr-cxr": list(VINDR_KAGGLE),
}


def test_every_mapped_name_is_a_label_of_its_adapter() -> None:
    txv_padchest = _padchest_vocabulary(_txv_source())
    checked = set()
    for finding in label_table().values():
        assert finding.source.strip()
        for adapter, name in finding.labels.items():
            checked.add(adapter)
            if adapter == "padchest":  # labels="all" keeps the file's names: ssl13's, or what TXV matches
                assert name in padchest.SSL13_LABELS or any(term in name for term in txv_padchest), name
            else:
                assert name in ADAPTER_LABELS[adapter], (finding.name, adapter, name)
    assert checked == {"nih", "chexpert", "mimic-cxr", "padchest", "vindr-cxr", "synthetic"}


def test_vindr_names_are_the_real_files_classes(realdata: Path) -> None:
    with gzip.open(realdata / "vindr" / "vinbigdata-train.csv.gz", "rt") as handle:
        next(handle)
        classes = {line.split(",")[1] for line in handle}
    assert classes == set(VINDR_KAGGLE)


def test_finding_names_are_torchxrayvisions_pathologies() -> None:
    source = _txv_source()
    default = _quoted_list(source, "default_pathologies = [")
    names = set(label_table())
    assert names - set(default) == {"No Finding"}  # the one finding torchxrayvision does not align
    # torchxrayvision's own renames agree with the table
    assert 'np.char.replace(self.pathologies, "Pleural Effusion", "Effusion")' in source
    assert label_table()["Effusion"].labels["chexpert"] == "Pleural Effusion"
    assert 'self.mapping["Effusion"] = ["Pleural effusion"]' in source
    assert label_table()["Effusion"].labels["vindr-cxr"] == "Pleural effusion"
    assert 'mapping["Pleural_Thickening"] = ["pleural thickening"]' in source
    assert label_table()["Pleural_Thickening"].labels["padchest"] == "pleural thickening"


def test_nih_and_chexpert_share_seven_findings() -> None:
    nih_labels = [label_key(n) for n in nih.FINDINGS]
    chexpert_labels = [label_key(n) for n in chexpert.LABELS]
    shared = shared_labels(("nih", nih_labels), ("chexpert", chexpert_labels))
    assert shared.pairs == (
        ("atelectasis", "atelectasis", "atelectasis"),
        ("cardiomegaly", "cardiomegaly", "cardiomegaly"),
        ("consolidation", "consolidation", "consolidation"),
        ("edema", "edema", "edema"),
        ("effusion", "effusion", "pleural_effusion"),
        ("pneumonia", "pneumonia", "pneumonia"),
        ("pneumothorax", "pneumothorax", "pneumothorax"),
    )
    assert set(shared.only_train) == {"emphysema", "fibrosis", "hernia", "infiltration", "mass", "nodule"} | {
        "pleural_thickening"
    }
    assert "support_devices" in shared.only_test and "pleural_effusion" not in shared.only_test


def test_padchest_vindr_and_unknown_adapters() -> None:
    shared = shared_labels(
        ("padchest", ["pleural_effusion", "normal", "kyphosis"]),
        ("vindr-cxr", ["pleural_effusion", "no_finding", "ild"]),
    )
    assert shared.pairs == (
        ("effusion", "pleural_effusion", "pleural_effusion"),
        ("no_finding", "normal", "no_finding"),
    )
    assert shared.only_train == ("kyphosis",) and shared.only_test == ("ild",)
    # adapters the table does not cover match by name
    shared = shared_labels(("csv", ["effusion", "mass"]), ("nih", ["effusion", "nodule"]))
    assert shared.pairs == (("effusion", "effusion", "effusion"),)


def test_local_table_replaces_a_finding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "labels.toml").write_text(
        '[findings.Effusion]\nsource = "our hospital"\nnih = "Effusion"\ncsv = "fluid"\n'
        '[findings.Opacity]\nsource = "ours"\ncsv = "opacity"\nchexpert = "Lung Opacity"\n'
    )
    table = label_table()
    assert table["Effusion"].labels == {"nih": "Effusion", "csv": "fluid"}
    assert shared_labels(("csv", ["fluid", "opacity"]), ("chexpert", ["lung_opacity", "pleural_effusion"])).pairs == (
        ("opacity", "opacity", "lung_opacity"),
    )
    assert shared_labels(("csv", ["fluid"]), ("nih", ["effusion"])).pairs == (("effusion", "fluid", "effusion"),)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[findings.X]\nnih = 'Mass'\n", "needs a source"),
        ("[findings.X]\nsource = 's'\nnih = 3\n", "must be a label name"),
        ("[other]\n", "unknown top-level keys"),
        ("[findings.X\n", "not valid TOML"),
        ("[findings.A_B]\nsource='s'\n[findings.'A B']\nsource='s'\n", "are one name"),
    ],
)
def test_bad_local_tables_are_one_line_errors(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "labels.toml"
    path.write_text(text)
    with pytest.raises(CxrbenchError, match=message):
        label_table(path)
