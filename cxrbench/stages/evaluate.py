"""`cxrbench evaluate`: every predictions Parquet in the run -> ``RUN/evaluation/metrics.parquet`` (and
``retrieval.parquet``: image→report recall@1/5/10 for encoders pretrained here with a text tower).

Predictions written by other tools in the same format (no manifest beside them) are accepted too;
files whose cxrbench manifest is incomplete are skipped, since they may be half-written. Files made
from inputs that have changed since (a dataset prepared again) are refused, naming what to rerun.
Every file is read and checked before the previous metrics are dropped.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa

from cxrbench.adapt.predictions import COLUMNS, group_name, group_stem, parse_adaptation, split_external
from cxrbench.console import info
from cxrbench.errors import CxrbenchError
from cxrbench.rundir import (
    COMPARISON_VIEWS,
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

if TYPE_CHECKING:
    from cxrbench.stats.engine import CheckedPredictions


def prediction_files(run: RunLayout | Path, *, root: Path | None = None) -> list[Path]:
    """Finished, intact and current predictions files ``RUN/predictions/DATASET/ENCODER/ADAPTATION.parquet``
    (and ``ADAPTATION@TRAIN.parquet``: a model trained on TRAIN tested on DATASET), or the same
    layout under ``root`` (the segmentation tables)."""
    layout = layout_of(run)
    found, current = [], None
    for path in sorted((root or layout.predictions_root).glob("*/*/*.parquet")):
        _check_table_name(layout, path)
        sidecar = manifest_path_for(path)
        if sidecar.exists():
            manifest = Manifest.read(sidecar)
            if manifest is None or not manifest.complete:
                info(f"[yellow]skipping {path}: its stage has not finished[/]")
                continue
            train, test = split_external(path.stem)[1], path.parent.parent.name
            where = f"--dataset {test}" if train is None else f"--dataset {train} --test-dataset {test}"
            rerun = f"cxrbench {manifest.stage.removesuffix('-external')} {where} --encoder {path.parent.name}"
            problem = manifest.intact(layout)
            if problem is not None:
                raise CxrbenchError(f"{problem}; rerun `{rerun} --force`")
            current = current if current is not None else current_outputs(layout)
            changed = stale_inputs(manifest, current)
            if changed:
                raise CxrbenchError(f"{layout.relative(path)} was made from an older {changed[0]}; rerun `{rerun}`")
        found.append(path)
    return found


def _check_table_name(layout: RunLayout, path: Path) -> None:
    """A one-line error when ``path``'s dataset would get a comparisons table named like one of
    compare's own views (``COMPARISON_VIEWS``): a folder of outside predictions named ``seeds``."""
    stem = group_stem(group_name(path.parent.parent.name, split_external(path.stem)[1]))
    if stem in COMPARISON_VIEWS:
        raise CxrbenchError(
            f"{layout.relative(path)}: a dataset named {stem!r} would overwrite compare's own "
            f"comparisons/{stem}.* table ({', '.join(COMPARISON_VIEWS)} are taken); rename its folder"
        )


#: image→report recall@1/5/10 (``cxrbench.adapt.retrieval``), where the run has encoders with a text tower
RETRIEVAL = "retrieval.parquet"
TEXT_COLUMNS = ("sample_id", "patient_id", "split", "label")


def _read_table(path: Path) -> pa.Table:
    """The predictions columns of one file, text columns as Parquet stored them (dictionaries)."""
    import pyarrow.parquet as pq

    try:
        handle = pq.ParquetFile(path, read_dictionary=list(TEXT_COLUMNS))
        missing = [c for c in COLUMNS if c not in handle.schema_arrow.names]
        if not missing:
            return handle.read(columns=list(COLUMNS))
    except (OSError, ValueError) as exc:  # truncated or not Parquet at all (pyarrow's errors are both)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CxrbenchError(f"{path}: not a readable Parquet file ({first})") from None
    raise CxrbenchError(f"{path}: not a predictions file, missing columns {missing}")


def read_predictions(path: Path) -> pd.DataFrame:
    """One predictions file with ``encoder, adaptation, fraction, seed`` from its path (see ``_frame``)."""
    return _frame([path], [_read_table(path)])


def _frame(paths: list[Path], tables: list[pa.Table]) -> pd.DataFrame:
    """The rows of every file in order as one frame, with ``encoder, adaptation, fraction, seed``.

    Text columns are categorical (Parquet's dictionaries, never a Python string per row) with their
    categories sorted, so sorting and grouping go as for plain strings; so are encoder and adaptation.
    """
    lengths = [t.num_rows for t in tables]
    columns: dict[str, object] = {}
    try:
        table = pa.concat_tables(tables).unify_dictionaries()
    except (pa.ArrowInvalid, pa.ArrowTypeError):  # the files disagree on a column's type
        frame = pd.concat([t.to_pandas() for t in tables], ignore_index=True)
        for name in frame.columns:
            if isinstance(frame[name].dtype, pd.CategoricalDtype):
                frame[name] = frame[name].astype(frame[name].cat.categories.dtype)
        columns.update(frame.items())
    else:
        for name in table.column_names:
            col = table.column(name).to_pandas()
            if isinstance(col.dtype, pd.CategoricalDtype):
                col = col.cat.reorder_categories(col.cat.categories.sort_values())
            columns[name] = col
    parsed = [parse_adaptation(split_external(p.stem)[0]) for p in paths]
    for name, values in (("encoder", [p.parent.name for p in paths]), ("adaptation", [k for k, _, _ in parsed])):
        categories = sorted(set(values))
        codes = np.repeat([categories.index(v) for v in values], lengths).astype(np.int32)
        columns[name] = pd.Categorical.from_codes(codes, categories=pd.Index(categories, dtype="str"))
    columns["fraction"] = np.repeat(np.array([f for _, f, _ in parsed], dtype=np.float64), lengths)
    columns["seed"] = np.repeat(np.array([s for _, _, s in parsed], dtype=np.int64), lengths)
    return pd.DataFrame(columns, copy=False)


_LOADED: dict[str, object] = {}  # the last predictions loaded, by their files' paths and hashes


def load_predictions(
    files: list[Path], *, check: bool = False, hashes: list[str] | None = None
) -> dict[str, pd.DataFrame] | dict[str, CheckedPredictions]:
    """Predictions grouped by dataset (external ones by ``TRAIN → TEST``): a frame each or, with ``check``, each dataset's rows validated
    (``CheckedPredictions``, which ``evaluate``/``compare`` of ``cxrbench.stats.engine`` take as it
    is, its frame in ``.frame``), a problem reported with the file it is in.

    With ``hashes`` (the files' ``file_hash`` values, in order) the result is kept in this process,
    so a later call on the same unchanged files (``compare`` after ``evaluate`` in a suite) neither
    reads nor checks them again.
    """
    if not files:
        raise CxrbenchError("no predictions in the run; run `cxrbench probe` or `cxrbench finetune` first")
    key = None if hashes is None else repr([(str(p), h) for p, h in zip(files, hashes, strict=True)])
    if key is not None and _LOADED.get("key") == key:
        loaded = _LOADED["value"]
        if not check:
            return {name: getattr(v, "frame", v) for name, v in loaded.items()}  # type: ignore[attr-defined]
        if _LOADED["checked"]:
            return loaded  # type: ignore[return-value]
    _LOADED.clear()
    by_dataset: dict[str, list[tuple[Path, pa.Table]]] = {}
    for path in files:
        group = group_name(path.parent.parent.name, split_external(path.stem)[1])  # "nih → chexpert"
        by_dataset.setdefault(group, []).append((path, _read_table(path)))
    result: dict = {}
    for name in sorted(by_dataset):
        preds = _frame(*map(list, zip(*by_dataset[name], strict=True)))
        if check:
            from cxrbench.stats.engine import validate_predictions

            try:
                result[name] = validate_predictions(preds)
            except CxrbenchError:
                for path, table in by_dataset[name]:
                    try:
                        validate_predictions(_frame([path], [table]))
                    except CxrbenchError as exc:
                        raise CxrbenchError(f"{path}: {exc.message}") from None
                raise
        else:
            result[name] = preds
    if key is not None:
        _LOADED.update(key=key, value=result, checked=check)
    return result


def evaluate(
    run: RunLayout | Path,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    cluster: str = "image",
    study_aggregate: str = "max",
    force: bool = False,
) -> Manifest:
    """Metrics with bootstrap CIs for every model of every dataset (test split; thresholds from val),
    study-level ones for CT datasets (slice scores aggregated per study), segmentation's mean
    Dice/IoU, and image→report retrieval where encoders with a text tower meet reports."""
    from cxrbench.adapt.retrieval import retrieval_inputs, retrieval_metrics, retrieval_pairs
    from cxrbench.stages.segment_results import segmentation_files, segmentation_metrics
    from cxrbench.stages.study import derive_study_predictions
    from cxrbench.stats.engine import evaluate as evaluate_dataset

    layout = layout_of(run)
    derive_study_predictions(layout, aggregate=study_aggregate)
    files, seg_files = prediction_files(layout), segmentation_files(layout)
    if not files and not seg_files:
        load_predictions(files)  # the one-line error that says what to run
    settings = {"n_boot": n_boot, "cluster": cluster, "study_aggregate": study_aggregate}
    hashes = {layout.relative(p): file_hash(p) for p in [*files, *seg_files]}
    hash_list = [hashes[layout.relative(p)] for p in files]
    # image→report retrieval for encoders with a text tower on datasets with reports (none: key unchanged)
    pairs = retrieval_pairs(layout, files)
    home = layout.evaluation
    stage = Stage(
        layout,
        "evaluate",
        home / "manifest.json",
        settings=settings,
        extra_inputs={**hashes, **retrieval_inputs(layout, pairs)},
        seed=seed,
        what="evaluation",
    )
    # read and check every file before the stage drops the previous metrics
    stale = force or stage.up_to_date() is None
    loaded = load_predictions(files, check=True, hashes=hash_list) if stale and files else None
    seg = segmentation_metrics(seg_files, n_boot=n_boot, seed=seed, cluster=cluster) if stale and seg_files else None
    with stage.open(force=force) as todo:
        if todo:
            if loaded is None and files:
                loaded = load_predictions(files, check=True, hashes=hash_list)
            if seg is None and seg_files:
                seg = segmentation_metrics(seg_files, n_boot=n_boot, seed=seed, cluster=cluster)
            tables, warnings = [] if seg is None else [seg], []
            for dataset, preds in (loaded or {}).items():
                metrics, notes = evaluate_dataset(
                    preds, n_boot=n_boot, seed=seed, cluster=cluster, cache=layout.replicates(dataset)
                )
                tables.append(metrics.assign(dataset=dataset))
                warnings += [f"{dataset}: {n}" for n in notes]
            metrics = pd.concat(tables, ignore_index=True)
            metrics = metrics[["dataset", *[c for c in metrics.columns if c != "dataset"]]]
            stage.write_parquet(layout.metrics, metrics)
            if pairs:
                retrieval = retrieval_metrics(layout, pairs, n_boot=n_boot, seed=seed)
                if not retrieval.empty:
                    stage.write_parquet(home / RETRIEVAL, retrieval)
            stage.extra["warnings"] = warnings
            for note in warnings:
                info(f"[yellow]warning:[/] {note}")
    return stage.manifest


def load_metrics(run: RunLayout | Path) -> tuple[pd.DataFrame, Manifest]:
    """The evaluation's metrics table, or a one-line error saying to run `cxrbench evaluate`."""
    layout = layout_of(run)
    manifest = read_complete(layout, layout.evaluation / "manifest.json", what="evaluation", hint="cxrbench evaluate")
    return pd.read_parquet(layout.metrics), manifest
