"""Suites -> Suite: the built-in suites parse and are found from any folder, a local benchmarks.toml
adds or replaces suites by name, and each kind of mistake is one line naming the file and key."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from cxrbench.config import BUILTIN, DatasetSpec, Suite, available_suites, builtin_suites, get_suite, load_config
from cxrbench.errors import CxrbenchError

REPO = Path(__file__).resolve().parents[1]

MINIMAL = """
[suites.s]
datasets = ["synthetic"]
encoders = ["imagenet", "random"]
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bench.toml"
    path.write_text(textwrap.dedent(text))
    return path


def _error(tmp_path: Path, text: str) -> str:
    with pytest.raises(CxrbenchError) as info:
        load_config(_write(tmp_path, text))
    assert "\n" not in info.value.message and info.value.exit_code == 2
    return info.value.message


def test_builtin_suites_parse():
    suites = builtin_suites()
    smoke = suites["smoke"]
    assert smoke.datasets == (DatasetSpec("synthetic", None, {"n_patients": 200, "size": 64, "seed": 0}),)
    assert smoke.encoders == ("random", "simclr") and smoke.baseline == "random"
    assert smoke.pretrain["simclr"].method == "simclr" and smoke.pretrain["simclr"].options["epochs"] == 2
    assert smoke.finetune["epochs"] == 6 and smoke.evaluate == {"n_boot": 200}
    nih = suites["nih-simclr"]
    assert nih.datasets[0].root == "/data/nih" and nih.datasets[0].options == {
        "size": 224,
        "min_positives": 10,
    }
    assert nih.fractions == (0.01, 0.1, 1.0)


def test_defaults(tmp_path):
    suite = get_suite("s", _write(tmp_path, MINIMAL))
    assert isinstance(suite, Suite)
    assert suite.baseline == "imagenet" and suite.adaptations == ("probe", "finetune")
    assert suite.fractions == (1.0,) and suite.seeds == (0,) and suite.arch is None
    assert suite.datasets == (DatasetSpec("synthetic"),)


def test_missing_file(tmp_path):
    with pytest.raises(CxrbenchError, match="nothere.toml not found"):
        load_config(tmp_path / "nothere.toml")


def test_malformed_toml_names_file_and_line(tmp_path):
    message = _error(tmp_path, '[suites.s]\ndatasets = ["a"\nencoders = 3\n')
    assert "bench.toml is not valid TOML" in message and "line" in message


def test_binary_file_is_not_valid_toml(tmp_path):
    path = tmp_path / "bench.toml"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(CxrbenchError, match="bench.toml"):
        load_config(path)


def test_unknown_suite_lists_the_known(tmp_path):
    with pytest.raises(
        CxrbenchError,
        match=r"unknown suite 'nope' in built-in suites or .*bench.toml "
        r"\(known: ct-smoke, label-efficiency, nih-simclr, s, smoke, ssl-cxr-13, vit-dinov2\)",
    ):
        get_suite("nope", _write(tmp_path, MINIMAL))


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("x = 1", "unknown top-level keys ['x'] (suites are [suites.NAME] tables)"),
        ("[suite.s]\ndatasets = ['d']", "unknown top-level keys ['suite']"),
        ("suites = 3", "suites must be a table"),
        (
            "[suites.s]\ndatasets = ['d']\nencoders = ['imagenet']\nencoder = 'x'",
            "unknown keys ['encoder']",
        ),
        ("[suites.s]\nencoders = ['imagenet']", "suites.s.datasets must be a non-empty list"),
        (
            "[suites.s]\ndatasets = []\nencoders = ['imagenet']",
            "suites.s.datasets must be a non-empty list",
        ),
        (
            "[suites.s]\ndatasets = [1]\nencoders = ['imagenet']",
            "suites.s.datasets must be a list of strings",
        ),
        ("[suites.s]\ndatasets = ['d']\nencoders = ['mystery']", "'mystery' is neither built in"),
        (
            "[suites.s]\ndatasets = ['d']\nencoders = ['random']",
            "baseline 'imagenet' is not one of",
        ),
        (
            "[suites.s]\ndatasets = ['d']\nencoders = ['imagenet']\nadaptations = ['knn']",
            "unknown ['knn']",
        ),
        (
            "[suites.s]\ndatasets = ['d']\nencoders = ['imagenet']\nfractions = [0.0, 1.0]",
            "fractions must be numbers in (0, 1]",
        ),
        (
            "[suites.s]\ndatasets = ['d']\nencoders = ['imagenet']\nfractions = ['half']",
            "suites.s.fractions",
        ),
        (
            "[suites.s]\ndatasets = ['d']\nencoders = ['imagenet']\nseeds = ['one']",
            "suites.s.seeds",
        ),
        ("[suites.s]\ndatasets = ['d']\nencoders = ['imagenet']\nseeds = [0.5]", "suites.s.seeds"),
        (
            "[suites.s]\ndatasets = ['d']\nencoders = ['imagenet']\nprobe = 3",
            "suites.s.probe must be a table",
        ),
        (
            "[suites.s]\ndatasets = ['d']\nencoders = ['imagenet', 'moco']\n[suites.s.pretrain.moco]\n"
            "method = 'simclr'\ndataset = 'other'",
            "pretrain.moco.dataset 'other'",
        ),
        (
            "[suites.s]\ndatasets = ['d']\nencoders = ['imagenet']\n[suites.s.prepare.typo]\nsize = 64",
            "suites.s.prepare.typo",
        ),
    ],
)
def test_mistakes_are_one_line_naming_the_key(tmp_path, text, named):
    assert named in _error(tmp_path, text)


def test_pretrain_encoder_defaults_to_first_dataset_and_method_name(tmp_path):
    suite = get_suite(
        "s",
        _write(
            tmp_path,
            """
        [suites.s]
        datasets = ["a", "b"]
        encoders = ["imagenet", "simclr", "file:/w/enc.safetensors"]
        [suites.s.pretrain.simclr]
        epochs = 3
        [suites.s.prepare.b]
        root = "/data/b"
        size = 128
    """,
        ),
    )
    spec = suite.pretrain["simclr"]
    assert (spec.method, spec.dataset, spec.options) == ("simclr", "a", {"epochs": 3})
    assert suite.datasets == (DatasetSpec("a"), DatasetSpec("b", "/data/b", {"size": 128}))
    assert suite.encoders[2] == "file:/w/enc.safetensors"


# --- built-in suites and the local file over them ------------------------------------------------

SMOKE_OVERRIDE = """
[suites.smoke]
description = "my smoke"
datasets = ["synthetic"]
encoders = ["random"]
baseline = "random"
"""


def test_builtin_suite_found_from_a_folder_without_benchmarks_toml(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert get_suite("smoke") == builtin_suites()["smoke"]
    found = available_suites()
    assert list(found) == ["ct-smoke", "label-efficiency", "nih-simclr", "smoke", "ssl-cxr-13", "vit-dinov2"]
    assert {f.origin for f in found.values()} == {BUILTIN} and not any(f.replaces_builtin for f in found.values())


def test_local_benchmarks_toml_adds_suites_and_replaces_builtin_ones_whole(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "benchmarks.toml").write_text(SMOKE_OVERRIDE + MINIMAL)
    smoke = get_suite("smoke")
    assert smoke.description == "my smoke" and smoke.encoders == ("random",)
    assert smoke.pretrain == {} and smoke.evaluate == {}  # replaced whole, not merged key by key
    found = available_suites()
    assert list(found) == ["ct-smoke", "label-efficiency", "nih-simclr", "s", "smoke", "ssl-cxr-13", "vit-dinov2"]
    assert (found["smoke"].origin, found["smoke"].replaces_builtin) == ("benchmarks.toml", True)
    assert (found["s"].origin, found["s"].replaces_builtin) == ("benchmarks.toml", False)
    assert found["nih-simclr"] == (builtin_suites()["nih-simclr"], BUILTIN, False)


def test_config_path_is_read_instead_of_the_local_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "benchmarks.toml").write_text(SMOKE_OVERRIDE)
    other = tmp_path / "elsewhere" / "mine.toml"
    other.parent.mkdir()
    other.write_text(MINIMAL)
    found = available_suites(other)
    assert found["s"].origin == str(other) and found["smoke"].origin == BUILTIN
    with pytest.raises(CxrbenchError, match=r"config .*absent.toml not found"):
        available_suites(tmp_path / "absent.toml")


def test_local_file_without_suites_adds_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "benchmarks.toml").write_text("# nothing yet\n")
    assert {f.origin for f in available_suites().values()} == {BUILTIN}


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ('[suites.x]\ndatasets = ["a"\n', "is not valid TOML"),
        ("[suites.x]\nencoders = ['imagenet']", "suites.x.datasets"),
    ],
)
def test_bad_local_file_is_one_line_naming_it_even_for_a_builtin_suite(tmp_path, monkeypatch, text, named):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "benchmarks.toml").write_text(text)
    with pytest.raises(CxrbenchError) as info:
        get_suite("smoke")
    assert "benchmarks.toml" in info.value.message and named in info.value.message
    assert "\n" not in info.value.message


def _uncommented_examples(text: str) -> str:
    """The repository's example benchmarks.toml with its commented TOML lines switched on."""
    lines = []
    for line in text.splitlines():
        body = line[2:] if line.startswith("# ") else ""
        if body.startswith("[") or (" = " in body and not body.startswith(" ")):
            lines.append(body)
    return "\n".join(lines)


def test_repository_example_adds_nothing_as_shipped_and_parses_uncommented(tmp_path):
    example = REPO / "benchmarks.toml"
    assert set(load_config(example)) == {"convirt-sections"}  # the one suite it ships uncommented
    suites = load_config(_write(tmp_path, _uncommented_examples(example.read_text())))
    assert set(suites) == {"nih-simclr", "mine"}
    builtin = builtin_suites()["nih-simclr"]
    assert suites["nih-simclr"] == Suite(**{**builtin.__dict__, "description": suites["nih-simclr"].description})
    assert suites["mine"].datasets[0].options["split"] == "70/10/20"


def test_packaged_suites_file_is_package_data():
    import fnmatch

    from cxrbench.config import tomllib

    patterns = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["cxrbench"]
    assert any(fnmatch.fnmatch("suites.toml", pattern) for pattern in patterns)
    assert (REPO / "cxrbench" / "suites.toml").is_file()
