"""``chexzero:``: a random OpenAI-CLIP ViT-B/32 state dict saved as CheXzero's ``run_train.py`` saves it
(half-precision weights, as ``clip.load`` on a GPU leaves them); features checked against the model the
authors' loader gives (``clip.load("ViT-B/32")`` + strict ``load_state_dict``, re-created here by
open_clip's port of CLIP's ``build_model``) run on the authors' preprocessing. The text tower is a tiny
one (its width and depth are read from the file by ``build_model``): cxrbench never reads it."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from cxrbench.errors import CxrbenchError
from cxrbench.models import create_encoder, resolve_encoder

open_clip = pytest.importorskip("open_clip")

VISION = {"image_size": 224, "layers": 12, "width": 768, "patch_size": 32}
TEXT = {"context_length": 8, "vocab_size": 100, "width": 64, "heads": 1, "layers": 1}


def authors_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A random CLIP ViT-B/32 in OpenAI's key layout, LayerNorms perturbed, weights in half precision."""
    torch.manual_seed(seed)
    model = open_clip.model.CLIP(512, VISION, TEXT, quick_gelu=True)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.LayerNorm):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.1, 0.1)
    open_clip.model.convert_weights_to_lp(model, torch.float16)  # CLIP's convert_weights
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("chexzero") / "best_64_5e-05_original_22000_0.864.pt"
    state = authors_state()
    assert {"visual.proj", "visual.class_embedding", "token_embedding.weight", "logit_scale"} <= set(state)
    assert state["visual.conv1.weight"].dtype == torch.float16
    torch.save(state, path)
    return path


def authors_model(state: dict[str, torch.Tensor]) -> nn.Module:
    """What ``clip.load("ViT-B/32", jit=False)`` + ``load_state_dict(strict)`` gives on the CPU (float32)."""
    model = open_clip.model.build_model_from_openai_state_dict(dict(state))
    return model.float().eval()


def authors_pixels(grey: torch.Tensor) -> torch.Tensor:
    """``CXRTestDataset`` + ``make``'s transforms: 0-255 grey repeated to 3 channels, then Normalize."""
    return (grey.expand(-1, 3, -1, -1) * 255 - 101.48761) / 83.43944


def test_features_equal_the_authors_encode_image(checkpoint):
    spec = resolve_encoder(f"chexzero:{checkpoint}")
    assert (spec.arch, spec.input_size, spec.resavable) == ("vit_base_patch32_clip_quickgelu_224", 224, False)
    torch.testing.assert_close(torch.tensor(spec.mean), torch.full((3,), 101.48761 / 255))
    torch.testing.assert_close(torch.tensor(spec.std), torch.full((3,), 83.43944 / 255))
    enc = spec.build()
    assert enc.num_features == 512 and enc.patch_size == 32
    assert not any(k.startswith(("transformer.", "token_embedding")) for k in enc.backbone.state_dict())
    reference = authors_model(torch.load(checkpoint, weights_only=True))
    torch.manual_seed(3)
    grey = torch.rand(2, 1, 224, 224)
    with torch.no_grad():
        got = enc(grey)
        expected = reference.encode_image(authors_pixels(grey))
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
        assert enc.tokens(grey).shape == (2, 1 + 7 * 7, 768)


def test_another_input_size_resamples_the_position_embeddings_as_timm_does(checkpoint):
    from timm.layers import resample_abs_pos_embed

    enc = create_encoder(f"chexzero:{checkpoint}", input_size=64)
    state = torch.load(checkpoint, weights_only=True)
    pos = state["visual.positional_embedding"].float().unsqueeze(0)
    state["visual.positional_embedding"] = resample_abs_pos_embed(pos, new_size=[2, 2], num_prefix_tokens=1)[0]
    reference = authors_model(state)  # build_model reads the 64 px resolution off the 2 x 2 grid
    grey = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(enc(grey), reference.encode_image(authors_pixels(grey)), rtol=1e-4, atol=1e-4)
        assert enc.tokens(grey).shape == (1, 5, 768)


def test_one_finetuning_step_moves_the_image_tower(checkpoint):
    from cxrbench.adapt.finetune import Classifier

    model = Classifier(create_encoder(f"chexzero:{checkpoint}", input_size=64), 2).train()
    tower = model.encoder.backbone
    before = tower.vit.patch_embed.proj.weight.detach().clone(), tower.proj.detach().clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    logits = model(torch.rand(2, 1, 64, 64))
    loss = nn.functional.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
    assert torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())  # the projection too (DDP-safe)
    optimizer.step()
    assert not torch.equal(before[0], tower.vit.patch_embed.proj.weight) and not torch.equal(before[1], tower.proj)


def test_missing_foreign_and_pickled_files_are_one_line(tmp_path):
    path = tmp_path / "chexzero.pt"
    spec = resolve_encoder(f"chexzero:{path}")
    assert not spec.weights.present
    assert "https://drive.google.com/drive/folders/1makFLiEMbSleYltaRxw81aBhEDMpVwno" in spec.weights.missing_message
    with pytest.raises(CxrbenchError, match="needs the path of the published checkpoint"):
        resolve_encoder("chexzero:")
    torch.save({"token_embedding.weight": torch.zeros(2, 2), "logit_scale": torch.zeros(())}, path)
    with pytest.raises(CxrbenchError) as err:
        create_encoder(f"chexzero:{path}")
    assert err.value.message == (
        f"{path} is not a CheXzero checkpoint: expected keys visual.*; found token_embedding.weight, logit_scale"
    )
    b16 = {k: v for k, v in authors_state().items() if k.startswith("visual.")}
    b16["visual.conv1.weight"] = torch.zeros(768, 3, 16, 16)
    torch.save(b16, path)
    with pytest.raises(CxrbenchError, match=r"shape: vit\.patch_embed\.proj\.weight \[768, 3, 16, 16\]") as err:
        create_encoder(f"chexzero:{path}")
    assert "\n" not in err.value.message

    class Boom:
        def __reduce__(self):
            return (exec, ("raise SystemExit",))

    buffer = io.BytesIO()
    torch.save({"visual.proj": torch.zeros(768, 512), "x": Boom()}, buffer)
    path.write_bytes(buffer.getvalue())
    with pytest.raises(CxrbenchError, match="never pickled objects"):
        create_encoder(f"chexzero:{path}")
