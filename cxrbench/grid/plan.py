"""A suite's grid as cells: one stage output each, with the cells whose outputs it reads.

Cells are listed in dependency order: prepare -> pretrain -> features -> probe / finetune / segment
-> evaluate -> compare. ``execute`` runs one cell through the same stage function as the single
commands, so a cell is skipped by its manifest whoever ran it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cxrbench.config import DatasetSpec, Suite
from cxrbench.rundir import Manifest, RunLayout, json_hash, safe_name

KINDS = ("prepare", "pretrain", "features", "probe", "finetune", "segment", "evaluate", "compare")
#: pretrain options that are arguments of the stage function, not method options
_PRETRAIN_ARGS = ("epochs", "batch_size", "lr", "seed", "arch", "init", "text_model", "sections")


@dataclass(frozen=True)
class Cell:
    """One stage output of a suite: ``id`` such as ``probe/nih/imagenet/f=0.1/s=0``."""

    id: str
    kind: str
    deps: tuple[str, ...] = ()
    params: dict[str, Any] = field(default_factory=dict, hash=False)

    @property
    def digest(self) -> str:
        """Hash of what the suite asks of this cell: a recorded result with another digest is stale."""
        return json_hash({"kind": self.kind, "params": self.params})[:16]

    @property
    def file(self) -> str:
        """A folder-safe, collision-free file stem for the cell's record and log."""
        return safe_name(self.id, readable=self.id.replace("/", "."))


def plan(suite: Suite) -> list[Cell]:
    """Every cell of ``suite`` in dependency order."""
    cells: list[Cell] = []
    for spec in suite.datasets:
        cells.append(Cell(f"prepare/{spec.name}", "prepare", (), {"dataset": spec.name, "options": spec.options}))
    for name, spec in suite.pretrain.items():
        deps = [f"prepare/{spec.dataset}"]
        init = spec.options.get("init")
        if isinstance(init, str) and init in suite.pretrain:
            deps.append(f"pretrain/{init}")
        params = {"name": name, "method": spec.method, "dataset": spec.dataset, "options": spec.options}
        cells.append(Cell(f"pretrain/{name}", "pretrain", tuple(deps), params))
    adapted: list[str] = []
    # each adaptation runs on the datasets its table names (``datasets``; default all of them)
    options = {"probe": dict(suite.probe), "finetune": dict(suite.finetune), "segment": dict(suite.segment)}
    runs_on = {
        kind: set(table.pop("datasets", [s.name for s in suite.datasets])) if kind in suite.adaptations else set()
        for kind, table in options.items()
    }
    for spec in suite.datasets:
        for encoder in suite.encoders:
            base = [f"prepare/{spec.name}"] + ([f"pretrain/{encoder}"] if encoder in suite.pretrain else [])
            # external validation: the models are also tested on these datasets' test splits
            external = tuple(suite.external.get(spec.name, ()))
            tested = [*base, *(f"prepare/{x}" for x in external)]
            also = {"test_datasets": list(external)} if external else {}
            if spec.name in runs_on["probe"]:
                params = {"dataset": spec.name, "encoder": encoder, "arch": suite.arch}
                params["input_size"] = options["probe"].get("input_size")
                cells.append(Cell(f"features/{spec.name}/{encoder}", "features", tuple(base), params))
            for seed in suite.seeds:
                for fraction in suite.fractions:
                    grid = {"dataset": spec.name, "encoder": encoder, "arch": suite.arch}
                    grid.update(fraction=fraction, seed=seed)
                    tail = f"{spec.name}/{encoder}/f={fraction:g}/s={seed}"
                    if spec.name in runs_on["probe"]:
                        deps = (*tested, f"features/{spec.name}/{encoder}")
                        probe = {**grid, **also, "options": options["probe"]}
                        cells.append(Cell(f"probe/{tail}", "probe", deps, probe))
                        adapted.append(f"probe/{tail}")
                    if spec.name in runs_on["finetune"]:
                        params = {**grid, **also, **options["finetune"]}
                        cells.append(Cell(f"finetune/{tail}", "finetune", tuple(tested), params))
                        adapted.append(f"finetune/{tail}")
                    if spec.name in runs_on["segment"]:
                        params = {**grid, **options["segment"]}
                        cells.append(Cell(f"segment/{tail}", "segment", tuple(base), params))
                        adapted.append(f"segment/{tail}")
    cells.append(Cell("evaluate", "evaluate", tuple(adapted), dict(suite.evaluate)))
    cells.append(Cell("compare", "compare", ("evaluate",), {"baseline": suite.baseline, **suite.compare}))
    return cells


def dataset_spec(suite: Suite, name: str) -> DatasetSpec:
    return next(spec for spec in suite.datasets if spec.name == name)


def execute(
    run: RunLayout,
    suite: Suite,
    cell: Cell,
    *,
    device: str | None = None,
    precision: str | None = None,
    force: bool = False,
) -> Manifest:
    """Run one cell's stage (skipped when its manifest is up to date); returns its manifest."""
    p = cell.params
    if cell.kind == "prepare":
        from cxrbench.roots import dataset_root
        from cxrbench.stages.prepare import prepare
        from cxrbench.stages.suite import prepare_settings

        spec = dataset_spec(suite, p["dataset"])
        policy, image, options = prepare_settings(spec.options, where=f"suites.{suite.name}.prepare.{spec.name}")
        root = dataset_root(spec.name, spec.root).path
        adapter = str(options.pop("adapter", spec.name))  # a dataset named apart from its adapter
        manifest = prepare(
            run,
            adapter,
            root=root and Path(root),
            options=options,
            policy=policy,
            image=image,
            name=None if adapter == spec.name else spec.name,
            force=force,
        )
        return manifest
    if cell.kind == "pretrain":
        from cxrbench.stages.pretrain import pretrain

        options = dict(p["options"])
        known = {k: options.pop(k) for k in _PRETRAIN_ARGS if k in options}
        known.setdefault("arch", suite.arch)
        manifest = pretrain(
            run,
            p["method"],
            dataset=p["dataset"],
            name=p["name"],
            options=options,
            device=device,
            precision=precision,
            force=force,
            **known,
        )
        return manifest
    if cell.kind == "features":
        from cxrbench.data.prepared import load_prepared
        from cxrbench.models.sources import resolve_encoder
        from cxrbench.stages.probe import features

        prepared = load_prepared(run, p["dataset"])
        spec = resolve_encoder(p["encoder"], arch=p["arch"], run=run.root).require()
        size = p["input_size"] or int(prepared.manifest.settings["image"]["size"])
        return features(run, prepared, spec, input_size=size, device=device, force=force)[0]
    if cell.kind == "probe":
        from cxrbench.stages.probe import probe

        grid = {k: p[k] for k in ("dataset", "encoder", "arch", "fraction", "seed")}
        tests = tuple(p.get("test_datasets", ()))
        return probe(run, **grid, device=device, test_datasets=tests, force=force, **p["options"])
    if cell.kind == "finetune":
        from cxrbench.stages.finetune import finetune

        grid_keys = ("dataset", "encoder", "arch", "fraction", "seed", "test_datasets")
        overrides = {k: v for k, v in p.items() if k not in grid_keys}
        recipe_name = overrides.pop("recipe", "ssl-cxr")
        manifest = finetune(
            run,
            dataset=p["dataset"],
            encoder=p["encoder"],
            arch=p["arch"],
            recipe_name=recipe_name,
            overrides=overrides,
            fraction=p["fraction"],
            seed=p["seed"],
            device=device,
            precision=precision,
            test_datasets=tuple(p.get("test_datasets", ())),
            force=force,
        )
        return manifest
    if cell.kind == "segment":
        from cxrbench.stages.segment import segment

        return segment(run, device=device, precision=precision, force=force, **p)
    if cell.kind == "evaluate":
        from cxrbench.stages.evaluate import evaluate

        return evaluate(run, force=force, **p)
    if cell.kind == "compare":
        from cxrbench.stages.compare import compare

        return compare(run, force=force, **p)
    raise ValueError(f"unknown cell kind {cell.kind!r}")
