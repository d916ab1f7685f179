"""The predictions contract: long format, one row per (sample, label), val and test splits."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from cxrbench.errors import CxrbenchError

COLUMNS = ("sample_id", "patient_id", "split", "label", "y_true", "y_score")


def adaptation_name(kind: str, *, fraction: float = 1.0, seed: int = 0) -> str:
    """``probe`` / ``finetune`` for the full-label seed-0 run, else ``finetune-f0.10-s1``."""
    if fraction == 1.0 and seed == 0:
        return kind
    return f"{kind}-f{fraction:.2f}-s{seed}"


def parse_adaptation(name: str) -> tuple[str, float, int]:
    """Inverse of ``adaptation_name``: (kind, fraction, seed)."""
    kind, _, rest = name.partition("-f")
    if not rest:
        return name, 1.0, 0
    try:
        fraction, seed = rest.split("-s")
        return kind, float(fraction), int(seed)
    except ValueError:
        raise CxrbenchError(f"cannot read adaptation name {name!r} (expected like finetune-f0.10-s1)") from None


#: between the adaptation and the training dataset in an external predictions file's name
EXTERNAL_MARK = "@"
#: between the training and the test dataset in an external group's name, as tables show it
ARROW = " → "


def split_external(stem: str) -> tuple[str, str | None]:
    """``probe-f0.10-s0@nih`` -> (``probe-f0.10-s0``, ``nih``); an internal file's stem -> (stem, None)."""
    adaptation, mark, train = stem.partition(EXTERNAL_MARK)
    return (adaptation, train) if mark else (stem, None)


def group_name(test: str, train: str | None) -> str:
    """The name evaluate and compare give a set of predictions: ``chexpert``, or ``nih → chexpert``."""
    return test if train is None or train == test else f"{train}{ARROW}{test}"


def group_parts(name: str) -> tuple[str | None, str]:
    """Inverse of ``group_name``: (training dataset or None, test dataset)."""
    train, arrow, test = name.partition(ARROW)
    return (train, test) if arrow else (None, name)


def group_stem(name: str) -> str:
    """A file stem for a group: ``chexpert``, or ``nih-to-chexpert``."""
    from cxrbench.rundir import safe_name

    train, test = group_parts(name)
    return safe_name(test) if train is None else f"{safe_name(train)}-to-{safe_name(test)}"


def predictions_table(rows: pd.DataFrame, labels: list[str], y_true: np.ndarray, y_score: np.ndarray) -> pa.Table:
    """Long table from per-image matrices ``[N, L]`` (rows: the samples, with split val or test)."""
    n, k = y_true.shape
    if y_score.shape != (n, k) or len(rows) != n or len(labels) != k:
        raise ValueError("predictions: rows, labels and matrices disagree in shape")
    return pa.table(
        {
            "sample_id": pa.array(np.repeat(rows["sample_id"].to_numpy(dtype=object), k), pa.string()),
            "patient_id": pa.array(np.repeat(rows["patient_id"].to_numpy(dtype=object), k), pa.string()),
            "split": pa.array(np.repeat(rows["split"].to_numpy(dtype=object), k), pa.string()),
            "label": pa.array(np.tile(np.asarray(labels, dtype=object), n), pa.string()),
            "y_true": pa.array(y_true.reshape(-1).astype(np.float64), pa.float64()),
            "y_score": pa.array(y_score.reshape(-1).astype(np.float64), pa.float64()),
        }
    )
