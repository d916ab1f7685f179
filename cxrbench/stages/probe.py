"""`cxrbench probe`: logistic regression on frozen features (cached per encoder and dataset), or zero-shot
scoring by prompts for encoders with a text tower (``--adaptation zeroshot``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow.parquet as pq

from cxrbench.adapt.features import extract_features, features_table, read_features
from cxrbench.adapt.predictions import adaptation_name, predictions_table
from cxrbench.adapt.probe import fit_probe
from cxrbench.console import progress
from cxrbench.data.prepared import Prepared, load_prepared
from cxrbench.data.splits import fraction_patients
from cxrbench.engine.device import Device
from cxrbench.models.sources import EncoderSpec, resolve_encoder
from cxrbench.rundir import Manifest, RunLayout, Stage, json_hash, layout_of, manifest_path_for
from cxrbench.stages.finetune import check_fraction

if TYPE_CHECKING:
    import pandas as pd

DEFAULT_CS = (1e-3, 1e-2, 1e-1, 1.0, 10.0)


def features(
    run: RunLayout | Path,
    prepared: Prepared,
    spec: EncoderSpec,
    *,
    input_size: int | None,
    batch_size: int = 64,
    device: str | None = None,
    force: bool = False,
    rows: pd.DataFrame | None = None,
    part: str | None = None,
) -> tuple[Manifest, Path]:
    """Frozen features of every image, cached at ``RUN/features/DATASET/ENCODER.parquet``; with
    ``rows`` (some of the samples, named ``part``) of those only, at ``ENCODER@PART.parquet``: CT
    attribute probes need one slice a study, not every slice of every series. Features of every
    image already there (and up to date) serve ``rows`` when theirs were never extracted."""
    layout = layout_of(run)
    if (rows is None) != (part is None):
        raise ValueError("features: rows and part go together")
    stage, path = _features_stage(layout, prepared, spec, input_size, rows, part)
    if rows is not None and not force and not stage.manifest_path.exists():
        every, every_path = _features_stage(layout, prepared, spec, input_size, None, None)
        if (manifest := every.up_to_date()) is not None:
            return manifest, every_path
    samples = prepared.samples if rows is None else rows
    with stage.open(force=force) as todo:
        if todo:
            encoder = spec.build(input_size=input_size, seed=0)
            indices = samples["cache_index"].to_numpy(dtype=np.int64)
            with progress(len(indices), f"features {spec.folder}/{prepared.name}") as advance:
                feats = extract_features(
                    encoder,
                    prepared.images(),
                    indices,
                    batch_size=batch_size,
                    device=Device.choose(device),
                    advance=advance,
                )
            stage.write_parquet(path, features_table(samples["sample_id"].tolist(), feats))
    return stage.manifest, path


def _features_stage(
    layout: RunLayout,
    prepared: Prepared,
    spec: EncoderSpec,
    input_size: int | None,
    rows: pd.DataFrame | None,
    part: str | None,
) -> tuple[Stage, Path]:
    """The features stage of every image (``rows`` None) or of ``rows``, and its output path: features
    at another input size than the dataset's own (an external test set of a dataset prepared at
    another size) are kept beside those at its own (``ENCODER@64px``), not written over them."""
    name = part
    if input_size is not None and input_size != int(prepared.manifest.settings["image"]["size"]):
        name = f"{part}-{input_size}px" if part else f"{input_size}px"
    path = layout.features(prepared.name, spec.folder, name)
    settings = {**spec.settings, "input_size": input_size}
    if rows is not None:  # which rows, by content: another selection is another output
        settings["rows"] = {"part": part, "samples": json_hash(rows["sample_id"].tolist())}
    stage = Stage(
        layout,
        "features",
        manifest_path_for(path),
        settings=settings,
        inputs=[prepared.manifest, *spec.inputs],
        extra_inputs=spec.extra_inputs,
        what=f"features of {spec.folder} on {prepared.name}",
    )
    return stage, path


def probe(
    run: RunLayout | Path,
    *,
    dataset: str,
    encoder: str,
    arch: str | None = None,
    fraction: float = 1.0,
    seed: int = 0,
    Cs: tuple[float, ...] = DEFAULT_CS,
    max_iter: int = 200,
    input_size: int | None = None,
    device: str | None = None,
    test_datasets: tuple[str, ...] = (),
    test_split: str = "test",
    force: bool = False,
) -> Manifest:
    """Fit the probe on train (or a label fraction of it), choose C on val, predict val and test;
    with ``test_datasets`` also each one's ``test_split`` (external validation, shared labels)."""
    layout = layout_of(run)
    check_fraction(fraction)
    if test_datasets:
        from cxrbench.stages.external import check_external

        test_datasets = check_external(dataset, test_datasets, test_split, layout)
    prepared = load_prepared(layout, dataset)
    spec = resolve_encoder(encoder, arch=arch, run=layout.root).require()
    input_size = input_size or int(prepared.manifest.settings["image"]["size"])
    feat_manifest, feat_path = features(layout, prepared, spec, input_size=input_size, device=device, force=force)
    adaptation = adaptation_name("probe", fraction=fraction, seed=seed)
    out = layout.predictions(dataset, spec.folder, adaptation)
    settings: dict[str, Any] = {"fraction": fraction, "Cs": list(Cs), "max_iter": max_iter}
    stage = Stage(
        layout,
        "probe",
        manifest_path_for(out),
        settings=settings,
        inputs=[prepared.manifest, feat_manifest],
        seed=seed,
        what=f"probe predictions {spec.folder}/{adaptation} on {dataset}",
    )
    with stage.open(force=force) as todo:
        if todo:
            x = feature_lookup(feat_path)
            model, train = fit_on_train(
                prepared, x, fraction=fraction, seed=seed, Cs=Cs, max_iter=max_iter, device=device
            )
            samples = prepared.samples
            scored = samples[samples["split"].isin(["val", "test"])]
            table = predictions_table(scored, prepared.labels, prepared.targets(scored), model.predict_proba(x(scored)))
            stage.write_parquet(out, table)
            stage.extra["chosen_C"] = dict(zip(prepared.labels, map(float, np.atleast_1d(model.C_)), strict=True))
            stage.extra["n_train"] = len(train)
    if test_datasets:
        from cxrbench.stages.external import probe_external

        probe_external(
            layout,
            prepared,
            spec,
            test_datasets=test_datasets,
            test_split=test_split,
            adaptation=adaptation,
            inputs=[prepared.manifest, feat_manifest],
            settings=settings,
            x_train=feature_lookup(feat_path),
            input_size=input_size,
            seed=seed,
            device=device,
            force=force,
        )
    return stage.manifest


def feature_lookup(path: Path):
    """A function from a samples frame to its rows of the cached features at ``path``."""
    ids, feats = read_features(pq.read_table(path))
    by_id = {sample: i for i, sample in enumerate(ids)}

    def x(frame) -> np.ndarray:
        return feats[[by_id[s] for s in frame["sample_id"]]]

    return x


def fit_on_train(
    prepared: Prepared,
    x,
    *,
    fraction: float,
    seed: int,
    Cs: tuple[float, ...],
    max_iter: int,
    device: str | None,
    columns: list[int] | None = None,
):
    """(probe, train rows): fitted on train (or a label fraction of its patients), C chosen on val;
    ``columns``: indices of the labels to fit (default: all)."""
    train = prepared.split("train")
    if fraction < 1.0:
        keep = fraction_patients(train["patient_id"], fraction, seed=seed)
        train = train[train["patient_id"].isin(keep)]
    val = prepared.split("val")
    cols = slice(None) if columns is None else list(columns)
    model = fit_probe(
        x(train),
        prepared.targets(train)[:, cols],
        x(val),
        prepared.targets(val)[:, cols],
        task=prepared.task,
        Cs=Cs,
        max_iter=max_iter,
        device=device,
    )
    return model, train


def zeroshot(
    run: RunLayout | Path,
    *,
    dataset: str,
    encoder: str,
    arch: str | None = None,
    prompts: Path | None = None,
    input_size: int | None = None,
    device: str | None = None,
    force: bool = False,
) -> Manifest:
    """Score val and test by image–prompt similarity (no labels used); written as the ``zeroshot`` adaptation."""
    from cxrbench.adapt.zeroshot import load_prompts, text_tower, zeroshot_scores

    layout = layout_of(run)
    prepared = load_prepared(layout, dataset)
    spec = resolve_encoder(encoder, arch=arch, run=layout.root).require()
    chosen = load_prompts(prepared.labels, prompts)
    tower = text_tower(spec)
    input_size = input_size or int(prepared.manifest.settings["image"]["size"])
    feat_manifest, feat_path = features(layout, prepared, spec, input_size=input_size, device=device, force=force)
    out = layout.predictions(dataset, spec.folder, "zeroshot")
    settings: dict[str, Any] = {"adaptation": "zeroshot", "positive": chosen.positive, "negative": chosen.negative}
    stage = Stage(
        layout,
        "probe",
        manifest_path_for(out),
        settings=settings,
        inputs=[prepared.manifest, feat_manifest],
        extra_inputs=spec.extra_inputs,
        what=f"zero-shot predictions {spec.folder} on {dataset}",
    )
    with stage.open(force=force) as todo:
        if todo:
            scored = prepared.samples[prepared.samples["split"].isin(["val", "test"])]
            scores = zeroshot_scores(tower, feature_lookup(feat_path)(scored), prepared.labels, chosen)
            stage.write_parquet(out, predictions_table(scored, prepared.labels, prepared.targets(scored), scores))
    return stage.manifest
