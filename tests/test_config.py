"""benchmarks.toml -> Suite: the shipped file parses, and each kind of mistake is one line naming the key."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from cxrbench.config import DatasetSpec, Suite, get_suite, load_config
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


def test_shipped_benchmarks_toml_parses():
    suites = load_config(REPO / "benchmarks.toml")
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
    with pytest.raises(CxrbenchError, match=r"unknown suite 'nope'.*known: s\)"):
        get_suite("nope", _write(tmp_path, MINIMAL))


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("x = 1", "no [suites.NAME]"),
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
