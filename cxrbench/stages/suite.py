"""`cxrbench run --suite NAME`: a suite's whole grid through the same stage functions, resumable.

Each stage skips itself when its manifest is up to date, so rerunning a finished suite does nothing
and rerunning an interrupted one continues from the first unfinished stage. A finished suite leaves
a record of its stage keys; when the config, the prepared datasets and every recorded manifest are
unchanged, the rerun stops there, without loading the model stack.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from cxrbench import __version__
from cxrbench.config import Suite
from cxrbench.console import info
from cxrbench.data.samples import LabelPolicy
from cxrbench.data.splits import parse_ratios
from cxrbench.data.transforms import Preprocess
from cxrbench.errors import CxrbenchError
from cxrbench.rundir import Manifest, RunLayout, json_hash, layout_of, write_json

_POLICY_KEYS = ("uncertain", "min_positives", "views", "split", "seed")
_IMAGE_KEYS = ("size", "aspect", "equalize")


def prepare_settings(
    options: dict[str, Any], *, where: str = "prepare"
) -> tuple[LabelPolicy, Preprocess, dict[str, Any]]:
    """Split a suite's prepare options into the label policy, image settings and adapter options.

    Mistakes are one-line errors prefixed with ``where`` (the TOML table they came from).
    """
    options = dict(options)
    policy = {k: options.pop(k) for k in _POLICY_KEYS if k in options}
    image = {k: options.pop(k) for k in _IMAGE_KEYS if k in options}
    try:
        if "split" in policy:
            policy["split"] = parse_ratios(str(policy["split"]))
        return LabelPolicy(**policy), Preprocess(**image), options
    except CxrbenchError as exc:
        raise CxrbenchError(f"{where}: {exc.message}") from None
    except TypeError as exc:
        raise CxrbenchError(f"{where}: bad prepare option: {exc}") from None


def run_suite(
    run: RunLayout | Path, suite: Suite, *, force: bool = False, device: str | None = None, precision: str | None = None
) -> dict[str, Manifest]:
    """Run every cell of ``suite`` in this process, in dependency order; returns the manifests by cell id
    (``prepare/nih``, ``probe/nih/imagenet/f=1/s=0``, ..., ``compare``)."""
    run = layout_of(run)
    # every dataset's settings are checked before the first is prepared: a bad split or option in
    # the last dataset fails the run before any work, not after hours of it
    for spec in suite.datasets:
        prepare_settings(spec.options, where=f"suites.{suite.name}.prepare.{spec.name}")
    from cxrbench.grid.cells import run_cell
    from cxrbench.grid.plan import plan
    from cxrbench.grid.states import write_plan

    cells = plan(suite)
    write_plan(run, suite, cells, {})

    def step(cell) -> Manifest:
        options = {"device": device, "precision": precision, "force": force}
        return run_cell(run, suite, cell, **options, log=False, raise_errors=True)["manifest"]

    done: dict[str, Manifest] = {}
    for cell in cells:
        if cell.kind == "prepare":
            done[cell.id] = step(cell)
    record_path = run.suite_record(suite.name)
    fingerprint = _fingerprint(suite)
    if not force:
        recorded = _recorded(run, record_path, fingerprint, done)
        if recorded is not None:
            info(f"suite {suite.name}: every stage is up to date, nothing to do (--force redoes it)")
            return recorded
    for cell in cells:
        if cell.kind != "prepare":
            done[cell.id] = step(cell)
    write_json(record_path, {"fingerprint": fingerprint, "keys": {name: m.key for name, m in done.items()}})
    return done


def _fingerprint(suite: Suite) -> str:
    """Hash of the suite's settings, the cxrbench version and the size/time of local weight files."""
    files = {}
    for encoder in suite.encoders:
        if encoder.startswith("file:") and os.path.exists(encoder[5:]):
            stat = os.stat(encoder[5:])
            files[encoder] = [stat.st_size, stat.st_mtime_ns]
    settings = dataclasses.asdict(suite)
    settings.pop("slurm")  # where cells run does not change what they compute
    return json_hash({"suite": settings, "version": __version__, "files": files})


def _recorded(
    run: RunLayout, record_path: Path, fingerprint: str, prepared: dict[str, Manifest]
) -> dict[str, Manifest] | None:
    """The manifests of the last finished run of this suite if nothing they depend on changed."""
    try:
        record = json.loads(record_path.read_text())
    except (OSError, ValueError):
        return None
    keys = record.get("keys", {})
    if record.get("fingerprint") != fingerprint or any(keys.get(n) != m.key for n, m in prepared.items()):
        return None
    complete = {}
    for path in run.manifests():
        manifest = Manifest.read(path)
        if manifest is not None and manifest.complete and manifest.intact(run) is None:
            complete[manifest.key] = manifest
    if not all(key in complete for key in keys.values()):
        return None
    return {name: complete[key] for name, key in keys.items()}
