"""The generic path from an adapter's raw rows to the ``samples.parquet`` contract.

Every dataset, real or synthetic, goes through here: label-name normalisation, the uncertain-label
policy, the view filter, patient-level splits and rare-label dropping happen once, the same way.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from cxrbench.data.adapters.base import FRONTAL_VIEWS, UNCERTAIN, RawDataset, label_key, preview
from cxrbench.data.images import CT_PREFIX
from cxrbench.data.reports import STORED, section_columns
from cxrbench.data.splits import SPLITS, assign_splits
from cxrbench.errors import CxrbenchError

LABEL_PREFIX = "label:"
UNCERTAIN_POLICIES = ("negative", "positive", "ignore")
#: ``frontal``: PA/AP (or FRONTAL, projection unrecorded) only (images whose view is unknown are left out, and counted);
#: ``frontal+unknown``: PA/AP and images whose dataset records no view; ``all``: every image.
VIEW_FILTERS = ("frontal", "frontal+unknown", "all")
#: columns of samples.parquet besides the label columns, in order
BASE_COLUMNS = ("sample_id", "patient_id", "study_id", "split", "view", "sex", "age", "path", "report", *STORED)


@dataclass(frozen=True)
class LabelPolicy:
    """How raw labels become training targets; stored in the prepare manifest."""

    uncertain: Literal["negative", "positive", "ignore"] = "negative"
    min_positives: int = 0
    views: Literal["frontal", "frontal+unknown", "all"] = "frontal"
    split: tuple[float, float, float] = (0.6, 0.2, 0.2)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.uncertain not in UNCERTAIN_POLICIES:
            raise CxrbenchError(f"--uncertain {self.uncertain!r}: choose one of {', '.join(UNCERTAIN_POLICIES)}")
        if self.views not in VIEW_FILTERS:
            raise CxrbenchError(f"--views {self.views!r}: choose one of {', '.join(VIEW_FILTERS)}")
        if self.min_positives < 0:
            raise CxrbenchError(f"--min-positives {self.min_positives}: must be >= 0")

    def to_dict(self) -> dict:
        return asdict(self)


def normalise_label(name: str) -> str:
    """``"Pleural Effusion"`` -> ``pleural_effusion``; ``"Support Devices"`` -> ``support_devices``."""
    text = label_key(name)
    if not text:
        raise CxrbenchError(f"label name {name!r} has no letters or digits")
    return text


def label_columns(frame: pd.DataFrame) -> list[str]:
    """The ``label:<name>`` columns of a samples table, in order."""
    return [c for c in frame.columns if c.startswith(LABEL_PREFIX)]


def build_samples(raw: RawDataset, policy: LabelPolicy, *, root: Path) -> tuple[pd.DataFrame, dict]:
    """Apply the policy to an adapter's rows; returns the samples frame and a summary for the manifest.

    The frame has the ``samples.parquet`` columns (without ``cache_index``, added after decoding).
    """
    frame = raw.frame.copy()
    if frame.empty:
        raise CxrbenchError(f"no images found under {root}")
    mapping = {name: normalise_label(name) for name in raw.labels}
    _check_no_collisions(mapping)
    # --views chooses radiograph projections; CT slices are all axial, the choice does not apply
    ct = raw.image_format is not None and raw.image_format.startswith(CT_PREFIX)
    frame, view_counts = _filter_views(frame, "all" if ct else policy.views)

    labels = {}
    for name, new in mapping.items():
        values = pd.to_numeric(frame[name], errors="coerce").astype("float64").to_numpy()
        uncertain = values == UNCERTAIN
        if policy.uncertain == "negative":
            values = np.where(uncertain, 0.0, values)
        elif policy.uncertain == "positive":
            values = np.where(uncertain, 1.0, values)
        else:
            values = np.where(uncertain, np.nan, values)
        bad = ~np.isnan(values) & (values != 0.0) & (values != 1.0)
        if bad.any():
            raise CxrbenchError(f"label {name!r} has values other than 1/0/-1/blank: {sorted(set(values[bad]))[:5]}")
        labels[LABEL_PREFIX + new] = values

    official = frame["split"].tolist() if "split" in frame else None
    splits = assign_splits(frame["patient_id"].astype(str).tolist(), official, ratios=policy.split, seed=policy.seed)

    prefix = str(Path(root).absolute()).rstrip("/") + "/"
    out = pd.DataFrame(
        {
            "sample_id": _sample_ids(frame, prefix),
            "patient_id": frame["patient_id"].astype(str).to_numpy(),
            "study_id": _optional(frame, "study_id", str),
            "split": splits,
            "view": _optional(frame, "view", str),
            "sex": _optional(frame, "sex", str),
            "age": pd.to_numeric(frame["age"], errors="coerce").to_numpy() if "age" in frame else np.nan,
            "path": frame["path"].astype(str).to_numpy(),
            "report": _optional(frame, "report", str),
        }
    )
    if "race" in frame:  # recorded by few datasets; attribute probes use it
        out["race"] = _optional(frame, "race", str)
    # volume slices keep their place in the series (next-slice pretraining, study-level scores)
    # and a segmentation dataset its mask (RLE, cached as masks.npy beside the images)
    for column, kind in (
        ("series_id", str),
        ("slice_index", "int64"),
        ("slice_position", "float64"),
        ("mask_rle", str),
    ):
        if column in frame:
            out[column] = frame[column].astype(kind).to_numpy()
    # report sections parsed once, here, and stored as text columns (never re-parsed per epoch)
    for section, values in section_columns(out["report"]).items():
        out[section] = np.array(values, dtype=object)
    # one concat, not one insert per label: hundreds of labels (Indiana's MeSH headings) would
    # fragment the frame and make pandas warn once per insert
    out = pd.concat([out, pd.DataFrame(labels, index=out.index)], axis=1)
    duplicated = out["sample_id"].duplicated(keep=False)
    if duplicated.any():
        ids = pd.unique(out.loc[duplicated, "sample_id"])
        raise CxrbenchError(f"{len(ids)} sample id(s) are listed more than once by the adapter, e.g. {preview(ids, 2)}")
    out, dropped = drop_rare_labels(out, policy.min_positives)
    summary = {
        "label_mapping": {k: v for k, v in mapping.items() if LABEL_PREFIX + v in out},
        "dropped_labels": dropped,
        "task": raw.task,
        "image_format": raw.image_format,
        **view_counts,
    }
    return out.reset_index(drop=True), summary


def drop_rare_labels(samples: pd.DataFrame, min_positives: int) -> tuple[pd.DataFrame, list[str]]:
    """Drop labels with fewer than ``min_positives`` positives in any of train/val/test."""
    if min_positives <= 0:
        return samples, []
    dropped = []
    for column in label_columns(samples):
        counts = samples.groupby("split")[column].apply(lambda v: int((v == 1.0).sum()))
        if any(counts.get(split, 0) < min_positives for split in SPLITS):
            dropped.append(column[len(LABEL_PREFIX) :])
    if len(dropped) == len(label_columns(samples)):
        raise CxrbenchError(f"--min-positives {min_positives} drops every label; lower it")
    return samples.drop(columns=[LABEL_PREFIX + d for d in dropped]), dropped


def prevalence_table(samples: pd.DataFrame) -> pd.DataFrame:
    """Positives / known per label and split, for the prepare summary."""
    rows = []
    for column in label_columns(samples):
        row = {"label": column[len(LABEL_PREFIX) :]}
        for split in SPLITS:
            values = samples.loc[samples["split"] == split, column]
            known = values.notna().sum()
            row[split] = f"{int((values == 1).sum())}/{int(known)}"
        rows.append(row)
    return pd.DataFrame(rows)


def _check_no_collisions(mapping: dict[str, str]) -> None:
    """One-line error naming the first few labels whose normalised names coincide."""
    groups: dict[str, list[str]] = {}
    for name, new in mapping.items():
        groups.setdefault(new, []).append(name)
    clashes = [names for names in groups.values() if len(names) > 1]
    if clashes:
        shown = "; ".join(preview(names, 3) for names in clashes[:3])
        more = f" (and {len(clashes) - 3} more groups)" if len(clashes) > 3 else ""
        raise CxrbenchError(f"label names collide after normalisation: {shown}{more}")


def _filter_views(frame: pd.DataFrame, views: str) -> tuple[pd.DataFrame, dict[str, int]]:
    """Apply ``--views``; return the kept rows and the counts left out (for the prepare summary).

    The counts are ``excluded_non_frontal`` (a known view other than PA/AP) and
    ``excluded_unknown_view`` (no view recorded: under ``frontal`` they are left out, since half
    of a mixed collection such as Indiana is lateral; ``frontal+unknown`` keeps them).
    """
    counts = {"excluded_non_frontal": 0, "excluded_unknown_view": 0}
    if views == "all" or "view" not in frame:
        return frame, counts
    view = frame["view"]
    unknown = view.isna().to_numpy()
    frontal = view.isin(sorted(FRONTAL_VIEWS)).to_numpy()
    keep = frontal | unknown if views == "frontal+unknown" else frontal
    counts["excluded_non_frontal"] = int((~frontal & ~unknown).sum())
    counts["excluded_unknown_view"] = int((unknown & ~keep).sum())
    if not keep.any():
        hint = (
            f"; {counts['excluded_unknown_view']} image(s) have no recorded view: "
            "keep them with --views frontal+unknown"
            if counts["excluded_unknown_view"]
            else ""
        )
        raise CxrbenchError(f"no frontal images left after --views {views} (try --views all){hint}")
    return frame[keep], counts


def _sample_ids(frame: pd.DataFrame, root_prefix: str) -> list[str]:
    """The adapter's ``sample_id`` (the dataset's own image id) where given, else the path relative to the root."""
    given = frame["sample_id"] if "sample_id" in frame else pd.Series(None, index=frame.index)
    return [
        str(sid) if not pd.isna(sid) else _relative(str(path), root_prefix)
        for sid, path in zip(given.tolist(), frame["path"].tolist(), strict=True)  # lists: fast to iterate
    ]


def _relative(path: str, root_prefix: str) -> str:
    """The image path relative to the dataset root (the path itself if outside it)."""
    return path[len(root_prefix) :] if path.startswith(root_prefix) else path


def _optional(frame: pd.DataFrame, column: str, kind: type) -> object:
    if column not in frame:
        return None
    # Series.where(notna, None) turns None back into NaN, which str() made the text "nan"
    return np.array([None if pd.isna(v) else kind(v) for v in frame[column].tolist()], dtype=object)
