"""``hf:ORG/NAME``: tiny random transformers models in a local hub cache (offline), features checked
against ``AutoModel`` + ``AutoImageProcessor`` run by hand on the same image."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from cxrbench.adapt.finetune import Classifier
from cxrbench.errors import CxrbenchError
from cxrbench.models import create_encoder, resolve_encoder

#: RAD-DINO's processor at a tiny scale: resize the short side to the crop size, crop, normalise.
#: An image already at that size passes resize and crop unchanged, so only normalisation is compared.
SIZE = 56


def _grey(seed: int = 0, size: int = SIZE) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)


def _as_input(grey: np.ndarray) -> torch.Tensor:
    """cxrbench's view of the image: [1, 1, H, W] in [0, 1]."""
    return torch.from_numpy(grey).float().div(255).view(1, 1, *grey.shape)


def _by_hand(folder, grey: np.ndarray, *, tower: bool = False):
    """The model's outputs on ``grey`` with transformers' own loading and preprocessing."""
    from transformers import AutoImageProcessor, AutoModel

    processor = AutoImageProcessor.from_pretrained(str(folder), local_files_only=True)
    model = AutoModel.from_pretrained(str(folder), local_files_only=True, dtype=torch.float32).eval()
    if tower:
        model = model.vision_model
    pixels = processor(images=Image.fromarray(grey).convert("RGB"), return_tensors="pt")["pixel_values"]
    assert pixels.shape[-2:] == grey.shape
    with torch.no_grad():
        return model(pixel_values=pixels)


@pytest.fixture
def tiny_dino(tmp_path, hub_repo):
    """A 2-layer DINOv2 with RAD-DINO's kind of processor config, as hub repo ``org/tiny-dino``."""
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    config = Dinov2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=SIZE, patch_size=14
    )
    folder = tmp_path / "saved-dino"
    Dinov2Model(config).save_pretrained(folder)
    BitImageProcessor(
        size={"shortest_edge": SIZE},
        crop_size={"height": SIZE, "width": SIZE},
        do_center_crop=True,
        image_mean=[0.53, 0.53, 0.53],
        image_std=[0.26, 0.26, 0.26],
    ).save_pretrained(folder)
    return hub_repo("org/tiny-dino", folder), folder


@pytest.fixture
def tiny_vit(tmp_path, hub_repo):
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    torch.manual_seed(1)
    config = ViTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=8
    )
    folder = tmp_path / "saved-vit"
    ViTModel(config).save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(
        folder
    )
    return hub_repo("org/tiny-vit", folder), folder


def test_dinov2_cls_default_equals_automodel_with_its_processor(tiny_dino):
    snapshot, _ = tiny_dino
    enc = create_encoder("hf:org/tiny-dino")
    assert (enc.mean, enc.std, enc.input_size) == ((0.53,) * 3, (0.26,) * 3, SIZE)
    assert enc.num_features == 32 and enc.patch_size == 14 and enc.arch == "dinov2"
    assert enc.source == "hf-hub:org/tiny-dino" and not enc.training
    grey = _grey()
    expected = _by_hand(snapshot, grey)
    with torch.no_grad():
        got = enc(_as_input(grey))
        tokens = enc.tokens(_as_input(grey))
    # same weights and same normalised pixels up to float rounding of /255 and (x - mean) / std
    torch.testing.assert_close(got, expected.last_hidden_state[:, 0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(tokens, expected.last_hidden_state, rtol=1e-4, atol=1e-5)
    assert tokens.shape == (1, 1 + (SIZE // 14) ** 2, 32)


def test_mean_and_pooler_features_and_other_input_sizes(tiny_vit):
    snapshot, _ = tiny_vit
    grey = _grey(1, 32)
    expected = _by_hand(snapshot, grey)
    with torch.no_grad():
        mean = create_encoder("hf:org/tiny-vit#mean")(_as_input(grey))
        pooler = create_encoder("hf:org/tiny-vit#pooler")(_as_input(grey))
    torch.testing.assert_close(mean, expected.last_hidden_state[:, 1:].mean(1), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(pooler, expected.pooler_output, rtol=1e-4, atol=1e-5)
    # another input size: position embeddings interpolated, 6 x 6 patches
    enc = create_encoder("hf:org/tiny-vit", input_size=48)
    with torch.no_grad():
        assert enc(torch.rand(2, 1, 64, 64)).shape == (2, 32)
        assert enc.tokens(torch.rand(2, 1, 64, 64)).shape == (2, 1 + 36, 32)


def test_clip_checkpoint_gives_its_image_tower_pooled_by_default(tmp_path, hub_repo):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    torch.manual_seed(2)
    config = CLIPConfig(
        text_config={
            "hidden_size": 16,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 32,
            "vocab_size": 99,
            "bos_token_id": 0,
            "eos_token_id": 1,
        },
        vision_config={
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "intermediate_size": 64,
            "image_size": 32,
            "patch_size": 8,
        },
        projection_dim=16,
    )
    folder = tmp_path / "saved-clip"
    CLIPModel(config).save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    snapshot = hub_repo("org/tiny-clip", folder)
    enc = create_encoder("hf:org/tiny-clip")
    assert enc.arch == "clip" and enc.input_size == 32 and enc.num_features == 32
    assert enc.mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))
    assert not any(p.shape[-1] == 99 for p in enc.parameters())  # no text tower
    grey = _grey(2, 32)
    expected = _by_hand(snapshot, grey, tower=True)
    with torch.no_grad():
        torch.testing.assert_close(enc(_as_input(grey)), expected.pooler_output, rtol=1e-4, atol=1e-5)
        cls = create_encoder("hf:org/tiny-clip#cls")(_as_input(grey))
    torch.testing.assert_close(cls, expected.last_hidden_state[:, 0], rtol=1e-4, atol=1e-5)


def test_missing_weights_name_the_hf_download_command(hub_cache):
    spec = resolve_encoder("hf:microsoft/rad-dino")
    assert not spec.weights.present
    with pytest.raises(CxrbenchError) as err:
        create_encoder("hf:microsoft/rad-dino")
    assert err.value.message == (
        "weights for hf:microsoft/rad-dino (transformers) are not available offline; fetch them with: "
        'hf download microsoft/rad-dino --include "*.json" "*.safetensors"'
    )
    spec = resolve_encoder("hf:microsoft/rad-dino@v1.0#mean")
    assert spec.weights.fetch_command.startswith("hf download microsoft/rad-dino --revision v1.0 ")
    assert spec.weights.source == "hf-hub:microsoft/rad-dino@v1.0"


def test_weights_dir_and_revisions(tiny_dino, hub_repo, tmp_path, monkeypatch):
    snapshot, folder = tiny_dino
    spec = resolve_encoder("hf:org/tiny-dino")
    assert spec.weights.location == str(snapshot) and spec.extra_inputs == {"revision": snapshot.name}
    assert not resolve_encoder("hf:org/tiny-dino@v2").weights.present
    tagged = hub_repo("org/tiny-dino", folder, revision="v2")
    assert resolve_encoder("hf:org/tiny-dino@v2").weights.location == str(tagged)
    local = tmp_path / "weights"
    (local / "org").mkdir(parents=True)
    (local / "org" / "tiny-dino").symlink_to(folder)
    monkeypatch.setenv("CXRBENCH_WEIGHTS_DIR", str(local))
    spec = resolve_encoder("hf:org/tiny-dino")
    assert spec.weights.location == str(local / "org" / "tiny-dino") and set(spec.extra_inputs) == {"weights"}
    with torch.no_grad():
        x = torch.rand(1, 1, SIZE, SIZE)
        torch.testing.assert_close(spec.build()(x), create_encoder("hf:org/tiny-dino")(x))


def test_folder_names_settings_and_one_line_errors(tiny_dino, tmp_path):
    snapshot, folder = tiny_dino
    spec = resolve_encoder("hf:org/tiny-dino#mean")
    assert spec.folder.startswith("hf-org-tiny-dino-mean-") and "/" not in spec.folder and ":" not in spec.folder
    assert spec.folder != resolve_encoder("hf:org/tiny-dino").folder
    assert spec.settings == {"encoder": "hf:org/tiny-dino#mean", "arch": "dinov2", "source": "hf-hub:org/tiny-dino"}
    for name, match in [
        ("hf:rad-dino", "use hf:ORG/NAME"),
        ("hf:org/tiny-dino#avg", "feature #avg is not one of cls, mean, pooler"),
    ]:
        with pytest.raises(CxrbenchError, match=match) as err:
            resolve_encoder(name)
        assert "\n" not in err.value.message
    (snapshot / "preprocessor_config.json").unlink()
    with pytest.raises(CxrbenchError, match="has no preprocessor_config.json"):
        resolve_encoder("hf:org/tiny-dino")


def test_pooler_missing_from_the_checkpoint_is_refused(tmp_path, hub_repo):
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    config = ViTConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=8
    )
    folder = tmp_path / "no-pooler"
    ViTModel(config, add_pooling_layer=False).save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    hub_repo("org/no-pooler", folder)
    assert create_encoder("hf:org/no-pooler").num_features == 32  # the class token needs no pooler
    with pytest.raises(CxrbenchError, match=r"do not fit ViTModel; missing: pooler\.dense"):
        create_encoder("hf:org/no-pooler#pooler")


def test_one_finetuning_step_moves_the_backbone(tiny_dino):
    enc = create_encoder("hf:org/tiny-dino", input_size=28)
    model = Classifier(enc, 3).train()
    before = {k: v.clone() for k, v in model.encoder.backbone.state_dict().items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    logits = model(torch.rand(4, 1, 40, 40))
    assert logits.shape == (4, 3)
    torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.ones_like(logits)).backward()
    optimizer.step()
    after = model.encoder.backbone.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert any("encoder.layer.0" in k for k in changed) and any("embeddings" in k for k in changed)


@pytest.mark.parametrize("feature", ["cls", "mean"])
def test_every_parameter_takes_part_in_training_whatever_the_feature(tiny_vit, feature):
    """DistributedDataParallel (finetuning on several GPUs) needs a gradient for every parameter,
    the unused pooler included; in eval mode the feature is unchanged."""
    enc = create_encoder(f"hf:org/tiny-vit#{feature}")
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        frozen = enc(x)
    model = Classifier(enc, 2).train()
    model.encoder.backbone.model.eval()  # dropout off, so train and eval features can be compared
    model.encoder.backbone.training = True
    model(x).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    with torch.no_grad():
        torch.testing.assert_close(model.encoder.backbone(model.encoder.preprocess(x)), frozen)


def test_siglip_checkpoint_gives_its_image_tower_pooled_by_default(tmp_path, hub_repo):
    # SigLIP has no class token: its pooled output (attention-pooling head) is the default feature
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel

    torch.manual_seed(3)
    config = SiglipConfig(
        text_config={
            "hidden_size": 16,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 32,
            "vocab_size": 99,
        },
        vision_config={
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "intermediate_size": 64,
            "image_size": 32,
            "patch_size": 8,
        },
    )
    folder = tmp_path / "saved-siglip"
    SiglipModel(config).save_pretrained(folder)
    SiglipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    snapshot = hub_repo("org/tiny-siglip", folder)
    enc = create_encoder("hf:org/tiny-siglip")
    assert enc.input_size == 32 and enc.num_features == 32 and enc.mean == pytest.approx((0.5, 0.5, 0.5))
    assert not any(p.shape[-1] == 99 for p in enc.parameters())  # no text tower
    grey = _grey(2, 32)
    expected = _by_hand(snapshot, grey, tower=True)
    with torch.no_grad():
        torch.testing.assert_close(enc(_as_input(grey)), expected.pooler_output, rtol=1e-4, atol=1e-5)


def test_clip_checkpoint_zero_shot_uses_transformers_own_projections(tmp_path, hub_repo, tiny_dino):
    # the image features the encoder gives (vision pooler output) projected, and the prompts'
    # text features, equal CLIPModel's get_image_features / get_text_features with its tokenizer
    from transformers import AutoTokenizer, BertTokenizerFast, CLIPConfig, CLIPImageProcessor, CLIPModel

    from cxrbench.adapt.zeroshot import Prompts, text_tower, zeroshot_scores

    torch.manual_seed(3)
    folder = tmp_path / "clip-with-tokenizer"
    folder.mkdir()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "no", "pleural", "effusion", "a", "chest", "x-ray"]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt")).save_pretrained(folder)
    text = {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32}
    text.update(vocab_size=len(vocab), bos_token_id=2, eos_token_id=3, pad_token_id=0)
    vision = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}
    vision.update(image_size=32, patch_size=8)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    snapshot = hub_repo("org/clip-zs", folder)

    grey = _grey(4, 32)
    with torch.no_grad():
        features = create_encoder("hf:org/clip-zs")(_as_input(grey))
    tower = text_tower(resolve_encoder("hf:org/clip-zs"))
    model = CLIPModel.from_pretrained(str(snapshot), local_files_only=True).eval()
    vision_out = _by_hand(snapshot, grey, tower=True)
    with torch.no_grad():
        want_image = model.visual_projection(vision_out.pooler_output)
        prompts = ["pleural effusion", "no pleural effusion"]
        tokens = AutoTokenizer.from_pretrained(str(snapshot))(prompts, padding=True, return_tensors="pt")
        out = model.get_text_features(**tokens)
        want_text = out if isinstance(out, torch.Tensor) else out.pooler_output
    torch.testing.assert_close(tower.image(features), want_image, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(tower.text(prompts), want_text, rtol=1e-5, atol=1e-6)
    chosen = Prompts(positive={"Effusion": ["pleural effusion"]}, negative={"Effusion": ["no pleural effusion"]})
    scores = zeroshot_scores(tower, features.numpy(), ["Effusion"], chosen)
    assert scores.shape == (1, 1) and 0 < scores[0, 0] < 1
    with pytest.raises(CxrbenchError, match="#pooler"):
        text_tower(resolve_encoder("hf:org/clip-zs#cls"))
    with pytest.raises(CxrbenchError, match="has no text tower"):
        text_tower(resolve_encoder("hf:org/tiny-dino"))
