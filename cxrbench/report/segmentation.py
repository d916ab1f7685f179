"""Human outputs of segmentation comparisons: the Dice/IoU table with Δ vs the baseline, its
footnote, and the per-epoch ("learns faster") curves from the segment manifests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cxrbench.errors import CxrbenchError
from cxrbench.report.plots import _figure, _palette, _save, _unique_in_order
from cxrbench.report.tables import _CORRECTIONS, MARKER, fmt_ci


def _ident(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    out = frame[keys].copy()
    for k in keys:
        if k == "fraction":
            out[k] = [f"{float(v):g}" for v in frame[k]]
        else:
            out[k] = frame[k].astype(str)
    return out


def segmentation_table(comparison: pd.DataFrame, metrics: pd.DataFrame, *, dataset: str, baseline: str) -> pd.DataFrame:
    """One row per model: the baseline's rows first (from ``metrics``), then every compared model with
    mean Dice and IoU [CI] and their Δ vs the baseline [CI] (``*``: significant after correction)."""
    base = metrics[
        (metrics["dataset"].astype(str) == dataset)
        & (metrics["encoder"].astype(str) == baseline)
        & metrics["metric"].isin(["dice", "iou"])
    ]
    if base.empty and comparison.empty:
        raise CxrbenchError(f"nothing to tabulate for the segmentation of {dataset!r}")
    keys = ["encoder", "adaptation"]
    both = pd.concat([comparison[["fraction", "seed"]], base[["fraction", "seed"]]], ignore_index=True)
    keys += [k for k in ("fraction", "seed") if both[k].nunique() > 1]
    columns = [*keys, "n cases", "Dice [CI]", "Δ Dice [CI]", "IoU [CI]", "Δ IoU [CI]"]
    rows = []
    for _, group in base.groupby(["encoder", "adaptation", "fraction", "seed"], sort=True, observed=True):
        by = group.set_index("metric")
        row = dict(zip(keys, _ident(group.head(1), keys).iloc[0], strict=True))
        row["n cases"] = str(int(by.loc["dice", "n_pos"] + by.loc["dice", "n_neg"]))
        for m, name in (("dice", "Dice"), ("iou", "IoU")):
            row[f"{name} [CI]"] = fmt_ci(by.loc[m, "value"], by.loc[m, "ci_low"], by.loc[m, "ci_high"])
            row[f"Δ {name} [CI]"] = ""
        rows.append(row)
    for _, group in comparison.groupby(["encoder", "adaptation", "fraction", "seed"], sort=True, observed=True):
        by = group.set_index("metric")
        row = dict(zip(keys, _ident(group.head(1), keys).iloc[0], strict=True))
        row["n cases"] = str(int(by.loc["dice", "n_cases"]))
        for m, name in (("dice", "Dice"), ("iou", "IoU")):
            rec = by.loc[m]
            row[f"{name} [CI]"] = fmt_ci(rec["value"], rec["ci_low"], rec["ci_high"])
            cell = fmt_ci(rec["delta"], rec["delta_ci_low"], rec["delta_ci_high"])
            row[f"Δ {name} [CI]"] = cell + (MARKER if bool(rec["significant"]) else "")
        rows.append(row)
    return pd.DataFrame(rows, columns=columns)


def segmentation_footnote(*, n_boot: int, seed: int, correction: str, alpha: float, cluster: str) -> str:
    """What the segmentation table's numbers are, in one paragraph."""
    unit = "patients" if cluster == "patient" else "cases"
    name = _CORRECTIONS.get(correction, correction)
    adjusted = "unadjusted p-values" if correction == "none" else f"p-values adjusted with the {name} correction"
    return (
        f"Mean Dice and IoU over the test cases (a CT series, else an image) with 95% percentile CI from "
        f"{n_boot} paired bootstrap replicates ({unit} resampled; seed {seed}). Δ = model minus baseline over "
        f"the cases both scored; two-sided bootstrap test, {adjusted} (Dice and IoU rows as separate families); "
        f"{MARKER} marks differences significant at alpha = {float(alpha):g}."
    )


def plot_epoch_curves(curves: pd.DataFrame, *, dataset: str, out_stem: Path, baseline: str | None = None) -> list[Path]:
    """[png, pdf] of Dice per training epoch per model (test Dice where recorded, else validation):
    which encoder reaches a given Dice in fewer epochs; [] when no model has two epochs."""
    data = curves[curves["dataset"].astype(str) == dataset]
    if data.empty:
        return []
    column = "test_dice" if "test_dice" in data and data["test_dice"].notna().any() else "val_dice"
    name = data["encoder"].astype(str) + " / " + data["adaptation"].astype(str)
    if data["fraction"].nunique() > 1:  # one line per training run: fractions and seeds apart
        name = name + " f" + data["fraction"].map("{:g}".format)
    if data["seed"].nunique() > 1:
        name = name + " s" + data["seed"].astype(str)
    data = data.assign(_model=name)
    if data.groupby("_model")["epoch"].nunique().max() < 2:
        return []
    models = _unique_in_order(data["_model"])
    colors = _palette(models, set(data.loc[data["encoder"].astype(str) == baseline, "_model"]))
    with _figure((6.4, 4.4)) as (fig, ax):
        for model in models:
            sub = data[data["_model"] == model].sort_values("epoch")
            ax.plot(sub["epoch"] + 1, sub[column], color=colors[model], marker="o", ms=3, lw=1.6, label=model)
        epochs = np.sort(data["epoch"].unique()) + 1
        if len(epochs) <= 12:
            ax.set_xticks(epochs)
        ax.set_xlabel("Training epochs")
        ax.set_ylabel(f"Mean {'test' if column == 'test_dice' else 'validation'} Dice")
        ax.set_title(f"Dice vs epochs: {dataset}")
        ax.grid(color="0.92")
        ax.legend(loc="best", fontsize=8, frameon=False)
        return _save(fig, out_stem)
