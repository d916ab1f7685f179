"""`cxrbench evaluate`: every predictions Parquet in the run -> ``RUN/evaluation/metrics.parquet``.

Predictions written by other tools in the same format (no manifest beside them) are accepted too;
files whose cxrbench manifest is incomplete are skipped, since they may be half-written.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from cxrbench.adapt.predictions import COLUMNS, parse_adaptation
from cxrbench.console import info
from cxrbench.errors import CxrbenchError
from cxrbench.rundir import Manifest, RunLayout, Stage, file_hash, layout_of, manifest_path_for, read_complete


def prediction_files(run: RunLayout | Path) -> list[Path]:
    """Finished predictions files ``RUN/predictions/DATASET/ENCODER/ADAPTATION.parquet``, sorted."""
    found = []
    for path in sorted(layout_of(run).predictions_root.glob("*/*/*.parquet")):
        sidecar = manifest_path_for(path)
        if sidecar.exists():
            manifest = Manifest.read(sidecar)
            if manifest is None or not manifest.complete:
                info(f"[yellow]skipping {path}: its stage has not finished[/]")
                continue
        found.append(path)
    return found


def read_predictions(path: Path) -> pd.DataFrame:
    """One predictions file with ``dataset, encoder, adaptation, fraction, seed`` from its path."""
    frame = pd.read_parquet(path)
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise CxrbenchError(f"{path}: not a predictions file, missing columns {missing}")
    kind, fraction, seed = parse_adaptation(path.stem)
    return frame.assign(
        dataset=path.parent.parent.name, encoder=path.parent.name, adaptation=kind, fraction=fraction, seed=seed
    )


def load_predictions(files: list[Path]) -> dict[str, pd.DataFrame]:
    """Predictions grouped by dataset."""
    if not files:
        raise CxrbenchError("no predictions in the run; run `cxrbench probe` or `cxrbench finetune` first")
    frames = pd.concat([read_predictions(p) for p in files], ignore_index=True)
    return {name: group.drop(columns="dataset") for name, group in frames.groupby("dataset", sort=True)}


def evaluate(
    run: RunLayout | Path, *, n_boot: int = 1000, seed: int = 0, cluster: str = "image", force: bool = False
) -> Manifest:
    """Metrics with bootstrap CIs for every model of every dataset (test split; thresholds from val)."""
    from cxrbench.stats.engine import evaluate as evaluate_dataset

    layout = layout_of(run)
    files = prediction_files(layout)
    settings = {"n_boot": n_boot, "cluster": cluster}
    hashes = {layout.relative(p): file_hash(p) for p in files}
    home = layout.evaluation
    stage = Stage(
        layout, "evaluate", home / "manifest.json", settings=settings, extra_inputs=hashes, seed=seed, what="evaluation"
    )
    with stage.open(force=force) as todo:
        if todo:
            tables, warnings = [], []
            for dataset, preds in load_predictions(files).items():
                metrics, notes = evaluate_dataset(
                    preds, n_boot=n_boot, seed=seed, cluster=cluster, cache=layout.replicates(dataset)
                )
                tables.append(metrics.assign(dataset=dataset))
                warnings += [f"{dataset}: {n}" for n in notes]
            metrics = pd.concat(tables, ignore_index=True)
            metrics = metrics[["dataset", *[c for c in metrics.columns if c != "dataset"]]]
            stage.write_parquet(layout.metrics, metrics)
            stage.extra["warnings"] = warnings
            for note in warnings:
                info(f"[yellow]warning:[/] {note}")
    return stage.manifest


def load_metrics(run: RunLayout | Path) -> tuple[pd.DataFrame, Manifest]:
    """The evaluation's metrics table, or a one-line error saying to run `cxrbench evaluate`."""
    layout = layout_of(run)
    manifest = read_complete(layout, layout.evaluation / "manifest.json", what="evaluation", hint="cxrbench evaluate")
    return pd.read_parquet(layout.metrics), manifest
