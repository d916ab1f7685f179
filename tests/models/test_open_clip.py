"""``open_clip:ORG/NAME``: a tiny random open_clip CLIP in a local hub cache; the image tower's
features checked against ``open_clip.create_model_and_transforms`` on the same image."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from cxrbench.adapt.finetune import Classifier
from cxrbench.errors import CxrbenchError
from cxrbench.models import create_encoder, resolve_encoder

open_clip = pytest.importorskip("open_clip")

MODEL_CFG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 8, "vocab_size": 100, "width": 32, "heads": 2, "layers": 1},
}
MEAN, STD = [0.5, 0.45, 0.4], [0.25, 0.26, 0.27]


@pytest.fixture
def tiny_clip(tmp_path, hub_repo):
    """A random open_clip ViT CLIP saved as the hub repos are (config + .bin state dict)."""
    folder = tmp_path / "saved-open-clip"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": MODEL_CFG, "preprocess_cfg": {"mean": MEAN, "std": STD}})
    )
    torch.manual_seed(0)
    model = open_clip.model.CLIP(**MODEL_CFG)
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    return hub_repo("org/tiny-open-clip", folder), folder


def test_image_tower_equals_open_clip_encode_image(tiny_clip):
    snapshot, _ = tiny_clip
    enc = create_encoder("open_clip:org/tiny-open-clip")
    assert (enc.mean, enc.std, enc.input_size) == (tuple(MEAN), tuple(STD), 32)
    assert enc.num_features == 16 and enc.patch_size == 8 and enc.source == "hf-hub:org/tiny-open-clip"
    assert not any(k.startswith(("transformer.", "token_embedding")) for k in enc.backbone.state_dict())
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{snapshot}")
    model.eval()
    grey = np.random.default_rng(0).integers(0, 256, (32, 32), dtype=np.uint8)
    pixels = preprocess(Image.fromarray(grey))[None]  # resize and crop leave a 32 px image as it is
    ours = torch.from_numpy(grey).float().div(255).view(1, 1, 32, 32)
    with torch.no_grad():
        expected = model.encode_image(pixels)
        torch.testing.assert_close(enc(ours), expected, rtol=1e-4, atol=1e-5)
        assert enc.tokens(ours).shape == (1, 16, 64)
        # another size: position embeddings resampled as open_clip does with force_image_size
        resized = create_encoder("open_clip:org/tiny-open-clip", input_size=48)
        reference = open_clip.create_model(f"local-dir:{snapshot}", force_image_size=48).eval()
        x = torch.rand(1, 1, 48, 48)
        normalised = (x.expand(-1, 3, -1, -1) - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(
            1, 3, 1, 1
        )
        torch.testing.assert_close(resized(x), reference.encode_image(normalised), rtol=1e-4, atol=1e-5)


def test_missing_checkpoint_names_the_download_and_bad_names_are_one_line(hub_cache):
    spec = resolve_encoder("open_clip:laion/CLIP-ViT-B-32-laion2B-s34B-b79K")
    assert not spec.weights.present
    assert spec.weights.fetch_command == 'hf download laion/CLIP-ViT-B-32-laion2B-s34B-b79K --include "open_clip_*"'
    with pytest.raises(CxrbenchError, match="not available offline; fetch them with: hf download laion/"):
        spec.build()
    with pytest.raises(CxrbenchError, match="use open_clip:ORG/NAME") as err:
        resolve_encoder("open_clip:ViT-B-32")
    assert "\n" not in err.value.message


def test_weights_dir_identity_and_finetuning(tiny_clip, tmp_path, monkeypatch):
    snapshot, folder = tiny_clip
    assert resolve_encoder("open_clip:org/tiny-open-clip").extra_inputs == {"revision": snapshot.name}
    (tmp_path / "w" / "org").mkdir(parents=True)
    (tmp_path / "w" / "org" / "tiny-open-clip").symlink_to(folder)
    monkeypatch.setenv("CXRBENCH_WEIGHTS_DIR", str(tmp_path / "w"))
    spec = resolve_encoder("open_clip:org/tiny-open-clip")
    assert set(spec.extra_inputs) == {"weights"} and spec.folder.startswith("open_clip-org-tiny-open-clip-")
    model = Classifier(spec.build(input_size=24), 2).train()
    before = model.encoder.backbone.visual.conv1.weight.detach().clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    torch.nn.functional.binary_cross_entropy_with_logits(model(torch.rand(3, 1, 30, 30)), torch.ones(3, 2)).backward()
    optimizer.step()
    assert not torch.equal(before, model.encoder.backbone.visual.conv1.weight)


def test_text_tower_equals_open_clip_encode_text(tiny_clip):
    snapshot, _ = tiny_clip
    tower, tokenizer = resolve_encoder("open_clip:org/tiny-open-clip").text_tower()
    model = open_clip.create_model(f"local-dir:{snapshot}").eval()
    tokens = torch.randint(1, 99, (3, 8), generator=torch.Generator().manual_seed(2))
    tokens[:, -1] = 99  # CLIP pools the text at its end-of-text token (the largest id)
    with torch.no_grad():
        torch.testing.assert_close(tower(tokens), model.encode_text(tokens), rtol=1e-4, atol=1e-5)
    assert tokenizer(["no effusion"]).shape == (1, 8)  # CLIP's own byte-pair encoding, offline
