"""The papers' grids as cells, data roots from the environment or the user's roots file, and
``--dry-run`` (what is done, stale or missing, and which roots and weights are absent)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from cxrbench.cli import main
from cxrbench.config import builtin_suites
from cxrbench.errors import CxrbenchError
from cxrbench.grid.plan import KINDS, plan
from cxrbench.roots import dataset_root, env_name

SSL13 = [
    "ranzcr-clip",
    "siim-acr",
    "pediatric-pneumonia",
    "shenzhen",
    "montgomery",
    "mimic-edema",
    "tbportals",
    "indiana",
    "jsrt",
    "padchest",
    "reflacx",
    "brax",
    "nih",
    "vindr-cxr",
]


def test_paper_grids_have_the_papers_datasets_encoders_fractions_and_seeds():
    suites = builtin_suites()
    ssl = suites["ssl-cxr-13"]
    assert [d.name for d in ssl.datasets] == SSL13 and all(d.root is None for d in ssl.datasets)
    published = ["medaug", "chexzero", "refers", "convirt", "gloria", "s2mts2", "mococxr"]  # the paper's Table 3
    assert ssl.encoders == ("imagenet", *published, "simclr") and ssl.baseline == "imagenet"
    assert ssl.fractions == (1.0,) and ssl.seeds == (0,) and ssl.adaptations == ("probe", "finetune")
    vit = suites["vit-dinov2"]
    assert [d.name for d in vit.datasets] == ["vindr-cxr", "nih", "chexpert", "mimic-cxr", "padchest"]
    assert vit.finetune["recipe"] == "vit" and "dinov2" in vit.encoders
    eff = suites["label-efficiency"]
    assert eff.fractions == (0.01, 0.05, 0.1, 0.25, 0.5, 1.0) and eff.seeds == (0, 1, 2)
    for suite in (ssl, vit, eff):  # no site's paths in a paper grid
        assert all(d.root is None for d in suite.datasets), suite.name


def test_cells_count_and_order_follow_the_grid():
    suite = builtin_suites()["ssl-cxr-13"]
    cells = plan(suite)
    n_data, n_enc = 14, 9
    counts = {kind: sum(c.kind == kind for c in cells) for kind in KINDS}
    # hand count: one prepare per dataset, one pretrain, features per dataset x encoder, probe and
    # finetune per dataset x encoder x fraction x seed (1 x 1), one evaluate, one compare
    assert counts == {
        "prepare": n_data,
        "pretrain": 1,
        "features": n_data * n_enc,
        "probe": n_data * n_enc,
        "finetune": n_data * n_enc,
        "segment": 0,
        "evaluate": 1,
        "compare": 1,
    }
    position = {c.id: i for i, c in enumerate(cells)}
    assert len(position) == len(cells)  # ids are unique
    for cell in cells:  # every dependency comes first
        assert all(position[d] < position[cell.id] for d in cell.deps), cell.id
    probe = next(c for c in cells if c.id == "probe/nih/simclr/f=1/s=0")
    assert set(probe.deps) == {"prepare/nih", "pretrain/simclr", "features/nih/simclr"}
    assert set(next(c for c in cells if c.id == "pretrain/simclr").deps) == {"prepare/nih"}
    evaluate = next(c for c in cells if c.id == "evaluate")
    assert len(evaluate.deps) == 2 * n_data * n_enc
    assert len({c.file for c in cells}) == len(cells)  # one record file per cell
    eff = plan(builtin_suites()["label-efficiency"])
    assert sum(c.kind == "finetune" for c in eff) == 2 * 4 * 6 * 3


def test_roots_come_from_the_environment_then_the_roots_file_then_the_suite(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("CXRBENCH_ROOT_PEDIATRIC_PNEUMONIA", raising=False)
    assert env_name("pediatric-pneumonia") == "CXRBENCH_ROOT_PEDIATRIC_PNEUMONIA"
    assert dataset_root("pediatric-pneumonia", None).path is None
    assert dataset_root("pediatric-pneumonia", "/suite/pp") == ("/suite/pp", "the suite")
    file = tmp_path / "xdg" / "cxrbench" / "roots.toml"
    file.parent.mkdir(parents=True)
    file.write_text('pediatric-pneumonia = "/site/pp"\n')
    assert dataset_root("pediatric-pneumonia", "/suite/pp") == ("/site/pp", str(file))
    monkeypatch.setenv("CXRBENCH_ROOT_PEDIATRIC_PNEUMONIA", "/env/pp")
    assert dataset_root("pediatric-pneumonia", "/suite/pp") == ("/env/pp", "$CXRBENCH_ROOT_PEDIATRIC_PNEUMONIA")
    file.write_text("nih = 3\n")
    with pytest.raises(CxrbenchError, match=r"roots.toml: 'nih' must be a path in quotes"):
        dataset_root("nih", None)


def test_dry_run_lists_every_cell_and_each_missing_root_and_weight_and_writes_nothing(
    tmp_path: Path, monkeypatch, capsys
):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("CXRBENCH_WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("COLUMNS", "300")
    for name in ("VINDR_CXR", "NIH", "CHEXPERT", "MIMIC_CXR", "PADCHEST"):
        monkeypatch.delenv(f"CXRBENCH_ROOT_{name}", raising=False)
    (tmp_path / "nih").mkdir()
    monkeypatch.setenv("CXRBENCH_ROOT_NIH", str(tmp_path / "nih"))
    monkeypatch.setenv("CXRBENCH_ROOT_PADCHEST", str(tmp_path / "not-here"))
    run = tmp_path / "run"
    main(["run", "--suite", "vit-dinov2", "--dry-run", "--run", str(run)])
    shown = capsys.readouterr().out
    assert "17 cells: 17 missing" in shown
    missing = [line for line in shown.splitlines() if line.startswith("missing: ")]
    assert any("$CXRBENCH_ROOT_VINDR_CXR" in line for line in missing)
    assert any(f"{tmp_path / 'not-here'} (from $CXRBENCH_ROOT_PADCHEST) not found" in line for line in missing)
    assert not any("CXRBENCH_ROOT_NIH" in line for line in missing)  # its root is set and present
    assert sum("weights for" in line for line in missing) == 2  # both ViTs are absent offline
    assert not run.exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--executor", "cloud"], "--executor 'cloud': use one of sequential, local, slurm"),
        (["--executor", "local", "--jobs", "0"], "--jobs 0: must be at least 1"),
        (["--executor", "local", "--force"], "--force redoes stages one after another"),
        (["--executor", "slurm", "--slurm", "finetune.vram=80"], "--slurm finetune.vram=80: unknown resource 'vram'"),
        (["--executor", "slurm", "--slurm-cluster", "aws"], "--slurm-cluster 'aws': use slurm, local or debug"),
    ],
)
def test_bad_executor_options_are_one_line_errors_before_any_work(tmp_path: Path, capsys, extra, message):
    run = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--suite", "smoke", "--run", str(run), *extra])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"cxrbench: error: {message}") and "\n" not in err
    assert not run.exists()


def test_slurm_executor_without_slurm_says_so_instead_of_running_locally(tmp_path: Path, capsys, monkeypatch):
    import shutil

    if shutil.which("sbatch"):
        pytest.skip("this machine has SLURM")
    run = tmp_path / "run"
    with pytest.raises(SystemExit):
        main(["run", "--suite", "smoke", "--run", str(run), "--executor", "slurm"])
    err = capsys.readouterr().err.strip()
    assert err.startswith("cxrbench: error: --executor slurm: no SLURM on this machine (sbatch not found)")
    assert "\n" not in err and not (run / "prepared").exists()


def test_ct_smoke_segments_lidc_and_finetunes_pe_only_and_evaluate_reads_both():
    suite = builtin_suites()["ct-smoke"]
    cells = {c.id: c for c in plan(suite)}
    segments = sorted(i for i, c in cells.items() if c.kind == "segment")
    finetunes = sorted(i for i, c in cells.items() if c.kind == "finetune")
    encoders, fractions = ("masked", "next-slice", "random"), ("0.5", "1")
    assert segments == [f"segment/synthetic-lidc/{e}/f={f}/s=0" for e in encoders for f in fractions]
    assert finetunes == [f"finetune/synthetic-ct/{e}/f={f}/s=0" for e in encoders for f in fractions]
    masked = cells["segment/synthetic-lidc/masked/f=0.5/s=0"]
    assert set(masked.deps) == {"prepare/synthetic-lidc", "pretrain/masked"}
    assert masked.params["epochs"] == 1 and "datasets" not in masked.params
    assert set(cells["evaluate"].deps) == set(finetunes) | set(segments)  # Dice is evaluated too
    alone = dataclasses.replace(suite, adaptations=("segment",))
    assert {c.kind for c in plan(alone)} == {"prepare", "pretrain", "segment", "evaluate", "compare"}
