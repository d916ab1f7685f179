"""Bad input at the command line: one line `cxrbench: error: ...` naming the value, exit 2, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from cxrbench import __version__
from cxrbench.cli import main
from cxrbench.errors import CxrbenchError
from cxrbench.rundir import Stage

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """Every command runs in an empty folder with its own default run; no debug left over."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CXRBENCH_RUN", str(tmp_path / "run"))
    monkeypatch.setenv("CXRBENCH_QUIET", "1")
    monkeypatch.delenv("CXRBENCH_DEBUG", raising=False)


def _fails(capsys, argv: list[str], *named: str, code: int = 2) -> str:
    """Run ``cxrbench argv`` in-process; check the one-line error and return it."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    captured = capsys.readouterr()
    assert exit_info.value.code == code, captured.err
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("cxrbench: error: ")
    assert "Traceback" not in captured.err + captured.out
    for value in named:
        assert value in lines[0]
    return lines[0]


def _fake_prepared(run: Path, dataset: str) -> None:
    """A complete prepared dataset (no images): enough for stages that fail before reading pixels."""
    home = run / "prepared" / dataset
    stage = Stage(run, "prepare", home / "manifest.json", settings={"image": {"size": 32}})
    with stage.open() as todo:
        assert todo
        stage.write_parquet(
            home / "samples.parquet",
            pd.DataFrame(
                {
                    "sample_id": ["a"],
                    "patient_id": ["p"],
                    "split": ["train"],
                    "label:x": [1.0],
                    "cache_index": [0],
                }
            ),
        )


def test_prepare_unknown_dataset(capsys, tmp_path):
    line = _fails(capsys, ["prepare", "nosuchset", "--root", str(tmp_path)], "'nosuchset'", "nih")
    assert "unknown dataset" in line


def test_prepare_unknown_dataset_without_root(capsys):
    line = _fails(capsys, ["prepare", "nosuchset"], "'nosuchset'")
    assert "unknown dataset" in line


def test_prepare_missing_root(capsys):
    _fails(capsys, ["prepare", "nih", "--root", "/nonexistent"], "/nonexistent")


def test_prepare_bad_split_writes_nothing(capsys, tmp_path):
    _fails(capsys, ["prepare", "synthetic", "--split", "1/2"], "--split", "'1/2'")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("split", "named"), [("50/50/10", "sum to 110"), ("80/0/20", "val split")])
def test_prepare_split_not_summing_to_100_or_empty_writes_nothing(capsys, tmp_path, split, named):
    _fails(capsys, ["prepare", "synthetic", "--split", split], f"--split '{split}'", named)
    assert not (tmp_path / "run").exists()


def test_prepare_bad_uncertain(capsys, tmp_path):
    _fails(
        capsys,
        ["prepare", "synthetic", "--uncertain", "maybe"],
        "--uncertain",
        "'maybe'",
        "negative",
    )
    assert not (tmp_path / "run").exists()


def test_prepare_bad_views(capsys):
    _fails(capsys, ["prepare", "synthetic", "--views", "side"], "--views", "'side'")


def test_non_integer_size(capsys):
    _fails(capsys, ["prepare", "synthetic", "--size", "abc"], "--size")


def test_non_integer_size_names_the_value(capsys):
    _fails(capsys, ["prepare", "synthetic", "--size", "abc"], "abc")


def test_unknown_option(capsys):
    _fails(capsys, ["prepare", "synthetic", "--colour", "red"], "--colour")


def test_probe_unprepared_dataset(capsys):
    _fails(
        capsys,
        ["probe", "--dataset", "ghost", "--encoder", "random"],
        "'ghost'",
        "cxrbench prepare ghost",
    )


def test_probe_unknown_encoder(capsys, tmp_path):
    _fake_prepared(tmp_path / "run", "tiny")
    line = _fails(capsys, ["probe", "--dataset", "tiny", "--encoder", "nosuchenc"], "'nosuchenc'")
    assert "unknown encoder" in line


def test_probe_missing_weights_file(capsys, tmp_path):
    _fake_prepared(tmp_path / "run", "tiny")
    _fails(
        capsys,
        ["probe", "--dataset", "tiny", "--encoder", f"file:{tmp_path}/none.safetensors"],
        "none.safetensors",
    )


def test_run_malformed_toml(capsys, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[suites.x]\ndatasets = ["synthetic"\n')
    _fails(capsys, ["run", "--suite", "x", "--config", str(bad)], "bad.toml", "not valid TOML")


def test_run_unknown_suite_without_local_config_names_the_builtin_ones(capsys):
    _fails(capsys, ["run", "--suite", "x"], "unknown suite 'x' in built-in suites", "nih-simclr, smoke, ssl-cxr-13")


def test_run_explicit_config_that_is_missing(capsys):
    _fails(capsys, ["run", "--suite", "smoke", "--config", "nothere.toml"], "config nothere.toml not found")


def test_run_bad_local_benchmarks_toml(capsys, tmp_path):
    (tmp_path / "benchmarks.toml").write_text('[suites.x]\ndatasets = ["synthetic"\n')
    _fails(capsys, ["run", "--suite", "smoke"], "config benchmarks.toml is not valid TOML")


def test_suites_lists_builtin_and_local_suites_with_their_origin(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")  # one table row per line
    (tmp_path / "benchmarks.toml").write_text(
        '[suites.smoke]\ndescription = "mine"\ndatasets = ["synthetic"]\nencoders = ["random"]\nbaseline = "random"\n'
    )
    assert _exit_code(["suites"]) == 0
    rows = {
        line.split()[1]: " ".join(line.split()) for line in capsys.readouterr().out.splitlines() if line.startswith("│")
    }
    assert "│ built in │ nih │ imagenet, simclr │ imagenet │ NIH ChestX-ray14" in rows["nih-simclr"]
    assert "│ benchmarks.toml (replaces built in) │ synthetic │ random │ random │ mine │" in rows["smoke"]


def test_weights_check_of_a_builtin_suite_from_any_folder(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")
    assert _exit_code(["weights", "check", "--suite", "smoke"]) == 0
    assert "pretrained by `cxrbench run --suite smoke`" in " ".join(capsys.readouterr().out.split())


def test_run_unknown_suite(capsys):
    _fails(
        capsys,
        ["run", "--suite", "nosuite"],
        "'nosuite'",
        "smoke",
    )


def test_weights_check_unknown_suite(capsys):
    _fails(
        capsys,
        ["weights", "check", "--suite", "nosuite"],
        "'nosuite'",
    )


def test_compare_unknown_test(capsys):
    _fails(capsys, ["compare", "--test", "foo"], "--test", "'foo'", "delong")


def test_compare_unknown_correction(capsys):
    _fails(capsys, ["compare", "--correction", "bonferonni"], "--correction", "'bonferonni'")


def test_compare_without_metrics_says_what_to_run(capsys):
    _fails(capsys, ["compare"], "evaluate")


def test_run_dir_that_is_a_file(capsys, tmp_path):
    (tmp_path / "afile").write_text("x")
    _fails(capsys, ["evaluate", "--run", str(tmp_path / "afile")], "afile")


def test_debug_shows_the_exception(capsys):
    with pytest.raises(CxrbenchError, match="--test 'foo'"):
        main(["--debug", "compare", "--test", "foo"])


def test_debug_does_not_leak_into_later_commands(capsys):
    with pytest.raises(CxrbenchError):
        main(["--debug", "compare", "--test", "foo"])
    _fails(capsys, ["compare", "--test", "foo"], "'foo'")


def _exit_code(argv: list[str]) -> int:
    try:
        main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def test_help_and_version_exit_zero(capsys):
    assert _exit_code(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"cxrbench {__version__}"
    assert _exit_code(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("prepare", "pretrain", "probe", "finetune", "evaluate", "compare", "run"):
        assert command in out


# --- end to end: the real interpreter and entry point ------------------------------------------


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "CXRBENCH_DEBUG"}
    env["CXRBENCH_RUN"] = str(cwd / "run")
    return subprocess.run(
        [sys.executable, "-m", "cxrbench", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=120,
    )


def test_end_to_end_one_line_and_exit_2(tmp_path):
    done = _cli("prepare", "nih", "--root", str(tmp_path / "absent"), cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("cxrbench: error: ")
    assert str(tmp_path / "absent") in done.stderr and "Traceback" not in done.stderr


def test_end_to_end_debug_prints_a_traceback(tmp_path):
    done = _cli("--debug", "run", "--suite", "x", "--config", "nothere.toml", cwd=tmp_path)
    assert done.returncode != 0
    assert "Traceback" in done.stderr and "CxrbenchError" in done.stderr and "nothere.toml" in done.stderr


def test_unknown_adapter_option_is_named_with_the_known_ones(capsys, tmp_path):
    _fails(
        capsys,
        ["prepare", "nih", "--root", str(tmp_path), "--option", "bogus=1", "--run", str(tmp_path)],
        "bogus",
        "no_finding",
    )


def test_adapter_option_without_equals_sign(capsys, tmp_path):
    _fails(
        capsys,
        ["prepare", "nih", "--root", str(tmp_path), "--option", "labels", "--run", str(tmp_path)],
        "'labels'",
        "KEY=VALUE",
    )


@pytest.mark.parametrize("command", [["finetune", "--encoder", "random"], ["pretrain", "simclr"]])
def test_bad_precision_is_one_line_before_any_training(capsys, tmp_path, command):
    _fake_prepared(tmp_path / "run", "tiny")
    _fails(capsys, [*command, "--dataset", "tiny", "--precision", "fp8"], "'fp8'", "fp32, bf16, fp16")
    assert not list((tmp_path / "run").rglob("*.manifest.json")) and not (tmp_path / "run" / "encoders").exists()
