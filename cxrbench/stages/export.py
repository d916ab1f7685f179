"""`cxrbench export --suite NAME OUT`: a finished suite as a self-contained folder for a paper's supplement.

The folder holds the comparison tables and plots, the metrics, every manifest the results came from,
the suite as TOML with the commands that remake it, the software environment, ``SHA256SUMS`` and one
``index.html`` showing it all. It is built in a temporary folder and renamed into place; an ``OUT``
that holds anything but an earlier export is refused.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import platform
import shlex
import shutil
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from cxrbench import __version__
from cxrbench.config import Suite
from cxrbench.errors import CxrbenchError
from cxrbench.report import site
from cxrbench.rundir import (
    Manifest,
    RunLayout,
    atomic_dir,
    file_hash,
    layout_of,
    output_matches,
    safe_name,
    software_versions,
)

#: the file that marks a folder as a cxrbench export (an export may replace only such a folder)
MARKER = "export.json"
FORMAT = "cxrbench-export"
TABLE_FORMATS = ("html", "md", "csv", "tex", "parquet")


@dataclass(frozen=True)
class Step:
    """A stage output the suite's results depend on: its readable step name and manifest."""

    name: str
    path: Path
    manifest: Manifest


def export(
    run: RunLayout | Path,
    suite: Suite,
    out: Path,
    *,
    predictions: bool = False,
    run_arg: str | None = None,
) -> Path:
    """Write the bundle of ``suite``'s finished run to ``out``; returns the path of its ``index.html``.

    ``run_arg`` is the run directory as the user spelled it, for the commands in the bundle.
    """
    layout = layout_of(run)
    out = Path(out).expanduser()
    _check_out(out, layout)
    found = _complete_manifests(layout)
    steps, record = _suite_steps(layout, suite, found)
    provenance = _provenance(steps, found)
    run_label = run_arg if run_arg is not None else str(layout.root)
    with atomic_dir(out) as tmp:
        bundle = _Bundle(tmp)
        compare, evaluate = steps["compare"].manifest, steps["evaluate"].manifest
        for rel, digest in sorted({**evaluate.outputs, **compare.outputs}.items()):
            bundle.copy(layout, rel, digest)
        if predictions:
            for step in steps.values():
                if step.manifest.stage in ("probe", "finetune"):
                    for rel, digest in step.manifest.outputs.items():
                        if rel.startswith("predictions/"):
                            bundle.copy(layout, rel, digest)
        metrics = _read_metrics(tmp, evaluate)
        if metrics is not None:
            bundle.text("evaluation/metrics.csv", metrics.to_csv(index=False, lineterminator="\n"))
        manifest_links = []
        for step in sorted([*steps.values(), *provenance], key=_pipeline_order):
            rel = "manifests/" + layout.relative(step.path)
            bundle.copy_file(step.path, rel)
            manifest_links.append((step, rel))
        bundle.copy_file(
            layout.suite_record(suite.name), "manifests/" + layout.relative(layout.suite_record(suite.name))
        )
        bundle.text("suite.toml", suite_toml(suite))
        commands = _commands(suite, run_label, out)
        bundle.text("commands.sh", commands)
        env = environment()
        stage_versions = _stage_versions([*steps.values(), *provenance])
        bundle.text("environment.json", json.dumps({**env, "stages": stage_versions}, indent=2, sort_keys=True) + "\n")
        bundle.text("requirements.txt", "".join(f"{n}=={v}\n" for n, v in env["packages"].items()))
        created = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        bundle.text(
            MARKER,
            json.dumps(
                {
                    "format": FORMAT,
                    "cxrbench": __version__,
                    "suite": suite.name,
                    "run": run_label,
                    "created": created,
                    "fingerprint": record.get("fingerprint"),
                    "steps": {name: step.manifest.key for name, step in steps.items()},
                },
                indent=2,
                sort_keys=True,
            )
            + "\n",
        )
        page = _page(
            suite,
            steps,
            manifest_links,
            bundle,
            metrics,
            commands=commands,
            env=env,
            stage_versions=stage_versions,
            run_label=run_label,
            created=created,
        )
        bundle.text("index.html", site.render_page(page))
        bundle.text("README.txt", _readme(suite, predictions=predictions))
        sums = "".join(f"{digest}  {rel}\n" for rel, digest in sorted(bundle.files.items()))
        (tmp / "SHA256SUMS").write_text(sums)
    return out / "index.html"


# ---------------------------------------------------------------------------------------------
# What the suite's results came from.


def _check_out(out: Path, layout: RunLayout) -> None:
    """Refuse an ``out`` that is a file, holds the run, lies in it, or holds anything but an export."""
    target, root = out.resolve(), layout.root.resolve()
    if target == root or root.is_relative_to(target):
        raise CxrbenchError(f"{out}: holds the run directory {layout.root}; export to a new folder")
    if target.is_relative_to(root):
        raise CxrbenchError(f"{out}: is inside the run directory {layout.root}; export to a folder outside it")
    if not (out.exists() or out.is_symlink()):
        return
    if out.is_symlink():
        raise CxrbenchError(f"{out}: is a symbolic link; name the folder itself")
    if not out.is_dir():
        raise CxrbenchError(f"{out}: exists and is not a folder; choose a new or empty folder")
    if any(out.iterdir()) and not is_export(out):
        raise CxrbenchError(
            f"{out}: not empty and not an earlier cxrbench export (no {MARKER}); choose a new or empty folder"
        )


def is_export(folder: Path) -> bool:
    """True when ``folder`` holds a cxrbench export (its marker file says so)."""
    try:
        return json.loads((Path(folder) / MARKER).read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _suite_steps(
    layout: RunLayout, suite: Suite, found: dict[str, tuple[Path, Manifest]]
) -> tuple[dict[str, Step], dict[str, Any]]:
    """The manifests of the suite's last finished run, by step name; one-line errors if it is not
    finished, its settings changed since, or a stage's outputs are gone or changed."""
    from cxrbench.stages.suite import _fingerprint

    again = f"cxrbench run --suite {suite.name}"
    path = layout.suite_record(suite.name)
    try:
        record = json.loads(path.read_text())
        keys = dict(record["keys"])
    except (OSError, ValueError, KeyError, TypeError):
        raise CxrbenchError(f"suite {suite.name} has not finished in {layout.root}; run `{again}` first") from None
    if record.get("fingerprint") != _fingerprint(suite):
        raise CxrbenchError(
            f"suite {suite.name}: its settings (or cxrbench's version) changed since it ran in {layout.root}; "
            f"run `{again}` first"
        )
    steps = {}
    for name, key in keys.items():
        if key not in found:
            raise CxrbenchError(f"suite {suite.name}: step '{name}' is no longer finished; run `{again}` first")
        manifest_path, manifest = found[key]
        problem = manifest.intact(layout)
        if problem is not None:
            raise CxrbenchError(f"suite {suite.name}: step '{name}': {problem}; run `{again}` first")
        steps[name] = Step(name, manifest_path, manifest)
    for needed in ("evaluate", "compare"):
        if needed not in steps:
            raise CxrbenchError(f"suite {suite.name}: its record in {path} names no '{needed}' step; run `{again}`")
    return steps, record


def _complete_manifests(layout: RunLayout) -> dict[str, tuple[Path, Manifest]]:
    """Every complete manifest in the run, by stage key."""
    found = {}
    for path in layout.manifests():
        manifest = Manifest.read(path)
        if manifest is not None and manifest.complete:
            found.setdefault(manifest.key, (path, manifest))
    return found


def _provenance(steps: dict[str, Step], found: dict[str, tuple[Path, Manifest]]) -> list[Step]:
    """The manifests of stages the suite's steps read from without naming them (cached features)."""
    producers: dict[tuple[str, str], tuple[Path, Manifest]] = {}
    for path, manifest in found.values():
        for rel, digest in manifest.outputs.items():
            producers[(rel, digest)] = (path, manifest)
    seen = {step.path for step in steps.values()}
    todo = [step.manifest for step in steps.values()]
    extra = []
    while todo:
        for item in todo.pop().inputs.items():
            if item in producers and producers[item][0] not in seen:
                path, manifest = producers[item]
                seen.add(path)
                extra.append(Step(f"({manifest.stage})", path, manifest))
                todo.append(manifest)
    return sorted(extra, key=lambda s: str(s.path))


_STAGE_ORDER = ("generate", "prepare", "pretrain", "features", "probe", "finetune", "evaluate", "compare")


def _pipeline_order(step: Step) -> tuple[int, str]:
    """Steps in the order the pipeline runs them (unknown stages last), then by output path."""
    stage = step.manifest.stage
    rank = _STAGE_ORDER.index(stage) if stage in _STAGE_ORDER else len(_STAGE_ORDER)
    return rank, str(step.path)


# ---------------------------------------------------------------------------------------------
# Writing the bundle.


class _Bundle:
    """The folder being written: copies and texts, with the SHA-256 of each file for ``SHA256SUMS``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.files: dict[str, str] = {}

    def _target(self, rel: str) -> Path:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def copy(self, layout: RunLayout, rel: str, digest: str) -> None:
        """Copy a stage output, checking it is still the file its manifest recorded."""
        target = self._target(rel)
        shutil.copyfile(layout.inside(rel), target)
        got = file_hash(target)  # SHA256SUMS lists plain SHA-256; a large output's manifest a block hash
        if got != digest and not output_matches(target, digest):
            raise CxrbenchError(
                f"{layout.root / rel} changed after its stage wrote it; run `cxrbench verify --run {layout.root}`"
            )
        self.files[rel] = got

    def copy_file(self, source: Path, rel: str) -> None:
        target = self._target(rel)
        shutil.copyfile(source, target)
        self.files[rel] = file_hash(target)

    def text(self, rel: str, text: str) -> None:
        target = self._target(rel)
        target.write_text(text, encoding="utf-8")
        self.files[rel] = file_hash(target)

    def has(self, rel: str) -> bool:
        return rel in self.files

    def read(self, rel: str) -> str:
        return (self.root / rel).read_text(encoding="utf-8")


def _read_metrics(root: Path, evaluate: Manifest):
    import pandas as pd

    rel = "evaluation/metrics.parquet"
    return pd.read_parquet(root / rel) if rel in evaluate.outputs else None


def _commands(suite: Suite, run_label: str, out: Path) -> str:
    """The shell commands that ran the suite and made this bundle, reading the bundle's suite.toml."""
    run, name = shlex.quote(run_label), shlex.quote(suite.name)
    return (
        "#!/bin/sh\n"
        f"# The suite '{suite.name}' as cxrbench {__version__} ran it, and the export that made this bundle.\n"
        "# Run it as `sh BUNDLE/commands.sh` from the folder the suite ran in (the run directory is named\n"
        "# as it was given); suite.toml beside this file holds the suite's exact settings, requirements.txt\n"
        "# the packages.\n"
        "set -e\n"
        'BUNDLE=$(cd "$(dirname "$0")" && pwd)\n'
        f'cxrbench run --suite {name} --config "$BUNDLE/suite.toml" --run {run}\n'
        f'cxrbench export --suite {name} --config "$BUNDLE/suite.toml" --run {run} {shlex.quote(str(out))}\n'
    )


def environment() -> dict[str, Any]:
    """Where the export runs: Python, platform, the numerical packages' versions and every installed package."""
    packages: dict[str, str] = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name and name.lower() not in {n.lower() for n in packages}:
            packages[name] = dist.version
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "versions": software_versions(),
        "packages": dict(sorted(packages.items(), key=lambda kv: kv[0].lower())),
    }


def _stage_versions(steps: list[Step]) -> dict[str, dict[str, list[str]]]:
    """For every package the manifests record: each version seen and the steps that ran with it."""
    seen: dict[str, dict[str, list[str]]] = {}
    for step in steps:
        for package, version in step.manifest.versions.items():
            seen.setdefault(package, {}).setdefault(version, []).append(step.name)
    return dict(sorted(seen.items()))


# ---------------------------------------------------------------------------------------------
# suite.toml: the suite back as TOML that `--config` reads to the same suite.


def suite_toml(suite: Suite) -> str:
    """The suite as a ``[suites.NAME]`` TOML table that ``config.load_config`` reads back unchanged."""
    head = f"suites.{_key(suite.name)}"
    top: dict[str, Any] = {
        "description": suite.description,
        "datasets": [d.name for d in suite.datasets],
        "encoders": list(suite.encoders),
        "baseline": suite.baseline,
        "adaptations": list(suite.adaptations),
        "fractions": list(suite.fractions),
        "seeds": list(suite.seeds),
    }
    if suite.arch is not None:
        top["arch"] = suite.arch
    lines = [f"# suite '{suite.name}', exported by cxrbench {__version__}", f"[{head}]"]
    lines += [f"{_key(k)} = {_value(v)}" for k, v in top.items()]
    tables: list[tuple[str, dict[str, Any]]] = []
    for spec in suite.datasets:
        options = {**({"root": spec.root} if spec.root is not None else {}), **spec.options}
        tables.append((f"prepare.{_key(spec.name)}", options))
    for name, spec in suite.pretrain.items():
        tables.append((f"pretrain.{_key(name)}", {"method": spec.method, "dataset": spec.dataset, **spec.options}))
    for name in ("probe", "finetune", "evaluate", "compare"):
        if getattr(suite, name):
            tables.append((name, getattr(suite, name)))
    for name, values in tables:
        lines += ["", f"[{head}.{name}]", *(f"{_key(k)} = {_value(v)}" for k, v in values.items())]
    return "\n".join(lines) + "\n"


def _key(key: str) -> str:
    bare = key and all(c.isascii() and (c.isalnum() or c in "_-") for c in key)
    return key if bare else _string(key)


def _string(text: str) -> str:
    # JSON's escapes are TOML basic-string escapes; TOML also forbids a raw DEL
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return repr(value) if math.isfinite(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + "}"
    raise CxrbenchError(f"suite value {value!r} cannot be written as TOML")


# ---------------------------------------------------------------------------------------------
# The page.


def _page(
    suite: Suite,
    steps: dict[str, Step],
    manifest_links: list[tuple[Step, str]],
    bundle: _Bundle,
    metrics,
    *,
    commands: str,
    env: dict[str, Any],
    stage_versions: dict[str, dict[str, list[str]]],
    run_label: str,
    created: str,
) -> site.Page:
    compare = steps["compare"].manifest
    settings = compare.settings
    datasets = _datasets(suite, metrics)
    assigned: set[str] = set()
    sections = []
    for dataset in datasets:
        stem = f"comparisons/{safe_name(dataset)}"
        table = bundle.read(f"{stem}.html") if bundle.has(f"{stem}.html") else None
        note = _prepared_note(steps.get(f"prepare {dataset}"))
        if table is None:
            note = f"No comparison: compare found no predictions of the baseline '{suite.baseline}' here. {note}"
        labels = _labels(metrics, dataset)
        stems = [
            (f"{dataset}-forest", f"Δ AUC vs {suite.baseline} (forest plot)"),
            (f"{dataset}-efficiency", "Mean AUC by label fraction"),
            *((f"{dataset}-roc-{label}", f"ROC: {label}") for label in labels),
        ]
        figures = []
        for plot, caption in stems:
            figure = _figure(bundle, f"comparisons/plots/{safe_name(plot)}", caption)
            if figure is not None:
                figures.append(figure)
                assigned.add(figure.image)
        sections.append(
            site.Section(
                title=dataset,
                table_html=table,
                note=note.strip(),
                downloads=_downloads(bundle, stem),
                figures=figures,
            )
        )
    if bundle.has("comparisons/seeds.html"):  # models run with several seeds: their mean over seeds
        sections.append(
            site.Section(
                title="Mean over seeds",
                table_html=bundle.read("comparisons/seeds.html"),
                note="Each model's macro-mean AUC averaged over the seeds (label subsets) it ran with.",
                downloads=_downloads(bundle, "comparisons/seeds"),
            )
        )
    others = [
        _figure(bundle, rel.removesuffix(".png"), Path(rel).stem)
        for rel in sorted(bundle.files)
        if rel.startswith("comparisons/plots/") and rel.endswith(".png") and rel not in assigned
    ]
    summary = bundle.read("comparisons/summary.html") if bundle.has("comparisons/summary.html") else None
    plots_note = "" if settings.get("plots", True) else " Plots were switched off (compare.plots = false)."
    facts = [
        ("suite", suite.name),
        ("description", suite.description or "-"),
        ("datasets", ", ".join(d.name for d in suite.datasets)),
        ("encoders", ", ".join(suite.encoders)),
        ("baseline", suite.baseline),
        ("adaptations", ", ".join(suite.adaptations)),
        ("label fractions", ", ".join(f"{f:g}" for f in suite.fractions)),
        ("seeds", ", ".join(str(s) for s in suite.seeds)),
        ("architecture", suite.arch or "each encoder's default"),
        *(
            (f"pretrained in the run: {name}", f"{spec.method} on {spec.dataset} {_options(spec.options)}".strip())
            for name, spec in suite.pretrain.items()
        ),
        ("statistics", _options({k: v for k, v in settings.items() if k not in ("baseline", "plots")})),
        ("finished", compare.created),
        ("run directory", run_label),
    ]
    return site.Page(
        title=f"cxrbench suite {suite.name}",
        subtitle=f"Exported {created} by cxrbench {__version__} from {run_label}.",
        facts=facts,
        summary_html=summary,
        summary_note=("" if summary else "No summary table: no encoder but the baseline has results.") + plots_note,
        summary_downloads=_downloads(bundle, "comparisons/summary"),
        sections=sections,
        other_figures=[f for f in others if f is not None],
        commands=commands,
        command_files=[site.Link("commands.sh", "commands.sh"), site.Link("suite.toml", "suite.toml")],
        environment=[
            ("python", f"{env['python']} ({env['implementation']})"),
            ("platform", env["platform"]),
            ("machine", env["machine"]),
            *((k, v) for k, v in env["versions"].items() if k != "python"),
            ("installed packages", f"{len(env['packages'])} (requirements.txt)"),
        ],
        stage_versions=[
            (package, "; ".join(f"{version} ({len(names)})" for version, names in versions.items()))
            for package, versions in stage_versions.items()
        ],
        environment_files=[
            site.Link("environment.json", "environment.json"),
            site.Link("requirements.txt", "requirements.txt"),
        ],
        manifests=[
            (
                step.name,
                step.manifest.stage,
                site.Link(rel, rel.removeprefix("manifests/")),
                step.manifest.created,
                f"{step.manifest.timings.get('seconds', float('nan')):.1f}",
            )
            for step, rel in manifest_links
        ],
        files=[
            *(site.Link(rel, _size((bundle.root / rel).stat().st_size)) for rel in sorted(bundle.files)),
            site.Link("README.txt", "what each file is"),
            site.Link("SHA256SUMS", "SHA-256 of every file (sha256sum -c SHA256SUMS)"),
        ],
    )


def _readme(suite: Suite, *, predictions: bool) -> str:
    """The bundle's plain-text guide (index.html shows the same in a browser)."""
    lines = [
        f"Results of the cxrbench suite '{suite.name}' (cxrbench {__version__}).",
        "",
        "index.html             the whole suite in a browser (works offline; open it from this folder)",
        "comparisons/           per-dataset significance tables (.parquet, .csv, .md, .tex, .html), summary.*, and seeds.*"
        " (the mean over seeds, when models ran with several)",
        "comparisons/plots/     forest, ROC and label-efficiency plots (.png, .pdf)",
        "evaluation/            metrics.parquet (+ .csv): every metric with its bootstrap CI",
        *(["predictions/           each encoder's val and test predictions"] if predictions else []),
        "manifests/             the manifest of every stage the results came from (settings, inputs, hashes)",
        "suite.toml             the suite's settings (cxrbench run --suite NAME --config suite.toml)",
        "commands.sh            the commands that ran the suite and made this bundle",
        "environment.json       Python, platform and package versions (here and when the stages ran)",
        "requirements.txt       every installed package, name==version, where the bundle was made",
        "export.json            what was exported, when, from which run",
        "SHA256SUMS             checksums of every other file: sha256sum -c SHA256SUMS",
    ]
    return "\n".join(lines) + "\n"


def _datasets(suite: Suite, metrics) -> list[str]:
    """The datasets with results: the suite's in its order, then any other the run's metrics hold."""
    names = [d.name for d in suite.datasets]
    if metrics is not None:
        names += [str(d) for d in dict.fromkeys(metrics["dataset"].astype(str)) if str(d) not in names]
    return names


def _labels(metrics, dataset: str) -> list[str]:
    if metrics is None:
        return []
    rows = metrics[(metrics["dataset"].astype(str) == dataset) & (metrics["metric"].astype(str) == "auc")]
    return [str(label) for label in dict.fromkeys(rows["label"].astype(str)) if label != "mean"]


def _figure(bundle: _Bundle, stem: str, caption: str) -> site.Figure | None:
    if not bundle.has(f"{stem}.png"):
        return None
    return site.Figure(f"{stem}.png", caption, f"{stem}.pdf" if bundle.has(f"{stem}.pdf") else None)


def _downloads(bundle: _Bundle, stem: str) -> list[site.Link]:
    return [site.Link(f"{stem}.{fmt}", fmt) for fmt in TABLE_FORMATS if bundle.has(f"{stem}.{fmt}")]


def _prepared_note(step: Step | None) -> str:
    if step is None:
        return ""
    extra = step.manifest.extra
    splits = extra.get("splits")
    where = ", ".join(f"{k} {v}" for k, v in splits.items()) if isinstance(splits, dict) else ""
    counts = f"{extra.get('images', '?')} images of {extra.get('patients', '?')} patients"
    return f"Prepared: {counts}" + (f" ({where})." if where else ".")


def _options(options: dict[str, Any]) -> str:
    return ", ".join(f"{k} = {v}" for k, v in options.items())


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover
