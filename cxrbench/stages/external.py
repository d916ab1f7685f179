"""External validation: a model trained on one dataset scored on another dataset's images.

Training, model selection and the Youden threshold use the training dataset only: each external
predictions file holds the training dataset's val rows (for the threshold) and the external
dataset's test split (or all of it) as ``test``, on the labels the two share, named by finding.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from cxrbench.adapt.predictions import predictions_table
from cxrbench.console import info
from cxrbench.data.harmonise import SharedLabels, shared_labels
from cxrbench.data.prepared import Prepared, load_prepared
from cxrbench.data.samples import LABEL_PREFIX
from cxrbench.errors import CxrbenchError
from cxrbench.rundir import Manifest, RunLayout, Stage, manifest_path_for, read_complete
from cxrbench.stages.prepare import adapter_of

#: which rows of an external dataset are scored: its test split, or every image
TEST_SPLITS = ("test", "all")


def check_external(
    train: str, tests: Sequence[str], test_split: str, layout: RunLayout | None = None
) -> tuple[str, ...]:
    """The external datasets, checked before any work: known split choice, no repeats, not ``train``,
    and (with ``layout``) each one prepared."""
    if test_split not in TEST_SPLITS:
        raise CxrbenchError(f"--test-split {test_split!r}: choose one of {', '.join(TEST_SPLITS)}")
    tests = tuple(tests)
    if train in tests:
        raise CxrbenchError(f"--test-dataset {train}: it is the training dataset (its test split is always scored)")
    repeated = sorted({t for t in tests if tests.count(t) > 1})
    if repeated:
        raise CxrbenchError(f"--test-dataset {repeated[0]} is given twice")
    from cxrbench.data.adapters import adapter_names

    for test in tests if layout is not None else ():
        hint = f"cxrbench prepare {test}" if test in adapter_names() else f"cxrbench prepare DATASET --name {test}"
        read_complete(layout, layout.prepared(test) / "manifest.json", what=f"prepared dataset '{test}'", hint=hint)
    return tests


@dataclass
class ExternalSet:
    """One external test: its prepared dataset, the labels shared with the training dataset, the rows scored."""

    prepared: Prepared
    shared: SharedLabels
    rows: pd.DataFrame
    test_split: str

    @property
    def name(self) -> str:
        return self.prepared.name

    def settings(self) -> dict[str, Any]:
        return {"test_dataset": self.name, "test_split": self.test_split, "labels": self.shared.to_dict()}


def external_set(layout: RunLayout, train: Prepared, test: str, test_split: str) -> ExternalSet:
    """Load ``test`` and match its labels with ``train``'s; one-line errors when nothing is shared."""
    prepared = load_prepared(layout, test)
    if "multiclass" in (train.task, prepared.task):
        raise CxrbenchError(f"{train.name} → {test}: external validation needs multi-label datasets")
    shared = shared_labels(
        (adapter_of(train.manifest), train.labels),
        (adapter_of(prepared.manifest), prepared.labels),
        train_name=train.name,
        test_name=test,
    )
    if not shared.pairs:
        raise CxrbenchError(
            f"{train.name} and {test} share no label (see `cxrbench labels --dataset {train.name} --dataset {test}`)"
        )
    # only the chosen rows are read: the external val (and train) split never reaches selection
    rows = prepared.samples if test_split == "all" else prepared.split("test")
    if rows.empty:
        raise CxrbenchError(f"{test} has no {test_split} images; use --test-split all for a set used only externally")
    info(
        f"{train.name} → {test}: {len(shared.pairs)} shared label(s) on {len(rows)} {test_split} image(s)"
        + (f"; only in {train.name}: {', '.join(shared.only_train)}" if shared.only_train else "")
        + (f"; only in {test}: {', '.join(shared.only_test)}" if shared.only_test else "")
    )
    return ExternalSet(prepared, shared, rows, test_split)


def external_table(train: Prepared, val_scores: np.ndarray, ext: ExternalSet, ext_scores: np.ndarray) -> pa.Table:
    """The training dataset's val rows and the external rows (as ``test``), shared labels by finding.

    ``val_scores`` / ``ext_scores`` hold one column per training label.
    """
    keys = [key for key, _, _ in ext.shared.pairs]
    columns = [train.labels.index(label) for _, label, _ in ext.shared.pairs]
    val = train.split("val")
    val_table = predictions_table(val, keys, train.targets(val)[:, columns], val_scores[:, columns])
    rows = ext.rows.assign(split="test")
    y = rows[[LABEL_PREFIX + label for _, _, label in ext.shared.pairs]].to_numpy(dtype=np.float32)
    return pa.concat_tables([val_table, predictions_table(rows, keys, y, ext_scores[:, columns])])


def _stage(
    layout: RunLayout,
    kind: str,
    train: Prepared,
    ext: ExternalSet,
    folder: str,
    adaptation: str,
    *,
    settings: dict[str, Any],
    inputs: list[Manifest],
    extra_inputs: dict[str, str] | None,
    seed: int,
) -> tuple[Stage, Path]:
    out = layout.external_predictions(ext.name, folder, adaptation, train.name)
    stage = Stage(
        layout,
        f"{kind}-external",
        manifest_path_for(out),
        settings={**settings, **ext.settings()},
        inputs=[*inputs, ext.prepared.manifest],
        extra_inputs=extra_inputs,
        seed=seed,
        what=f"{kind} predictions {folder}/{adaptation} {train.name} → {ext.name}",
    )
    return stage, out


def probe_external(
    layout: RunLayout,
    train: Prepared,
    spec,
    *,
    test_datasets: Sequence[str],
    test_split: str,
    adaptation: str,
    inputs: list[Manifest],
    settings: dict[str, Any],
    x_train: Callable[[pd.DataFrame], np.ndarray],
    input_size: int,
    seed: int,
    device: str | None,
    force: bool,
) -> list[Manifest]:
    """Per external dataset: the probe fitted on the shared labels of ``train`` (C chosen on its val),
    scored on the external rows; features of the external images come from the same encoder."""
    from cxrbench.stages.probe import feature_lookup, features, fit_on_train

    done = []
    for test in test_datasets:
        ext = external_set(layout, train, test, test_split)
        feat_manifest, feat_path = features(layout, ext.prepared, spec, input_size=input_size, device=device)
        stage, out = _stage(
            layout,
            "probe",
            train,
            ext,
            spec.folder,
            adaptation,
            settings=settings,
            inputs=[*inputs, feat_manifest],
            extra_inputs=None,
            seed=seed,
        )
        with stage.open(force=force) as todo:
            if todo:
                columns = [train.labels.index(label) for _, label, _ in ext.shared.pairs]
                model, _ = fit_on_train(
                    train,
                    x_train,
                    fraction=settings["fraction"],
                    seed=seed,
                    Cs=tuple(settings["Cs"]),
                    max_iter=settings["max_iter"],
                    device=device,
                    columns=columns,
                )
                # scores in the training label layout, so external_table picks the shared columns
                val = train.split("val")
                x_ext = feature_lookup(feat_path)
                val_scores = np.zeros((len(val), len(train.labels)), np.float32)
                ext_scores = np.zeros((len(ext.rows), len(train.labels)), np.float32)
                val_scores[:, columns] = model.predict_proba(x_train(val))
                ext_scores[:, columns] = model.predict_proba(x_ext(ext.rows))
                stage.write_parquet(out, external_table(train, val_scores, ext, ext_scores))
                stage.extra["chosen_C"] = {
                    key: float(c) for (key, _, _), c in zip(ext.shared.pairs, np.atleast_1d(model.C_), strict=True)
                }
        done.append(stage.manifest)
    return done


def finetune_external(
    layout: RunLayout,
    train: Prepared,
    spec,
    *,
    test_datasets: Sequence[str],
    test_split: str,
    adaptation: str,
    internal: Manifest,
    input_size: int,
    seed: int,
    hw,
    workers: int,
    force: bool,
) -> list[Manifest]:
    """Per external dataset: the finetuned weights (selected on ``train``'s val) scored on the
    external rows; the heads of the shared labels are used, the others listed."""
    import torch
    from safetensors.torch import load_file

    from cxrbench.adapt.finetune import Classifier

    weights = layout.finetuned(train.name, spec.folder, adaptation)
    done = []
    model, val_scores = None, None
    for test in test_datasets:
        ext = external_set(layout, train, test, test_split)
        stage, out = _stage(
            layout,
            "finetune",
            train,
            ext,
            spec.folder,
            adaptation,
            settings={**internal.settings, "input_size": input_size},
            inputs=[internal],
            extra_inputs=spec.extra_inputs,
            seed=seed,
        )
        with stage.open(force=force) as todo:
            if todo:
                if model is None:
                    torch.manual_seed(seed)
                    model = Classifier(spec.build(input_size=input_size, seed=seed), len(train.labels))
                    model.load_state_dict(load_file(str(weights)))
                    model = hw.prepare(model)
                    val_scores = _predict(model, train, train.split("val"), hw=hw, workers=workers)
                ext_scores = _predict(model, ext.prepared, ext.rows, hw=hw, workers=workers)
                stage.write_parquet(out, external_table(train, val_scores, ext, ext_scores))
        done.append(stage.manifest)
    return done


def _predict(model, prepared: Prepared, frame: pd.DataFrame, *, hw, workers: int) -> np.ndarray:
    """Sigmoid scores ``[len(frame), n_training_labels]`` of the finetuned model on ``frame``'s images."""
    from cxrbench.adapt.finetune import predict

    rows = frame["cache_index"].to_numpy(dtype=np.int64)
    return predict(model, prepared.images(), rows, task="multilabel", device=hw, num_workers=workers)


def external_manifests(layout: RunLayout, internal: Manifest, tests: Sequence[str]) -> list[Manifest]:
    """The finished external manifests beside an internal predictions manifest (for the CLI's report)."""
    found = []
    for rel in internal.outputs:
        path = layout.inside(rel)
        if path.parts[-4:-3] != ("predictions",) or path.suffix != ".parquet":
            continue
        train, folder, adaptation = path.parent.parent.name, path.parent.name, path.stem
        for test in tests:
            manifest = Manifest.read(manifest_path_for(layout.external_predictions(test, folder, adaptation, train)))
            if manifest is not None and manifest.complete:
                found.append(manifest)
    return found


def internal_vs_external(
    files: Sequence[Path],
    loaded: dict[str, Any],
    *,
    n_boot: int,
    seed: int,
    cluster: str = "image",
    ci: float = 0.95,
) -> pd.DataFrame:
    """One row per external predictions file: the same model's mean AUC on its own test split (the
    shared labels) beside the external one, and the drop, with bootstrap CIs (``stats.shift``;
    ``cluster="patient"`` resamples patients).

    ``loaded`` is ``load_predictions``' result (groups ``TRAIN`` and ``TRAIN → TEST``); files whose
    internal twin or label mapping (manifest) is missing are left out with a message.
    """
    from cxrbench.adapt.predictions import group_name, parse_adaptation, split_external
    from cxrbench.stats.shift import auc_shift

    def frame_of(group: str) -> pd.DataFrame | None:
        value = loaded.get(group)
        return getattr(value, "frame", value)

    def matrices(frame: pd.DataFrame, model: tuple, labels: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        encoder, kind, fraction, model_seed = model
        sel = frame[
            (frame["encoder"].astype(str) == encoder)
            & (frame["adaptation"].astype(str) == kind)
            & np.isclose(frame["fraction"].to_numpy(dtype=float), fraction)
            & (frame["seed"].to_numpy() == model_seed)
            & (frame["split"].astype(str) == "test")
        ]
        sel = sel.assign(label=sel["label"].astype(str), sample_id=sel["sample_id"].astype(str))
        y = sel.pivot(index="sample_id", columns="label", values="y_true").reindex(columns=labels)
        s = sel.pivot(index="sample_id", columns="label", values="y_score").reindex(columns=labels)
        patients = sel.groupby("sample_id")["patient_id"].first().reindex(y.index).astype(str)
        return y.to_numpy(dtype=float), s.to_numpy(dtype=float), patients.to_numpy()

    rows = []
    for path in files:
        stem, train = split_external(path.stem)
        if train is None:
            continue
        test = path.parent.parent.name
        manifest = Manifest.read(manifest_path_for(path))
        pairs = ((manifest.settings.get("labels") or {}).get("pairs") if manifest is not None else None) or []
        internal = frame_of(train)
        if not pairs or internal is None:
            why = "no label mapping in its manifest" if not pairs else f"no predictions on {train}'s own test split"
            info(f"[yellow]internal vs external: leaving out {path.name} ({train} → {test}): {why}[/]")
            continue
        kind, fraction, model_seed = parse_adaptation(stem)
        model = (path.parent.name, kind, fraction, model_seed)
        Yi, Si, Pi = matrices(internal, model, [p[1] for p in pairs])
        Ye, Se, Pe = matrices(frame_of(group_name(test, train)), model, [p[0] for p in pairs])
        if Yi.shape[0] == 0:
            info(f"[yellow]internal vs external: {path.parent.name}/{stem} has no predictions on {train}[/]")
            continue
        clusters = (Pi, Pe) if cluster == "patient" else (None, None)
        shift = auc_shift((Yi, Si), (Ye, Se), n_boot=n_boot, seed=seed, ci=ci, clusters=clusters)
        rows.append(
            {
                "train": train,
                "test": test,
                "encoder": model[0],
                "adaptation": kind,
                "fraction": fraction,
                "seed": model_seed,
                "n_labels": len(shift.labels),
                "internal_auc": shift.internal,
                "internal_ci_low": shift.internal_ci[0],
                "internal_ci_high": shift.internal_ci[1],
                "external_auc": shift.external,
                "external_ci_low": shift.external_ci[0],
                "external_ci_high": shift.external_ci[1],
                "drop": shift.drop,
                "drop_ci_low": shift.drop_ci[0],
                "drop_ci_high": shift.drop_ci[1],
            }
        )
    return pd.DataFrame(rows)


def external_human(view: pd.DataFrame) -> pd.DataFrame:
    """The internal-vs-external view as a table of text cells: AUC [95% CI] and drop [95% CI]."""
    from cxrbench.adapt.predictions import ARROW
    from cxrbench.report.tables import fmt_ci

    out = pd.DataFrame(
        {
            "train → test": view["train"] + ARROW + view["test"],
            "encoder": view["encoder"],
            "adaptation": view["adaptation"],
            "fraction": view["fraction"].map(lambda f: f"{f:g}"),
            "seed": view["seed"].astype(str),
            "labels": view["n_labels"].astype(str),
            "internal AUC": [fmt_ci(*r) for r in view[["internal_auc", "internal_ci_low", "internal_ci_high"]].values],
            "external AUC": [fmt_ci(*r) for r in view[["external_auc", "external_ci_low", "external_ci_high"]].values],
            "drop": [fmt_ci(*r) for r in view[["drop", "drop_ci_low", "drop_ci_high"]].values],
        }
    )
    order = view.assign(_group=out["train → test"]).sort_values(
        ["_group", "adaptation", "encoder", "fraction", "seed"], kind="mergesort"
    )
    return out.loc[order.index].reset_index(drop=True)
