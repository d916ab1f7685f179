"""`cxrbench evaluate`: every predictions Parquet in the run -> ``RUN/evaluation/metrics.parquet``.

Predictions written by other tools in the same format (no manifest beside them) are accepted too;
files whose cxrbench manifest is incomplete are skipped, since they may be half-written. Files made
from inputs that have changed since (a dataset prepared again) are refused, naming what to rerun.
Every file is read and checked before the previous metrics are dropped.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from cxrbench.adapt.predictions import COLUMNS, parse_adaptation
from cxrbench.console import info
from cxrbench.errors import CxrbenchError
from cxrbench.rundir import (
    Manifest,
    RunLayout,
    Stage,
    current_outputs,
    file_hash,
    layout_of,
    manifest_path_for,
    read_complete,
    stale_inputs,
)


def prediction_files(run: RunLayout | Path) -> list[Path]:
    """Finished, intact and current predictions files ``RUN/predictions/DATASET/ENCODER/ADAPTATION.parquet``."""
    layout = layout_of(run)
    found, current = [], None
    for path in sorted(layout.predictions_root.glob("*/*/*.parquet")):
        sidecar = manifest_path_for(path)
        if sidecar.exists():
            manifest = Manifest.read(sidecar)
            if manifest is None or not manifest.complete:
                info(f"[yellow]skipping {path}: its stage has not finished[/]")
                continue
            rerun = f"cxrbench {manifest.stage} --dataset {path.parent.parent.name} --encoder {path.parent.name}"
            problem = manifest.intact(layout)
            if problem is not None:
                raise CxrbenchError(f"{problem}; rerun `{rerun} --force`")
            current = current if current is not None else current_outputs(layout)
            changed = stale_inputs(manifest, current)
            if changed:
                raise CxrbenchError(f"{layout.relative(path)} was made from an older {changed[0]}; rerun `{rerun}`")
        found.append(path)
    return found


def read_predictions(path: Path) -> pd.DataFrame:
    """One predictions file with ``dataset, encoder, adaptation, fraction, seed`` from its path."""
    try:
        frame = pd.read_parquet(path)
    except (OSError, ValueError) as exc:  # truncated or not Parquet at all (pyarrow's errors are both)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CxrbenchError(f"{path}: not a readable Parquet file ({first})") from None
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise CxrbenchError(f"{path}: not a predictions file, missing columns {missing}")
    kind, fraction, seed = parse_adaptation(path.stem)
    return frame.assign(
        dataset=path.parent.parent.name, encoder=path.parent.name, adaptation=kind, fraction=fraction, seed=seed
    )


def load_predictions(files: list[Path], *, check: bool = False) -> dict[str, pd.DataFrame]:
    """Predictions grouped by dataset; with ``check``, each dataset's rows are validated and a problem
    is reported with the file it is in."""
    if not files:
        raise CxrbenchError("no predictions in the run; run `cxrbench probe` or `cxrbench finetune` first")
    frames = [read_predictions(p) for p in files]
    grouped = pd.concat(frames, ignore_index=True).groupby("dataset", sort=True)
    loaded = {name: group.drop(columns="dataset") for name, group in grouped}
    if check:
        from cxrbench.stats.engine import validate_predictions

        for name, preds in loaded.items():
            try:
                validate_predictions(preds)
            except CxrbenchError:
                for path, frame in zip(files, frames, strict=True):
                    if path.parent.parent.name != name:
                        continue
                    try:
                        validate_predictions(frame)
                    except CxrbenchError as exc:
                        raise CxrbenchError(f"{path}: {exc.message}") from None
                raise
    return loaded


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
    # read and check every file before the stage drops the previous metrics
    loaded = load_predictions(files, check=True) if force or stage.up_to_date() is None else None
    with stage.open(force=force) as todo:
        if todo:
            tables, warnings = [], []
            for dataset, preds in (loaded or load_predictions(files, check=True)).items():
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
