"""The encoder-source registry: names -> sources and hub repos, offline weight presence, fetch
commands, folder names and stage identity, clear one-line errors."""

from __future__ import annotations

import pytest

from cxrbench.errors import CxrbenchError
from cxrbench.models.sources import builtin_names, check_weights, is_builtin, resolve_encoder


def resolve(name, arch=None, run_dir=None):
    return resolve_encoder(name, arch=arch, run=run_dir)


def weight_spec(name, arch=None, run_dir=None):
    return resolve_encoder(name, arch=arch, run=run_dir).weights


def require_weights(name, arch=None, run_dir=None):
    return resolve_encoder(name, arch=arch, run=run_dir).require().weights


def test_default_sources_resolve_to_documented_hub_repos():
    assert resolve("imagenet").hub_repo == "timm/resnet50.tv_in1k"
    assert resolve("imagenet", arch="densenet121").hub_repo == "timm/densenet121.tv_in1k"
    assert resolve("imagenet", arch="vit_base_patch16_224").hub_repo == "timm/vit_base_patch16_224.augreg_in21k"
    assert resolve("imagenet", arch="resnet50.a1_in1k").hub_repo == "timm/resnet50.a1_in1k"
    assert resolve("dinov2").hub_repo == "timm/vit_base_patch14_dinov2.lvd142m"
    assert resolve("random").source == "random" and resolve("random").arch == "resnet50"


def test_missing_weights_name_the_fetch_command(hub_cache):
    spec = weight_spec("imagenet", arch="resnet18")
    assert not spec.present and spec.location is None
    assert spec.fetch_command == "hf download timm/resnet18.tv_in1k config.json model.safetensors"
    with pytest.raises(CxrbenchError) as err:
        require_weights("imagenet", arch="resnet18")
    assert err.value.exit_code == 2
    assert err.value.message == (
        "weights for imagenet (resnet18) are not available offline; fetch them with: "
        "hf download timm/resnet18.tv_in1k config.json model.safetensors"
    )
    assert "\n" not in err.value.message


def test_cached_weights_are_found_without_network(hub_cache):
    hub_cache("resnet18.tv_in1k")
    spec = require_weights("imagenet", arch="resnet18")
    assert spec.present and spec.source == "hf-hub:timm/resnet18.tv_in1k"
    assert spec.location.endswith("model.safetensors")
    # another tag of the same arch is still missing
    assert not weight_spec("imagenet", arch="resnet18.a1_in1k").present


def test_weights_dir_env_is_an_alternative_to_the_cache(hub_cache, tmp_path, monkeypatch):
    local = tmp_path / "local"
    (local / "resnet18.tv_in1k").mkdir(parents=True)
    (local / "resnet18.tv_in1k" / "model.safetensors").write_bytes(b"x")
    monkeypatch.setenv("CXRBENCH_WEIGHTS_DIR", str(local))
    spec = weight_spec("imagenet", arch="resnet18")
    assert spec.present and spec.location == str(local / "resnet18.tv_in1k" / "model.safetensors")


def test_random_file_and_run_specs(tmp_path):
    assert weight_spec("random").present
    missing = weight_spec(f"file:{tmp_path / 'nope.safetensors'}")
    assert not missing.present
    with pytest.raises(CxrbenchError, match="nope.safetensors not found"):
        require_weights(f"file:{tmp_path / 'nope.safetensors'}")
    run = tmp_path / "run"
    (run / "encoders" / "moco").mkdir(parents=True)
    (run / "encoders" / "moco" / "encoder.json").write_text('{"arch": "resnet18"}')
    spec = weight_spec("moco", run_dir=run)
    assert spec.arch == "resnet18" and spec.source == "run:moco" and not spec.present


@pytest.mark.parametrize(
    ("name", "arch", "match"),
    [
        ("imagenett", None, "unknown encoder 'imagenett'"),
        ("imagenet", "resnet5O", "unknown architecture 'resnet5O'"),
        ("dinov2", "resnet50", "dinov2 needs a DINOv2 ViT"),
        ("imagenet", "resnet18.no_such_tag", "no Hugging Face weights resnet18.no_such_tag"),
        ("", None, "non-empty"),
    ],
)
def test_bad_names_are_one_line_errors(name, arch, match, tmp_path):
    with pytest.raises(CxrbenchError, match=match) as err:
        weight_spec(name, arch=arch, run_dir=tmp_path)
    assert "\n" not in err.value.message


def test_check_weights_dedupes_in_order(hub_cache):
    hub_cache("resnet18.tv_in1k")
    specs = check_weights([("imagenet", "resnet18"), ("random", None), ("imagenet", "resnet18")])
    assert len(specs) == 2
    assert [(s.encoder, s.present) for s in specs] == [("imagenet", True), ("random", True)]


def test_each_source_claims_its_names_and_the_run_is_the_fallback(tmp_path):
    assert builtin_names() == ["dinov2", "imagenet", "random"]
    assert is_builtin("imagenet") and is_builtin("file:/w/x.pt") and not is_builtin("simclr")
    with pytest.raises(CxrbenchError, match="unknown encoder 'simclr': no pretrain output"):
        resolve("simclr", run_dir=tmp_path)


def test_input_size_and_normalisation_come_from_the_source():
    dino = resolve("dinov2")
    assert dino.input_size == 224  # the paper's resolution, stated by the dinov2 source (timm says 518)
    vit = resolve("imagenet", arch="vit_base_patch16_224")
    assert (vit.mean, vit.std, vit.input_size) == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5), 224)
    assert resolve("random", arch="resnet18").mean == (0.485, 0.456, 0.406)


def test_folder_names_are_folder_safe_and_distinct(tmp_path):
    a, b = tmp_path / "a" / "enc.safetensors", tmp_path / "b" / "enc.safetensors"
    fa, fb = resolve(f"file:{a}").folder, resolve(f"file:{b}").folder
    assert fa != fb and fa.startswith("file-enc-") and "/" not in fa and ":" not in fa
    assert resolve("imagenet").folder == "imagenet"


def test_file_identity_follows_the_weights_content(tmp_path):
    path = tmp_path / "w.safetensors"
    path.write_bytes(b"one")
    first = resolve(f"file:{path}", arch="resnet18")
    path.write_bytes(b"two")
    second = resolve(f"file:{path}", arch="resnet18")
    assert first.settings == second.settings and first.extra_inputs != second.extra_inputs


def test_a_run_output_is_keyed_on_its_pretrain_manifest(tmp_path):
    from cxrbench.rundir import Stage

    run = tmp_path / "run"
    home = run / "encoders" / "moco"
    stage = Stage(run, "pretrain", home / "manifest.json", settings={"x": 1})
    with stage.open() as todo:
        assert todo
        for name, text in (
            ("encoder.json", '{"arch": "resnet18", "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "input_size": 32}'),
            ("encoder.safetensors", "x"),
        ):
            stage.write_text(home / name, text)
    spec = resolve("moco", run_dir=run)
    assert spec.weights.present and spec.input_size == 32 and spec.mean == (0.5, 0.5, 0.5)
    assert spec.inputs[0].key == stage.manifest.key


def test_a_run_output_is_keyed_on_its_encoder_files_not_its_training_log(tmp_path):
    """The log holds images/s timings: two runs of the same pretraining must give the same inputs."""
    from cxrbench.rundir import Stage

    run = tmp_path / "run"
    home = run / "encoders" / "moco"
    meta = '{"arch": "resnet18", "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "input_size": 32}'
    inputs = []
    for images_per_s in ("100.0", "250.0"):
        stage = Stage(run, "pretrain", home / "manifest.json", settings={"x": 1})
        with stage.open(force=True):
            stage.write_text(home / "encoder.json", meta)
            stage.write_text(home / "encoder.safetensors", "x")
            stage.write_text(run / "logs" / "pretrain" / "moco.parquet", images_per_s)
        assert "logs/pretrain/moco.parquet" in stage.manifest.outputs
        inputs.append(resolve("moco", run_dir=run).inputs[0].outputs)
    assert inputs[0] == inputs[1]
    assert sorted(inputs[0]) == ["encoders/moco/encoder.json", "encoders/moco/encoder.safetensors"]


def test_a_bare_published_name_looks_for_the_authors_file_in_the_weights_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("CXRBENCH_WEIGHTS_DIR", str(tmp_path))
    spec = resolve("mococxr")
    assert spec.name == "mococxr" and spec.folder == "mococxr"
    assert spec.weights.location == str(tmp_path / "r5w-00001.pth.tar") and not spec.weights.present
    assert "https://storage.googleapis.com/moco-cxr/r5w-00001.pth.tar" in spec.weights.fetch_command
    assert is_builtin("gloria") and resolve("gloria").weights.location.endswith("chexpert_resnet50.ckpt")
