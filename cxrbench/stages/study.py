"""Study-level predictions of CT datasets: the slice predictions of each study aggregated into one
row (score: max of the slice scores by default, or their mean; truth: positive when any slice is),
written as ordinary predictions of the dataset ``DATASET+study`` so evaluate and compare treat them
like any other (AUC with CIs, sensitivity/specificity at the validation Youden threshold, paired Δ,
label-efficiency curves over the slice models' fractions)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from cxrbench.errors import CxrbenchError
from cxrbench.rundir import Manifest, RunLayout, Stage, clear_tree, layout_of, manifest_path_for

AGGREGATES = ("max", "mean", "none")
#: Suffix of the derived predictions' dataset folder.
SUFFIX = "+study"


def study_of(samples: pd.DataFrame) -> pd.Series | None:
    """``study_id`` by ``sample_id`` for a dataset of CT slices (rows with series), else None."""
    if "slice_index" not in samples or "study_id" not in samples or samples["study_id"].isna().all():
        return None
    known = samples[samples["study_id"].notna()]
    return pd.Series(known["study_id"].astype(str).to_numpy(), index=known["sample_id"].astype(str).to_numpy())


def aggregate_studies(preds: pd.DataFrame, studies: pd.Series, *, aggregate: str = "max") -> pa.Table:
    """One predictions row per (study, label, split) from slice rows: ``y_score`` the max (or mean)
    of the slice scores, ``y_true`` the max of the known slice labels (NaN when none is known)."""
    if aggregate not in ("max", "mean"):
        raise CxrbenchError(f"--study-aggregate {aggregate!r}: choose one of {', '.join(AGGREGATES)}")
    sample = preds["sample_id"].astype(str)
    study = sample.map(studies)
    if study.isna().any():
        raise CxrbenchError(f"sample_id {sample[study.isna()].iloc[0]!r} is not a slice of the prepared dataset")
    frame = pd.DataFrame(
        {
            "study": study.to_numpy(),
            "patient_id": preds["patient_id"].astype(str).to_numpy(),
            "split": preds["split"].astype(str).to_numpy(),
            "label": preds["label"].astype(str).to_numpy(),
            "y_true": preds["y_true"].to_numpy(dtype=np.float64),
            "y_score": preds["y_score"].to_numpy(dtype=np.float64),
        }
    )
    if frame.groupby("study")["split"].nunique().max() > 1:
        raise CxrbenchError("a study has slices in two splits; study-level evaluation needs patient-level splits")
    grouped = frame.groupby(["study", "split", "label"], sort=True)
    out = grouped.agg(
        patient_id=("patient_id", "first"), y_true=("y_true", "max"), y_score=("y_score", aggregate)
    ).reset_index()
    return pa.table(
        {
            "sample_id": pa.array(out["study"], pa.string()),
            "patient_id": pa.array(out["patient_id"], pa.string()),
            "split": pa.array(out["split"], pa.string()),
            "label": pa.array(out["label"], pa.string()),
            "y_true": pa.array(out["y_true"].to_numpy(dtype=np.float64), pa.float64()),
            "y_score": pa.array(out["y_score"].to_numpy(dtype=np.float64), pa.float64()),
        }
    )


def derive_study_predictions(run: RunLayout | Path, *, aggregate: str = "max") -> list[Path]:
    """Write (or keep, when up to date) ``predictions/DATASET+study/ENCODER/ADAPTATION.parquet`` for
    every slice predictions file of a prepared CT dataset; ``none`` removes them instead."""
    from cxrbench.data.prepared import load_prepared
    from cxrbench.stages.evaluate import prediction_files, read_predictions

    if aggregate not in AGGREGATES:
        raise CxrbenchError(f"--study-aggregate {aggregate!r}: choose one of {', '.join(AGGREGATES)}")
    layout = layout_of(run)
    root = layout.predictions_root
    if aggregate == "none":
        for folder in sorted(root.glob(f"*{SUFFIX}")):
            clear_tree(layout, folder)
        return []
    written: list[Path] = []
    by_dataset: dict[str, list[Path]] = {}
    for path in prediction_files(layout):
        if not path.parent.parent.name.endswith(SUFFIX):
            by_dataset.setdefault(path.parent.parent.name, []).append(path)
    for dataset, files in by_dataset.items():
        if Manifest.read(layout.prepared(dataset) / "manifest.json") is None:
            continue  # predictions made elsewhere: no slices to group
        prepared = load_prepared(layout, dataset)
        studies = study_of(prepared.samples)
        if studies is None:
            continue
        for path in files:
            source = Manifest.read(manifest_path_for(path))
            out = layout.predictions(dataset + SUFFIX, path.parent.name, path.stem)
            stage = Stage(
                layout,
                "study",
                manifest_path_for(out),
                settings={"aggregate": aggregate},
                inputs=[prepared.manifest, *([source] if source is not None else [])],
                extra_inputs=None if source is not None else {layout.relative(path): _hash(path)},
                what=f"study-level predictions {path.parent.name}/{path.stem} on {dataset}",
            )
            with stage.open() as todo:
                if todo:
                    stage.write_parquet(out, aggregate_studies(read_predictions(path), studies, aggregate=aggregate))
            written.append(out)
    return written


def _hash(path: Path) -> str:
    from cxrbench.rundir import file_hash

    return file_hash(path)
