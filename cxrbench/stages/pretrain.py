"""`cxrbench pretrain`: train an encoder with a self-supervised method on a prepared dataset's train split."""

from __future__ import annotations

import contextlib
import inspect
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cxrbench.console import progress
from cxrbench.data.prepared import Prepared, load_prepared
from cxrbench.data.reports import STORED, join_sections, parse_section_list
from cxrbench.engine import distributed
from cxrbench.engine.device import Device, batch_workers
from cxrbench.errors import CxrbenchError
from cxrbench.models.encoders import save_encoder
from cxrbench.models.sources import builtin_names, is_builtin, resolve_encoder
from cxrbench.pretrain import get_method
from cxrbench.pretrain._image_text import ImageTextMethod
from cxrbench.pretrain.base import pretrain_loop, train_config
from cxrbench.rundir import Manifest, RunLayout, Stage, clear_tree, is_safe_name, layout_of


def check_name(name: str) -> str:
    """A pretrain output's name: folder-safe, and not the name of a built-in encoder it would hide."""
    if not is_safe_name(name) or ":" in name:
        raise CxrbenchError(f"--name {name!r}: use letters, digits, '.', '_', '+', '=' or '-' (it names a folder)")
    if is_builtin(name):
        raise CxrbenchError(f"--name {name!r} is a built-in encoder ({', '.join(builtin_names())}); choose another")
    return name


def default_name(method: str, dataset: str) -> str:
    """The output's name without ``--name``: the method's, or ``METHOD-DATASET`` where the method's
    name is a built-in encoder (``medaug`` names the published MedAug weights)."""
    return f"{method}-{dataset}" if is_builtin(method) else method


def pretrain(
    run: RunLayout | Path,
    method: str,
    *,
    dataset: str,
    name: str | None = None,
    arch: str | None = None,
    init: str = "random",
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    seed: int = 0,
    options: dict[str, Any] | None = None,
    device: str | None = None,
    precision: str | None = None,
    num_workers: int | None = None,
    text_model: str | None = None,
    sections: str | None = None,
    force: bool = False,
) -> Manifest:
    """Pretrain ``method`` on ``dataset``'s train split; the encoder is saved as ``RUN/encoders/NAME``.

    Under ``torchrun`` (WORLD_SIZE > 1) every rank trains its part of each batch; rank 0 alone holds
    the stage lock and writes checkpoints and the encoder. The manifest returned on other ranks is
    not complete. ``num_workers``: cache-reading processes (None: 4 on CUDA, 0 on CPU).
    Image–report methods (convirt, clip, gloria, refers, convirt-sections) take ``text_model`` (a
    transformers folder or hub id, offline) and train on the report ``sections`` stored at prepare time
    (``findings,impression`` by default); their text tower is written beside the encoder.
    """
    layout = layout_of(run)
    method_name, method_cls = method, get_method(method)
    name = check_name(name or default_name(method, dataset))
    # a method that declares the ``targets`` field is trained on the labels: the stage passes the
    # label matrix per row, the number of labels and the task (not user options)
    supervised = "targets" in method_cls.fields
    texts = issubclass(method_cls, ImageTextMethod)
    # methods that reconstruct images are told their channels (CT in three windows: 3), not by the user
    shape = "channels" in inspect.signature(method_cls).parameters
    hidden = ("num_labels", "task") if supervised else ("text_model",) if texts else ("channels",) if shape else ()
    options = method_cls.options(dict(options or {}), hidden=hidden)
    if not texts and (text_model or sections):
        raise CxrbenchError(f"--text-model and --sections apply to image-report methods, not {method_name}")
    config = train_config(method_cls, {"epochs": epochs, "batch_size": batch_size, "lr": lr}, options)
    dist, device = distributed.setup(device)
    hw = Device.choose(device, precision=precision)
    workers = batch_workers(num_workers, hw)
    prepared = load_prepared(layout, dataset)
    # a method pairing images (MedAug) gets its candidates now: a dataset without them fails at once
    partners = method_cls.partner_candidates(prepared.split("train"), options, dataset=dataset)
    text_settings, text_identity = (
        (check_text(method_name, method_cls, prepared, text_model, sections)) if texts else ({}, {})
    )
    # --init an encoder of the run (a pretrain output) brings its own architecture unless --arch is given
    init_spec = resolve_encoder(init, arch=arch, run=layout.root).require()
    if not init_spec.resavable:
        raise CxrbenchError(
            f"--init {init}: pretraining from this source is not supported (its saved encoder could not be "
            "loaded again); use random, imagenet, dinov2, file:PATH or a pretrain output"
        )
    settings = {
        "method": method_name,
        "dataset": dataset,
        "arch": init_spec.arch,
        "init": init,
        "epochs": config.epochs,
        "batch_size": config.batch_size,
        "lr": config.lr,
        "options": options,
        **text_settings,
    }
    home = layout.encoder(name)
    stage = Stage(
        layout,
        "pretrain",
        home / "manifest.json",
        settings=settings,
        inputs=[prepared.manifest, *init_spec.inputs],
        extra_inputs={**init_spec.extra_inputs, **text_identity},
        seed=seed,
        what=f"pretrained encoder '{name}'",
    )
    checkpoints = layout.checkpoints("pretrain", name)
    method: Any = None

    def train():
        nonlocal method
        size = int(prepared.manifest.settings["image"]["size"])
        encoder = init_spec.build(input_size=size, seed=seed)
        torch.manual_seed(seed)  # the method's own layers (projection head) start the same in every run
        train_rows = prepared.split("train")
        if texts:
            train_rows, fields = text_fields(method_cls, train_rows, text_settings["sections"])
            method = method_cls(encoder, text_model=text_model, **options)
        else:
            fields = {f: None if f == "targets" else train_rows[f].to_numpy() for f in method_cls.fields}
        if supervised:
            fields["targets"] = prepared.targets(train_rows)
            method = method_cls(encoder, num_labels=len(prepared.labels), task=prepared.task, **options)
        elif not texts:
            method = method_cls(encoder, **options, **({"channels": prepared.channels} if shape else {}))
        rows = train_rows["cache_index"].to_numpy(dtype=np.int64)
        batch = max(min(config.batch_size, len(rows)), 1)
        per_epoch = len(rows) // batch if method.drop_last else -(-len(rows) // batch)  # as the loader batches
        steps = method.phases() * config.epochs * per_epoch
        bar = progress(steps, f"pretrain {name}") if dist.is_main else None
        with bar if bar is not None else contextlib.nullcontext(lambda n=1: None) as advance:
            return pretrain_loop(
                method,
                prepared.images(),
                rows,
                config,
                seed=seed,
                device=hw,
                checkpoint_dir=checkpoints / stage.key[:16],
                advance=advance,
                dist=dist,
                num_workers=workers,
                fields=fields,
                partners=partners,
            )

    def write(result) -> None:
        history, log = result
        for path in save_encoder(method.encoder, home, extra={"method": method_name, "dataset": dataset}):
            stage.record(path)
        if texts:
            for path in method.save_text(home):
                stage.record(path)
        stage.record(log.write(layout.training_log("pretrain", name)))
        from cxrbench.report.plots import plot_training_loss  # matplotlib only once there is a log

        title = f"pretrain {name} ({method_name}, {init_spec.arch}) on {dataset}"
        for path in plot_training_loss(log.table().to_pandas(), layout.training_plot("pretrain", name), title=title):
            stage.record(path)
        stage.extra["loss_per_epoch"] = [round(v, 6) for v in history]
        stage.extra["world_size"] = dist.world_size
        stage.extra["precision"] = hw.precision
        if partners is not None:  # how many train images had a partner other than themselves
            stage.extra["images_with_partner"] = int((partners.counts() > 0).sum())
        clear_tree(layout, checkpoints)

    distributed.stage_on_rank0(dist, stage, force=force, work=train, write=write)
    return stage.manifest


#: datasets whose adapter carries report text (for the message when a dataset has none)
REPORT_DATASETS = "indiana, mimic-cxr (with its reports folder), padchest, synthetic, or csv with a report column"


def check_text(
    method_name: str, method_cls: type, prepared: Prepared, text_model: str | None, sections: str | None
) -> tuple[dict[str, Any], dict[str, str]]:
    """The text part of an image-report method's settings (text model, sections) and the text model's
    identity; one-line errors for a missing model, unknown sections, or a dataset without reports."""
    from cxrbench.models.text import find_text_model, text_weights

    if not text_model:
        raise CxrbenchError(
            f"{method_name} needs --text-model: a transformers folder or hub id found offline, "
            "e.g. emilyalsentzer/Bio_ClinicalBERT"
        )
    folder, identity = find_text_model(text_model)
    if folder is None:
        raise CxrbenchError(text_weights(text_model).missing_message)
    if "report" not in method_cls.fields and sections is not None:
        raise CxrbenchError(f"{method_name} trains on findings and impression as separate branches; drop --sections")
    try:
        chosen = parse_section_list(sections) if "report" in method_cls.fields else STORED
    except ValueError as exc:
        raise CxrbenchError(str(exc)) from None
    samples = prepared.samples
    have = [s for s in chosen if s in samples and samples[s].notna().any()]
    if not have:
        raise CxrbenchError(
            f"{prepared.name} has no report {'/'.join(chosen)} text (prepare it again if it was prepared before "
            f"reports were stored); image-report methods need a dataset with reports: {REPORT_DATASETS}"
        )
    return {"text_model": text_model, "sections": list(chosen)}, {f"text:{k}": v for k, v in identity.items()}


def text_fields(method_cls: type, rows: Any, sections: list[str]) -> tuple[Any, dict[str, Any]]:
    """The train rows that have text in the chosen sections, and the per-row fields the method declares
    (``report``: the sections joined; ``findings``/``impression`` as stored; ``study``: integer codes)."""
    import pandas as pd

    values = {s: rows[s].tolist() if s in rows else [None] * len(rows) for s in STORED}
    joined = np.array(join_sections(values, sections), dtype=object)
    keep = joined != ""
    if not keep.any():
        raise CxrbenchError(f"no training image has report text in {', '.join(sections)}")
    rows, joined = rows[keep], joined[keep]
    fields: dict[str, Any] = {}
    for f in method_cls.fields:
        if f == "report":
            fields[f] = joined
        elif f in STORED:
            fields[f] = np.array([v if isinstance(v, str) else None for v in rows[f]], dtype=object)
        elif f == "study":
            key = rows["study_id"].where(rows["study_id"].notna(), rows["patient_id"])
            fields[f] = pd.factorize(key.astype(str))[0].astype(np.int64)
        else:
            fields[f] = rows[f].to_numpy()
    return rows, fields
