"""MAE on a tiny timm ViT: the visible-patch encoder against timm's own forward, the masked share
and the loss by hand, a falling loss, exact resume, and the one-line error for CNNs."""

from __future__ import annotations

from dataclasses import replace

import pytest
import timm
import torch

from cxrbench.engine.loop import TrainConfig
from cxrbench.errors import CxrbenchError
from cxrbench.models.encoders import Encoder, create_encoder
from cxrbench.pretrain import mae
from tests.pretrain.tiny import assert_resumes_exactly, images, losses_on_a_fixed_batch, step


def _vit(size: int = 16, **kwargs) -> Encoder:
    backbone = timm.create_model(
        "vit_tiny_patch16_224", img_size=size, patch_size=4, depth=2, embed_dim=32, num_heads=2, num_classes=0, **kwargs
    )
    return Encoder(
        backbone,
        name="vit",
        arch="vit_tiny_patch16_224",
        mean=(0.5,) * 3,
        std=(0.25,) * 3,
        input_size=size,
        source="random",
    )


def _method(**options) -> mae.Method:
    return mae.Method(_vit(**options.pop("vit", {})), decoder_dim=16, decoder_depth=1, decoder_heads=2, **options)


def _x(n: int = 6, size: int = 16) -> torch.Tensor:
    return torch.from_numpy(images(n, size=size)).unsqueeze(1).float() / 255


@pytest.mark.parametrize("vit", [{}, {"reg_tokens": 2}, {"class_token": False, "global_pool": "avg"}])
def test_visible_patches_are_encoded_as_timm_encodes_them(vit) -> None:
    """Keeping every patch in a shuffled order gives timm's forward_features, shuffled the same way."""
    torch.manual_seed(0)
    method, x = _method(vit=vit).eval(), _x(2)
    order = torch.stack([torch.randperm(16), torch.randperm(16)])
    got = method.encode_visible(x, order)
    want = method.encoder.backbone.forward_features(method.encoder.preprocess(x))
    p = method.prefix
    torch.testing.assert_close(got[:, :p], want[:, :p])
    torch.testing.assert_close(got[:, p:], want[:, p:].gather(1, order.unsqueeze(-1).expand(-1, -1, want.shape[-1])))


@pytest.mark.parametrize(("ratio", "keep"), [(0.75, 4), (0.5, 8), (0.9, 1)])
def test_the_loss_is_the_mse_on_exactly_the_masked_patches(ratio: float, keep: int) -> None:
    torch.manual_seed(0)
    method, x = _method(mask_ratio=ratio, min_scale=1.0), _x(3)
    method.views = replace(method.views, flip=False)  # the view is the image itself
    seen = {}
    encode, decode = method.encode_visible, method.decode

    def spy_encode(imgs, kept):
        seen["keep"] = kept
        return encode(imgs, kept)

    def spy_decode(latent, restore):
        seen["pred"] = decode(latent, restore)
        return seen["pred"]

    method.encode_visible, method.decode = spy_encode, spy_decode
    out = method.loss({"images": x}, step(4, total=3))
    kept, pred = seen["keep"], seen["pred"].detach()
    assert kept.shape == (3, keep) and all(len(set(row.tolist())) == keep for row in kept)
    total = 0.0
    for b in range(3):
        hidden = [k for k in range(16) if k not in kept[b].tolist()]
        assert len(hidden) == 16 - keep  # the masked share is exactly the ratio, rounded as MAE does
        for k in hidden:
            i, j = divmod(k, 4)
            patch = x[b, 0, 4 * i : 4 * i + 4, 4 * j : 4 * j + 4].reshape(-1)
            target = (patch - patch.mean()) / (patch.var() + 1e-6).sqrt()
            total += float((pred[b, k] - target).pow(2).mean()) / len(hidden)
    assert float(out.value) == pytest.approx(total / 3, rel=1e-5)


def test_loss_is_finite_and_falls_on_a_fixed_batch() -> None:
    torch.manual_seed(0)
    losses = losses_on_a_fixed_batch(_method(), {"images": _x(8)}, steps=10, lr=0.02)
    assert losses[-1] < 0.8 * losses[0], losses


def test_a_killed_run_resumes_to_the_same_weights(tmp_path) -> None:
    config = TrainConfig(epochs=2, batch_size=5, lr=1e-3)
    assert len(assert_resumes_exactly(tmp_path, _method, config, kill_at=4)) == 2


def test_a_cnn_is_a_one_line_error_naming_masked() -> None:
    with pytest.raises(CxrbenchError) as error:
        mae.Method(create_encoder("random", arch="resnet10t", input_size=32))
    message = str(error.value)
    assert "\n" not in message and "resnet10t" in message and "'masked'" in message


def test_bad_ratios_are_one_line_errors() -> None:
    for ratio in (0.0, 1.0, 0.99):  # 0.99 of 16 patches leaves none visible
        with pytest.raises(CxrbenchError, match="mask_ratio"):
            _method(mask_ratio=ratio)


def test_optimizer_groups_are_maes() -> None:
    from cxrbench.pretrain.base import PretrainTask, train_config

    method = _method()
    optimizer = PretrainTask(method).optimizer(train_config(mae.Method, {}))
    decayed, plain = optimizer.param_groups
    assert decayed["weight_decay"] == 0.05 and plain["weight_decay"] == 0.0
    assert decayed["betas"] == plain["betas"] == (0.9, 0.95)
    assert all(p.ndim > 1 for p in decayed["params"]) and all(p.ndim <= 1 for p in plain["params"])
    assert len(decayed["params"]) + len(plain["params"]) == len(list(method.parameters()))
