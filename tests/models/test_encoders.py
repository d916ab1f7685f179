"""create_encoder / save_encoder through the real loading paths, with small random-weight models."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file
from torchvision.transforms.functional import resize

from cxrbench.errors import CxrbenchError
from cxrbench.models import Encoder, create_encoder, save_encoder

SMALL = "resnet18"


def _state(arch: str = SMALL, seed: int = 3, **kwargs) -> dict[str, torch.Tensor]:
    import timm

    torch.manual_seed(seed)
    model = timm.create_model(arch, pretrained=False, **kwargs)
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same_backbone(encoder: Encoder, state: dict[str, torch.Tensor]) -> None:
    got = encoder.backbone.state_dict()
    assert set(got) == {k for k in state if not k.startswith(("fc.", "head."))}
    for k, v in got.items():
        torch.testing.assert_close(v, state[k], rtol=0, atol=0)


def test_imagenet_loads_from_the_hub_cache_offline(hub_cache):
    state = hub_cache("resnet18.tv_in1k")
    enc = create_encoder("imagenet", arch="resnet18")
    _same_backbone(enc, state)
    assert enc.source == "hf-hub:timm/resnet18.tv_in1k" and enc.arch == "resnet18"
    assert (enc.mean, enc.std) == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert enc.input_size == 224 and enc.num_features == 512 and enc.patch_size is None
    assert not enc.training


def test_vit_in21k_weights_take_their_config_and_resample_to_input_size(hub_cache):
    state = hub_cache("vit_tiny_patch16_224.augreg_in21k")
    enc = create_encoder("imagenet", arch="vit_tiny_patch16_224", input_size=64)
    assert enc.source == "hf-hub:timm/vit_tiny_patch16_224.augreg_in21k"
    assert (enc.mean, enc.std) == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert enc.input_size == 64 and enc.patch_size == 16 and enc.num_features == 192
    # 224 px position embeddings (14 x 14 + cls) resampled to 64 px (4 x 4 + cls)
    assert enc.backbone.pos_embed.shape == (1, 17, 192)
    torch.testing.assert_close(enc.backbone.cls_token, state["cls_token"])
    torch.testing.assert_close(enc.backbone.blocks[0].attn.qkv.weight, state["blocks.0.attn.qkv.weight"])
    assert enc(torch.rand(2, 1, 80, 96)).shape == (2, 192)


def test_missing_hub_weights_fail_before_building_anything(hub_cache):
    with pytest.raises(CxrbenchError, match=r"fetch them with: hf download timm/resnet18\.tv_in1k"):
        create_encoder("imagenet", arch="resnet18")


def test_grey_input_equals_manual_three_channel_normalised_backbone():
    enc = create_encoder("random", arch=SMALL, input_size=32)
    x = torch.rand(2, 1, 32, 32)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    manual = enc.backbone((x.repeat(1, 3, 1, 1) - mean) / std)
    torch.testing.assert_close(enc(x), manual)
    torch.testing.assert_close(enc(x.repeat(1, 3, 1, 1)), manual)


def test_other_sizes_are_resized_once_to_input_size():
    enc = create_encoder("random", arch=SMALL, input_size=32)
    x = torch.rand(1, 1, 57, 45)
    ref = resize(x, [32, 32], antialias=True)  # torchvision's bilinear, antialiased
    torch.testing.assert_close(enc.preprocess(x)[:, :1], (ref - 0.485) / 0.229, atol=1e-5, rtol=0)
    with pytest.raises(CxrbenchError, match="shape"):
        enc(torch.rand(1, 2, 32, 32))


def test_random_is_seeded_and_independent_of_global_rng():
    a = create_encoder("random", arch=SMALL, seed=5)
    torch.manual_seed(123)
    b = create_encoder("random", arch=SMALL, seed=5)
    c = create_encoder("random", arch=SMALL, seed=6)
    wa, wb, wc = (e.backbone.conv1.weight for e in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)
    assert a.source == "random" and a.mean == (0.485, 0.456, 0.406)


def test_file_safetensors_with_ddp_prefix_and_head(tmp_path):
    state = _state()
    path = tmp_path / "w.safetensors"
    save_file({f"module.{k}": v for k, v in state.items()}, str(path))
    enc = create_encoder(f"file:{path}", arch=SMALL)
    _same_backbone(enc, state)
    assert enc.source == f"file:{path.resolve()}"


def test_file_pt_encoder_prefix_in_checkpoint_dict(tmp_path):
    state = _state(num_classes=0)
    path = tmp_path / "ckpt.pth"
    extra = {"projector.0.weight": torch.zeros(4, 512)}  # a pretrain head beside the encoder
    torch.save(
        {"state_dict": {**{f"encoder.{k}": v for k, v in state.items()}, **extra}, "epoch": 3},
        path,
    )
    _same_backbone(create_encoder(f"file:{path}", arch=SMALL), state)


def test_file_pt_refuses_pickled_objects(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": _state(), "obj": torch.nn.ReLU()}, path)  # needs full unpickling
    with pytest.raises(CxrbenchError, match="cannot read weights file") as err:
        create_encoder(f"file:{path}", arch=SMALL)
    assert "\n" not in err.value.message


def test_file_key_and_shape_mismatches_are_one_line(tmp_path):
    path = tmp_path / "r34.safetensors"
    save_file(_state("resnet34"), str(path))
    with pytest.raises(CxrbenchError) as err:
        create_encoder(f"file:{path}", arch=SMALL)
    msg = err.value.message
    assert "\n" not in msg and "unexpected: layer1.2." in msg and "more)" in msg

    state = _state()
    state["conv1.weight"] = torch.zeros(64, 3, 3, 3)
    del state["bn1.bias"]
    save_file(state, str(path))
    with pytest.raises(CxrbenchError) as err:
        create_encoder(f"file:{path}", arch=SMALL)
    msg = err.value.message
    assert "missing: bn1.bias" in msg and "shape: conv1.weight [64, 3, 3, 3] vs [64, 3, 7, 7]" in msg


def test_file_with_unknown_suffix_or_missing(tmp_path):
    bad = tmp_path / "w.npz"
    bad.write_bytes(b"0")
    with pytest.raises(CxrbenchError, match=r"must end in \.safetensors"):
        create_encoder(f"file:{bad}")
    with pytest.raises(CxrbenchError, match="not found"):
        create_encoder(f"file:{tmp_path / 'absent.safetensors'}")


def test_save_and_load_run_output_round_trip(tmp_path):
    base = create_encoder("random", arch=SMALL, input_size=48, seed=2)
    enc = Encoder(
        base.backbone,
        name="simclr",
        arch=SMALL,
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        input_size=48,
        source="random",
    )
    run = tmp_path / "run"
    written = save_encoder(enc, run / "encoders" / "simclr", extra={"epochs": 2})
    assert [p.name for p in written] == ["encoder.safetensors", "encoder.json"]
    meta = json.loads(written[1].read_text())
    assert meta["arch"] == SMALL and meta["input_size"] == 48 and meta["extra"] == {"epochs": 2}
    assert not [p for p in written[0].parent.iterdir() if p.name.startswith(".")]  # no temp files

    loaded = create_encoder("simclr", run_dir=run)
    assert loaded.source == "run:simclr" and loaded.mean == (0.5, 0.5, 0.5)
    assert loaded.std == (0.25, 0.25, 0.25) and loaded.input_size == 48
    x = torch.rand(2, 1, 48, 48)
    enc.eval()
    torch.testing.assert_close(loaded(x), enc(x), rtol=0, atol=0)
    # the same directory also works as file:DIR, and arch comes from encoder.json
    again = create_encoder(f"file:{run / 'encoders' / 'simclr'}")
    torch.testing.assert_close(again(x), enc(x), rtol=0, atol=0)


def test_vit_round_trip_keeps_input_size(tmp_path):
    enc = create_encoder("random", arch="vit_tiny_patch16_224", input_size=32)
    save_encoder(enc, tmp_path / "encoders" / "mae")
    loaded = create_encoder("mae", run_dir=tmp_path)
    assert loaded.input_size == 32 and loaded.patch_size == 16
    x = torch.rand(1, 3, 32, 32)
    torch.testing.assert_close(loaded(x), enc(x))


def test_unknown_run_output_lists_choices(tmp_path):
    with pytest.raises(CxrbenchError, match="no pretrain output") as err:
        create_encoder("byol", run_dir=tmp_path)
    assert "dinov2, imagenet, random" in err.value.message
    with pytest.raises(CxrbenchError, match="input_size"):
        create_encoder("random", input_size=0)


def test_feature_shape_matches_backbone_width():
    enc = create_encoder("random", arch=SMALL, input_size=32)
    assert enc(torch.rand(3, 1, 32, 32)).shape == (3, enc.num_features)


@pytest.mark.slow
def test_dinov2_loads_from_cache_at_224_with_its_patch_size(hub_cache):
    state = hub_cache("vit_small_patch14_dinov2.lvd142m")
    enc = create_encoder("dinov2", arch="vit_small_patch14_dinov2")
    assert enc.source == "hf-hub:timm/vit_small_patch14_dinov2.lvd142m"
    assert enc.input_size == 224 and enc.patch_size == 14 and enc.num_features == 384
    assert (enc.mean, enc.std) == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert enc.backbone.pos_embed.shape[1] == 16 * 16 + 1  # resampled from 37 x 37
    torch.testing.assert_close(enc.backbone.blocks[0].mlp.fc1.weight, state["blocks.0.mlp.fc1.weight"])
    assert enc(torch.rand(1, 1, 100, 100)).shape == (1, 384)


@torch.no_grad()
def test_allow_any_size_vit_equals_timms_dynamic_image_size_model():
    # encoded at their own size, smaller images give what timm's own dynamic_img_size=True model
    # (position embeddings interpolated per input) gives for the same weights and preprocessing
    import timm

    encoder = create_encoder("random", arch="vit_tiny_patch16_224", input_size=32, seed=1)
    torch.manual_seed(0)
    reference = timm.create_model("vit_tiny_patch16_224", num_classes=0, img_size=32, dynamic_img_size=True).eval()
    reference.load_state_dict(encoder.backbone.state_dict())
    x = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(2))

    def timm_dynamic(images: torch.Tensor) -> torch.Tensor:
        return reference((images.expand(-1, 3, -1, -1) - encoder._mean) / encoder._std)

    full = encoder(x)  # resized to 32 px until allowed
    assert encoder.allow_any_size(16) and encoder.any_size and not encoder.training
    torch.testing.assert_close(encoder(x), timm_dynamic(x))
    assert not torch.allclose(encoder(x), full)
    y = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(encoder(y), timm_dynamic(y))  # the input size itself is unchanged


def test_allow_any_size_keeps_resizing_when_the_backbone_cannot_take_the_size():
    encoder = create_encoder("random", arch="vit_tiny_patch16_224", input_size=32, seed=1)
    assert not encoder.allow_any_size(12)  # not a whole number of 16-pixel patches
    x = torch.rand(1, 1, 12, 12)
    assert encoder(x).shape == (1, encoder.num_features) and not encoder.any_size
    cnn = create_encoder("random", arch=SMALL, input_size=32, seed=1)
    assert cnn.allow_any_size(16) and cnn.preprocess(torch.rand(1, 1, 16, 16)).shape[-1] == 16
