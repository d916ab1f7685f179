"""Significance tables: per-dataset AUC / delta-vs-baseline tables and the cross-dataset summary.

Builds plain string DataFrames from the compare stage's frames and renders them as Markdown, CSV,
LaTeX (booktabs) or HTML without extra dependencies, so every run directory gets readable tables.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable
from typing import Literal

import numpy as np
import pandas as pd

from cxrbench.errors import CxrbenchError

COMPARISON_COLUMNS = (
    "encoder", "adaptation", "fraction", "seed", "label", "n_pos", "n_neg", "auc", "auc_ci_low",
    "auc_ci_high", "baseline_auc", "delta", "delta_ci_low", "delta_ci_high", "p_value",
    "p_adjusted", "significant",
)  # fmt: skip
METRICS_COLUMNS = (
    "dataset", "encoder", "adaptation", "fraction", "seed", "label", "metric", "value", "ci_low",
    "ci_high", "n_pos", "n_neg",
)  # fmt: skip
MEAN_LABEL = "mean"
MARKER = "*"
STAT_COLUMN = "statistic"
STAT_N = "n pos / neg"
STAT_AUC = "AUC [CI]"
STAT_DELTA = "Δ AUC [CI]"
FORMATS = ("md", "csv", "tex", "html")
_CORRECTIONS = {
    "bh": "Benjamini-Hochberg",
    "fdr_bh": "Benjamini-Hochberg",
    "benjamini-hochberg": "Benjamini-Hochberg",
    "holm": "Holm",
    "bonferroni": "Bonferroni",
    "none": "no",
}
_TESTS = {
    "bootstrap": "paired bootstrap",
    "paired-bootstrap": "paired bootstrap",
    "delong": "DeLong",
}


# --------------------------------------------------------------------------- validation


def require_columns(frame: pd.DataFrame, columns: Iterable[str], *, name: str) -> None:
    """Return None; raise ``CxrbenchError`` naming ``name`` and every column it lacks."""
    if not isinstance(frame, pd.DataFrame):
        raise CxrbenchError(f"{name} must be a pandas DataFrame, got {type(frame).__name__}")
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise CxrbenchError(f"{name} lacks column(s) {', '.join(missing)}")


# --------------------------------------------------------------------------- number formatting


def _is_missing(x: object) -> bool:
    return x is None or x is pd.NA or (isinstance(x, float) and math.isnan(x))


def fmt_num(x: object, *, digits: int = 3) -> str:
    """Return ``x`` with ``digits`` decimals (``-0.000`` shown as ``0.000``), ``n/a`` when missing."""
    if _is_missing(x):
        return "n/a"
    text = f"{float(x):.{digits}f}"
    if float(text) == 0.0:
        text = text.lstrip("-")
    return text


def fmt_ci(value: object, low: object, high: object, *, digits: int = 3) -> str:
    """Return ``value [low, high]`` (e.g. ``0.812 [0.790, 0.833]``); the bracket is dropped when unknown."""
    text = fmt_num(value, digits=digits)
    if _is_missing(value) or _is_missing(low) or _is_missing(high):
        return text
    return f"{text} [{fmt_num(low, digits=digits)}, {fmt_num(high, digits=digits)}]"


def _fmt_count(x: object) -> str:
    return "?" if _is_missing(x) else str(int(x))


def _fmt_fraction(x: object) -> str:
    return "1" if _is_missing(x) else f"{float(x):g}"


def _fmt_seed(x: object) -> str:
    return "-" if _is_missing(x) else str(int(x))


# --------------------------------------------------------------------------- frame helpers


def _ordered_labels(*label_series: pd.Series) -> list[str]:
    """Return labels in order of first appearance with ``mean`` moved last."""
    seen: dict[str, None] = {}
    for series in label_series:
        for label in series.astype(str):
            seen.setdefault(label, None)
    labels = [lab for lab in seen if lab != MEAN_LABEL]
    if MEAN_LABEL in seen:
        labels.append(MEAN_LABEL)
    return labels


def _full_fraction(fraction: pd.Series) -> pd.Series:
    """Return ``fraction`` as floats with missing values read as the full training set (1.0)."""
    return pd.to_numeric(fraction, errors="coerce").astype(float).fillna(1.0)


def _group_key(row: pd.Series, keys: list[str]) -> tuple:
    return tuple(None if _is_missing(row[k]) else (float(row[k]) if k == "fraction" else row[k]) for k in keys)


def _distinct(values: pd.Series) -> int:
    return values.astype(object).where(values.notna(), None).nunique(dropna=False)


# --------------------------------------------------------------------------- per-dataset table


def dataset_table(comparison: pd.DataFrame, metrics: pd.DataFrame, *, dataset: str, baseline: str) -> pd.DataFrame:
    """Return the human table of one dataset: AUC and delta rows per model, labels as columns.

    Rows: a first ``n pos / neg`` row, then the baseline's AUC row(s) taken from ``metrics``,
    then for every other encoder x adaptation (x fraction / seed when those vary) an ``AUC`` row
    and a ``Δ AUC`` row whose cells end with ``*`` when the adjusted test is significant.
    Columns: ``encoder``, ``adaptation`` (``fraction``, ``seed`` when they vary), ``statistic``,
    then one column per label in order of appearance and ``mean`` last. Cells are strings.
    """
    require_columns(comparison, COMPARISON_COLUMNS, name="comparison")
    require_columns(metrics, METRICS_COLUMNS, name="metrics")
    if not isinstance(dataset, str) or not dataset:
        raise CxrbenchError(f"dataset must be a non-empty string, got {dataset!r}")
    if not isinstance(baseline, str) or not baseline:
        raise CxrbenchError(f"baseline must be a non-empty string, got {baseline!r}")
    if (comparison["encoder"].astype(str) == baseline).any():
        raise CxrbenchError(
            f"comparison has rows for the baseline encoder {baseline!r}; it should only hold "
            "the encoders compared against it"
        )
    base = metrics[
        (metrics["dataset"].astype(str) == dataset)
        & (metrics["encoder"].astype(str) == baseline)
        & (metrics["metric"].astype(str) == "auc")
    ]
    if base.empty and comparison.empty:
        raise CxrbenchError(
            f"nothing to tabulate for dataset {dataset!r}: no comparison rows and no baseline "
            f"{baseline!r} AUC in metrics"
        )

    labels = _ordered_labels(comparison["label"], base["label"])
    keys = ["encoder", "adaptation"]
    for extra in ("fraction", "seed"):
        both = pd.concat([comparison[extra], base[extra]], ignore_index=True)
        if extra == "fraction":
            both = _full_fraction(both)
        if _distinct(both) > 1:
            keys.append(extra)
    id_columns = [*keys, STAT_COLUMN]

    def blank_row(ident: dict[str, str], stat: str) -> dict[str, str]:
        row = {k: ident.get(k, "") for k in keys}
        row[STAT_COLUMN] = stat
        row.update({label: "" for label in labels})
        return row

    def ident_of(key: tuple) -> dict[str, str]:
        out = {}
        for k, v in zip(keys, key, strict=True):
            if k == "fraction":
                out[k] = _fmt_fraction(v)
            elif k == "seed":
                out[k] = _fmt_seed(v)
            else:
                out[k] = "" if v is None else str(v)
        return out

    def ordered_groups(frame: pd.DataFrame) -> dict[tuple, pd.DataFrame]:
        groups: dict[tuple, list[int]] = {}
        for idx, row in frame.iterrows():
            groups.setdefault(_group_key(row, keys), []).append(idx)
        return {k: frame.loc[v] for k, v in groups.items()}

    # n_pos / n_neg per label: the first non-missing count, from comparison, then baseline.
    counts = blank_row({}, STAT_N)
    for label in labels:
        pool = pd.concat(
            [
                comparison.loc[comparison["label"].astype(str) == label, ["n_pos", "n_neg"]],
                base.loc[base["label"].astype(str) == label, ["n_pos", "n_neg"]],
            ]
        ).dropna()
        if not pool.empty:
            counts[label] = f"{_fmt_count(pool.iloc[0]['n_pos'])} / {_fmt_count(pool.iloc[0]['n_neg'])}"
    rows = [counts]

    for key, group in ordered_groups(base).items():
        row = blank_row(ident_of(key), STAT_AUC)
        for _, rec in group.iterrows():
            row[str(rec["label"])] = fmt_ci(rec["value"], rec["ci_low"], rec["ci_high"])
        rows.append(row)

    for key, group in ordered_groups(comparison).items():
        auc_row = blank_row(ident_of(key), STAT_AUC)
        delta_row = blank_row(ident_of(key), STAT_DELTA)
        for _, rec in group.iterrows():
            label = str(rec["label"])
            auc_row[label] = fmt_ci(rec["auc"], rec["auc_ci_low"], rec["auc_ci_high"])
            cell = fmt_ci(rec["delta"], rec["delta_ci_low"], rec["delta_ci_high"])
            if not _is_missing(rec["significant"]) and bool(rec["significant"]):
                cell += MARKER
            delta_row[label] = cell
        rows.extend([auc_row, delta_row])

    return pd.DataFrame(rows, columns=[*id_columns, *labels])


# --------------------------------------------------------------------------- footnote


def footnote(
    *,
    test: str,
    n_boot: int,
    seed: int,
    correction: str,
    alpha: float,
    cluster: str,
    ci_level: float = 0.95,
) -> str:
    """Return the one-paragraph footnote stating the test, replicates, seed, correction and alpha.

    ``cluster`` names the resampling unit (e.g. ``patient_id``); empty or ``"none"`` means images
    were resampled independently.
    """
    if not isinstance(test, str) or not test.strip():
        raise CxrbenchError(f"test must be a non-empty string such as {sorted(_TESTS)}, got {test!r}")
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise CxrbenchError(f"n_boot must be a positive integer, got {n_boot!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise CxrbenchError(f"seed must be an integer, got {seed!r}")
    if not isinstance(correction, str) or not correction.strip():
        raise CxrbenchError(f"correction must be a non-empty string such as {sorted(_CORRECTIONS)}, got {correction!r}")
    if not isinstance(alpha, (int, float)) or not 0.0 < float(alpha) < 1.0:
        raise CxrbenchError(f"alpha must lie strictly between 0 and 1, got {alpha!r}")
    if not isinstance(ci_level, (int, float)) or not 0.0 < float(ci_level) < 1.0:
        raise CxrbenchError(f"ci_level must lie strictly between 0 and 1, got {ci_level!r}")
    if not isinstance(cluster, str):
        raise CxrbenchError(f"cluster must be a string (a column name or 'none'), got {cluster!r}")

    test_name = _TESTS.get(test.strip().lower(), test.strip())
    corr_key = correction.strip().lower()
    corr_name = _CORRECTIONS.get(corr_key, correction.strip())
    level = f"{100 * float(ci_level):g}%"
    unit = (
        "images resampled independently"
        if cluster.strip().lower() in ("", "none")
        else f"resampled by {cluster.strip()}"
    )
    adjusted = "unadjusted p-values" if corr_key == "none" else f"p-values adjusted with the {corr_name} correction"
    delong_note = (
        " (its normal CI for Δ AUC; the macro mean uses the bootstrap)" if test.strip().lower() == "delong" else ""
    )
    return (
        f"AUC with {level} percentile CI from {n_boot} paired bootstrap replicates of the test set "
        f"({unit}; seed {seed}). Δ AUC = model AUC minus baseline AUC, with {level} CI; "
        f"{test_name} test{delong_note}, {adjusted}; {MARKER} marks differences significant at "
        f"alpha = {float(alpha):g}. n pos / neg: positive / negative test images per label."
    )


def seeds_table(pooled: pd.DataFrame, *, baseline: str) -> pd.DataFrame:
    """The human table of ``compare_over_seeds`` rows (with a ``dataset`` column): one row per dataset x
    encoder x adaptation x fraction, macro-mean AUC over its seeds against ``baseline``'s."""
    require_columns(pooled, ["dataset", "encoder", "adaptation", "fraction", "seeds", "auc", "delta"], name="pooled")
    rows = []
    for r in pooled.itertuples(index=False):
        delta = fmt_ci(r.delta, r.delta_ci_low, r.delta_ci_high)
        rows.append(
            {
                "dataset": r.dataset,
                "encoder": r.encoder,
                "adaptation": r.adaptation,
                "fraction": _fmt_fraction(r.fraction),
                "seeds": str(int(r.seeds)),
                "mean AUC [95% CI]": fmt_ci(r.auc, r.auc_ci_low, r.auc_ci_high),
                f"{baseline} mean AUC": fmt_num(r.baseline_auc),
                "Δ AUC [95% CI]": delta + (MARKER if bool(r.significant) else ""),
                "p": fmt_num(r.p_value),
                "p adjusted": fmt_num(r.p_adjusted),
            }
        )
    return pd.DataFrame(rows)


def seeds_footnote(*, n_boot: int, seed: int, correction: str, alpha: float, cluster: str) -> str:
    """The footnote of ``seeds_table``: what is averaged and what the CI covers."""
    unit = "images" if cluster in ("", "none", "image") else cluster
    adjusted = _CORRECTIONS.get(correction, correction)
    return (
        f"Macro-mean test AUC averaged over the seeds each model ran with (its label subsets), against the "
        f"baseline's twin models of the same seeds. CI and p from {n_boot} paired bootstrap replicates of the test "
        f"set (resampled by {unit}; seed {seed}), each replicate averaged over the seeds: they cover the test "
        f"sample, with the seeds held fixed. p-values adjusted over these rows ({adjusted}); {MARKER} marks "
        f"differences significant at alpha = {float(alpha):g}."
    )


# --------------------------------------------------------------------------- rendering


_TEX_ESCAPES = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "Δ": r"$\Delta$",
    "α": r"$\alpha$",
    "×": r"$\times$",
    "±": r"$\pm$",
    "–": "--",
    "—": "---",
}


def tex_escape(text: object) -> str:
    """Return ``text`` safe for LaTeX text mode (specials escaped, a few symbols as math)."""
    return "".join(_TEX_ESCAPES.get(ch, ch) for ch in str(text))


def _md_escape(text: object) -> str:
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _cell(x: object) -> str:
    return "" if _is_missing(x) else str(x)


def _is_numeric_column(values: list[str]) -> bool:
    """Return True when every non-empty cell starts like a number (those columns align right)."""
    cells = [v for v in values if v]
    return bool(cells) and all(v[0].isdigit() or v[0] in "-+" or v == "n/a" for v in cells)


def _render_md(header: list[str], body: list[list[str]], caption: str, note: str) -> str:
    columns = list(zip(*body, strict=True)) if body else [() for _ in header]
    align = ["---:" if _is_numeric_column(list(col)) else ":---" for col in columns]
    lines = []
    if caption:
        lines += [f"**{_md_escape(caption)}**", ""]
    lines.append("| " + " | ".join(_md_escape(h) for h in header) + " |")
    lines.append("|" + "|".join(align) + "|")
    lines += ["| " + " | ".join(_md_escape(c) for c in row) + " |" for row in body]
    if note:
        lines += ["", _md_escape(note)]
    return "\n".join(lines) + "\n"


def _render_tex(header: list[str], body: list[list[str]], caption: str, note: str) -> str:
    columns = list(zip(*body, strict=True)) if body else [() for _ in header]
    spec = "".join("r" if _is_numeric_column(list(col)) else "l" for col in columns)
    lines = [r"\begin{table}[htbp]", r"\centering"]
    if caption:
        lines.append(rf"\caption{{{tex_escape(caption)}}}")
    lines += [
        rf"\begin{{tabular}}{{{spec}}}",
        r"\toprule",
        " & ".join(tex_escape(h) for h in header) + r" \\",
        r"\midrule",
    ]
    for row in body:
        cells = [tex_escape(c) for c in row]
        if cells and cells[0].startswith("["):  # after \\ a leading [ would read as a length
            cells[0] = "{}" + cells[0]
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    if note:
        lines += [r"\par\smallskip", rf"{{\footnotesize {tex_escape(note)}\par}}"]
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def _render_html(header: list[str], body: list[list[str]], caption: str, note: str) -> str:
    esc = html.escape
    lines = ['<table class="cxrbench">']
    if caption:
        lines.append(f"  <caption>{esc(caption)}</caption>")
    lines.append("  <thead>")
    lines.append("    <tr>" + "".join(f'<th scope="col">{esc(h)}</th>' for h in header) + "</tr>")
    lines.append("  </thead>")
    lines.append("  <tbody>")
    for row in body:
        lines.append("    <tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>")
    lines.append("  </tbody>")
    if note:
        lines.append("  <tfoot>")
        lines.append(f'    <tr><td colspan="{len(header)}">{esc(note)}</td></tr>')
        lines.append("  </tfoot>")
    lines.append("</table>")
    return "\n".join(lines) + "\n"


def render(
    table: pd.DataFrame,
    *,
    fmt: Literal["md", "csv", "tex", "html"],
    caption: str,
    footnote: str,
) -> str:
    """Return ``table`` as Markdown, CSV, LaTeX (booktabs) or HTML text.

    Markdown, LaTeX and HTML carry ``caption`` above and ``footnote`` below the table; CSV holds
    the cells alone (header + rows) so that it reads back with ``pandas.read_csv`` unchanged.
    """
    if fmt not in FORMATS:
        raise CxrbenchError(f"fmt must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if not isinstance(table, pd.DataFrame):
        raise CxrbenchError(f"table must be a pandas DataFrame, got {type(table).__name__}")
    if not isinstance(caption, str) or not isinstance(footnote, str):
        raise CxrbenchError("caption and footnote must be strings")
    if fmt == "csv":
        return table.to_csv(index=False, lineterminator="\n")
    header = [str(c) for c in table.columns]
    body = [[_cell(x) for x in row] for row in table.itertuples(index=False, name=None)]
    renderer = {"md": _render_md, "tex": _render_tex, "html": _render_html}[fmt]
    return renderer(header, body, caption, footnote)


# --------------------------------------------------------------------------- summary across datasets


def _full_data_rows(comparison: pd.DataFrame) -> pd.DataFrame:
    """Return the rows trained on the largest label fraction (missing fraction = full data)."""
    if comparison.empty:
        return comparison
    frac = _full_fraction(comparison["fraction"])
    return comparison[np.isclose(frac, frac.max())]


def _baseline_mean_row(base: pd.DataFrame, *, adaptation: str, baseline_auc: float) -> pd.Series | None:
    """Return the baseline's mean-AUC metrics row matching ``adaptation`` (or ``baseline_auc``)."""
    if base.empty:
        return None
    same = base[base["adaptation"].astype(str) == adaptation]
    if len(same) == 1:
        return same.iloc[0]
    pool = same if len(same) > 1 else base
    if not _is_missing(baseline_auc):
        close = pool[np.isclose(pool["value"].astype(float), float(baseline_auc), atol=1e-9)]
        if not close.empty:
            return close.iloc[0]
    return pool.iloc[0] if len(pool) == 1 else None


def summary_table(comparisons: dict[str, pd.DataFrame], metrics: pd.DataFrame, *, baseline: str) -> pd.DataFrame:
    """Return the cross-dataset "maximum improvement over the baseline" table (one row per dataset).

    For every adaptation present: the baseline's mean AUC with CI (from ``metrics``), the encoder
    with the largest mean-label delta, and that delta with its CI and ``*`` when significant.
    Only full-data rows (the largest label fraction) are considered; the seed is named in the
    ``best`` cell when an encoder ran with several seeds.
    """
    if not isinstance(comparisons, dict) or not comparisons:
        raise CxrbenchError("comparisons must be a non-empty dict of dataset name -> comparison frame")
    require_columns(metrics, METRICS_COLUMNS, name="metrics")
    if not isinstance(baseline, str) or not baseline:
        raise CxrbenchError(f"baseline must be a non-empty string, got {baseline!r}")

    adaptations: dict[str, None] = {}
    for name, comp in comparisons.items():
        require_columns(comp, COMPARISON_COLUMNS, name=f"comparison for dataset {name!r}")
        for a in comp["adaptation"].astype(str):
            adaptations.setdefault(a, None)

    base_all = metrics[
        (metrics["encoder"].astype(str) == baseline)
        & (metrics["metric"].astype(str) == "auc")
        & (metrics["label"].astype(str) == MEAN_LABEL)
    ]
    rows = []
    for name, comp in comparisons.items():
        row: dict[str, str] = {"dataset": str(name)}
        base = _full_data_rows(base_all[base_all["dataset"].astype(str) == str(name)])
        full = _full_data_rows(comp[comp["label"].astype(str) == MEAN_LABEL])
        for adaptation in adaptations:
            sub = full[full["adaptation"].astype(str) == adaptation]
            b_col, best_col, d_col = _summary_columns(baseline, adaptation)
            if sub.empty:
                row.update({b_col: "", best_col: "", d_col: ""})
                continue
            order = sub.assign(_enc=sub["encoder"].astype(str)).sort_values(
                ["delta", "_enc"], ascending=[False, True], na_position="last", kind="mergesort"
            )
            best = order.iloc[0]
            if _is_missing(best["delta"]):
                row.update({b_col: "", best_col: "", d_col: ""})
                continue
            n_seeds = _distinct(sub.loc[sub["encoder"] == best["encoder"], "seed"])
            best_name = str(best["encoder"])
            if n_seeds > 1:
                best_name += f" (seed {_fmt_seed(best['seed'])})"
            cell = fmt_ci(best["delta"], best["delta_ci_low"], best["delta_ci_high"])
            if not _is_missing(best["significant"]) and bool(best["significant"]):
                cell += MARKER
            brow = _baseline_mean_row(base, adaptation=adaptation, baseline_auc=best["baseline_auc"])
            if brow is not None:
                b_cell = fmt_ci(brow["value"], brow["ci_low"], brow["ci_high"])
            else:
                b_cell = fmt_num(best["baseline_auc"])
            row.update({b_col: b_cell, best_col: best_name, d_col: cell})
        rows.append(row)
    columns = ["dataset"]
    for adaptation in adaptations:
        columns.extend(_summary_columns(baseline, adaptation))
    return pd.DataFrame(rows, columns=columns)


def _summary_columns(baseline: str, adaptation: str) -> tuple[str, str, str]:
    return (
        f"{baseline} AUC ({adaptation})",
        f"best ({adaptation})",
        f"max Δ AUC ({adaptation})",
    )
