"""`cxrbench segment`: a U-Net whose down branch is the encoder, trained on a prepared dataset with
masks; Dice and IoU per case of the val and test splits, and the per-epoch curve."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch
from safetensors.torch import save_file

from cxrbench.adapt.predictions import adaptation_name
from cxrbench.adapt.segment import UNet, case_ids, case_scores, segment_loop
from cxrbench.console import progress
from cxrbench.data.prepared import load_prepared
from cxrbench.data.splits import fraction_patients
from cxrbench.engine.device import Device, batch_workers
from cxrbench.engine.loop import TrainConfig
from cxrbench.errors import CxrbenchError
from cxrbench.models.sources import resolve_encoder
from cxrbench.rundir import Manifest, RunLayout, Stage, atomic_path, clear_tree, layout_of, manifest_path_for
from cxrbench.stages.finetune import check_fraction

#: Per-case table columns (one row per case of the val and test splits).
CASE_COLUMNS = ("case_id", "patient_id", "split", "tp", "fp", "fn", "dice", "iou")


def segment(
    run: RunLayout | Path,
    *,
    dataset: str,
    encoder: str,
    arch: str | None = None,
    fraction: float = 1.0,
    seed: int = 0,
    epochs: int = 30,
    batch_size: int = 16,
    lr: float = 1e-3,
    width: int = 32,
    augment: bool = True,
    input_size: int | None = None,
    checkpoint_every: int = 0,
    num_workers: int | None = None,
    device: str | None = None,
    precision: str | None = None,
    force: bool = False,
) -> Manifest:
    """Train a U-Net on ``dataset``'s masks with ``encoder`` as its down branch; write the per-case
    Dice/IoU of val and test from the epoch with the best validation Dice."""
    layout = layout_of(run)
    check_fraction(fraction)
    if epochs < 1 or batch_size < 1 or lr <= 0 or width < 4:
        raise CxrbenchError("segment: epochs, batch size and lr must be positive and width at least 4")
    prepared = load_prepared(layout, dataset)
    masks = prepared.masks()
    spec = resolve_encoder(encoder, arch=arch, run=layout.root).require()
    input_size = input_size or int(prepared.manifest.settings["image"]["size"])
    adaptation = adaptation_name("segment", fraction=fraction, seed=seed)
    out = layout.segmentation(dataset, spec.folder, adaptation)
    config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, optimizer="adamw", weight_decay=1e-4)
    settings = {
        **spec.settings,
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "width": width,
        "augment": augment,
        "fraction": fraction,
        "input_size": input_size,
    }
    stage = Stage(
        layout,
        "segment",
        manifest_path_for(out),
        settings=settings,
        inputs=[prepared.manifest, *spec.inputs],
        extra_inputs=spec.extra_inputs,
        seed=seed,
        what=f"segmentation {spec.folder}/{adaptation} on {dataset}",
    )
    hw = Device.choose(device, precision=precision)
    workers = batch_workers(num_workers, hw)
    checkpoints = layout.checkpoints("segment", dataset, spec.folder, adaptation)
    with stage.open(force=force) as todo:
        if not todo:
            return stage.manifest
        train = prepared.split("train")
        if fraction < 1.0:
            train = train[train["patient_id"].isin(fraction_patients(train["patient_id"], fraction, seed=seed))]
        val, test = prepared.split("val"), prepared.split("test")
        torch.manual_seed(seed)
        model = UNet(spec.build(input_size=input_size, seed=seed), width=width)
        images = prepared.images()
        steps = epochs * -(-len(train) // min(batch_size, max(len(train), 1)))
        with progress(steps, f"segment {spec.folder}/{dataset}") as advance:
            best, curve, log = segment_loop(
                model,
                images,
                masks,
                train,
                val,
                test,
                config,
                seed=seed,
                device=hw,
                checkpoint_dir=checkpoints / stage.key[:16],
                augment=augment,
                checkpoint_every=checkpoint_every,
                advance=advance,
                num_workers=workers,
            )
        model.load_state_dict(best)
        tables = []
        for name, frame in (("val", val), ("test", test)):
            if len(frame):
                scores = case_scores(model, images, masks, frame, device=hw, num_workers=workers)
                patients = frame.groupby(case_ids(frame), sort=False)["patient_id"].first()
                tables.append(
                    scores.rename(columns={"case": "case_id"}).assign(
                        patient_id=patients.loc[scores["case"]].to_numpy(), split=name
                    )
                )
        stage.write_parquet(out, pd.concat(tables, ignore_index=True)[list(CASE_COLUMNS)])
        weights = layout.finetuned(dataset, spec.folder, adaptation)
        with atomic_path(weights) as tmp:
            save_file({k: v.contiguous() for k, v in best.items()}, str(tmp))
        stage.record(weights)
        stage.record(log.write(layout.training_log("segment", dataset, spec.folder, adaptation)))
        stage.extra["curve"] = curve
        stage.extra["n_train"] = len(train)
        stage.extra["precision"] = hw.precision
        clear_tree(layout, checkpoints)
    return stage.manifest
