"""Radiology report sections: one parser for FINDINGS, IMPRESSION and the rest, run once at prepare time.

Headings are found wherever they are written: MIMIC-CXR's free-text reports (``FINDINGS:`` on its own
line, ``WET READ:``, ``FINAL REPORT``), Indiana/OpenI's XML ``AbstractText Label="FINDINGS"``, the
one-line ``FINDINGS: ... IMPRESSION: ...`` form, any letter case, with or without a colon on a line of
its own, and Spanish headings (``HALLAZGOS:``, ``CONCLUSIÓN:``, PadChest's stems ``hallazg:``).
Merged headings (``FINDINGS AND IMPRESSION:``) give their text to both sections. A report with no
heading at all (PadChest's stemmed snippets, some MIMIC reports) is its findings; text before the
first heading, and text under headings not listed here, is ``other``.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence

#: the sections samples.parquet stores as text columns (prepare time), in order
STORED = ("findings", "impression")
#: every section the parser returns
SECTIONS = ("findings", "impression", "indication", "comparison", "technique", "other")

#: heading (lower case, accents removed, single spaces) -> the sections its text belongs to
HEADINGS: dict[str, tuple[str, ...]] = {}
for _section, _names in {
    "findings": ("findings", "finding", "hallazgos", "hallazgo", "hallazg", "description", "descripcion"),
    "impression": (
        "impression",
        "impressions",
        "conclusion",
        "conclusions",
        "conclusiones",
        "conclus",
        "impresion",
        "impresion diagnostica",
        "impres",
        "diagnosis",
        "opinion",
        "summary",
    ),
    "indication": (
        "indication",
        "indications",
        "history",
        "clinical history",
        "clinical information",
        "clinical indication",
        "reason for exam",
        "reason for examination",
        "reason for study",
        "indicacion",
        "indicacion clinica",
        "motivo",
        "antecedentes",
    ),
    "comparison": ("comparison", "comparisons", "comparacion", "comparativa"),
    "technique": ("technique", "examination", "exam", "procedure", "tecnica"),
    "other": ("wet read", "addendum", "notification", "recommendation", "recommendations", "final report"),
}.items():
    for _name in _names:
        HEADINGS[_name] = (_section,)
for _first in ("findings", "finding", "hallazgos"):
    for _join in (" and ", " / ", "/", " & ", " y "):
        for _second in ("impression", "impressions", "conclusion", "conclusiones", "impresion"):
            HEADINGS[_first + _join + _second] = ("findings", "impression")
            HEADINGS[_second + _join + _first] = ("findings", "impression")

_names_pattern = "|".join(re.escape(n).replace(r"\ ", r"\s+") for n in sorted(HEADINGS, key=len, reverse=True))
# a known heading at a line start or after a sentence end followed by a colon (or a dash), or
# alone on its own line; letters with accents are matched after ``_fold``
_KNOWN = re.compile(
    rf"(?:(?:^|(?<=[.;!?])\s)[ \t]*(?P<name>{_names_pattern})[ \t]*(?::|-\s))"
    rf"|(?:^[ \t]*(?P<alone>{_names_pattern})[ \t]*$)",
    re.IGNORECASE | re.MULTILINE,
)
# an unlisted heading: capitals at a line start followed by a colon (MIMIC-CXR's ``PROVISIONAL
# FINDINGS IMPRESSION (PFI):``); its text is ``other``
_UNKNOWN = re.compile(r"^[ \t]*(?P<name>[A-Z][A-Z0-9 ()/&,-]{1,60}?)[ \t]*:", re.MULTILINE)


def _fold(text: str) -> str:
    """``text`` without accents (``CONCLUSIÓN`` -> ``CONCLUSION``), same length for ASCII."""
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))


def canonical(heading: str) -> tuple[str, ...]:
    """The sections a heading's text belongs to (``"Impression"`` -> ``("impression",)``); an
    unlisted heading is ``("other",)``. Used for XML labels (Indiana's ``AbstractText Label``) too."""
    key = " ".join(_fold(heading).lower().replace(":", " ").split())
    return HEADINGS.get(key, ("other",))


def _clean(text: str) -> str:
    return " ".join(text.split()).strip(" :-")


def parse_sections(report: str | None) -> dict[str, str]:
    """The sections of one report (keys from ``SECTIONS``, only those with text), whitespace collapsed.

    A section written twice (an addendum repeating IMPRESSION) keeps both texts, in order.
    """
    if report is None or not isinstance(report, str) or not report.strip():
        return {}
    text = _fold(report.replace("\r\n", "\n").replace("\r", "\n"))
    if len(text) != len(report.replace("\r\n", "\n").replace("\r", "\n")):
        text = report  # characters that decompose to several: match without folding
    marks: list[tuple[int, int, tuple[str, ...]]] = []
    for match in _KNOWN.finditer(text):
        group = "name" if match["name"] is not None else "alone"
        marks.append((match.start(group), match.end(), canonical(match[group])))
    for match in _UNKNOWN.finditer(text):
        start = match.start("name")
        if not any(s <= start < e for s, e, _ in marks):
            marks.append((start, match.end(), canonical(match["name"])))
    marks.sort()
    if not marks:
        body = _clean(report)
        return {"findings": body} if body else {}
    out: dict[str, list[str]] = {}
    original = report.replace("\r\n", "\n").replace("\r", "\n")
    preamble = _clean(original[: marks[0][0]])
    if preamble:
        out.setdefault("other", []).append(preamble)
    for i, (_, end, sections) in enumerate(marks):
        stop = marks[i + 1][0] if i + 1 < len(marks) else len(original)
        body = _clean(original[end:stop])
        if body:
            for section in sections:
                out.setdefault(section, []).append(body)
    return {s: " ".join(out[s]) for s in SECTIONS if s in out}


def section_columns(reports: Iterable[str | None]) -> dict[str, list[str | None]]:
    """The stored section columns (``findings``, ``impression``) for a column of reports (None where absent)."""
    columns: dict[str, list[str | None]] = {s: [] for s in STORED}
    for report in reports:
        parsed = parse_sections(report)
        for s in STORED:
            columns[s].append(parsed.get(s))
    return columns


def parse_section_list(text: str | Sequence[str] | None) -> tuple[str, ...]:
    """``"findings,impression"`` -> ``("findings", "impression")``; an unknown name is a ValueError
    naming the stored ones (the stage turns it into its one-line error)."""
    if text is None:
        return STORED
    items = text.split(",") if isinstance(text, str) else list(text)
    names = tuple(dict.fromkeys(i.strip().lower() for i in items if i.strip()))
    bad = [n for n in names if n not in STORED]
    if bad or not names:
        raise ValueError(f"--sections {text!r}: choose from {', '.join(STORED)} (comma-separated)")
    return names


def join_sections(values: dict[str, Sequence[str | None]], sections: Sequence[str]) -> list[str]:
    """Per row, the chosen sections' texts joined by a space ('' where none has text)."""
    n = len(next(iter(values.values()))) if values else 0
    out = []
    for i in range(n):
        parts = [values[s][i] for s in sections if isinstance(values[s][i], str) and values[s][i]]
        out.append(" ".join(parts))
    return out


_SENTENCE = re.compile(r"(?<!\d[.!?])(?<=[.!?])\s+|\s+(?=\d+\.\s)")


def sentences(text: str) -> list[str]:
    """The sentences of a section text (split after ``.``/``!``/``?`` and before ``2.``-style numbers)."""
    return [s.strip() for s in _SENTENCE.split(text or "") if s.strip()]
