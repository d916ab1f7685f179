"""Trusting the run directory: names never leave the run, truncated outputs are never 'up to date',
changed images are decoded again, stale predictions are refused, inputs are checked before old
outputs are dropped, a read-only copy still answers, a copied run keeps its keys, `verify`."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxrbench.cli import main
from cxrbench.rundir import Manifest
from tests.stages.conftest import ARCH, PREPARE, cli


def _fails(capsys: pytest.CaptureFixture, *args: str) -> str:
    """Run the CLI expecting exit 2; return its one-line message."""
    capsys.readouterr()  # what earlier commands printed
    with pytest.raises(SystemExit) as exc:
        main(list(args))
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cxrbench: error: ")
    return err[0]


def _predictions(run: Path, encoder: str, labels: list[str], *, dataset: str = "outside", seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    n = 120
    y = rng.integers(0, 2, n).astype(float)
    rows = []
    for label in labels:
        score = y + rng.normal(0, 1.0, n)
        for split in ("val", "test"):
            rows.append(
                pd.DataFrame(
                    {
                        "sample_id": [f"i{k}" for k in range(n)],
                        "patient_id": [f"p{k}" for k in range(n)],
                        "split": split,
                        "label": label,
                        "y_true": y,
                        "y_score": score,
                    }
                )
            )
    path = run / "predictions" / dataset / encoder / "probe.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.concat(rows).to_parquet(path)
    return path


def test_labels_from_outside_files_never_write_or_delete_outside_the_run(tmp_path: Path) -> None:
    run = tmp_path / "deep" / "run"
    evil = ["/../../../../x", "a/b", "ok"]
    for encoder in ("base", "mine"):
        _predictions(run, encoder, evil)
    cli("evaluate", "--n-boot", "50", "--run", str(run))
    cli("compare", "--baseline", "base", "--n-boot", "50", "--run", str(run))
    cli("compare", "--baseline", "base", "--n-boot", "50", "--run", str(run), "--force")
    outside = [p for p in tmp_path.rglob("*") if p.is_file() and run not in p.parents]
    assert outside == []
    plots = run / "comparisons" / "plots"
    assert all(p.parent == plots for p in plots.rglob("*") if p.is_file())  # a label with '/' makes no folder
    names = {p.name for p in plots.iterdir()}
    assert "outside-roc-ok.png" in names and len([n for n in names if n.startswith("outside-roc-")]) == 6


def test_pretrain_names_are_folder_safe_and_do_not_hide_built_in_encoders(phantom_run: Path, capsys) -> None:
    for bad in ("../../x", "a/b", "file:x"):
        assert "--name" in _fails(
            capsys, "pretrain", "simclr", "--dataset", "synthetic", "--name", bad, "--run", str(phantom_run)
        )
    assert "built-in encoder" in _fails(
        capsys, "pretrain", "simclr", "--dataset", "synthetic", "--name", "random", "--run", str(phantom_run)
    )
    assert not (phantom_run / "encoders").exists() and not (phantom_run.parent / "x").exists()


def test_a_truncated_cache_or_predictions_file_is_a_one_line_error(run_copy: Path, capsys) -> None:
    cli("probe", "--dataset", "synthetic", "--encoder", "random", "--arch", ARCH, "--run", str(run_copy))
    preds = run_copy / "predictions/synthetic/random/probe.parquet"
    data = preds.read_bytes()
    preds.write_bytes(data[: len(data) // 2])
    assert "rerun `cxrbench probe --dataset synthetic --encoder random --force`" in _fails(
        capsys, "evaluate", "--run", str(run_copy)
    )
    cache = run_copy / "prepared/synthetic/cache/images.npy"
    with open(cache, "r+b") as handle:
        handle.truncate(cache.stat().st_size - 4096)
    message = _fails(
        capsys, "probe", "--dataset", "synthetic", "--encoder", "random", "--arch", ARCH, "--run", str(run_copy)
    )
    assert "images.npy has" in message and "rerun `cxrbench prepare synthetic --force`" in message


def test_an_outside_file_that_is_not_parquet_is_named(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    _predictions(run, "base", ["ok"])
    bad = run / "predictions/outside/mine/probe.parquet"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"PAR1 not really")
    assert f"{bad}: not a readable Parquet file" in _fails(capsys, "evaluate", "--run", str(run))


def test_a_changed_image_is_decoded_again(tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = ["prepare", "synthetic", "--n-patients", "40", "--size", "32", "--run", str(run), "--workers", "1"]
    cli(*args)
    samples = pd.read_parquet(run / "prepared/synthetic/samples.parquet")
    first = Path(samples["path"].iloc[0])
    before = np.load(run / "prepared/synthetic/cache/images.npy")[int(samples["cache_index"].iloc[0])].copy()
    other = Path(samples["path"].iloc[5])
    shutil.copyfile(other, first)  # same name, other pixels (and size)
    cli(*args)
    manifest = Manifest.read(run / "prepared/synthetic/manifest.json")
    after = np.load(run / "prepared/synthetic/cache/images.npy")[int(samples["cache_index"].iloc[0])]
    assert manifest.complete and not np.array_equal(before, after)
    from cxrbench.stages.verify import verify

    assert all(f.problem is None for f in verify(run))
    os.utime(other, ns=(0, 0))  # touched after preparing: verify says so (size/time of the inputs)
    problems = [f.problem for f in verify(run) if f.problem]
    assert len(problems) == 1 and "changed since it was prepared" in problems[0]


def test_a_redone_prepare_keeps_its_decoded_images_unless_forced(tmp_path: Path, monkeypatch) -> None:
    """New labels, splits or row filters reuse the decoded images of files already in the cache;
    --force decodes everything again."""
    import cxrbench.data.cache as cache

    run = tmp_path / "run"
    args = ["prepare", "synthetic", "--n-patients", "40", "--size", "32", "--run", str(run), "--workers", "1"]
    cli(*args)
    images = run / "prepared/synthetic/cache/images.npy"
    before = images.read_bytes()
    decoded: list[int] = []
    real = cache._process_chunk

    def counting(paths, *rest, **kw):
        decoded.append(len(paths))
        return real(paths, *rest, **kw)

    monkeypatch.setattr(cache, "_process_chunk", counting)
    cli(*args, "--uncertain", "positive", "--min-positives", "1")
    manifest = Manifest.read(run / "prepared/synthetic/manifest.json")
    assert manifest.complete and manifest.settings["labels"]["uncertain"] == "positive"
    assert decoded == [] and images.read_bytes() == before
    from cxrbench.stages.verify import verify

    assert all(f.problem is None for f in verify(run))
    cli(*args, "--uncertain", "positive", "--min-positives", "1", "--force")
    assert sum(decoded) == len(np.load(images)) and images.read_bytes() == before

    decoded.clear()  # more rows (lateral views too): only those are decoded; back again: none
    cli(*args, "--views", "all")
    samples = pd.read_parquet(run / "prepared/synthetic/samples.parquet")
    lateral = int((samples["view"] == "LATERAL").sum())
    assert lateral and sum(decoded) == lateral
    cli(*args)
    assert sum(decoded) == lateral and images.read_bytes() == before
    assert all(f.problem is None for f in verify(run))


def test_predictions_from_an_older_prepare_are_refused(run_copy: Path, capsys) -> None:
    cli("probe", "--dataset", "synthetic", "--encoder", "random", "--arch", ARCH, "--run", str(run_copy))
    cli("evaluate", "--n-boot", "20", "--run", str(run_copy))
    cli(*PREPARE, "--uncertain", "positive", "--min-positives", "1", "--run", str(run_copy))
    message = _fails(capsys, "evaluate", "--n-boot", "20", "--run", str(run_copy))
    assert "predictions/synthetic/random/probe.parquet was made from an older prepared/synthetic/" in message
    assert "rerun `cxrbench probe --dataset synthetic --encoder random`" in message
    from cxrbench.stages.verify import verify

    assert any("made from an older" in (f.problem or "") for f in verify(run_copy))


def test_bad_inputs_are_refused_before_old_outputs_are_dropped(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    for encoder in ("base", "mine"):
        _predictions(run, encoder, ["ok"])
    cli("evaluate", "--n-boot", "20", "--run", str(run))
    metrics = (run / "evaluation/metrics.parquet").read_bytes()
    bad = _predictions(run, "other", ["ok"])
    frame = pd.read_parquet(bad)
    frame.loc[frame.index[3], "y_true"] = 7.0
    frame.to_parquet(bad)
    message = _fails(capsys, "evaluate", "--n-boot", "20", "--run", str(run))
    assert str(bad) in message and "y_true" in message
    assert (run / "evaluation/metrics.parquet").read_bytes() == metrics
    assert Manifest.read(run / "evaluation/manifest.json").complete
    assert "--fraction 0.0" in _fails(
        capsys, "probe", "--dataset", "x", "--encoder", "random", "--fraction", "0", "--run", str(run)
    )
    # generation options are checked before the phantoms already there are touched
    cli("prepare", "synthetic", "--n-patients", "40", "--size", "32", "--run", str(run), "--workers", "1")
    phantoms = Manifest.read(run / "raw/synthetic/manifest.json")
    assert "n_patients=1" in _fails(
        capsys, "prepare", "synthetic", "--n-patients", "1", "--size", "32", "--run", str(run)
    )
    assert Manifest.read(run / "raw/synthetic/manifest.json") == phantoms


def test_compare_refuses_metrics_older_than_the_predictions(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    for encoder in ("base", "mine"):
        _predictions(run, encoder, ["ok"])
    cli("evaluate", "--n-boot", "20", "--run", str(run))
    _predictions(run, "mine", ["ok"], seed=1)  # replaced by the other tool after evaluate
    assert "rerun `cxrbench evaluate`" in _fails(capsys, "compare", "--baseline", "base", "--run", str(run))


def test_a_read_only_run_still_answers_for_finished_stages(tmp_path: Path, monkeypatch, capsys) -> None:
    import errno

    from cxrbench import rundir

    run = tmp_path / "run"
    for encoder in ("base", "mine"):
        _predictions(run, encoder, ["ok"])
    cli("evaluate", "--n-boot", "20", "--run", str(run))

    def read_only(lock_path: Path, *, what: str):  # what opening the lock file gives on a read-only mount
        raise OSError(errno.EROFS, "Read-only file system", str(lock_path))

    monkeypatch.setattr(rundir, "stage_lock", read_only)
    cli("evaluate", "--n-boot", "20", "--run", str(run))  # up to date: answered without writing
    message = _fails(capsys, "evaluate", "--n-boot", "30", "--run", str(run))
    assert "evaluation: cannot write in" in message and "Read-only file system" in message


def test_a_copied_run_keeps_its_keys(tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = ["prepare", "synthetic", "--n-patients", "40", "--size", "32", "--workers", "1"]
    cli(*args, "--run", str(run))
    copy = tmp_path / "elsewhere" / "copy"
    shutil.copytree(run, copy)  # copy2 keeps modification times, as cp -a does
    before = Manifest.read(copy / "prepared/synthetic/manifest.json")
    cli(*args, "--run", str(copy))
    after = Manifest.read(copy / "prepared/synthetic/manifest.json")
    assert after.key == before.key and after.created == before.created  # skipped, not redone


def test_a_run_written_by_the_previous_version_still_evaluates_and_compares(run_copy: Path) -> None:
    # the previous version's manifests had no sizes/fingerprints; its checkpoints lived elsewhere
    cli("probe", "--dataset", "synthetic", "--encoder", "random", "--arch", ARCH, "--run", str(run_copy))
    theirs = pd.read_parquet(run_copy / "predictions/synthetic/random/probe.parquet")
    theirs["y_score"] = np.random.default_rng(0).random(len(theirs))  # another tool's scores, same images
    (run_copy / "predictions/synthetic/other-tool").mkdir()
    theirs.to_parquet(run_copy / "predictions/synthetic/other-tool/probe.parquet")
    for path in run_copy.rglob("*manifest.json"):
        data = json.loads(path.read_text())
        data.pop("sizes", None)
        path.write_text(json.dumps(data))
    cli("evaluate", "--n-boot", "20", "--run", str(run_copy))
    cli("compare", "--baseline", "random", "--n-boot", "20", "--no-plots", "--run", str(run_copy))
    table = pd.read_parquet(run_copy / "comparisons/synthetic.parquet")
    assert set(table["encoder"]) == {"other-tool"}
    cli("probe", "--dataset", "synthetic", "--encoder", "random", "--arch", ARCH, "--run", str(run_copy))
    assert not Manifest.read(run_copy / "predictions/synthetic/random/probe.manifest.json").sizes  # not redone


def test_a_relative_run_directory_works_from_the_cli(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    cli("prepare", "synthetic", "--n-patients", "40", "--size", "32", "--workers", "1", "--run", "rel/run")
    cli("probe", "--dataset", "synthetic", "--encoder", "random", "--arch", ARCH, "--run", "rel/run")
    assert (tmp_path / "rel/run/predictions/synthetic/random/probe.parquet").is_file()
    assert not (tmp_path / "rel/run/rel").exists()
