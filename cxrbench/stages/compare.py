"""`cxrbench compare`: paired differences vs a baseline encoder -> significance tables and plots."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from cxrbench.adapt.predictions import group_stem
from cxrbench.console import info
from cxrbench.errors import CxrbenchError
from cxrbench.rundir import COMPARISON_VIEWS, Manifest, RunLayout, Stage, file_hash, layout_of, safe_name
from cxrbench.stages.evaluate import load_metrics, load_predictions, prediction_files

FORMATS = ("md", "csv", "tex", "html")
TESTS = ("bootstrap", "delong")
CORRECTIONS = ("bh", "holm", "none")

#: The stems of compare's own tables beside the per-dataset ones (no dataset may take them).
SUMMARY, SEEDS, EXTERNAL, BIAS = COMPARISON_VIEWS


def compare(
    run: RunLayout | Path,
    *,
    baseline: str = "imagenet",
    n_boot: int = 1000,
    seed: int = 0,
    cluster: str = "image",
    test: str = "bootstrap",
    correction: str = "bh",
    alpha: float = 0.05,
    plots: bool = True,
    force: bool = False,
) -> Manifest:
    """Write ``RUN/comparisons/DATASET.{parquet,md,csv,tex,html}``, a summary, and plots."""
    if test not in TESTS:
        raise CxrbenchError(f"--test {test!r}: choose one of {', '.join(TESTS)}")
    if correction not in CORRECTIONS:
        raise CxrbenchError(f"--correction {correction!r}: choose one of {', '.join(CORRECTIONS)}")
    if not 0 < alpha < 1:
        raise CxrbenchError(f"--alpha {alpha}: must be between 0 and 1")
    from cxrbench.report import plots as plotting
    from cxrbench.report.bias import attribute_of
    from cxrbench.report.tables import dataset_table, footnote, render, summary_table
    from cxrbench.stages.segment_results import compare_segmentation_outputs, segmentation_files
    from cxrbench.stats.engine import compare as compare_dataset
    from cxrbench.stats.engine import compare_over_seeds

    layout = layout_of(run)
    metrics, metrics_manifest = load_metrics(layout)
    files, seg_files = prediction_files(layout), segmentation_files(layout)
    hashes = {layout.relative(p): file_hash(p) for p in [*files, *seg_files]}
    evaluated = {k: v for k, v in metrics_manifest.inputs.items() if not k.startswith("retrieval:")}
    if hashes != evaluated:
        raise CxrbenchError("the predictions changed since `cxrbench evaluate` ran; rerun `cxrbench evaluate` first")
    settings = {
        "baseline": baseline,
        "n_boot": n_boot,
        "cluster": cluster,
        "test": test,
        "correction": correction,
        "alpha": alpha,
        "plots": plots,
    }
    home = layout.comparisons
    stage = Stage(
        layout,
        "compare",
        home / "manifest.json",
        settings=settings,
        inputs=[metrics_manifest],
        seed=seed,
        what="comparisons",
    )
    with stage.open(force=force) as todo:
        if todo:
            note = footnote(test=test, n_boot=n_boot, seed=seed, correction=correction, alpha=alpha, cluster=cluster)
            comparisons: dict[str, pd.DataFrame] = {}
            over_seeds: list[pd.DataFrame] = []  # each dataset's models that ran with several seeds
            plot_jobs: list = []
            loaded = (
                load_predictions(files, check=True, hashes=[hashes[layout.relative(p)] for p in files]) if files else {}
            )
            for dataset, checked in loaded.items():
                preds = checked.frame
                if baseline not in set(preds["encoder"].unique()):
                    info(f"[yellow]skipping {dataset}: no predictions of baseline '{baseline}'[/]")
                    continue
                options = dict(
                    baseline=baseline, n_boot=n_boot, seed=seed, cluster=cluster, correction=correction, alpha=alpha,
                    cache=layout.replicates(dataset),
                )  # fmt: skip
                table, notes = compare_dataset(checked, test=test, **options)
                for message in notes:
                    info(f"[yellow]warning:[/] {dataset}: {message}")
                if table.empty:
                    info(
                        f"[yellow]warning:[/] {dataset}: only the baseline '{baseline}' has predictions; "
                        "its AUCs and ROC curves are reported, with no differences to test"
                    )
                comparisons[dataset] = table
                pooled = compare_over_seeds(checked, **options)  # models run with several seeds
                if not pooled.empty:
                    over_seeds.append(pooled.assign(dataset=dataset))
                stage.write_parquet(home / f"{group_stem(dataset)}.parquet", table)
                human = dataset_table(table, metrics[metrics["dataset"] == dataset], dataset=dataset, baseline=baseline)
                caption = f"{dataset}: AUC [95% CI] and difference vs {baseline}"
                for fmt in FORMATS:
                    stage.write_text(
                        home / f"{group_stem(dataset)}.{fmt}", render(human, fmt=fmt, caption=caption, footnote=note)
                    )
                if plots:
                    plot_jobs += _plot_jobs(
                        plotting,
                        home / "plots",
                        dataset,
                        preds,
                        table,
                        metrics,
                        baseline=baseline,
                        seed=seed,
                    )
            seg_tables, seg_jobs = compare_segmentation_outputs(
                stage, seg_files, metrics, baseline=baseline, n_boot=n_boot, seed=seed, cluster=cluster,
                correction=correction, alpha=alpha, plots=plots, formats=FORMATS,
            )  # fmt: skip
            plot_jobs += seg_jobs
            _bias(stage, loaded, comparisons, metrics, baseline=baseline, n_boot=n_boot, seed=seed, cluster=cluster,
                  correction=correction, alpha=alpha)  # fmt: skip
            if not comparisons and not seg_tables:
                encoders = sorted(set(metrics["encoder"]))
                raise CxrbenchError(
                    f"--baseline {baseline!r}: no dataset has predictions of it (encoders: {', '.join(encoders)})"
                )
            for path in _plots(plotting, plot_jobs, cache=layout.plot_cache):
                stage.record(path)
            improvements = {k: v for k, v in comparisons.items() if attribute_of(k) is None}  # not attributes
            if any(len(table) for table in improvements.values()):
                summary = summary_table(improvements, metrics, baseline=baseline)
                stage.write_parquet(home / f"{SUMMARY}.parquet", summary)
                for fmt in FORMATS:
                    stage.write_text(
                        home / f"{SUMMARY}.{fmt}",
                        render(summary, fmt=fmt, caption=f"Maximum improvement over {baseline}", footnote=note),
                    )
            elif improvements:  # a "maximum improvement" table would be empty
                info(
                    f"no encoder but the baseline '{baseline}' has predictions, so no summary of improvements "
                    "(add another encoder's predictions, then evaluate and compare again)"
                )
            _write_external_view(stage, home, files, loaded, n_boot=n_boot, seed=seed, cluster=cluster)
            if over_seeds:
                _write_seeds_view(
                    stage, home, over_seeds, baseline=baseline, n_boot=n_boot, seed=seed, cluster=cluster,
                    correction=correction, alpha=alpha,
                )  # fmt: skip
    return stage.manifest


def _write_seeds_view(stage: Stage, home: Path, parts: list[pd.DataFrame], *, baseline: str, **options) -> None:
    """``comparisons/seeds.*``: the mean over seeds (label subsets) of every model that ran with several,
    against the baseline's same seeds (``compare_over_seeds``; adjusted per dataset)."""
    from cxrbench.report.tables import render, seeds_footnote, seeds_table
    from cxrbench.stats.engine import SEEDS_COLUMNS

    pooled = pd.concat(parts, ignore_index=True)[["dataset", *SEEDS_COLUMNS]]
    stage.write_parquet(home / f"{SEEDS}.parquet", pooled)
    human = seeds_table(pooled, baseline=baseline)
    caption = f"Mean over seeds (label subsets): macro-mean AUC [95% CI] and difference vs {baseline}"
    note = seeds_footnote(**options)
    for fmt in FORMATS:
        stage.write_text(home / f"{SEEDS}.{fmt}", render(human, fmt=fmt, caption=caption, footnote=note))


def _write_external_view(stage: Stage, home: Path, files, loaded, *, n_boot: int, seed: int, cluster: str) -> None:
    """``comparisons/external.*``: each externally tested model's AUC on its own test split beside the
    external ones, with the drop and its CI (only when the run has external predictions)."""
    from cxrbench.report.tables import render
    from cxrbench.stages.external import external_human, internal_vs_external

    view = internal_vs_external(files, loaded, n_boot=n_boot, seed=seed, cluster=cluster)
    if view.empty:
        return
    stage.write_parquet(home / f"{EXTERNAL}.parquet", view)
    human = external_human(view)
    caption = "Internal vs external: mean AUC over shared labels [95% CI] on the training dataset's test split and on the external one"
    note = (
        f"AUC: mean over the labels with both classes on both test sets, with 95% percentile CI from {n_boot} "
        f"bootstrap replicates of each set (resampled by {cluster}; seed {seed}). Drop = internal − external, "
        "its CI from the two sets resampled independently."
    )
    for fmt in FORMATS:
        stage.write_text(home / f"{EXTERNAL}.{fmt}", render(human, fmt=fmt, caption=caption, footnote=note))


def _bias(stage: Stage, loaded: dict, comparisons: dict, metrics: pd.DataFrame, *, baseline: str, **options) -> None:
    """Write ``comparisons/bias.*``: the attribute probes' AUCs and Δ vs ``random`` (reusing the
    comparison when ``random`` is the baseline), when the run has attribute probes of ``random``."""
    from cxrbench.report.bias import REFERENCE, attribute_of, bias_footnote, bias_table
    from cxrbench.report.tables import render
    from cxrbench.stats.engine import compare as compare_dataset

    tables = {}
    for dataset, checked in loaded.items():
        if attribute_of(dataset) is None or REFERENCE not in set(checked.frame["encoder"].unique()):
            continue
        if baseline == REFERENCE and dataset in comparisons:
            tables[dataset] = comparisons[dataset]
        else:
            tables[dataset], _ = compare_dataset(
                checked, baseline=REFERENCE, cache=stage.layout.replicates(dataset), **options
            )
    if not tables:
        return
    table = bias_table(tables, metrics)
    note = bias_footnote(n_boot=options["n_boot"], seed=options["seed"], alpha=options["alpha"])
    stage.write_parquet(stage.layout.comparisons / f"{BIAS}.parquet", table)
    for fmt in FORMATS:
        caption = f"Attribute probes (bias table): AUC [95% CI] and difference vs {REFERENCE} (no pretraining)"
        stage.write_text(
            stage.layout.comparisons / f"{BIAS}.{fmt}", render(table, fmt=fmt, caption=caption, footnote=note)
        )


def _plot_jobs(
    plotting,
    folder: Path,
    dataset: str,
    preds: pd.DataFrame,
    table: pd.DataFrame,
    metrics: pd.DataFrame,
    *,
    baseline: str,
    seed: int,
) -> list[tuple]:
    """Forest plot (when there are differences), ROC curve per label and label-efficiency curves of one
    dataset, as ``render`` jobs."""
    jobs = []
    if not table.empty:
        forest = folder / f"{group_stem(dataset)}-forest"
        jobs.append((plotting.plot_forest, (table, forest), {"title": f"{dataset}: Δ AUC vs {baseline}"}))
    test = preds[preds["split"] == "test"]
    for label, rows in test.groupby("label", sort=True, observed=True):
        if rows["y_true"].dropna().nunique() < 2:  # evaluate left it out of the mean; no curve to draw
            info(f"[yellow]warning:[/] {dataset}: no ROC plot for label '{label}': its test set has one class")
            continue
        stem = folder / safe_name(f"{group_stem(dataset)}-roc-{label}")
        jobs.append(
            (plotting.plot_roc, (rows,), {"label": label, "baseline": baseline, "out_stem": stem, "seed": seed})
        )
    stem = folder / f"{group_stem(dataset)}-efficiency"
    jobs.append(
        (plotting.plot_label_efficiency, (metrics,), {"dataset": dataset, "baseline": baseline, "out_stem": stem})
    )
    return jobs


def _plots(plotting, jobs: list[tuple], *, cache: Path) -> list[Path]:
    """Draw the jobs of every dataset together (side by side; unchanged ones copied from ``cache``)."""
    return [path for written in plotting.render(jobs, cache=cache) for path in written]
