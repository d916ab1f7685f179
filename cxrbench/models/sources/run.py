"""A ``cxrbench pretrain`` output in this run (``RUN/encoders/NAME``), used as ``--encoder NAME``.

The fallback source: any name no other source claims. Its stage inputs are the encoder files of the
pretrain manifest (not its training log), so a re-pretrained encoder invalidates every feature, probe
and finetune built on it, unless it came out byte for byte the same.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from cxrbench.errors import CxrbenchError
from cxrbench.models.sources._saved import SavedSpec, saved_spec
from cxrbench.models.sources.base import WeightSpec, saved_arch
from cxrbench.rundir import is_safe_name, layout_of, read_complete

FALLBACK = True


def parse(name: str, *, arch: str | None, run: Path | None) -> SavedSpec:
    from cxrbench.models.encoders import ENCODER_META, ENCODER_WEIGHTS
    from cxrbench.models.sources import builtin_names, source_modules

    usages = [m.USAGE for m in source_modules() if getattr(m, "USAGE", None)]
    known = f"use one of {', '.join(builtin_names() + usages)}, or the name of a pretrain output in the run"
    if run is None:
        raise CxrbenchError(f"unknown encoder {name!r}; {known} (needs --run)")
    if not is_safe_name(name):
        raise CxrbenchError(f"unknown encoder {name!r}; {known}")
    layout = layout_of(run)
    directory = layout.encoder(name)
    recorded = saved_arch(directory)
    if recorded is None:
        raise CxrbenchError(f"unknown encoder {name!r}: no pretrain output at {directory / ENCODER_META}; {known}")
    weights_path = directory / ENCODER_WEIGHTS
    present = weights_path.is_file()
    weights = WeightSpec(
        name,
        recorded,
        f"run:{name}",
        present,
        str(weights_path),
        f"cxrbench pretrain --run {layout.root}  (the pretrain stage that writes {name})",
    )
    inputs = ()
    if present and (directory / "manifest.json").exists():
        manifest = read_complete(
            layout,
            directory / "manifest.json",
            what=f"pretrained encoder '{name}'",
            hint=f"cxrbench pretrain ... --name {name}",
        )
        # The encoder is its folder's files. The pretrain's other output, its per-step log, holds
        # images/s timings: as an input it made every key built on the encoder differ between two
        # runs of the same pretraining (and a pretrain --force redo everything after it).
        folder = layout.relative(directory) + "/"
        inputs = (replace(manifest, outputs={rel: h for rel, h in manifest.outputs.items() if rel.startswith(folder)}),)
    return saved_spec(name, directory, arch=arch, source=f"run:{name}", weights=weights, inputs=inputs)
