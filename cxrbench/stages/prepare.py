"""`cxrbench prepare`: an adapter's rows through the generic path into samples + image cache.

Adapters that can make their dataset (``synthetic``) define ``generate(root, **options)``; it runs
as its own stage into ``RUN/raw/DATASET`` (or ``--root``) before the dataset is read like any other.
"""

from __future__ import annotations

import hashlib
import inspect
import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd

from cxrbench.console import progress
from cxrbench.data.adapters import get_adapter
from cxrbench.data.adapters.base import coerce_options
from cxrbench.data.cache import IMAGES_FILE, build_cache
from cxrbench.data.header_cache import HEADERS_FILE, remember_headers
from cxrbench.data.images import CT_PREFIX, file_stamp, stat_once
from cxrbench.data.masks import build_masks
from cxrbench.data.prepared import CACHE_DIR, QUARANTINE, SAMPLES
from cxrbench.data.samples import LabelPolicy, build_samples, prevalence_table
from cxrbench.data.transforms import Preprocess
from cxrbench.errors import CxrbenchError
from cxrbench.processes import shared_pool
from cxrbench.rundir import Manifest, RunLayout, Stage, layout_of


def _option_names(function: Callable) -> set[str]:
    params = list(inspect.signature(function).parameters.values())[1:]  # the first is the dataset root
    return {p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name != "progress"}


def split_options(adapter, options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``options`` as (generate options, load options), typed by each function's signature."""
    generate = getattr(adapter, "generate", None)
    names = _option_names(generate) if generate is not None else set()
    unknown = sorted(set(options) - names - _option_names(adapter.load))
    if unknown:
        known = ", ".join(sorted(names | _option_names(adapter.load))) or "none"
        dataset = adapter.__name__.rsplit(".", 1)[-1].replace("_", "-")
        raise CxrbenchError(f"unknown option '{unknown[0]}' for dataset {dataset} (known: {known})")
    generated = {k: v for k, v in options.items() if k in names}
    loaded = {k: v for k, v in options.items() if k not in names}
    return (coerce_options(generate, generated) if generate is not None else {}), coerce_options(adapter.load, loaded)


def generate(
    layout: RunLayout,
    dataset: str,
    adapter,
    *,
    root: Path | None,
    options: dict[str, Any],
    image: Preprocess,
    seed: int,
    force: bool = False,
) -> tuple[Path, Manifest]:
    """Make the dataset's files with the adapter's ``generate`` (its own stage: once per setting);
    an adapter's ``check_generate`` refuses bad options first. Options it does not get default to the prepare's image size (``phantom_size``) and seed
    (``phantom_seed``) where ``generate`` takes them.
    """
    root = Path(root) if root is not None else layout.raw(dataset)
    names = _option_names(adapter.generate)
    settings = dict(options)
    if "phantom_size" in names:
        settings.setdefault("phantom_size", image.size)
    if "phantom_seed" in names:
        settings.setdefault("phantom_seed", seed)
    check = getattr(adapter, "check_generate", None)
    if check is not None:
        check(**settings)
    home = layout if _inside(layout, root) else RunLayout(root)  # a --root elsewhere keeps its own manifest
    stage = Stage(
        home,
        "generate",
        root / "manifest.json",
        settings={"dataset": dataset, **settings},
        seed=seed,
        what=f"{dataset} files in {root}",
    )
    with stage.open(force=force) as todo:
        if todo:
            total = int(settings.get("n_patients", 0)) or None
            with progress(total, f"generate {dataset}") as advance:
                done = [0]

                def cumulative(n: int) -> None:  # generate reports what it finished so far
                    advance(n - done[0])
                    done[0] = n

                stage.record(adapter.generate(root, **settings, progress=cumulative))
    return root, stage.manifest


def _inside(layout: RunLayout, path: Path) -> bool:
    try:
        layout.inside(path)
        return True
    except CxrbenchError:
        return False


def files_fingerprint(paths: list[str], names: list[str]) -> str:
    """Hash of each image file's name, size and modification time (a changed image is decoded again)."""
    digest = hashlib.sha256()
    for path, name in zip(paths, names, strict=True):
        mark = file_stamp(path)  # a NIfTI slice (VOLUME#K): its volume file's
        digest.update((f"{name}\0{mark[0]}\0{mark[1]}\n" if mark else f"{name}\0missing\n").encode())
    return digest.hexdigest()


def relative_paths(paths: pd.Series, root: Path) -> list[str]:
    """``paths`` relative to the dataset root where they are under it, so that a run (or a dataset)
    copied elsewhere keeps its stage keys; other paths stay absolute."""
    prefixes = tuple(dict.fromkeys(str(r).rstrip("/") + "/" for r in (Path(root).resolve(), Path(root).absolute())))
    out = []
    for path in paths.astype(str).tolist():
        for prefix in prefixes:
            if path.startswith(prefix):
                path = path[len(prefix) :]
                break
        out.append(path)
    return out


def prepare(
    run: RunLayout | Path,
    dataset: str,
    *,
    root: Path | None,
    options: dict[str, Any] | None = None,
    policy: LabelPolicy = LabelPolicy(),  # noqa: B008 - frozen dataclasses, safe as defaults
    image: Preprocess = Preprocess(),  # noqa: B008
    workers: int | None = None,
    name: str | None = None,
    force: bool = False,
) -> Manifest:
    """Prepare ``dataset`` from ``root`` into ``RUN/prepared/NAME`` (NAME: ``name``, default the
    dataset), reusing it if up to date. A ``name`` lets one adapter give several prepared datasets
    (two synthetic sites, one dataset under two settings). ``workers`` processes (None: one per
    CPU) read CT headers and decode, one pool for both."""
    size = (os.cpu_count() or 1) if workers is None else workers
    with shared_pool(size):
        return _prepare(
            run, dataset, root=root, options=options, policy=policy, image=image, workers=size, name=name, force=force
        )


def _prepare(
    run: RunLayout | Path,
    dataset: str,
    *,
    root: Path | None,
    options: dict[str, Any] | None,
    policy: LabelPolicy,
    image: Preprocess,
    workers: int,
    name: str | None,
    force: bool,
) -> Manifest:
    layout = layout_of(run)
    adapter = get_adapter(dataset)
    name = check_name(name if name is not None else dataset)
    generate_options, options = split_options(adapter, dict(options or {}))
    inputs: list[Manifest] = []
    if hasattr(adapter, "generate"):
        root, written = generate(
            layout, name, adapter, root=root, options=generate_options, image=image, seed=policy.seed, force=force
        )
        inputs.append(written)
    elif root is None:
        raise CxrbenchError(f"cxrbench prepare {dataset} needs --root (the folder you unpacked {dataset} into)")
    root = Path(root)
    scan = {"workers": workers} if "workers" in _option_names(adapter.load) and "workers" not in options else {}
    # from here on each image file is stat'ed once: the header pass, the cache and the stage key
    # share one snapshot (after generate, which may write the files)
    with stat_once():
        home = layout.prepared(name)
        with remember_headers(home / CACHE_DIR / HEADERS_FILE, reuse=not force):  # a CT rerun reads new files only
            raw = adapter.load(root, **options, **scan)  # the header pass takes prepare's workers (not in the key)
        samples, summary = build_samples(raw, policy, root=root)
        if raw.image_format is not None and raw.image_format.startswith(CT_PREFIX):
            image = replace(image, scaling="fixed")  # windowed HU: the same grey for the same HU everywhere
        rejected = _rejected(raw)

        paths = samples["path"].tolist()
        names = relative_paths(samples["path"], root)
        rows_hash = pd.util.hash_pandas_object(samples.assign(path=names), index=False).sum()
        settings = {
            "dataset": dataset,
            "root": _portable(root, layout.root),
            "options": options,
            "labels": policy.to_dict(),
            "image": image.to_dict(),
        }
        if name != dataset:  # only then: runs prepared before names existed keep their keys
            settings["name"] = name
        stage = Stage(
            layout,
            "prepare",
            home / "manifest.json",
            settings=settings,
            inputs=inputs,
            extra_inputs={
                "rows": f"{int(rows_hash) & (2**64 - 1):016x}",
                "files": files_fingerprint(paths, names),
                **({"rejected": _frame_hash(rejected)} if len(rejected) else {}),
            },
            seed=policy.seed,
            what=f"prepared dataset '{name}'",
            keep=[] if force else [home / CACHE_DIR / IMAGES_FILE],  # build_cache reuses rows of unchanged files
        )
        with stage.open(force=force) as todo:
            if todo:
                with progress(len(samples), f"decode {dataset}") as advance:
                    reasons = build_cache(
                        paths,
                        home / CACHE_DIR,
                        settings=image,
                        image_format=raw.image_format,
                        workers=workers,
                        progress=advance,
                        layouts=[raw.pixel_layouts.get(p) for p in paths] if raw.pixel_layouts else None,
                    )
                if "mask_rle" in samples:  # segmentation: masks resized like their images, row for row
                    stage.record(build_masks(samples["mask_rle"].tolist(), home / CACHE_DIR, image))
                bad = pd.Series([r is not None for r in reasons], index=samples.index)
                quarantine = samples.loc[bad, ["sample_id", "patient_id", "path"]].assign(
                    reason=[r for r in reasons if r is not None], step="decode"
                )
                quarantine = pd.concat([quarantine, rejected], ignore_index=True) if len(rejected) else quarantine
                kept = samples.assign(cache_index=range(len(samples)))[~bad.to_numpy()].reset_index(drop=True)
                if kept.empty:
                    raise CxrbenchError(
                        f"no image of {dataset} under {root} could be decoded (see {home / QUARANTINE})"
                    )
                stage.write_parquet(home / SAMPLES, kept)
                stage.write_parquet(home / QUARANTINE, quarantine.reset_index(drop=True))
                stage.record(home / CACHE_DIR / IMAGES_FILE)
                stage.extra.update(summary)
                stage.extra.update(
                    images=len(kept),
                    image_format=raw.image_format,
                    patients=int(kept["patient_id"].nunique()),
                    quarantined=len(quarantine),
                    splits={s: int((kept["split"] == s).sum()) for s in ("train", "val", "test")},
                    prevalence=prevalence_table(kept).to_dict(orient="records"),
                )
        return stage.manifest


def _rejected(raw) -> pd.DataFrame:
    """The adapter's own refusals as quarantine rows (``step`` = ``scan``: never decoded, no cache row)."""
    columns = ["sample_id", "patient_id", "path", "reason"]
    if raw.rejected is None or raw.rejected.empty:
        return pd.DataFrame(columns=[*columns, "step"])
    frame = raw.rejected.reindex(columns=columns).astype(object)
    return frame.assign(step="scan").reset_index(drop=True)


def _frame_hash(frame: pd.DataFrame) -> str:
    return f"{int(pd.util.hash_pandas_object(frame, index=False).sum()) & (2**64 - 1):016x}"


def check_name(name: str) -> str:
    """A prepared dataset's name: one safe path component that no comparison file name can shadow."""
    from cxrbench.rundir import is_safe_name

    if not is_safe_name(name) or " " in name:
        raise CxrbenchError(f"--name {name!r}: use letters, digits and . _ + = - (no spaces or slashes)")
    if name in ("summary", "external") or "-to-" in name:
        raise CxrbenchError(
            f"--name {name!r}: taken by the comparison tables (summary, external, A-to-B); choose another"
        )
    return name


def adapter_of(prepared_manifest: Manifest) -> str:
    """The adapter a prepared dataset was read with (its name unless prepared with ``--name``)."""
    return str(prepared_manifest.settings["dataset"])


def _portable(root: Path, run: Path) -> str:
    """``root`` relative to the run when inside it (phantoms), so a copied run keeps its keys."""
    try:
        return Path(root).absolute().relative_to(Path(run).absolute()).as_posix()
    except ValueError:
        return str(Path(root).absolute())
