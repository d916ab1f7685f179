"""The segmentation side of `cxrbench evaluate` and `cxrbench compare`: the per-case tables of
``RUN/segmentation/`` become mean Dice/IoU rows of the metrics table, and paired Δ tables, Dice vs
label fraction and Dice vs epoch plots in ``RUN/comparisons/``."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from cxrbench.adapt.predictions import parse_adaptation
from cxrbench.console import info
from cxrbench.errors import CxrbenchError
from cxrbench.rundir import Manifest, RunLayout, Stage, layout_of, manifest_path_for, safe_name
from cxrbench.stages.evaluate import prediction_files

#: Comparison outputs of a dataset's segmentation: ``comparisons/DATASET-segmentation.*``.
SUFFIX = "-segmentation"


def segmentation_files(run: RunLayout | Path) -> list[Path]:
    """Finished, intact and current per-case tables ``RUN/segmentation/DATASET/ENCODER/ADAPTATION.parquet``."""
    layout = layout_of(run)
    return prediction_files(layout, root=layout.segmentation_root)


def _model_of(path: Path) -> dict[str, object]:
    kind, fraction, seed = parse_adaptation(path.stem)
    return {"encoder": path.parent.name, "adaptation": kind, "fraction": fraction, "seed": seed}


def load_cases(files: list[Path]) -> dict[str, pd.DataFrame]:
    """Per dataset, every file's cases with ``encoder, adaptation, fraction, seed`` from its path."""
    by_dataset: dict[str, list[pd.DataFrame]] = {}
    for path in files:
        try:
            frame = pd.read_parquet(path)
        except (OSError, ValueError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise CxrbenchError(f"{path}: not a readable Parquet file ({first})") from None
        by_dataset.setdefault(path.parent.parent.name, []).append(frame.assign(**_model_of(path)))
    return {name: pd.concat(frames, ignore_index=True) for name, frames in sorted(by_dataset.items())}


def load_curves(files: list[Path]) -> pd.DataFrame:
    """The per-epoch curves the segment manifests hold (``extra.curve``), one row per model and epoch."""
    rows = []
    for path in files:
        manifest = Manifest.read(manifest_path_for(path))
        for point in manifest.extra.get("curve", []) if manifest is not None else []:
            rows.append({"dataset": path.parent.parent.name, **_model_of(path), **point})
    columns = ["dataset", "encoder", "adaptation", "fraction", "seed", "epoch", "val_dice", "test_dice"]
    frame = pd.DataFrame(rows)
    return frame.reindex(columns=list(dict.fromkeys([*columns, *frame.columns])))


def segmentation_metrics(files: list[Path], *, n_boot: int, seed: int, cluster: str) -> pd.DataFrame:
    """Metrics-table rows (``dataset`` first) of every dataset's segmentation: mean Dice and IoU."""
    from cxrbench.stats.segmentation import evaluate_segmentation

    tables = []
    for dataset, cases in load_cases(files).items():
        try:
            metrics = evaluate_segmentation(cases, n_boot=n_boot, seed=seed, cluster=cluster)
        except CxrbenchError as exc:
            raise CxrbenchError(f"segmentation of {dataset}: {exc.message}") from None
        tables.append(metrics.assign(dataset=dataset))
    if not tables:
        return pd.DataFrame()
    out = pd.concat(tables, ignore_index=True)
    return out[["dataset", *[c for c in out.columns if c != "dataset"]]]


def compare_segmentation_outputs(
    stage: Stage,
    files: list[Path],
    metrics: pd.DataFrame,
    *,
    baseline: str,
    n_boot: int,
    seed: int,
    cluster: str,
    correction: str,
    alpha: float,
    plots: bool,
    formats: tuple[str, ...],
) -> tuple[dict[str, pd.DataFrame], list[tuple]]:
    """Write every dataset's segmentation comparison (Parquet and the human formats); return the
    tables and the plot jobs (Dice vs label fraction, Dice vs epoch)."""
    from cxrbench.report import plots as plotting
    from cxrbench.report.segmentation import plot_epoch_curves, segmentation_footnote, segmentation_table
    from cxrbench.report.tables import render
    from cxrbench.stats.segmentation import compare_segmentation

    home = stage.layout.comparisons
    note = segmentation_footnote(n_boot=n_boot, seed=seed, correction=correction, alpha=alpha, cluster=cluster)
    tables: dict[str, pd.DataFrame] = {}
    jobs: list[tuple] = []
    curves = load_curves(files) if plots else None
    for dataset, cases in load_cases(files).items():
        if baseline not in set(cases["encoder"]):
            info(f"[yellow]skipping the segmentation of {dataset}: no segmentation by baseline '{baseline}'[/]")
            continue
        table, notes = compare_segmentation(
            cases, baseline=baseline, n_boot=n_boot, seed=seed, cluster=cluster, correction=correction, alpha=alpha
        )
        for message in notes:
            info(f"[yellow]warning:[/] {dataset}: {message}")
        stem = safe_name(dataset + SUFFIX)
        tables[dataset] = table
        stage.write_parquet(home / f"{stem}.parquet", table)
        human = segmentation_table(table, metrics, dataset=dataset, baseline=baseline)
        caption = f"{dataset}: segmentation, mean Dice and IoU [95% CI] and difference vs {baseline}"
        for fmt in formats:
            stage.write_text(home / f"{stem}.{fmt}", render(human, fmt=fmt, caption=caption, footnote=note))
        if plots:
            folder = home / "plots"
            kwargs = {"dataset": dataset, "baseline": baseline}
            jobs.append(
                (
                    plotting.plot_label_efficiency,
                    (metrics,),
                    {**kwargs, "metric": "dice", "out_stem": folder / safe_name(f"{dataset}-dice-fraction")},
                )
            )
            jobs.append(
                (plot_epoch_curves, (curves,), {**kwargs, "out_stem": folder / safe_name(f"{dataset}-dice-epochs")})
            )
    return tables, jobs
