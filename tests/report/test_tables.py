"""Tests for cxrbench.report.tables: table content, markers, number format and the four renderers."""

from __future__ import annotations

import io
import re
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest

from cxrbench.errors import CxrbenchError
from cxrbench.report import tables
from cxrbench.report.tables import dataset_table, fmt_ci, fmt_num, footnote, render, summary_table

LABELS = ["Atelectasis", "pleural_effusion", "50% & <more>"]
CELL = re.compile(r"^-?\d\.\d{3} \[-?\d\.\d{3}, -?\d\.\d{3}\]\*?$")


def _comparison(deltas: dict[tuple[str, str], float], *, fraction=1.0, seed=0) -> pd.DataFrame:
    """Comparison rows: label i of model m has delta d + 0.01 * i, significant when i is odd or mean."""
    rows = []
    for (encoder, adaptation), d in deltas.items():
        for i, label in enumerate([*LABELS, "mean"]):
            delta = d + 0.01 * i
            base = 0.7 + 0.02 * i
            rows.append(
                {
                    "encoder": encoder,
                    "adaptation": adaptation,
                    "fraction": fraction,
                    "seed": seed,
                    "label": label,
                    "n_pos": 10 + i,
                    "n_neg": 200 - i,
                    "auc": base + delta,
                    "auc_ci_low": base + delta - 0.021,
                    "auc_ci_high": base + delta + 0.019,
                    "baseline_auc": base,
                    "delta": delta,
                    "delta_ci_low": delta - 0.015,
                    "delta_ci_high": delta + 0.017,
                    "p_value": 0.01,
                    "p_adjusted": 0.03,
                    "significant": (i % 2 == 1) or label == "mean",
                }
            )
    return pd.DataFrame(rows)


def _metrics(dataset: str, adaptations=("probe", "finetune"), *, offset: float = 0.0) -> pd.DataFrame:
    rows = []
    for a, adaptation in enumerate(adaptations):
        for i, label in enumerate([*LABELS, "mean"]):
            value = 0.7 + 0.02 * i + 0.1 * a + offset
            rows.append(
                {
                    "dataset": dataset,
                    "encoder": "imagenet",
                    "adaptation": adaptation,
                    "fraction": 1.0,
                    "seed": 0,
                    "label": label,
                    "metric": "auc",
                    "value": value,
                    "ci_low": value - 0.03,
                    "ci_high": value + 0.03,
                    "n_pos": 10 + i,
                    "n_neg": 200 - i,
                }
            )
            rows.append({**rows[-1], "metric": "auprc", "value": 0.123456})
    return pd.DataFrame(rows)


MODELS = {("dinov2", "probe"): 0.05, ("moco", "probe"): -0.02, ("dinov2", "finetune"): 0.001}


@pytest.fixture
def comparison() -> pd.DataFrame:
    return _comparison(MODELS)


@pytest.fixture
def table(comparison) -> pd.DataFrame:
    return dataset_table(comparison, _metrics("nih"), dataset="nih", baseline="imagenet")


@pytest.fixture
def note() -> str:
    return footnote(test="bootstrap", n_boot=1000, seed=7, correction="bh", alpha=0.05, cluster="patient_id")


# --------------------------------------------------------------------------- formatting


def test_number_format_hand_cases():
    assert fmt_ci(0.8124, 0.79, 0.83349) == "0.812 [0.790, 0.833]"
    assert fmt_ci(-0.0523, -0.1371, 0.0349) == "-0.052 [-0.137, 0.035]"
    assert fmt_num(-0.0004) == "0.000"  # no negative zero
    assert fmt_ci(0.9, float("nan"), 0.95) == "0.900"
    assert fmt_num(None) == "n/a"


# --------------------------------------------------------------------------- the table frame


def test_table_layout(table, comparison):
    assert list(table.columns) == ["encoder", "adaptation", "statistic", *LABELS, "mean"]
    # n row, two baseline rows (one per adaptation), then AUC + delta rows per compared model
    assert len(table) == 1 + 2 + 2 * len(MODELS)
    assert table.loc[0, "statistic"] == tables.STAT_N
    assert table.loc[0, "pleural_effusion"] == "11 / 199"
    base = table[table["encoder"] == "imagenet"]
    assert list(base["adaptation"]) == ["probe", "finetune"]
    assert base.iloc[1]["Atelectasis"] == fmt_ci(0.8, 0.77, 0.83)  # from metrics, metric auc
    assert set(table["encoder"]) == {"", "imagenet", "dinov2", "moco"}


def test_cells_match_inputs_and_markers_only_on_significant(table, comparison):
    for _, rec in comparison.iterrows():
        sel = (table["encoder"] == rec["encoder"]) & (table["adaptation"] == rec["adaptation"])
        auc_cell = table.loc[sel & (table["statistic"] == tables.STAT_AUC), rec["label"]].item()
        delta_cell = table.loc[sel & (table["statistic"] == tables.STAT_DELTA), rec["label"]].item()
        assert auc_cell == f"{rec['auc']:.3f} [{rec['auc_ci_low']:.3f}, {rec['auc_ci_high']:.3f}]"
        assert delta_cell.endswith("*") == bool(rec["significant"])
        assert not auc_cell.endswith("*")
        assert delta_cell.rstrip("*") == fmt_ci(rec["delta"], rec["delta_ci_low"], rec["delta_ci_high"])
    numbers = table[table["statistic"] != tables.STAT_N][[*LABELS, "mean"]].to_numpy().ravel()
    assert all(CELL.match(c) for c in numbers)


def test_fraction_and_seed_columns_appear_only_when_they_vary():
    comp = pd.concat(
        [
            _comparison({("dinov2", "finetune"): 0.02}, fraction=0.1, seed=0),
            _comparison({("dinov2", "finetune"): 0.03}, fraction=0.1, seed=1),
            _comparison({("dinov2", "finetune"): 0.04}, fraction=1.0, seed=0),
        ],
        ignore_index=True,
    )
    table = dataset_table(comp, _metrics("nih"), dataset="nih", baseline="imagenet")
    assert list(table.columns[:5]) == ["encoder", "adaptation", "fraction", "seed", "statistic"]
    deltas = table[table["statistic"] == tables.STAT_DELTA]
    assert list(zip(deltas["fraction"], deltas["seed"], strict=True)) == [
        ("0.1", "0"),
        ("0.1", "1"),
        ("1", "0"),
    ]
    assert deltas.iloc[1]["Atelectasis"].startswith("0.030 ")


def test_table_errors(comparison):
    with pytest.raises(CxrbenchError, match="delta_ci_low"):
        dataset_table(
            comparison.drop(columns="delta_ci_low"),
            _metrics("nih"),
            dataset="nih",
            baseline="imagenet",
        )
    with pytest.raises(CxrbenchError, match="baseline encoder 'dinov2'"):
        dataset_table(comparison, _metrics("nih"), dataset="nih", baseline="dinov2")
    with pytest.raises(CxrbenchError, match="nothing to tabulate"):
        dataset_table(comparison.iloc[:0], _metrics("nih"), dataset="other", baseline="imagenet")


# --------------------------------------------------------------------------- renderers


def _body_cells(table: pd.DataFrame) -> list[list[str]]:
    return [[str(x) for x in row] for row in table.itertuples(index=False, name=None)]


def test_markdown(table, note):
    text = render(table, fmt="md", caption="NIH ChestX-ray14", footnote=note)
    lines = text.splitlines()
    assert lines[0] == "**NIH ChestX-ray14**"
    rows = [ln for ln in lines if ln.startswith("|")]
    header = [c.strip() for c in rows[0].strip("|").split(" | ")]
    assert header == list(table.columns)
    assert set(rows[1].strip("|").split("|")) <= {":---", "---:"}
    parsed = [[c.strip() for c in r[2:-2].split(" | ")] for r in rows[2:]]
    assert [[c for c in row] for row in parsed] == _body_cells(table)
    assert lines[-1] == note


def test_csv_round_trip(table):
    text = render(table, fmt="csv", caption="ignored", footnote="ignored")
    back = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    pd.testing.assert_frame_equal(back, table.astype(str), check_dtype=False)


def test_latex_booktabs_and_escaping(table, note):
    text = render(table, fmt="tex", caption="NIH_14 results", footnote=note)
    for rule in (r"\toprule", r"\midrule", r"\bottomrule", r"\begin{tabular}", r"\caption{"):
        assert rule in text
    assert r"\hline" not in text
    assert r"NIH\_14" in text
    assert r"pleural\_effusion" in text and r"50\% \& <more>" in text
    assert r"$\Delta$ AUC" in text
    lines = text.splitlines()
    start, end = lines.index(r"\toprule"), lines.index(r"\bottomrule")
    table_lines = [ln for ln in lines[start + 1 : end] if ln != r"\midrule"]
    assert len(table_lines) == 1 + len(table)
    for ln in lines:
        assert not re.search(r"(?<!\\)[_%]", ln), ln  # every _ and % escaped
    for ln in table_lines:
        assert ln.endswith(r" \\")
        assert len(re.findall(r"(?<!\\)&", ln)) == table.shape[1] - 1  # only column separators
    assert sum(ln.count("*") for ln in table_lines) == int(table.apply(lambda c: c.str.endswith("*")).to_numpy().sum())


class _Cells(HTMLParser):
    def __init__(self):
        super().__init__()
        self.rows: list[list[str]] = []
        self.caption = ""
        self._where: str | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "tr":
            self.rows.append([])
        if tag in ("td", "th", "caption"):
            self._where = tag
            if tag != "caption":
                self.rows[-1].append("")

    def handle_endtag(self, tag):
        self._where = None

    def handle_data(self, data):
        if self._where == "caption":
            self.caption += data
        elif self._where:
            self.rows[-1][-1] += data


def test_html_parses_and_escapes(table, note):
    text = render(table, fmt="html", caption="NIH <test> & co", footnote=note)
    assert "<more>" not in text and "&lt;more&gt;" in text
    parser = _Cells()
    parser.feed(text)
    parser.close()
    assert parser.caption == "NIH <test> & co"
    assert parser.rows[0] == list(table.columns)
    assert parser.rows[1:-1] == _body_cells(table)
    assert parser.rows[-1] == [note]


@pytest.mark.parametrize("fmt", ["md", "csv", "tex", "html"])
def test_every_format_has_labels_encoders_and_markers(table, note, fmt):
    text = render(table, fmt=fmt, caption="c", footnote=note)
    if fmt == "tex":
        text = text.replace(r"\_", "_").replace(r"\%", "%").replace(r"\&", "&")
    for label in ["Atelectasis", "pleural_effusion", "mean"]:
        assert label in text
    for encoder in ["imagenet", "dinov2", "moco"]:
        assert encoder in text
    n_sig = 2 * len(MODELS)  # label 1 and mean per model
    assert text.count("]*") == n_sig


def test_render_rejects_unknown_format(table):
    with pytest.raises(CxrbenchError, match="fmt must be one of"):
        render(table, fmt="xlsx", caption="", footnote="")


# --------------------------------------------------------------------------- footnote


def test_footnote_names_every_setting(note):
    for piece in ("1000", "seed 7", "Benjamini-Hochberg", "0.05", "patient_id", "bootstrap", "95%"):
        assert piece in note
    plain = footnote(test="delong", n_boot=200, seed=0, correction="none", alpha=0.01, cluster="")
    assert "DeLong" in plain and "unadjusted" in plain and "independently" in plain


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"alpha": 1.5}, "alpha"),
        ({"n_boot": 0}, "n_boot"),
        ({"correction": ""}, "correction"),
        ({"test": " "}, "test"),
        ({"seed": 1.5}, "seed"),
    ],
)
def test_footnote_validation(kwargs, match):
    args = dict(test="bootstrap", n_boot=100, seed=0, correction="holm", alpha=0.05, cluster="")
    with pytest.raises(CxrbenchError, match=match):
        footnote(**{**args, **kwargs})


# --------------------------------------------------------------------------- summary


def test_summary_picks_best_model_per_dataset_and_adaptation():
    nih = _comparison({("dinov2", "probe"): 0.05, ("moco", "probe"): 0.07, ("dinov2", "finetune"): 0.01})
    # a label-efficiency row with a larger delta must be ignored (not full data)
    nih = pd.concat([nih, _comparison({("bigger", "probe"): 0.5}, fraction=0.1)], ignore_index=True)
    pad = _comparison({("dinov2", "probe"): -0.03, ("moco", "probe"): -0.04})
    # the "mean" delta is d + 0.03 (label index 3); moco wins on nih probe, dinov2 on pad probe
    metrics = pd.concat([_metrics("nih"), _metrics("pad", ("probe",), offset=0.01)])
    out = summary_table({"nih": nih, "pad": pad}, metrics, baseline="imagenet")
    assert list(out.columns) == [
        "dataset",
        "imagenet AUC (probe)",
        "best (probe)",
        "max Δ AUC (probe)",
        "imagenet AUC (finetune)",
        "best (finetune)",
        "max Δ AUC (finetune)",
    ]
    nih_row, pad_row = out.iloc[0], out.iloc[1]
    assert nih_row["best (probe)"] == "moco"
    assert nih_row["max Δ AUC (probe)"] == "0.100 [0.085, 0.117]*"
    assert nih_row["imagenet AUC (probe)"] == "0.760 [0.730, 0.790]"
    assert nih_row["best (finetune)"] == "dinov2"
    assert nih_row["max Δ AUC (finetune)"] == "0.040 [0.025, 0.057]*"
    assert nih_row["imagenet AUC (finetune)"] == "0.860 [0.830, 0.890]"
    assert pad_row["best (probe)"] == "dinov2"
    assert pad_row["max Δ AUC (probe)"] == "0.000 [-0.015, 0.017]*"
    assert pad_row["imagenet AUC (probe)"] == "0.770 [0.740, 0.800]"
    assert pad_row["best (finetune)"] == "" and pad_row["max Δ AUC (finetune)"] == ""


def test_summary_reference_by_sorting():
    """Best model equals the pandas idxmax over mean-label deltas (an independent reference)."""
    rng = np.random.default_rng(3)
    deltas = {(f"enc{i}", "probe"): float(rng.normal(0, 0.05)) for i in range(6)}
    comp = _comparison(deltas)
    mean_rows = comp[comp["label"] == "mean"].set_index("encoder")["delta"]
    out = summary_table({"x": comp}, _metrics("x"), baseline="imagenet")
    assert out.loc[0, "best (probe)"] == mean_rows.idxmax()


def test_summary_baseline_matched_by_value_when_adaptation_differs():
    """A fixed baseline adaptation (finetune) compared against probe models is found by its AUC."""
    comp = _comparison({("dinov2", "probe"): 0.02})
    comp["baseline_auc"] = np.where(comp["label"] == "mean", 0.86 + 0.0, comp["baseline_auc"])
    metrics = _metrics("nih", ("finetune", "linear"))
    out = summary_table({"nih": comp}, metrics, baseline="imagenet")
    assert out.loc[0, "imagenet AUC (probe)"] == "0.860 [0.830, 0.890]"


def test_summary_errors():
    with pytest.raises(CxrbenchError, match="comparisons"):
        summary_table({}, _metrics("nih"), baseline="imagenet")
    bad = _comparison(MODELS).drop(columns="significant")
    with pytest.raises(CxrbenchError, match="'nih'.*significant"):
        summary_table({"nih": bad}, _metrics("nih"), baseline="imagenet")


def test_latex_guards_leading_bracket():
    table = pd.DataFrame({"encoder": ["[v2]"], "mean": ["0.800 [0.700, 0.900]"]})
    text = render(table, fmt="tex", caption="", footnote="")
    assert r"{}[v2] & 0.800 [0.700, 0.900] \\" in text.splitlines()
