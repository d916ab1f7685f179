"""The `cxrbench` command: one thin command per stage; argument parsing only, no logic.

Errors a user can cause print one line and exit 2; a traceback appears only with ``--debug``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import click
import typer

from cxrbench import __version__
from cxrbench.errors import CxrbenchError

try:  # recent typer vendors its own copy of click; its usage errors are what the app raises
    from typer._click.exceptions import ClickException as _TyperClickException
except ImportError:  # pragma: no cover
    _TyperClickException = click.ClickException
_USAGE_ERRORS = (click.ClickException, _TyperClickException)

app = typer.Typer(
    name="cxrbench",
    help="Does this pretraining beat the ImageNet baseline on my chest X-ray tasks, significantly?\n\n"
    "Stages read and write Parquet in a run directory (--run, default ./runs/default or $CXRBENCH_RUN); "
    "each one can be stopped and resumed on its own.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
weights_app = typer.Typer(
    help="Check which weights a suite needs and whether they are here (offline).", no_args_is_help=True
)
app.add_typer(weights_app, name="weights")

RunOpt = Annotated[
    Path | None, typer.Option("--run", "--run-dir", help="Run directory [default: $CXRBENCH_RUN or ./runs/default].")
]
ForceOpt = Annotated[bool, typer.Option("--force", help="Redo the stage even if it is up to date.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed.")]
DeviceOpt = Annotated[
    str | None, typer.Option("--device", help="torch device, e.g. cpu or cuda:0 [default: cuda if available].")
]
PrecisionOpt = Annotated[
    str | None,
    typer.Option(
        "--precision",
        help="Training precision: bf16, fp16 (loss-scaled, for GPUs without fast bf16) or fp32 "
        "[default: bf16 on GPU, fp32 on CPU].",
    ),
]
WorkersOpt = Annotated[
    int | None, typer.Option(help="Processes reading batches from the image cache (default: 4 on CUDA, 0 on CPU).")
]
ArchOpt = Annotated[
    str | None, typer.Option("--arch", help="timm architecture, e.g. resnet50, densenet121, vit_base_patch16_224.")
]
ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help="Suites file read on top of the built-in suites: adds suites, replaces built-in ones by name "
        "[default: ./benchmarks.toml when present].",
    ),
]


TestDatasetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--test-dataset",
        help="External validation: also score this prepared dataset (repeatable), on the labels it shares "
        "with --dataset (see `cxrbench labels`).",
    ),
]
TestSplitOpt = Annotated[
    str, typer.Option(help="Rows of each --test-dataset scored: test (its test split) or all (every image).")
]


def _key_values(items: list[str] | None) -> dict[str, str]:
    """``--option KEY=VALUE`` pairs (``-`` in keys read as ``_``); a malformed one is a one-line error."""
    options: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise CxrbenchError(f"--option {item!r}: expected KEY=VALUE")
        options[key.strip().replace("-", "_")] = value
    return options


def _run(run: Path | None) -> Path:
    from cxrbench.rundir import resolve_run

    return resolve_run(run)


def _written(run_dir: Path, manifest, tests: tuple[str, ...] = ()) -> None:
    """Say what a stage wrote, from its manifest (nothing on DDP ranks other than 0); with
    ``tests``, also the external predictions beside it."""
    from cxrbench.console import out

    if manifest is None:
        return
    for rel in sorted(manifest.outputs):
        out.print(f"wrote {run_dir / rel}")
    if tests:
        from cxrbench.rundir import RunLayout
        from cxrbench.stages.external import external_manifests

        for external in external_manifests(RunLayout(run_dir), manifest, tests):
            for rel in sorted(external.outputs):
                out.print(f"wrote {run_dir / rel}")


@app.callback(invoke_without_command=True)
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    # --debug is read by main() from the arguments, so it affects this command only
    if version:
        typer.echo(f"cxrbench {__version__}")
        raise typer.Exit()


@app.command(epilog="Example: cxrbench prepare padchest --root /data/padchest --split 60/20/20")
def prepare(
    dataset: Annotated[
        str, typer.Argument(help="Dataset adapter name (synthetic, nih, chexpert, padchest, csv, folder, ...).")
    ],
    root: Annotated[
        Path | None, typer.Option(help="Folder the dataset was unpacked into (synthetic: where to write phantoms).")
    ] = None,
    run: RunOpt = None,
    size: Annotated[int, typer.Option(help="Image size after preprocessing (pixels).")] = 224,
    aspect: Annotated[str, typer.Option(help="Aspect handling: pad, crop or stretch.")] = "pad",
    equalize: Annotated[bool, typer.Option(help="Histogram-equalise images.")] = False,
    uncertain: Annotated[str, typer.Option(help="Uncertain labels become: negative, positive or ignore.")] = "negative",
    min_positives: Annotated[int, typer.Option(help="Drop labels with fewer positives in any split.")] = 0,
    split: Annotated[
        str, typer.Option(help="train/val/test percentages (each > 0, sum 100) where no official split exists.")
    ] = "60/20/20",
    views: Annotated[
        str,
        typer.Option(
            help="frontal (PA/AP; images without a recorded view are left out and counted), frontal+unknown, or all."
        ),
    ] = "frontal",
    seed: SeedOpt = 0,
    workers: Annotated[int | None, typer.Option(help="Decoding processes [default: CPU count].")] = None,
    n_patients: Annotated[
        int | None,
        typer.Option(
            help="Generated datasets (synthetic): number of patients [default: 200]; same as --option n_patients=N."
        ),
    ] = None,
    csv: Annotated[str | None, typer.Option(help="csv: metadata file (relative to --root).")] = None,
    path_column: Annotated[str | None, typer.Option(help="csv: image path column.")] = None,
    patient_column: Annotated[str | None, typer.Option(help="csv: patient id column.")] = None,
    label_columns: Annotated[str | None, typer.Option(help="csv: comma-separated label columns.")] = None,
    view_column: Annotated[str | None, typer.Option(help="csv: view column.")] = None,
    split_column: Annotated[str | None, typer.Option(help="csv: official split column.")] = None,
    option: Annotated[
        list[str] | None, typer.Option(help="Adapter option KEY=VALUE, repeatable (e.g. labels=all).")
    ] = None,
    name: Annotated[
        str | None,
        typer.Option(
            help="Name in the run [default: the dataset], e.g. two synthetic sites: --option site=b --name site-b."
        ),
    ] = None,
    force: ForceOpt = False,
) -> None:
    """Read a dataset as its creators distribute it; write samples.parquet and the image cache."""
    from cxrbench.console import out
    from cxrbench.data.samples import LabelPolicy
    from cxrbench.data.splits import parse_ratios
    from cxrbench.data.transforms import Preprocess
    from cxrbench.stages.prepare import prepare as prepare_stage

    run_dir = _run(run)
    # the named flags are spellings of adapter options; a dataset without that option says so
    given = {
        "n_patients": n_patients,
        "csv": csv,
        "path_column": path_column,
        "patient_column": patient_column,
        "view_column": view_column,
        "split_column": split_column,
    }
    options: dict = {k: v for k, v in given.items() if v is not None}
    if label_columns:
        options["label_columns"] = [c.strip() for c in label_columns.split(",") if c.strip()]
    options.update(_key_values(option))
    policy = LabelPolicy(
        uncertain=uncertain, min_positives=min_positives, views=views, split=parse_ratios(split), seed=seed
    )
    manifest = prepare_stage(
        run_dir,
        dataset,
        root=root,
        options=options,
        policy=policy,
        image=Preprocess(size=size, aspect=aspect, equalize=equalize),
        workers=workers,
        name=name,
        force=force,
    )
    extra = manifest.extra
    out.print(
        f"[bold]{name or dataset}[/]: {extra['images']} images, {extra['patients']} patients, "
        f"splits {extra['splits']}, quarantined {extra['quarantined']}"
    )
    left_out = {k: extra.get(f"excluded_{k}", 0) for k in ("non_frontal", "unknown_view")}
    if any(left_out.values()):
        out.print(
            f"left out by --views {views}: {left_out['non_frontal']} non-frontal, "
            f"{left_out['unknown_view']} with no recorded view"
            + (" (keep those with --views frontal+unknown)" if left_out["unknown_view"] else "")
        )
    from rich.table import Table

    table = Table("label", "train", "val", "test", title="positives / known per split")
    for row in extra["prevalence"]:
        table.add_row(row["label"], row["train"], row["val"], row["test"])
    out.print(table)
    _written(run_dir, manifest)


def _methods_epilog() -> str:
    """The methods ``cxrbench pretrain`` accepts, one line each (module docstrings, no torch import)."""
    from cxrbench.pretrain import method_summaries

    lines = [f"  {name:<12} {summary}" for name, summary in method_summaries().items()]
    # \b keeps click from re-wrapping the list into one paragraph
    return (
        "\b\nMethods:\n"
        + "\n".join(lines)
        + "\n\nExample: cxrbench pretrain moco --dataset synthetic --epochs 2 --arch resnet18 --option preset=moco-cxr"
    )


@app.command(epilog=_methods_epilog())
def pretrain(
    method: Annotated[str, typer.Argument(help="Pretraining method (listed below).")],
    dataset: Annotated[str, typer.Option(help="Prepared dataset to pretrain on (train split).")],
    name: Annotated[
        str | None, typer.Option(help="Encoder name in the run [default: the method; METHOD-DATASET for medaug].")
    ] = None,
    arch: ArchOpt = None,
    init: Annotated[
        str, typer.Option(help="Starting weights: random, imagenet, or an encoder name (a pretrain output, file:PATH).")
    ] = "random",
    option: Annotated[
        list[str] | None,
        typer.Option(help="Method option KEY=VALUE, repeatable (e.g. temperature=0.2, preset=moco-cxr)."),
    ] = None,
    epochs: Annotated[int | None, typer.Option(help="Epochs [default: the method's].")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Batch size.")] = None,
    lr: Annotated[float | None, typer.Option(help="Learning rate.")] = None,
    text_model: Annotated[
        str | None,
        typer.Option(help="Image-report methods: transformers text model, a folder or hub id found offline."),
    ] = None,
    sections: Annotated[
        str | None,
        typer.Option(help="Image-report methods: report sections to train on [default: findings,impression]."),
    ] = None,
    run: RunOpt = None,
    seed: SeedOpt = 0,
    device: DeviceOpt = None,
    precision: PrecisionOpt = None,
    num_workers: WorkersOpt = None,
    force: ForceOpt = False,
) -> None:
    """Pretrain an encoder with a self-supervised method; it is then usable as --encoder NAME.

    Multi-GPU: torchrun --nproc-per-node N -m cxrbench pretrain simclr --run-dir DIR ... (DDP; the
    loss sees the whole batch's negatives; rank 0 writes).
    """
    from cxrbench.engine import distributed
    from cxrbench.stages.pretrain import pretrain as pretrain_stage

    run_dir = _run(run)
    options = _key_values(option)
    with distributed.group(device) as (dist, _):
        manifest = pretrain_stage(
            run_dir,
            method,
            dataset=dataset,
            name=name,
            arch=arch,
            init=init,
            options=options,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            seed=seed,
            device=device,
            precision=precision,
            num_workers=num_workers,
            text_model=text_model,
            sections=sections,
            force=force,
        )
        if dist.is_main:
            _written(run_dir, manifest)


@app.command(epilog="Example: cxrbench probe --dataset synthetic --encoder simclr --fraction 0.1 --fraction 1.0")
def probe(
    dataset: Annotated[str, typer.Option(help="Prepared dataset.")],
    encoder: Annotated[str, typer.Option(help="imagenet, dinov2, random, file:PATH, or a pretrain output.")],
    arch: ArchOpt = None,
    fraction: Annotated[
        list[float] | None, typer.Option(help="Label fraction(s) of train patients (repeatable).")
    ] = None,
    test_dataset: TestDatasetOpt = None,
    test_split: TestSplitOpt = "test",
    target: Annotated[
        list[str] | None,
        typer.Option(help="Probe a patient attribute instead of the labels: age, sex or race (repeatable)."),
    ] = None,
    adaptation: Annotated[
        str, typer.Option(help="probe (logistic regression) or zeroshot (prompts; encoders with a text tower).")
    ] = "probe",
    prompts: Annotated[
        Path | None, typer.Option(help="Zero-shot prompts TOML ([label] positive=..., negative=...).")
    ] = None,
    run: RunOpt = None,
    seed: SeedOpt = 0,
    device: DeviceOpt = None,
    force: ForceOpt = False,
) -> None:
    """Linear probe: L2 logistic regression (L-BFGS) on frozen features; predicts val and test.

    --adaptation zeroshot scores each label by image-prompt similarity (positive vs negative prompt)
    instead, with no training; written as predictions like any other adaptation.
    """
    from cxrbench.stages.finetune import check_fraction
    from cxrbench.stages.probe import probe as probe_stage

    run_dir = _run(run)
    if adaptation not in ("probe", "zeroshot"):
        raise CxrbenchError(f"--adaptation {adaptation!r}: choose probe or zeroshot")
    if adaptation == "zeroshot":
        if fraction:
            raise CxrbenchError("--fraction does not apply to --adaptation zeroshot (it uses no labels)")
        from cxrbench.stages.probe import zeroshot

        _written(
            run_dir,
            zeroshot(run_dir, dataset=dataset, encoder=encoder, arch=arch, prompts=prompts, device=device, force=force),
        )
        return
    if prompts is not None:
        raise CxrbenchError("--prompts applies to --adaptation zeroshot")
    fractions = [check_fraction(f) for f in fraction or [1.0]]
    tests = tuple(test_dataset or ())
    if target:
        from cxrbench.stages.attributes import attribute_probe

        for name in target:
            for frac in fractions:
                _written(
                    run_dir,
                    attribute_probe(
                        run_dir,
                        dataset=dataset,
                        encoder=encoder,
                        target=name,
                        arch=arch,
                        fraction=frac,
                        seed=seed,
                        device=device,
                        force=force,
                    ),
                )
        return
    for frac in fractions:
        manifest = probe_stage(
            run_dir,
            dataset=dataset,
            encoder=encoder,
            arch=arch,
            fraction=frac,
            seed=seed,
            device=device,
            test_datasets=tests,
            test_split=test_split,
            force=force,
        )
        _written(run_dir, manifest, tests)


@app.command(epilog="Example: cxrbench finetune --dataset synthetic --encoder simclr --epochs 2 --recipe ssl-cxr")
def finetune(
    dataset: Annotated[str, typer.Option(help="Prepared dataset.")],
    encoder: Annotated[str, typer.Option(help="imagenet, dinov2, random, file:PATH, or a pretrain output.")],
    arch: ArchOpt = None,
    recipe: Annotated[
        str, typer.Option(help="ssl-cxr (SGD 1e-3, batch 32, cosine) or vit (AdamW 1e-5, weighted BCE, rotation+flip).")
    ] = "ssl-cxr",
    epochs: Annotated[int | None, typer.Option(help="Override the recipe's epochs.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Override the batch size.")] = None,
    lr: Annotated[float | None, typer.Option(help="Override the learning rate.")] = None,
    optimizer: Annotated[str | None, typer.Option(help="Override the optimizer: sgd or adamw.")] = None,
    patience: Annotated[int | None, typer.Option(help="Early-stopping patience in epochs.")] = None,
    select: Annotated[
        str | None, typer.Option(help="Validation metric choosing the epoch: auc (mean AUC) or f1 (mean F1 at 0.5).")
    ] = None,
    fraction: Annotated[
        list[float] | None, typer.Option(help="Label fraction(s) of train patients (repeatable).")
    ] = None,
    checkpoint_every: Annotated[int, typer.Option(help="Also checkpoint every N steps (0: per epoch only).")] = 0,
    test_dataset: TestDatasetOpt = None,
    test_split: TestSplitOpt = "test",
    num_workers: WorkersOpt = None,
    run: RunOpt = None,
    seed: SeedOpt = 0,
    device: DeviceOpt = None,
    precision: PrecisionOpt = None,
    force: ForceOpt = False,
) -> None:
    """Finetune the whole encoder with a linear head; model selection on validation mean AUC (or F1).

    Multi-GPU: torchrun --nproc-per-node N -m cxrbench finetune --run-dir DIR ... (DDP; rank 0
    writes; under torchrun spell the option --run-dir, since torchrun reads --run as its --run-path).
    """
    from cxrbench.engine import distributed
    from cxrbench.stages.finetune import check_fraction
    from cxrbench.stages.finetune import finetune as finetune_stage

    run_dir = _run(run)
    overrides = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "optimizer": optimizer, "patience": patience}
    overrides["select"] = select
    fractions = [check_fraction(f) for f in fraction or [1.0]]
    with distributed.group(device) as (dist, _):
        for frac in fractions:
            manifest = finetune_stage(
                run_dir,
                dataset=dataset,
                encoder=encoder,
                arch=arch,
                recipe_name=recipe,
                overrides=overrides,
                fraction=frac,
                seed=seed,
                checkpoint_every=checkpoint_every,
                num_workers=num_workers,
                device=device,
                precision=precision,
                test_datasets=tuple(test_dataset or ()),
                test_split=test_split,
                force=force,
            )
            if dist.is_main:
                _written(run_dir, manifest, tuple(test_dataset or ()))


@app.command(epilog="Example: cxrbench segment --dataset lidc --encoder masked --fraction 0.1 --fraction 1.0")
def segment(
    dataset: Annotated[str, typer.Option(help="Prepared dataset with masks (lidc, synthetic-lidc).")],
    encoder: Annotated[str, typer.Option(help="The U-Net's down branch: imagenet, random, a pretrain output, ...")],
    arch: ArchOpt = None,
    epochs: Annotated[int, typer.Option(help="Training epochs (the epoch budget).")] = 30,
    batch_size: Annotated[int, typer.Option(help="Slices per batch.")] = 16,
    lr: Annotated[float, typer.Option(help="AdamW learning rate.")] = 1e-3,
    width: Annotated[int, typer.Option(help="Channels of the up branch.")] = 32,
    fraction: Annotated[list[float] | None, typer.Option(help="Fraction(s) of train patients (repeatable).")] = None,
    checkpoint_every: Annotated[int, typer.Option(help="Also checkpoint every N steps (0: per epoch only).")] = 0,
    num_workers: WorkersOpt = None,
    run: RunOpt = None,
    seed: SeedOpt = 0,
    device: DeviceOpt = None,
    precision: PrecisionOpt = None,
    force: ForceOpt = False,
) -> None:
    """Train a U-Net with the encoder as its down branch; Dice and IoU per case (selection on val Dice)."""
    from cxrbench.stages.finetune import check_fraction
    from cxrbench.stages.segment import segment as segment_stage

    run_dir = _run(run)
    for frac in [check_fraction(f) for f in fraction or [1.0]]:
        manifest = segment_stage(
            run_dir,
            dataset=dataset,
            encoder=encoder,
            arch=arch,
            fraction=frac,
            seed=seed,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            width=width,
            checkpoint_every=checkpoint_every,
            num_workers=num_workers,
            device=device,
            precision=precision,
            force=force,
        )
        _written(run_dir, manifest)


@app.command(epilog="Example: cxrbench evaluate --n-boot 1000 --cluster patient")
def evaluate(
    n_boot: Annotated[int, typer.Option(help="Bootstrap replicates.")] = 1000,
    cluster: Annotated[str, typer.Option(help="Resample images or patients.")] = "image",
    study_aggregate: Annotated[
        str, typer.Option(help="CT: study score from its slices' scores: max, mean, or none (no study level).")
    ] = "max",
    run: RunOpt = None,
    seed: SeedOpt = 0,
    force: ForceOpt = False,
) -> None:
    """Metrics (AUC, AUPRC, Youden-threshold metrics) with bootstrap CIs for every predictions file,
    study-level ones for CT, and mean Dice/IoU for segmentation."""
    from cxrbench.stages.evaluate import evaluate as evaluate_stage

    run_dir = _run(run)
    manifest = evaluate_stage(
        run_dir, n_boot=n_boot, seed=seed, cluster=cluster, study_aggregate=study_aggregate, force=force
    )
    _written(run_dir, manifest)


@app.command(epilog="Example: cxrbench compare --baseline imagenet --test delong --correction holm")
def compare(
    baseline: Annotated[str, typer.Option(help="Encoder every other encoder is compared with.")] = "imagenet",
    n_boot: Annotated[int, typer.Option(help="Bootstrap replicates (paired across models).")] = 1000,
    cluster: Annotated[str, typer.Option(help="Resample images or patients.")] = "image",
    test: Annotated[str, typer.Option(help="bootstrap or delong.")] = "bootstrap",
    correction: Annotated[str, typer.Option(help="bh (Benjamini-Hochberg), holm or none.")] = "bh",
    alpha: Annotated[float, typer.Option(help="Significance level after correction.")] = 0.05,
    plots: Annotated[bool, typer.Option(help="Write ROC, forest and label-efficiency plots.")] = True,
    run: RunOpt = None,
    seed: SeedOpt = 0,
    force: ForceOpt = False,
) -> None:
    """Paired differences vs the baseline with CIs, p-values and multiplicity correction; tables + plots."""
    from cxrbench.stages.compare import compare as compare_stage

    run_dir = _run(run)
    manifest = compare_stage(
        run_dir,
        baseline=baseline,
        n_boot=n_boot,
        seed=seed,
        cluster=cluster,
        test=test,
        correction=correction,
        alpha=alpha,
        plots=plots,
        force=force,
    )
    _show_tables(run_dir, manifest)


@app.command(
    "run",
    epilog="Examples: cxrbench run --suite smoke; cxrbench run --suite ssl-cxr-13 --dry-run; "
    "cxrbench run --suite smoke --executor local --jobs 4; "
    "cxrbench run --suite ssl-cxr-13 --executor slurm --slurm partition=gpu --slurm finetune.timeout_min=720",
)
def run_command(
    suite: Annotated[
        str, typer.Option(help="Suite name: built in, or in ./benchmarks.toml or --config (see `cxrbench suites`).")
    ],
    config: ConfigOpt = None,
    run: RunOpt = None,
    device: DeviceOpt = None,
    precision: PrecisionOpt = None,
    force: ForceOpt = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show the grid, each cell's state and what is missing; run nothing.")
    ] = False,
    executor: Annotated[
        str,
        typer.Option(help="sequential (this process), local (--jobs processes here) or slurm (jobs through submitit)."),
    ] = "sequential",
    jobs: Annotated[int, typer.Option(help="local: cells run at once.")] = 2,
    retries: Annotated[int, typer.Option(help="local, slurm: start a failed cell again this many times.")] = 1,
    slurm: Annotated[
        list[str] | None,
        typer.Option(
            help="slurm: resources KEY=VALUE for every stage or KIND.KEY=VALUE for one (gpus, cpus, mem_gb, "
            "timeout_min, partition, account, qos, constraint, array_parallelism), repeatable."
        ),
    ] = None,
    slurm_cluster: Annotated[
        str | None,
        typer.Option(help="slurm: submitit cluster: slurm [default where sbatch exists], local or debug (tests)."),
    ] = None,
) -> None:
    """Run a suite's whole grid (prepare, pretrain, features, probe, finetune, evaluate, compare); resumable."""
    from cxrbench.config import get_suite
    from cxrbench.console import out

    chosen = get_suite(suite, config)
    run_dir = _run(run)
    if dry_run:
        from cxrbench.grid.states import dry_run as plan_rows
        from cxrbench.rundir import layout_of

        rows = plan_rows(layout_of(run_dir), chosen)
        _show_cells(rows, title=f"suite {suite} in {run_dir} (dry run)", columns=("cell", "state", "missing input"))
        lacking = sorted({row.detail for row in rows if row.detail})
        for line in lacking:  # each missing root or weight once, whole, so its command can be copied
            out.print(f"missing: {line}", markup=False)
        return
    if executor == "sequential":
        from cxrbench.stages.suite import run_suite

        done = run_suite(run_dir, chosen, force=force, device=device, precision=precision)
        out.print(f"suite [bold]{suite}[/]: {len(done)} stages up to date in {run_dir}")
        _show_tables(run_dir, done["compare"])
        return
    from cxrbench.grid.scale import run_scaled

    done = run_scaled(
        run_dir,
        chosen,
        executor=executor,
        jobs=jobs,
        retries=retries,
        slurm=slurm,
        cluster=slurm_cluster,
        device=device,
        precision=precision,
        force=force,
    )
    out.print(f"suite [bold]{suite}[/]: every cell done in {run_dir}")
    _show_tables(run_dir, done)


@app.command("status", epilog="Example: cxrbench status --suite smoke --run runs/default")
def status_command(
    suite: Annotated[str | None, typer.Option(help="One suite [default: every suite run in this directory].")] = None,
    run: RunOpt = None,
) -> None:
    """Every cell of the suites run here: done, running where, failed (error, log), waiting, missing input."""
    from cxrbench.grid.states import recorded_suites, suite_states
    from cxrbench.rundir import layout_of

    layout = layout_of(_run(run))
    names = [suite] if suite else recorded_suites(layout)
    if suite and not layout.suite_plan(suite).is_file():
        raise CxrbenchError(f"suite {suite} has not been run in {layout.root} (cxrbench run --suite {suite})")
    if not names:
        raise CxrbenchError(f"no suite has been run in {layout.root}")
    for name in names:
        _show_cells(suite_states(layout, name), title=f"suite {name} in {layout.root}")


def _show_cells(rows, *, title: str, columns: tuple[str, ...] = ("cell", "state", "where", "detail", "log")) -> None:
    """A table of cells and their states (``columns``: the first ones of cell, state, where, detail,
    log; a dry run shows cell, state and what is missing), with totals by state."""
    from collections import Counter

    from rich.table import Table

    from cxrbench.console import out

    colours = {"done": "green", "failed": "red", "interrupted": "red", "stale": "yellow", "running": "cyan"}
    table = Table(*columns, title=title)
    for row in rows:
        colour = colours.get(row.state)
        state = f"[{colour}]{row.state}[/]" if colour else row.state
        cells = (row.id, state, row.where, row.detail, row.log) if len(columns) == 5 else (row.id, state, row.detail)
        table.add_row(*cells)
    out.print(table)
    totals = Counter(row.state for row in rows)
    order = ("done", "running", "failed", "interrupted", "stale", "waiting", "missing input", "missing")
    out.print(f"{len(rows)} cells: " + ", ".join(f"{totals[s]} {s}" for s in order if totals[s]))


@app.command("export", epilog="Example: cxrbench export --suite smoke supplement/")
def export_command(
    out: Annotated[Path, typer.Argument(help="Folder to write: new, empty, or an earlier export (replaced whole).")],
    suite: Annotated[str, typer.Option(help="Suite whose finished run to export.")],
    predictions: Annotated[bool, typer.Option(help="Also copy every predictions file (can be large).")] = False,
    config: ConfigOpt = None,
    run: RunOpt = None,
) -> None:
    """A finished suite as a self-contained folder: index.html, tables, plots, manifests, commands, versions."""
    from cxrbench.config import get_suite
    from cxrbench.console import out as console
    from cxrbench.stages.export import export as export_stage

    chosen = get_suite(suite, config)
    run_dir = _run(run)
    if not run_dir.is_dir():
        raise CxrbenchError(f"--run {run_dir}: no such run directory")
    index = export_stage(run_dir, chosen, out, predictions=predictions, run_arg=str(run_dir))
    console.print(f"wrote {index} (open it in a browser; the folder {out} is self-contained)")


@app.command(epilog="Example: cxrbench verify --run runs/default")
def verify(run: RunOpt = None) -> None:
    """Re-hash every output of every finished stage, check inputs and image files; exit 1 on any problem."""
    from rich.table import Table

    from cxrbench.console import out
    from cxrbench.stages.verify import verify as verify_run

    run_dir = _run(run)
    if not run_dir.is_dir():
        raise CxrbenchError(f"--run {run_dir}: no such run directory")
    findings = verify_run(run_dir)
    table = Table("manifest", "stage", "files", "status")
    for f in findings:
        table.add_row(f.manifest, f.stage, str(f.files), "ok" if f.problem is None else f"[red]{f.problem}[/]")
    out.print(table)
    bad = [f for f in findings if f.problem is not None]
    out.print(f"{len(findings) - len(bad)} of {len(findings)} stage outputs verified in {run_dir}")
    if bad:
        raise typer.Exit(1)


@app.command("suites", epilog="Example: cxrbench suites --config my-benchmarks.toml")
def suites_command(config: ConfigOpt = None) -> None:
    """List the suites `cxrbench run --suite NAME` knows, and where each comes from."""
    from rich.table import Table

    from cxrbench.config import available_suites
    from cxrbench.console import out

    table = Table("suite", "from", "datasets", "encoders", "baseline", "description")
    for name, (chosen, origin, replaces) in available_suites(config).items():
        table.add_row(
            name,
            f"{origin} (replaces built in)" if replaces else origin,
            ", ".join(d.name for d in chosen.datasets),
            ", ".join(chosen.encoders),
            chosen.baseline,
            chosen.description,
        )
    out.print(table)


@app.command("labels", epilog="Example: cxrbench labels --dataset nih --dataset chexpert")
def labels_command(
    dataset: Annotated[
        list[str] | None,
        typer.Option(
            help="A prepared dataset of the run or an adapter name (repeatable): the first is the training one."
        ),
    ] = None,
    run: RunOpt = None,
) -> None:
    """The label harmonisation table (built in, plus ./labels.toml), or the labels datasets share."""
    from rich.table import Table

    from cxrbench.console import out
    from cxrbench.data.harmonise import dataset_labels, label_table, shared_labels

    table = label_table()
    if not dataset:
        adapters = sorted({a for f in table.values() for a in f.labels})
        view = Table("finding", *adapters, "source", title="label harmonisation (cxrbench/labels.toml + ./labels.toml)")
        for finding in table.values():
            view.add_row(finding.name, *(finding.labels.get(a, "") for a in adapters), finding.source)
        out.print(view)
        return
    if len(dataset) < 2:
        raise CxrbenchError("cxrbench labels: give two or more --dataset (training, then test), or none for the table")
    run_dir = _run(run)
    train = dataset_labels(dataset[0], run_dir)
    for test in dataset[1:]:
        shared = shared_labels(train, dataset_labels(test, run_dir), table=table, train_name=dataset[0], test_name=test)
        view = Table("finding", dataset[0], test, "source", title=f"{dataset[0]} → {test}: shared labels")
        for key, a, b in shared.pairs:
            view.add_row(key, a, b, shared.sources.get(key, ""))
        out.print(view)
        out.print(f"only in {dataset[0]}: {', '.join(shared.only_train) or '-'}")
        out.print(f"only in {test}: {', '.join(shared.only_test) or '-'}")


def _show_tables(run_dir: Path, manifest) -> None:
    """Print where the significance tables are, and show them."""
    from cxrbench.console import out

    tables = sorted(rel for rel in manifest.outputs if rel.endswith(".md"))
    for rel in tables:
        out.print(f"\n[bold]{run_dir / rel}[/]")
        out.print((run_dir / rel).read_text(), markup=False, highlight=False)


@weights_app.command("check", epilog="Example: cxrbench weights check --suite smoke")
def weights_check(
    suite: Annotated[str | None, typer.Option(help="Check every encoder of this suite.")] = None,
    encoder: Annotated[list[str] | None, typer.Option(help="Check these encoders (repeatable).")] = None,
    text_model: Annotated[
        list[str] | None, typer.Option(help="Check these text models for image-report pretraining (repeatable).")
    ] = None,
    arch: ArchOpt = None,
    config: ConfigOpt = None,
    run: RunOpt = None,
) -> None:
    """List the weights a suite needs, whether each is present offline, and how to fetch the missing."""
    from rich.table import Table

    from cxrbench.config import get_suite
    from cxrbench.console import out
    from cxrbench.models.sources import check_weights

    pairs: list[tuple[str, str | None]] = [(e, arch) for e in encoder or []]
    pending: set[str] = set()
    if suite:
        chosen = get_suite(suite, config)
        pending = set(chosen.pretrain)
        pairs += [(e, chosen.arch) for e in chosen.encoders if e not in pending]
    if not pairs and not pending and not text_model:
        raise CxrbenchError("weights check: name --suite, --encoder or --text-model")
    specs = check_weights(pairs, run=_run(run))
    if text_model:
        from cxrbench.models.text import text_weights

        specs += [text_weights(t) for t in dict.fromkeys(text_model)]
    table = Table("encoder", "arch", "source", "present", "location")
    for spec in specs:
        table.add_row(
            spec.encoder, spec.arch, spec.source, "yes" if spec.present else "[red]no[/]", spec.location or ""
        )
    for name in sorted(pending):
        table.add_row(name, chosen.arch or "", f"pretrained by `cxrbench run --suite {suite}`", "-", "")
    out.print(table)
    missing = [s for s in specs if not s.present]
    for spec in missing:  # full commands on their own lines, so they can be copied
        out.print(spec.missing_message, markup=False)
    if missing:
        raise typer.Exit(1)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the app, turning errors into one line and an exit code."""
    args = list(argv if argv is not None else sys.argv[1:])
    debug = "--debug" in args or os.environ.get("CXRBENCH_DEBUG") == "1"
    try:
        code = app(args=args, prog_name="cxrbench", standalone_mode=False)
        if isinstance(code, int) and code:  # without standalone mode, click returns Exit codes
            sys.exit(code)
    except (typer.Exit, click.exceptions.Exit) as exc:  # --help, --version, weights check
        sys.exit(exc.exit_code)
    except (typer.Abort, click.exceptions.Abort):
        _fail("interrupted; rerun the same command to resume", 130)
    except _USAGE_ERRORS as exc:
        if type(exc).__name__ == "NoArgsIsHelpError" and exc.ctx is not None:
            print(exc.ctx.get_help())
            sys.exit(0)
        _fail(_usage_message(exc, args), 2)
    except CxrbenchError as exc:
        if debug:
            raise
        _fail(exc.message, exc.exit_code)
    except KeyboardInterrupt:
        _fail("interrupted; rerun the same command to resume", 130)
    except Exception as exc:  # noqa: BLE001 - last resort: one line, traceback with --debug
        if debug:
            raise
        _fail(f"internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)", 1)


def _usage_message(exc: Exception, args: list[str]) -> str:
    """One line for a usage error, quoting the offending value when the parser did not."""
    message = exc.format_message().replace("\n", " ")
    param = getattr(exc, "param", None)
    for opt in getattr(param, "opts", None) or []:
        for i, arg in enumerate(args[:-1]):
            if arg == opt and args[i + 1] not in message:
                return f"{message} (got {args[i + 1]!r})"
    return message


def _fail(message: str, code: int) -> None:
    print(f"cxrbench: error: {message}", file=sys.stderr)
    sys.exit(code)


if __name__ == "__main__":  # pragma: no cover
    main()
