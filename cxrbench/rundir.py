"""The run directory: where stages find their inputs, and how they write outputs safely.

A stage's outputs count as finished only once its ``manifest.json`` says ``complete`` with a key
that matches the current inputs and settings. Every file is written under a temporary name and
renamed into place, the manifest last, so an interrupted stage never looks finished.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import json
import os
import platform
import re
import shutil
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa
import pyarrow.parquet as pq

from cxrbench import __version__
from cxrbench.console import info
from cxrbench.digests import BLOCK_SCHEME as _BLOCK_SCHEME
from cxrbench.digests import SCHEMES as _SCHEMES
from cxrbench.digests import new_digest as _new_digest
from cxrbench.errors import CxrbenchError

DEFAULT_RUN = Path("runs/default")
MANIFEST_SUFFIX = ".manifest.json"
_VERSIONED = ("numpy", "pandas", "pyarrow", "torch", "torchvision", "timm", "scikit-learn", "scipy", "pydicom")


def resolve_run(run: str | Path | None) -> Path:
    """The run directory: ``run`` if given, else ``$CXRBENCH_RUN``, else ``./runs/default``."""
    chosen = run if run is not None else os.environ.get("CXRBENCH_RUN") or DEFAULT_RUN
    path = Path(chosen).expanduser()
    if path.exists() and not path.is_dir():
        raise CxrbenchError(f"--run {path}: exists and is not a directory")
    return path


# ---------------------------------------------------------------------------------------------
# Names that become paths, and the layout of a run directory.

_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._+=-]{0,99}")
_UNSAFE_RUN = re.compile(r"[^A-Za-z0-9._+=-]+")


def is_safe_name(name: str) -> bool:
    """True when ``name`` can be one path component as it is (no separators, no ``..``, no leading dot)."""
    return (
        isinstance(name, str)
        and bool(_SAFE_NAME.fullmatch(name))
        and ".." not in name
        and not name.endswith((" ", "."))
    )


def safe_name(name: str, *, readable: str | None = None) -> str:
    """One folder-safe, collision-free path component for a name from input (label, encoder, dataset).

    A name that is already safe is kept as it is; any other (``file:/w/enc.pt``, ``hf:org/model``,
    ``../../x``) becomes its cleaned ``readable`` form (default: the name) plus 8 hex digits of the
    name's hash, so two different names never share a folder.
    """
    if is_safe_name(name):
        return name
    base = _UNSAFE_RUN.sub("-", readable if readable is not None else str(name)).strip("-. ")[:60] or "name"
    return f"{base}-{hashlib.sha256(str(name).encode()).hexdigest()[:8]}"


#: The tables ``compare`` writes beside the per-dataset ones (``comparisons/NAME.*``): a dataset whose
#: table would take one of these names is refused (``cxrbench.stages.evaluate.prediction_files``).
COMPARISON_VIEWS = ("summary", "seeds", "external", "bias")


@dataclass(frozen=True)
class RunLayout:
    """Every path of a run directory; no other module joins a run path.

    ::

        raw/DATASET/                                  generated inputs (synthetic phantoms)
        prepared/DATASET/{samples,quarantine}.parquet, cache/, manifest.json
        encoders/NAME/encoder.{safetensors,json}, manifest.json
        features/DATASET/ENCODER.parquet
        predictions/DATASET/ENCODER/ADAPTATION.parquet
        segmentation/DATASET/ENCODER/ADAPTATION.parquet   Dice/IoU per case (segment)
        predictions/TEST/ENCODER/ADAPTATION@TRAIN.parquet   trained on TRAIN, tested on TEST (external)
        finetuned/DATASET/ENCODER/ADAPTATION.safetensors
        checkpoints/STAGE/.../KEY/                    resumable training state, removed when done
        logs/STAGE/....parquet                        per-step training log
        evaluation/metrics.parquet, comparisons/DATASET.*, suites/NAME.json
        suites/NAME/{plan.json,cells/CELL.json}, logs/cells/NAME/CELL.log, logs/slurm/NAME/

    Name arguments go through ``safe_name``; ``inside`` refuses any path that leaves the run.
    """

    root: Path

    def __post_init__(self) -> None:
        # absolute (symlinks kept as given), so a joined path is never mistaken for a run-relative one
        object.__setattr__(self, "root", Path(self.root).expanduser().absolute())

    def _join(self, *parts: str) -> Path:
        return self.inside(self.root.joinpath(*(safe_name(p) for p in parts)))

    def inside(self, path: Path | str) -> Path:
        """``path`` (absolute, or relative to the run) if it stays inside the run, else a one-line error."""
        path = Path(path)
        full = path if path.is_absolute() else self.root / path
        try:
            full.resolve().relative_to(self.root.resolve())
        except ValueError:
            raise CxrbenchError(f"{path} is outside the run directory {self.root}; refusing to touch it") from None
        return full

    #: The run's top-level folders: every path above lies in one of them.
    AREAS: ClassVar[tuple[str, ...]] = (
        "raw",
        "prepared",
        "encoders",
        "features",
        "predictions",
        "segmentation",
        "finetuned",
        "checkpoints",
        "logs",
        "evaluation",
        "comparisons",
        "suites",
    )

    def manifests(self) -> list[Path]:
        """Every stage manifest of this run, sorted: only under its own areas, so another run kept
        inside this folder (``--run runs/a/b`` beside ``runs/a``'s stages) is never taken for its own."""
        found = []
        for area in self.AREAS:
            if (self.root / area).is_dir():
                found.extend((self.root / area).rglob("*manifest.json"))
        return sorted(found)

    def relative(self, path: Path | str) -> str:
        """``path`` relative to the run, as manifests store it (must be inside the run)."""
        full = self.inside(path)
        return full.resolve().relative_to(self.root.resolve()).as_posix()

    # inputs
    def raw(self, dataset: str) -> Path:
        return self._join("raw", dataset)

    def prepared(self, dataset: str) -> Path:
        return self._join("prepared", dataset)

    # models
    def encoder(self, name: str) -> Path:
        return self._join("encoders", name)

    def features(self, dataset: str, encoder: str, part: str | None = None) -> Path:
        """Frozen features of every image, or of the rows called ``part`` (``ENCODER@PART``: ``@``
        never occurs in a safe name)."""
        if part is None:
            return self._join("features", dataset, f"{safe_name(encoder)}.parquet")
        name = f"{safe_name(encoder)}@{safe_name(part)}.parquet"
        return self.inside(self.root / "features" / safe_name(dataset) / name)

    def predictions(self, dataset: str, encoder: str, adaptation: str) -> Path:
        return self._join("predictions", dataset, encoder, f"{safe_name(adaptation)}.parquet")

    def external_predictions(self, test: str, encoder: str, adaptation: str, train: str) -> Path:
        """Predictions on ``test`` of a model trained on ``train`` (``@`` never occurs in a safe name)."""
        name = f"{safe_name(adaptation)}@{safe_name(train)}.parquet"
        return self.inside(self.root / "predictions" / safe_name(test) / safe_name(encoder) / name)

    @property
    def predictions_root(self) -> Path:
        return self.root / "predictions"

    def segmentation(self, dataset: str, encoder: str, adaptation: str) -> Path:
        return self._join("segmentation", dataset, encoder, f"{safe_name(adaptation)}.parquet")

    @property
    def segmentation_root(self) -> Path:
        return self.root / "segmentation"

    def finetuned(self, dataset: str, encoder: str, adaptation: str) -> Path:
        return self._join("finetuned", dataset, encoder, f"{safe_name(adaptation)}.safetensors")

    # training state
    def checkpoints(self, stage: str, *parts: str) -> Path:
        """``checkpoints/STAGE/PARTS...``: one convention for every training stage."""
        return self._join("checkpoints", stage, *parts)

    def training_log(self, stage: str, *parts: str) -> Path:
        """``logs/STAGE/PARTS....parquet``: the per-step log of a training stage."""
        *head, last = parts
        return self._join("logs", stage, *head, f"{safe_name(last)}.parquet")

    def training_plot(self, stage: str, *parts: str) -> Path:
        """``logs/STAGE/PARTS...-loss``: the stem of the loss plot (``.png``, ``.pdf``) beside the log."""
        *head, last = parts
        return self._join("logs", stage, *head, f"{safe_name(last)}-loss")

    # results
    @property
    def evaluation(self) -> Path:
        return self.root / "evaluation"

    @property
    def metrics(self) -> Path:
        return self.evaluation / "metrics.parquet"

    def replicates(self, dataset: str) -> Path:
        """``evaluation/replicates/DATASET/``: bootstrap replicates shared by evaluate and compare (a
        cache keyed by the predictions' content, never a stage output)."""
        return self._join("evaluation", "replicates", dataset)

    @property
    def comparisons(self) -> Path:
        return self.root / "comparisons"

    @property
    def plot_cache(self) -> Path:
        """``comparisons/.plot-cache/``: plots keyed by a hash of their inputs, copied when unchanged."""
        return self.comparisons / ".plot-cache"

    def suite_record(self, suite: str) -> Path:
        return self._join("suites", f"{safe_name(suite)}.json")

    # suites run cell by cell (cxrbench.grid): who ran each cell, how it ended, and its log
    def suite_plan(self, suite: str) -> Path:
        """``suites/SUITE/plan.json``: the suite's cells and dependencies, for ``cxrbench status``."""
        return self._join("suites", suite, "plan.json")

    def cell_record(self, suite: str, cell: str) -> Path:
        return self._join("suites", suite, "cells", f"{cell}.json")

    def cell_lock(self, suite: str, cell: str) -> Path:
        return self._join("suites", suite, "cells", f"{cell}.lock")

    def cell_log(self, suite: str, cell: str) -> Path:
        return self._join("logs", "cells", suite, f"{cell}.log")

    def slurm_folder(self, suite: str) -> Path:
        """``logs/slurm/SUITE/``: submitit's job scripts, pickles and SLURM output."""
        return self._join("logs", "slurm", suite)


def clear_tree(run: RunLayout | Path, directory: Path) -> None:
    """Remove ``directory`` (inside the run) and then its parents while they are empty, up to the run."""
    import shutil

    layout = layout_of(run)
    directory = layout.inside(directory)
    shutil.rmtree(directory, ignore_errors=True)
    root = layout.root.resolve()
    for parent in directory.parents:
        if parent.resolve() == root or root not in parent.resolve().parents:
            break
        try:
            parent.rmdir()  # only if empty: other runs may still be checkpointing there
        except OSError:
            break


def layout_of(run: RunLayout | Path | str) -> RunLayout:
    """The layout of ``run`` (a RunLayout is returned as it is)."""
    return run if isinstance(run, RunLayout) else RunLayout(Path(run))


def file_hash(path: Path, *, chunk: int = 1 << 22) -> str:
    """SHA-256 of a file's bytes, streamed."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


#: Outputs larger than this are hashed in blocks of this size, on threads (``output_hash``).
HASH_BLOCK = 64 << 20


def output_hash(path: Path, *, block: int | None = None, fresh: bool = False, scheme: str = _BLOCK_SCHEME) -> str:
    """The hash a manifest records for an output: ``file_hash`` (SHA-256 of the bytes) up to
    ``block`` bytes (default ``HASH_BLOCK``); past it ``blake3-blocks-N:`` and the BLAKE3 of the
    concatenated BLAKE3 digests of its N-byte blocks (``scheme``: or the same with SHA-256), hashed
    on up to 8 threads (hashing and reads release the GIL), so a prepare's multi-GB image cache is
    hashed by every core, not one. Blocks whose digests the writer handed over
    (``remember_block_digests``) while the file is unchanged since are not read again, unless
    ``fresh`` (``verify``)."""
    block = block or HASH_BLOCK
    stat = os.stat(path)
    size = stat.st_size
    if size <= block:
        return file_hash(path)
    from concurrent.futures import ThreadPoolExecutor

    known: dict[int, bytes] = {}
    remembered = None if fresh else _KNOWN_BLOCKS.get((stat.st_dev, stat.st_ino))
    if remembered is not None and remembered[0] == (size, stat.st_mtime_ns, block, scheme):
        known = remembered[1]
    starts = [start for start in range(0, size, block) if start not in known]
    with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
        hashed = pool.map(lambda start: block_digest(path, start, block, scheme=scheme), starts)
        known = {**known, **dict(zip(starts, hashed, strict=True))}
    whole = _new_digest(scheme)
    whole.update(b"".join(known[start] for start in range(0, size, block)))
    return f"{scheme}{block}:{whole.hexdigest()}"


def block_digest(path: Path, start: int, block: int, *, scheme: str = _BLOCK_SCHEME) -> bytes:
    """The digest (BLAKE3, or SHA-256 for ``sha256-blocks-``) of the ``block`` bytes of ``path`` from
    ``start`` (fewer at its end)."""
    part = _new_digest(scheme)
    with open(path, "rb", buffering=0) as handle:
        handle.seek(start)
        left = block
        while left > 0 and (data := handle.read(min(left, 1 << 22))):
            part.update(data)
            left -= len(data)
    return part.digest()


#: Block digests of files hashed while they were written, by (device, inode): the file's size,
#: modification time, block size and scheme then, and the digests by block start.
_KNOWN_BLOCKS: dict[tuple[int, int], tuple[tuple[int, int, int, str], dict[int, bytes]]] = {}


def remember_block_digests(path: Path, block: int, digests: dict[int, bytes]) -> None:
    """Let ``output_hash`` use ``digests`` (``block_digest`` by block start) of ``path``, taken by its
    writer once those bytes were final, for as long as the file keeps its present size and
    modification time (a rename keeps them: the key is the inode)."""
    stat = os.stat(path)
    _KNOWN_BLOCKS[(stat.st_dev, stat.st_ino)] = ((stat.st_size, stat.st_mtime_ns, block, _BLOCK_SCHEME), dict(digests))


def output_matches(path: Path, digest: str) -> bool:
    """Whether ``path`` still has the recorded ``digest``, recomputed as it was made (its block scheme;
    plain SHA-256 in manifests written before block hashing, whatever the file's size)."""
    for scheme in _SCHEMES:
        if digest.startswith(scheme):
            block = digest[len(scheme) :].split(":", 1)[0]
            return (
                block.isdigit()
                and int(block) > 0
                and output_hash(path, block=int(block), fresh=True, scheme=scheme) == digest
            )
    return file_hash(path) == digest


def quick_fingerprint(path: Path, *, span: int = 1 << 16) -> str:
    """A cheap fingerprint of a file: SHA-256 of its size, first and last 64 KiB (catches truncation,
    appended or rewritten headers and footers; ``cxrbench verify`` re-hashes everything)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        digest.update(str(size).encode())
        digest.update(handle.read(span))
        if size > span:
            handle.seek(max(size - span, span))
            digest.update(handle.read(span))
    return digest.hexdigest()[:16]


def json_hash(value: Any) -> str:
    """SHA-256 of a JSON-able value in canonical form (sorted keys)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def software_versions() -> dict[str, str]:
    """Versions of Python, cxrbench and the numerical packages, for the manifest."""
    versions = {"python": platform.python_version(), "cxrbench": __version__}
    for name in _VERSIONED:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return versions


# ---------------------------------------------------------------------------------------------
# Atomic writes: the one way files get into a run directory.


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; on success rename it over ``path``, else remove it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        if tmp.exists():
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def remove_stale_temporaries(path: Path) -> None:
    """Remove ``.NAME.tmp-PID`` siblings of ``path`` whose writer is no longer running.

    A SIGKILL inside ``atomic_path`` skips its cleanup; the rerun that writes ``path`` again removes
    what was left. A temporary file whose pid is alive on this host is kept (it may be being written).
    """
    path = Path(path)
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.tmp-*"):
        pid = tmp.name.rpartition(".tmp-")[2]
        if pid.isdigit() and int(pid) > 0 and not _running(int(pid)):
            if tmp.is_dir() and not tmp.is_symlink():  # left by atomic_dir
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path``; on success it replaces ``path`` (a folder the
    caller has agreed to replace), else it is removed.

    Everything lives in one ``.NAME.tmp-PID`` container until the end: the new folder is built in it,
    the old ``path`` is moved into it, the new one renamed out, then the container removed, so a
    killed writer leaves nothing but the container, which the next writer of ``path`` removes.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    container = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(container, ignore_errors=True)
    container.mkdir()
    try:
        built = container / "new"
        built.mkdir()
        yield built
        if path.exists() or path.is_symlink():
            os.replace(path, container / "old")
        os.replace(built, path)
    finally:
        shutil.rmtree(container, ignore_errors=True)


def _running(pid: int) -> bool:
    """Whether process ``pid`` is alive on this host. A zombie is not: a SIGKILLed writer's pid
    stays taken until its parent reaps it (a container's init may never), and its temporaries and
    locks must not outlive it for that."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive unless a zombie
        pass
    return not _zombie(pid)


def _zombie(pid: int) -> bool:
    """Linux: ``pid`` has exited and waits to be reaped (state Z or X in ``/proc/PID/stat``); False
    where /proc cannot say."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
    except OSError:
        return False
    end = stat.rfind(b")")  # the state follows the command name, which may hold spaces and ')'
    return end >= 0 and stat[end + 2 : end + 3] in (b"Z", b"X")


def write_text(path: Path, text: str) -> Path:
    """Write ``text`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return path


def write_json(path: Path, value: Any) -> Path:
    """Write ``value`` as indented JSON, atomically."""
    return write_text(path, json.dumps(value, indent=2, sort_keys=True, default=str) + "\n")


def write_parquet(path: Path, table: pa.Table | Any) -> Path:
    """Write a pyarrow Table (or pandas DataFrame) as Parquet, atomically and reproducibly."""
    if not isinstance(table, pa.Table):
        table = pa.Table.from_pandas(table, preserve_index=False)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    return path


# ---------------------------------------------------------------------------------------------
# Manifests and stage keys.


@dataclass
class Manifest:
    """What a stage wrote, from what, with which settings; ``complete`` is set last."""

    stage: str
    key: str
    settings: dict[str, Any]
    inputs: dict[str, str] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    seed: int | None = None
    versions: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    complete: bool = False
    created: str = ""
    #: run-relative path -> [size in bytes, quick fingerprint]: checked before a stage is skipped
    sizes: dict[str, list] = field(default_factory=dict)

    def intact(self, run: RunLayout | Path) -> str | None:
        """None if every output is present with its recorded size and fingerprint, else what is wrong."""
        layout = layout_of(run)
        for rel in self.outputs:
            path = layout.inside(rel)
            if not path.is_file():
                return f"{path} is missing"
            recorded = self.sizes.get(rel)
            if recorded is None:  # manifests written before sizes were recorded: existence only
                continue
            size = path.stat().st_size
            if size != recorded[0]:
                return f"{path} has {size} bytes, {recorded[0]} were written"
            if quick_fingerprint(path) != recorded[1]:
                return f"{path} was changed after it was written"
        return None

    @classmethod
    def read(cls, path: Path) -> Manifest | None:
        """The manifest at ``path``, or None if absent or unreadable (treated as not finished)."""
        try:
            data = json.loads(Path(path).read_text())
            return cls(**data)
        except (OSError, ValueError, TypeError):
            return None

    def write(self, path: Path) -> Path:
        return write_json(path, self.__dict__)


def manifest_path_for(artifact: Path) -> Path:
    """Sidecar manifest of a single-file artifact: ``x/probe.parquet`` -> ``x/probe.manifest.json``.

    Only the last suffix is dropped: ``probe-f0.10-s0.parquet`` and ``probe-f0.01-s0.parquet`` must
    not share one manifest (and lock), or each run would delete the other's predictions.
    """
    artifact = Path(artifact)
    return artifact.with_name(artifact.stem + MANIFEST_SUFFIX)


def read_complete(run: RunLayout | Path, manifest_path: Path, *, what: str, hint: str) -> Manifest:
    """The complete manifest at ``manifest_path``, or a one-line error telling how to make it."""
    manifest = Manifest.read(manifest_path)
    if manifest is None or not manifest.complete:
        state = "is incomplete" if manifest_path.exists() else "does not exist"
        raise CxrbenchError(f"{what} in {run} {state}; run `{hint}` first")
    problem = manifest.intact(run)
    if problem is not None:
        raise CxrbenchError(f"{what}: {problem}; rerun `{hint} --force`")
    return manifest


def current_outputs(run: RunLayout | Path) -> dict[str, str]:
    """Content hash of every output of every complete manifest in the run, by run-relative path."""
    layout = layout_of(run)
    hashes: dict[str, str] = {}
    for path in layout.manifests():
        manifest = Manifest.read(path)
        if manifest is not None and manifest.complete:
            hashes.update(manifest.outputs)
    return hashes


def stale_inputs(manifest: Manifest, current: Mapping[str, str]) -> list[str]:
    """The inputs of ``manifest`` that another stage has since rewritten (hash differs from ``current``)."""
    return [rel for rel, digest in manifest.inputs.items() if rel in current and current[rel] != digest]


def stage_key(stage: str, settings: Mapping[str, Any], inputs: Mapping[str, str], seed: int | None = None) -> str:
    """Hash of the stage name, its settings, its inputs' content hashes, its seed and the cxrbench
    version: a stage rerun with another seed (``pretrain --seed 1`` into the same encoder) is not up
    to date, and two seeds' outputs never share a key."""
    return json_hash({"stage": stage, "settings": settings, "inputs": inputs, "seed": seed, "version": __version__})


def input_hashes(*manifests: Manifest) -> dict[str, str]:
    """Content hashes of every output of the given input manifests, keyed by run-relative path."""
    hashes: dict[str, str] = {}
    for manifest in manifests:
        hashes.update(manifest.outputs)
    return dict(sorted(hashes.items()))


# ---------------------------------------------------------------------------------------------
# Locks: one writer per stage output.


@contextlib.contextmanager
def stage_lock(lock_path: Path, *, what: str) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_path`` or fail at once naming the process that holds it.

    ``flock`` on local disks (a lock left by a killed run is simply taken over), atomic lock files
    with a heartbeat on NFS and Lustre: see ``cxrbench.locks``.
    """
    from cxrbench.locks import exclusive

    with exclusive(lock_path, what=what):
        yield


# ---------------------------------------------------------------------------------------------
# The stage protocol.


class Stage:
    """One stage output: decides whether work is needed, and records what was written.

    Usage::

        stage = Stage(run, "probe", manifest_path, settings=..., inputs=[samples_manifest], seed=0)
        # extra_inputs: content hashes of inputs that are not stage outputs (e.g. a dataset's CSV rows)
        with stage.open(force=force) as todo:
            if todo:
                stage.write_parquet(out, table)   # or record(path) for files written otherwise
        stage.manifest                            # the complete manifest (new or reused)
    """

    def __init__(
        self,
        run: RunLayout | Path,
        name: str,
        manifest_path: Path,
        *,
        settings: Mapping[str, Any],
        inputs: tuple[Manifest, ...] | list[Manifest] = (),
        extra_inputs: Mapping[str, str] | None = None,
        seed: int | None = None,
        what: str | None = None,
        keep: Iterable[Path] = (),
    ) -> None:
        self.layout = layout_of(run)
        self.run = self.layout.root
        self.name = name
        self.manifest_path = self.layout.inside(manifest_path)
        self.settings = dict(settings)
        self.inputs = {**input_hashes(*inputs), **dict(extra_inputs or {})}
        self.seed = seed
        self.what = what or f"{name} output {self.relative(self.manifest_path.parent)}"
        self.key = stage_key(name, self.settings, self.inputs, seed)
        # outputs that check their own validity (the image cache: its image settings, each row's
        # file size and time, its done-mask) and are worth keeping when the stage is redone
        self.keep = {self.relative(path) for path in keep}
        self.outputs: dict[str, Path] = {}
        self.extra: dict[str, Any] = {}
        self.manifest: Manifest | None = None
        self.skipped = False

    def relative(self, path: Path) -> str:
        """``path`` relative to the run directory, as stored in manifests (refused if outside it)."""
        return self.layout.relative(path)

    def up_to_date(self) -> Manifest | None:
        """The existing manifest if it is complete, has this key, and its outputs are intact."""
        manifest = Manifest.read(self.manifest_path)
        if manifest is None or not manifest.complete or manifest.key != self.key:
            return None
        problem = manifest.intact(self.layout)
        if problem is not None:
            info(f"{self.what}: {problem}; redoing it")
            return None
        return manifest

    @property
    def lock_path(self) -> Path:
        """Hidden lock file beside the manifest: ``.probe.lock``, ``.manifest.lock``."""
        stem = self.manifest_path.name.removesuffix(MANIFEST_SUFFIX).removesuffix(".json")
        return self.manifest_path.with_name(f".{stem}.lock")

    @contextlib.contextmanager
    def open(self, *, force: bool = False) -> Iterator[bool]:
        """Lock, then yield True if the stage must run (False: up to date); finalise on success.

        In a run directory this process cannot write (read-only copy, other owner) an up-to-date
        stage is still skipped; one that needs work is a one-line error.
        """
        with contextlib.ExitStack() as stack:
            try:
                stack.enter_context(stage_lock(self.lock_path, what=self.what))
            except OSError as exc:
                if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                    raise
                existing = None if force else self.up_to_date()
                if existing is None:
                    raise CxrbenchError(
                        f"{self.what}: cannot write in {self.lock_path.parent} "
                        f"({exc.strerror}); it needs to be (re)done"
                    ) from None
                self.manifest, self.skipped = existing, True
                info(f"{self.what}: up to date, nothing to do (read-only)")
                yield False
                return
            # a --force run killed while writing the manifest leaves a temporary that an up-to-date
            # stage would never write over (and so never clear) again
            remove_stale_temporaries(self.manifest_path)
            existing = None if force else self.up_to_date()
            if existing is not None:
                self.manifest, self.skipped = existing, True
                info(f"{self.what}: up to date, nothing to do (--force redoes it)")
                yield False
                return
            self._invalidate()
            started = time.time()
            yield True
            self._finish(started)

    def _invalidate(self) -> None:
        """Mark the output unfinished before touching anything, and drop the previous outputs (all
        but those in ``keep``, which the stage's own code checks before reusing)."""
        previous = Manifest.read(self.manifest_path)
        Manifest(stage=self.name, key=self.key, settings=self.settings, complete=False).write(self.manifest_path)
        if previous is not None:
            for rel in [r for r in previous.outputs if r not in self.keep]:
                path = self.layout.inside(rel)
                if path.is_file():
                    path.unlink()

    def record(self, path: Path) -> Path:
        """Register a finished output file written by other means (already renamed into place)."""
        self.outputs[self.relative(path)] = self.layout.inside(path)
        return Path(path)

    def write_parquet(self, path: Path, table: Any) -> Path:
        return self.record(write_parquet(self.layout.inside(path), table))

    def write_json(self, path: Path, value: Any) -> Path:
        return self.record(write_json(self.layout.inside(path), value))

    def write_text(self, path: Path, text: str) -> Path:
        return self.record(write_text(self.layout.inside(path), text))

    def _finish(self, started: float) -> None:
        outputs = {rel: output_hash(path) for rel, path in sorted(self.outputs.items())}
        sizes = {rel: [path.stat().st_size, quick_fingerprint(path)] for rel, path in sorted(self.outputs.items())}
        self.manifest = Manifest(
            stage=self.name,
            key=self.key,
            settings=self.settings,
            inputs=self.inputs,
            outputs=outputs,
            seed=self.seed,
            versions=software_versions(),
            timings={"seconds": round(time.time() - started, 3)},
            extra=self.extra,
            complete=True,
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            sizes=sizes,
        )
        self.manifest.write(self.manifest_path)
