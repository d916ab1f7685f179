"""`cxrbench verify`: re-hash every output of every finished stage in a run, and check each prepared
dataset's image files and each stage's inputs, without changing anything."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from cxrbench.console import progress
from cxrbench.data.prepared import QUARANTINE, SAMPLES
from cxrbench.rundir import (
    Manifest,
    RunLayout,
    current_outputs,
    layout_of,
    output_matches,
    stale_inputs,
)


@dataclass(frozen=True)
class Finding:
    """One manifest checked: ``problem`` is None when everything it records holds."""

    manifest: str
    stage: str
    files: int
    problem: str | None


def _image_files_changed(layout: RunLayout, manifest: Manifest, directory: Path) -> str | None:
    """Whether the images a prepared dataset was decoded from changed since (size or time)."""
    from cxrbench.stages.prepare import files_fingerprint, relative_paths

    recorded = manifest.inputs.get("files")
    if recorded is None:
        return None
    kept = pd.read_parquet(directory / SAMPLES, columns=["path", "cache_index"])
    quarantined = pd.read_parquet(directory / QUARANTINE)
    if "step" in quarantined:  # files the adapter refused before decoding have no cache row
        quarantined = quarantined[quarantined["step"] != "scan"]
    order = [""] * (len(kept) + len(quarantined))
    for path, index in zip(kept["path"], kept["cache_index"], strict=True):
        order[int(index)] = path
    free = iter(quarantined["path"])
    order = [p if p else next(free) for p in order]
    root = Path(manifest.settings["root"])
    root = root if root.is_absolute() else layout.root / root
    paths = pd.Series(order, dtype=object)
    if files_fingerprint(order, relative_paths(paths, root)) != recorded:
        return f"image files under {root} changed since it was prepared; rerun `cxrbench prepare ...` (it decodes the changed ones)"
    return None


def verify(run: RunLayout | Path) -> list[Finding]:
    """Every manifest in the run, checked: outputs re-hashed in full, inputs current, images unchanged."""
    layout = layout_of(run)
    manifests = []
    for path in layout.manifests():
        manifests.append((path, Manifest.read(path)))
    current = current_outputs(layout)
    total = sum(len(m.outputs) for _, m in manifests if m is not None)
    findings = []
    with progress(total, "verify (files)") as advance:
        for path, manifest in manifests:
            rel = path.relative_to(layout.root).as_posix()
            if manifest is None:
                findings.append(Finding(rel, "?", 0, "unreadable manifest; rerun its stage with --force"))
                continue
            problem = None if manifest.complete else "unfinished; rerun its stage"
            for out, digest in manifest.outputs.items():
                advance(1)
                if problem is not None:
                    continue
                target = layout.inside(out)
                if not target.is_file():
                    problem = f"{out} is missing; rerun `cxrbench {manifest.stage} ... --force`"
                elif not output_matches(target, digest):
                    problem = f"{out} differs from what was written; rerun `cxrbench {manifest.stage} ... --force`"
            if problem is None and manifest.stage == "prepare":
                problem = _image_files_changed(layout, manifest, path.parent)
            if problem is None:
                changed = stale_inputs(manifest, current)
                if changed:
                    problem = f"made from an older {changed[0]}; rerun `cxrbench {manifest.stage}`"
            findings.append(Finding(rel, manifest.stage, len(manifest.outputs), problem))
    return findings
