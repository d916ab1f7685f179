"""`cxrbench probe --target age|sex|race`: a linear probe of a patient attribute on frozen features,
written as ordinary predictions of ``DATASET+TARGET`` with the adaptation ``attr`` (so evaluate
gives its AUCs with bootstrap CIs and compare its Δ vs ``random`` in the bias table)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cxrbench.adapt.attributes import KIND, attribute_dataset, attribute_targets, middle_slices
from cxrbench.adapt.predictions import adaptation_name, predictions_table
from cxrbench.adapt.probe import fit_probe
from cxrbench.data.prepared import load_prepared
from cxrbench.data.splits import fraction_patients
from cxrbench.models.sources import resolve_encoder
from cxrbench.rundir import Manifest, RunLayout, Stage, layout_of, manifest_path_for
from cxrbench.stages.finetune import check_fraction
from cxrbench.stages.probe import DEFAULT_CS, feature_lookup, features

#: The features of a CT attribute probe's rows (``features/DATASET/ENCODER@attribute-slices.parquet``).
PART = "attribute-slices"


def attribute_probe(
    run: RunLayout | Path,
    *,
    dataset: str,
    encoder: str,
    target: str,
    arch: str | None = None,
    fraction: float = 1.0,
    seed: int = 0,
    Cs: tuple[float, ...] = DEFAULT_CS,
    max_iter: int = 200,
    input_size: int | None = None,
    device: str | None = None,
    force: bool = False,
) -> Manifest:
    """Fit the attribute probe on train (for CT, each study's slice of largest body cross-section),
    choose C on val, predict val and test."""
    layout = layout_of(run)
    check_fraction(fraction)
    prepared = load_prepared(layout, dataset)
    attribute_targets(prepared.samples, target, dataset=dataset)  # refuse before any work
    rows = middle_slices(prepared.samples, prepared.images() if "series_id" in prepared.samples else None)
    labels, targets, task = attribute_targets(rows, target, dataset=dataset)
    spec = resolve_encoder(encoder, arch=arch, run=layout.root).require()
    input_size = input_size or int(prepared.manifest.settings["image"]["size"])
    some = len(rows) < len(prepared.samples)  # CT: features of each study's chosen slice only
    feat_manifest, feat_path = features(
        layout, prepared, spec, input_size=input_size, device=device, force=force,
        rows=rows if some else None, part=PART if some else None,
    )  # fmt: skip
    adaptation = adaptation_name(KIND, fraction=fraction, seed=seed)
    out = layout.predictions(attribute_dataset(dataset, target), spec.folder, adaptation)
    settings: dict[str, Any] = {"target": target, "fraction": fraction, "Cs": list(Cs), "max_iter": max_iter}
    stage = Stage(
        layout,
        "probe",
        manifest_path_for(out),
        settings=settings,
        inputs=[prepared.manifest, feat_manifest],
        seed=seed,
        what=f"{target} probe predictions {spec.folder}/{adaptation} on {dataset}",
    )
    with stage.open(force=force) as todo:
        if todo:
            split = rows["split"].to_numpy()
            train = split == "train"
            if fraction < 1.0:
                keep = fraction_patients(rows.loc[train, "patient_id"], fraction, seed=seed)
                train &= rows["patient_id"].isin(keep).to_numpy()
            val, scored = split == "val", np.isin(split, ["val", "test"])
            x = feature_lookup(feat_path)(rows)
            model = fit_probe(
                x[train], targets[train], x[val], targets[val], task=task, Cs=Cs, max_iter=max_iter, device=device
            )
            table = predictions_table(rows[scored], labels, targets[scored], model.predict_proba(x[scored]))
            stage.write_parquet(out, table)
            stage.extra["chosen_C"] = dict(zip(labels, map(float, np.atleast_1d(model.C_)), strict=True))
            stage.extra["n_train"] = int(train.sum())
    return stage.manifest
