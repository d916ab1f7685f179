"""``cxrbench run --suite X --executor local|slurm``: the grid through a backend, then its tables."""

from __future__ import annotations

from pathlib import Path

from cxrbench.config import Suite
from cxrbench.errors import CxrbenchError
from cxrbench.rundir import Manifest, layout_of, read_complete

EXECUTORS = ("sequential", "local", "slurm")


def run_scaled(
    run: Path,
    suite: Suite,
    *,
    executor: str,
    jobs: int = 2,
    retries: int = 1,
    slurm: list[str] | None = None,
    cluster: str | None = None,
    device: str | None = None,
    precision: str | None = None,
    force: bool = False,
) -> Manifest:
    """Run every cell of ``suite`` with ``executor``; the compare manifest, or a one-line error naming
    the failed cells (``cxrbench status`` shows each error and log)."""
    from cxrbench.grid.schedule import run_grid
    from cxrbench.stages.suite import prepare_settings

    if executor not in EXECUTORS:
        raise CxrbenchError(f"--executor {executor!r}: use one of {', '.join(EXECUTORS)}")
    if jobs < 1:
        raise CxrbenchError(f"--jobs {jobs}: must be at least 1")
    if retries < 0:
        raise CxrbenchError(f"--retries {retries}: must be >= 0")
    if force:
        raise CxrbenchError("--force redoes stages one after another: use it with --executor sequential")
    if cluster not in (None, "slurm", "local", "debug"):
        raise CxrbenchError(f"--slurm-cluster {cluster!r}: use slurm, local or debug")
    for spec in suite.datasets:  # a bad option fails here, before any job is submitted
        prepare_settings(spec.options, where=f"suites.{suite.name}.prepare.{spec.name}")
    layout = layout_of(run)
    if executor == "local":
        from cxrbench.grid.local import LocalBackend

        backend = LocalBackend(layout.root, suite, jobs=jobs, device=device, precision=precision)
    else:
        from cxrbench.grid.slurm import SlurmBackend, parse_resources

        resources = parse_resources(suite.slurm, slurm)
        backend = SlurmBackend(
            layout.root, suite, resources=resources, cluster=cluster, device=device, precision=precision
        )
    outcome = run_grid(layout, suite, backend, retries=retries)
    if outcome.failed:
        first, error = next(iter(outcome.failed.items()))
        more = f" and {len(outcome.failed) - 1} more" if len(outcome.failed) > 1 else ""
        raise CxrbenchError(
            f"suite {suite.name}: cell {first} failed ({error}){more}; {len(outcome.not_reached)} cells not "
            f"reached; see `cxrbench status --suite {suite.name} --run {layout.root}`"
        )
    return read_complete(layout, layout.comparisons / "manifest.json", what="comparisons", hint="cxrbench compare")
