"""`cxrbench finetune`: train encoder + head on a prepared dataset, predict val and test."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from cxrbench.adapt.finetune import Classifier, Recipe, finetune_loop, predict, recipe
from cxrbench.adapt.predictions import adaptation_name, predictions_table
from cxrbench.console import progress
from cxrbench.data.prepared import Prepared, load_prepared
from cxrbench.data.splits import fraction_patients
from cxrbench.engine import distributed
from cxrbench.engine.device import Device, batch_workers
from cxrbench.errors import CxrbenchError
from cxrbench.models.sources import EncoderSpec, resolve_encoder
from cxrbench.rundir import Manifest, RunLayout, Stage, atomic_path, clear_tree, layout_of, manifest_path_for


def finetune(
    run: RunLayout | Path,
    *,
    dataset: str,
    encoder: str,
    arch: str | None = None,
    recipe_name: str = "ssl-cxr",
    overrides: dict[str, Any] | None = None,
    fraction: float = 1.0,
    seed: int = 0,
    input_size: int | None = None,
    checkpoint_every: int = 0,
    num_workers: int | None = None,
    device: str | None = None,
    precision: str | None = None,
    test_datasets: tuple[str, ...] = (),
    test_split: str = "test",
    force: bool = False,
) -> Manifest:
    """Finetune ``encoder`` on ``dataset``; predictions from the epoch with the best val mean AUC
    (with ``test_datasets``, also on each one's ``test_split``: external validation).

    Under ``torchrun`` (WORLD_SIZE > 1) every rank trains its part of each batch; rank 0 alone holds
    the stage lock and writes checkpoints, predictions, weights and the manifest, and tells the
    other ranks whether there is anything to do. ``num_workers``: cache-reading processes (None: 4
    on CUDA, 0 on CPU). The manifest returned on ranks other than 0 is None.
    """
    layout = layout_of(run)
    chosen = recipe(recipe_name, **(overrides or {}))
    if checkpoint_every < 0:
        raise CxrbenchError(f"--checkpoint-every {checkpoint_every}: must be >= 0")
    check_fraction(fraction)
    if test_datasets:
        from cxrbench.stages.external import check_external

        test_datasets = check_external(dataset, test_datasets, test_split, layout)
    dist, device = distributed.setup(device)
    prepared = load_prepared(layout, dataset)
    spec = resolve_encoder(encoder, arch=arch, run=layout.root).require()
    input_size = input_size or int(prepared.manifest.settings["image"]["size"])
    adaptation = adaptation_name("finetune", fraction=fraction, seed=seed)
    out = layout.predictions(dataset, spec.folder, adaptation)
    settings = {
        **spec.settings,
        "recipe": recipe_name,
        # selection on AUC (the default) leaves the key of runs made before --select unchanged
        **{k: v for k, v in chosen.to_dict().items() if (k, v) != ("select", "auc")},
        "fraction": fraction,
        "input_size": input_size,
    }
    stage = Stage(
        layout,
        "finetune",
        manifest_path_for(out),
        settings=settings,
        inputs=[prepared.manifest, *spec.inputs],
        extra_inputs=spec.extra_inputs,
        seed=seed,
        what=f"finetune predictions {spec.folder}/{adaptation} on {dataset}",
    )
    hw = Device.choose(device, precision=precision)
    job = _Job(
        layout,
        dataset,
        spec,
        adaptation,
        out,
        chosen,
        fraction,
        seed,
        input_size,
        checkpoint_every,
        batch_workers(num_workers, hw),
        hw,
        prepared,
        dist,
    )
    distributed.stage_on_rank0(
        dist, stage, force=force, work=lambda: job.train(stage), write=lambda result: job.write(stage, *result)
    )
    if test_datasets and dist.is_main:
        from cxrbench.stages.external import finetune_external

        finetune_external(
            layout,
            prepared,
            spec,
            test_datasets=test_datasets,
            test_split=test_split,
            adaptation=adaptation,
            internal=stage.manifest,
            input_size=input_size,
            seed=seed,
            hw=hw,
            workers=job.workers,
            force=force,
        )
    return stage.manifest


def check_fraction(fraction: float) -> float:
    """A label fraction in (0, 1], checked before any work or invalidation."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
        raise CxrbenchError(f"--fraction {fraction!r}: must be a number in (0, 1]")
    return float(fraction)


@dataclass
class _Job:
    """One finetuning run's inputs, shared by the rank that writes and the ranks that only train."""

    layout: RunLayout
    dataset: str
    spec: EncoderSpec
    adaptation: str
    out: Path
    chosen: Recipe
    fraction: float
    seed: int
    input_size: int
    checkpoint_every: int
    workers: int
    hw: Device
    prepared: Prepared
    dist: distributed.Dist
    model: Classifier | None = None
    train_frame: Any = None

    @staticmethod
    def rows(frame) -> np.ndarray:
        return frame["cache_index"].to_numpy(dtype=np.int64)

    @property
    def checkpoints(self) -> Path:
        return self.layout.checkpoints("finetune", self.dataset, self.spec.folder, self.adaptation)

    def train(self, stage: Stage):
        """Run the loop (resuming from rank 0's checkpoint); rank 0 gets the selected weights."""
        prepared, chosen = self.prepared, self.chosen
        train = prepared.split("train")
        if self.fraction < 1.0:
            train = train[
                train["patient_id"].isin(fraction_patients(train["patient_id"], self.fraction, seed=self.seed))
            ]
        self.train_frame = train
        val = prepared.split("val")
        torch.manual_seed(self.seed)
        self.model = Classifier(self.spec.build(input_size=self.input_size, seed=self.seed), len(prepared.labels))
        steps = chosen.epochs * -(-len(train) // min(chosen.batch_size, max(len(train), 1)))
        bar = progress(steps, f"finetune {self.spec.folder}/{self.dataset}") if self.dist.is_main else None
        with bar if bar is not None else contextlib.nullcontext(lambda n=1: None) as advance:
            return finetune_loop(
                self.model,
                prepared.images(),
                (self.rows(train), prepared.targets(train)),
                (self.rows(val), prepared.targets(val)),
                recipe=chosen,
                task=prepared.task,
                seed=self.seed,
                device=self.hw,
                checkpoint_dir=self.checkpoints / stage.key[:16],
                checkpoint_every=self.checkpoint_every,
                advance=advance,
                num_workers=self.workers,
                dist=self.dist,
            )

    def write(self, stage: Stage, best: dict[str, torch.Tensor], history: list[dict[str, float]], log) -> None:
        """Rank 0: predictions on val and test from the selected weights, the weights, the history."""
        prepared, model, layout = self.prepared, self.model, self.layout
        model.load_state_dict(best)
        scored = prepared.samples[prepared.samples["split"].isin(["val", "test"])]
        scores = predict(
            model, prepared.images(), self.rows(scored), task=prepared.task, device=self.hw, num_workers=self.workers
        )
        stage.write_parquet(self.out, predictions_table(scored, prepared.labels, prepared.targets(scored), scores))
        weights = layout.finetuned(self.dataset, self.spec.folder, self.adaptation)
        with atomic_path(weights) as tmp:
            save_file({k: v.contiguous() for k, v in best.items()}, str(tmp))
        stage.record(weights)
        stage.record(log.write(layout.training_log("finetune", self.dataset, self.spec.folder, self.adaptation)))
        stage.extra["history"] = history
        stage.extra["n_train"] = len(self.train_frame)
        stage.extra["world_size"] = self.dist.world_size
        stage.extra["precision"] = self.hw.precision
        clear_tree(layout, self.checkpoints)
