"""The bias table: how well each encoder's frozen features predict patient attributes (age bins,
sex, race), against a randomly initialised encoder ("no pretraining")."""

from __future__ import annotations

import pandas as pd

from cxrbench.adapt.attributes import ATTRIBUTES
from cxrbench.report.tables import MARKER, fmt_ci

REFERENCE = "random"
COLUMNS = ["dataset", "attribute", "encoder", "fraction", "AUC [CI]", f"Δ vs {REFERENCE} [CI]"]


def attribute_of(dataset: str) -> tuple[str, str] | None:
    """(dataset, attribute) of an attribute probe's predictions folder ``DATASET+age``, else None."""
    base, plus, attribute = dataset.rpartition("+")
    return (base, attribute) if plus and base and attribute in ATTRIBUTES else None


def bias_table(comparisons: dict[str, pd.DataFrame], metrics: pd.DataFrame) -> pd.DataFrame:
    """Per attribute: the macro one-vs-rest AUC [CI] of every encoder (``random``'s from ``metrics``)
    and its Δ vs ``random`` [CI] from the paired comparison (``*``: significant after correction)."""
    rows = []
    for name, table in sorted(comparisons.items()):
        dataset, attribute = attribute_of(name) or (name, "")
        ref = metrics[
            (metrics["dataset"].astype(str) == name)
            & (metrics["encoder"].astype(str) == REFERENCE)
            & (metrics["metric"].astype(str) == "auc")
            & (metrics["label"].astype(str) == "mean")
        ]
        ident = {"dataset": dataset, "attribute": attribute}
        for _, rec in ref.sort_values("fraction").iterrows():
            rows.append(
                {**ident, "encoder": REFERENCE, "fraction": f"{float(rec['fraction']):g}",
                 "AUC [CI]": fmt_ci(rec["value"], rec["ci_low"], rec["ci_high"]), COLUMNS[-1]: ""}
            )  # fmt: skip
        mean = table[table["label"].astype(str) == "mean"].sort_values(["encoder", "fraction", "seed"])
        for _, rec in mean.iterrows():
            delta = fmt_ci(rec["delta"], rec["delta_ci_low"], rec["delta_ci_high"])
            rows.append(
                {**ident, "encoder": str(rec["encoder"]), "fraction": f"{float(rec['fraction']):g}",
                 "AUC [CI]": fmt_ci(rec["auc"], rec["auc_ci_low"], rec["auc_ci_high"]),
                 COLUMNS[-1]: delta + (MARKER if bool(rec["significant"]) else "")}
            )  # fmt: skip
    return pd.DataFrame(rows, columns=COLUMNS)


def bias_footnote(*, n_boot: int, seed: int, alpha: float) -> str:
    """What the bias table's numbers are."""
    return (
        "Linear probes of patient attributes on frozen features (age in 10-year bins and race: macro "
        "one-vs-rest AUC; sex: AUC for female). 95% percentile CIs from "
        f"{n_boot} paired bootstrap replicates (seed {seed}); Δ = encoder AUC minus the AUC of a randomly "
        f"initialised encoder of the same probe; {MARKER}: significant at alpha = {float(alpha):g} after "
        "correction. A higher AUC means the features encode the attribute more (a potential shortcut)."
    )
