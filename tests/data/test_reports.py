"""The report-section parser on real-format snippets (OpenI XML, MIMIC-CXR free text, PadChest stems)
and the section columns prepare stores."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pandas as pd
import pytest

from cxrbench.data.adapters import mimic_cxr
from cxrbench.data.adapters.base import RawDataset
from cxrbench.data.adapters.indiana import parse_report
from cxrbench.data.reports import canonical, join_sections, parse_section_list, parse_sections, sentences
from cxrbench.data.samples import LabelPolicy, build_samples

OPENI = Path(__file__).resolve().parents[3] / "shared" / "realdata" / "openi" / "NLMCXR_reports.tgz"
if not OPENI.exists():
    OPENI = Path("/work/shared/realdata/openi/NLMCXR_reports.tgz")

# the layout of a MIMIC-CXR report (mimic-cxr-reports.zip, files/p10/p10000032/s50414267.txt):
# a FINAL REPORT banner, indented capital headings with colons, text on the following lines
MIMIC = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___F with new onset ascites  // eval for infection

 TECHNIQUE:  Chest PA and lateral

 COMPARISON:  None.

 FINDINGS:

 There is no focal consolidation, pleural effusion or pneumothorax.  Bilateral
 nodular opacities that most likely represent nipple shadows.

 IMPRESSION:

 No acute cardiopulmonary process.
"""


def test_mimic_free_text_headers() -> None:
    got = parse_sections(MIMIC)
    assert got["findings"] == (
        "There is no focal consolidation, pleural effusion or pneumothorax. "
        "Bilateral nodular opacities that most likely represent nipple shadows."
    )
    assert got["impression"] == "No acute cardiopulmonary process."
    assert got["indication"] == "___F with new onset ascites // eval for infection"
    assert got["comparison"] == "None."
    assert got["technique"] == "CHEST (PA AND LAT) Chest PA and lateral"


def test_mimic_wet_read_unlisted_heading_and_merged_section() -> None:
    text = (
        "WET READ: ___ ___ 2:45 PM\n  Small left effusion.\n\n"
        "PROVISIONAL FINDINGS IMPRESSION (PFI): ___\n"
        "FINDINGS AND IMPRESSION:\n Heart size normal. No effusion."
    )
    got = parse_sections(text)
    assert got["findings"] == got["impression"] == "Heart size normal. No effusion."
    assert got["other"] == "___ ___ 2:45 PM Small left effusion. ___"


@pytest.mark.parametrize(
    "text",
    [
        "findings: Lungs clear. impression: Normal chest.",  # one line, lower case
        "Findings\nLungs clear.\nImpression\nNormal chest.",  # headings alone on their lines, no colon
        "FINDINGS - Lungs clear.\nIMPRESSION - Normal chest.",  # dashes
        "  Findings :  Lungs   clear.\r\n\r\nIMPRESSIONS: Normal chest.",  # CRLF, spaces, plural
    ],
)
def test_case_colons_and_layouts(text) -> None:
    assert parse_sections(text) == {"findings": "Lungs clear.", "impression": "Normal chest."}


def test_missing_sections_and_no_headings() -> None:
    assert parse_sections("IMPRESSION: No acute disease.") == {"impression": "No acute disease."}
    assert parse_sections("Heart size normal. No effusion.") == {"findings": "Heart size normal. No effusion."}
    assert parse_sections("FINDINGS:\nIMPRESSION: Normal.") == {"impression": "Normal."}
    assert parse_sections(None) == parse_sections("") == parse_sections("   ") == {}
    # words that are headings inside a sentence are text
    assert parse_sections("No history of tuberculosis. Findings are stable.") == {
        "findings": "No history of tuberculosis. Findings are stable."
    }


def test_padchest_spanish_stems_and_headings() -> None:
    # PadChest's Report column: stemmed Spanish tokens, sentences split by " . ", no headings
    stems = "sin hallazg patolog edad pacient ."
    assert parse_sections(stems) == {"findings": stems}
    assert parse_sections("compar con estudi previ 2010 sin identific cambi signific . sin hallazg relev .") == {
        "findings": "compar con estudi previ 2010 sin identific cambi signific . sin hallazg relev ."
    }
    got = parse_sections("HALLAZGOS: Índice cardiotorácico normal.\nCONCLUSIÓN: Sin hallazgos.")
    assert got == {"findings": "Índice cardiotorácico normal.", "impression": "Sin hallazgos."}
    assert parse_sections("hallazg: derram pleural izquierd .\nconclus: derram .") == {
        "findings": "derram pleural izquierd .",
        "impression": "derram .",
    }


def test_xml_labels_map_through_the_same_vocabulary() -> None:
    assert canonical("FINDINGS") == ("findings",)
    assert canonical("Impression:") == ("impression",)
    assert canonical("INDICATION") == ("indication",)
    assert canonical("Findings/Impression") == ("findings", "impression")
    assert canonical("SOMETHING ELSE") == ("other",)


@pytest.mark.skipif(not OPENI.exists(), reason="the OpenI reports archive is not here")
def test_real_openi_reports_parse_back_to_their_abstracttext_sections() -> None:
    """Every real OpenI report: the text the adapter builds from the XML parses back to the XML's
    FINDINGS and IMPRESSION exactly (whitespace collapsed)."""
    checked = 0
    with tarfile.open(OPENI) as archive:
        for member in archive:
            if not (member.isfile() and member.name.endswith(".xml")):
                continue
            xml = archive.extractfile(member).read()
            parsed = parse_report(xml)
            import xml.etree.ElementTree as ET

            labels = {
                el.get("Label"): " ".join((el.text or "").split()) for el in ET.fromstring(xml).iter("AbstractText")
            }
            got = parse_sections(parsed["report"])
            for section, label in (("findings", "FINDINGS"), ("impression", "IMPRESSION")):
                assert got.get(section) == (labels.get(label) or None), (member.name, section)
            checked += 1
            if checked == 200:
                break
    assert checked == 200


def test_section_lists_joining_and_sentences() -> None:
    assert parse_section_list("findings, impression") == ("findings", "impression")
    assert parse_section_list(None) == ("findings", "impression")
    with pytest.raises(ValueError, match="choose from findings, impression"):
        parse_section_list("findings,history")
    values = {"findings": ["A.", None, "C."], "impression": ["B.", "D.", None]}
    assert join_sections(values, ("findings", "impression")) == ["A. B.", "D.", "C."]
    assert join_sections(values, ("impression",)) == ["B.", "D.", ""]
    assert sentences("Heart normal. No effusion!  1. One. 2. Two.") == [
        "Heart normal.",
        "No effusion!",
        "1. One.",
        "2. Two.",
    ]


def test_prepare_stores_sections_as_text_columns() -> None:
    frame = pd.DataFrame(
        {
            "path": [f"/data/{i}.png" for i in range(3)],
            "patient_id": ["a", "b", "c"],
            "view": ["PA"] * 3,
            "report": [MIMIC, None, "sin hallazg relev ."],
            "X": [1.0, 0.0, 1.0],
        }
    )
    samples, _ = build_samples(RawDataset(frame=frame, labels=["X"]), LabelPolicy(), root=Path("/data"))
    impression, findings = samples["impression"], samples["findings"]
    assert impression[0] == "No acute cardiopulmonary process." and impression[1:].isna().all()
    assert pd.isna(findings[1]) and findings[2] == "sin hallazg relev ."


def test_mimic_adapter_reads_the_reports_folder(tmp_path) -> None:
    from tests.data.adapters.test_mimic_cxr import write_mimic

    write_mimic(tmp_path)
    study = tmp_path / "files" / "p10" / "p10000032" / "s50414267.txt"
    study.parent.mkdir(parents=True)
    study.write_text(MIMIC)
    raw = mimic_cxr.load(tmp_path)
    by_study = dict(zip(raw.frame["sample_id"], raw.frame["report"], strict=True))
    assert by_study["02aa804e-bde0afdd-112c0b34-7bc16630-4e384014"] == MIMIC
    assert by_study["174413ec-4ec4c1f7-34ea26b7-c5f994f8-79ef1962"] == MIMIC
    assert pd.isna(by_study["2a2277a9-b0ded155-c0de8eb9-c124d10e-82c5caab"])
    assert "report" not in mimic_cxr.load(tmp_path, reports=False).frame
