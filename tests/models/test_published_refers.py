"""``refers:``: random weights in REFERS' ``VisionTransformer`` layout (the ViT-pytorch modules of
``Fine-tune/*/models/modeling.py``: separate query/key/value, ``attention_norm``/``ffn_norm``, a
``head``), written here as a plain reference model with the same module names and the same forward
(pre-norm blocks, exact GELU, LayerNorm eps 1e-6); features checked against its ``get_fmap`` output,
the normed class token, on the authors' preprocessing. Also the pretrainer's checkpoint layout."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from cxrbench.errors import CxrbenchError
from cxrbench.models import create_encoder, resolve_encoder

WIDTH, DEPTH, HEADS, MLP, PATCH = 768, 12, 12, 3072, 16


class Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.query, self.key, self.value, self.out = (nn.Linear(WIDTH, WIDTH) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = (f(x).view(b, n, HEADS, -1).transpose(1, 2) for f in (self.query, self.key, self.value))
        weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(WIDTH // HEADS), dim=-1)
        return self.out((weights @ v).transpose(1, 2).reshape(b, n, WIDTH))


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attention_norm, self.ffn_norm = nn.LayerNorm(WIDTH, eps=1e-6), nn.LayerNorm(WIDTH, eps=1e-6)
        self.ffn = nn.Module()
        self.ffn.fc1, self.ffn.fc2 = nn.Linear(WIDTH, MLP), nn.Linear(MLP, WIDTH)
        self.attn = Attention()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attention_norm(x))
        return x + self.ffn.fc2(nn.functional.gelu(self.ffn.fc1(self.ffn_norm(x))))


class ReferenceViT(nn.Module):
    """REFERS' ``VisionTransformer(config ViT-B_16, img_size, get_fmap=True)`` in eval mode."""

    def __init__(self, img_size: int = 224, num_classes: int = 5) -> None:
        super().__init__()
        self.transformer = nn.Module()
        emb = self.transformer.embeddings = nn.Module()
        emb.patch_embeddings = nn.Conv2d(3, WIDTH, PATCH, stride=PATCH)
        emb.position_embeddings = nn.Parameter(torch.randn(1, (img_size // PATCH) ** 2 + 1, WIDTH) * 0.02)
        emb.cls_token = nn.Parameter(torch.randn(1, 1, WIDTH) * 0.02)
        enc = self.transformer.encoder = nn.Module()
        enc.layer = nn.ModuleList(Block() for _ in range(DEPTH))
        enc.encoder_norm = nn.LayerNorm(WIDTH, eps=1e-6)
        self.head = nn.Linear(WIDTH, num_classes)
        with torch.no_grad():
            for m in self.modules():
                if isinstance(m, nn.LayerNorm):
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.uniform_(-0.1, 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        emb, enc = self.transformer.embeddings, self.transformer.encoder
        x = emb.patch_embeddings(x).flatten(2).transpose(1, 2)
        x = torch.cat([emb.cls_token.expand(len(x), -1, -1), x], dim=1) + emb.position_embeddings
        for block in enc.layer:
            x = block(x)
        return enc.encoder_norm(x)[:, 0]


def imagenet(grey: torch.Tensor) -> torch.Tensor:
    """``convert('RGB')`` + ``ToTensor`` + ImageNet ``Normalize``."""
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return (grey.expand(-1, 3, -1, -1) - mean) / std


@pytest.fixture(scope="module")
def reference():
    torch.manual_seed(0)
    return ReferenceViT().eval()


@pytest.fixture(scope="module")
def checkpoint(reference, tmp_path_factory):
    """``refers_checkpoint.pth`` as the fine-tuning scripts and cxrlearn read it: a flat state dict."""
    path = tmp_path_factory.mktemp("refers") / "refers_checkpoint.pth"
    torch.save(reference.state_dict(), path)
    return path


def test_features_equal_the_authors_class_token(reference, checkpoint):
    spec = resolve_encoder(f"refers:{checkpoint}")
    assert (spec.arch, spec.input_size, spec.mean, spec.std) == (
        "vit_base_patch16_224",
        224,
        (0.485, 0.456, 0.406),
        (0.229, 0.224, 0.225),
    )
    enc = spec.build()
    assert enc.num_features == 768 and enc.patch_size == 16
    torch.manual_seed(3)
    grey = torch.rand(2, 1, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(enc(grey), reference(imagenet(grey)), rtol=1e-4, atol=1e-4)
        assert enc.tokens(grey).shape == (2, 1 + 14 * 14, 768)


def test_the_pretrainer_checkpoint_and_another_input_size(reference, tmp_path):
    from timm.layers import resample_abs_pos_embed

    path = tmp_path / "checkpoint_100.pth"
    visual = {f"visual.vit.{k}": v for k, v in reference.state_dict().items() if k.startswith("transformer.")}
    textual = {"textual.embedding.words.weight": torch.zeros(4, 8)}
    torch.save({"model": visual | textual, "optimizer": {"state": {}, "param_groups": []}, "iteration": 100}, path)
    enc = create_encoder(f"refers:{path}", input_size=64)
    small = ReferenceViT(img_size=64).eval()
    state = dict(reference.state_dict())
    pos = state["transformer.embeddings.position_embeddings"]
    state["transformer.embeddings.position_embeddings"] = resample_abs_pos_embed(pos, new_size=[4, 4])
    small.load_state_dict(state)
    grey = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(enc(grey), small(imagenet(grey)), rtol=1e-4, atol=1e-4)


def test_one_finetuning_step_moves_the_vit(checkpoint):
    from cxrbench.adapt.finetune import Classifier

    model = Classifier(create_encoder(f"refers:{checkpoint}", input_size=64), 3).train()
    qkv = model.encoder.backbone.blocks[0].attn.qkv.weight
    before = qkv.detach().clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = nn.functional.binary_cross_entropy_with_logits(model(torch.rand(2, 1, 64, 64)), torch.ones(2, 3))
    assert torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    optimizer.step()
    assert not torch.equal(before, qkv)


def test_missing_foreign_and_partial_files_are_one_line(reference, tmp_path):
    path = tmp_path / "refers_checkpoint.pth"
    spec = resolve_encoder(f"refers:{path}")
    assert "https://drive.google.com/file/d/1JvtcYOdLWC9BTzCnCJqNzCP7R6CmUK1N/view" in spec.weights.missing_message
    torch.save({"head.weight": torch.zeros(5, 768), "head.bias": torch.zeros(5)}, path)
    with pytest.raises(CxrbenchError) as err:
        create_encoder(f"refers:{path}")
    assert err.value.message == (
        f"{path} is not a REFERS checkpoint: expected keys transformer.*; found head.weight, head.bias"
    )
    partial = {k: v for k, v in reference.state_dict().items() if ".layer.11.attn.key." not in k}
    torch.save(partial, path)
    with pytest.raises(CxrbenchError, match=r"missing: blocks\.11\.attn\.qkv\.weight") as err:
        create_encoder(f"refers:{path}")
    assert "unexpected: encoder.layer.11.attn.query.weight" in err.value.message and "\n" not in err.value.message
    npz = tmp_path / "ViT-B_16.npz"
    npz.write_bytes(b"PK")
    with pytest.raises(CxrbenchError, match="Google ViT .npz .* not a REFERS checkpoint"):
        create_encoder(f"refers:{npz}")
