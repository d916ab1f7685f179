"""``gloria:``: a Lightning checkpoint in GLoRIA's layout (``state_dict`` with ``gloria.img_encoder.*`` and
``gloria.text_encoder.*``; ``hyper_parameters`` a pickled OmegaConf-style config), random weights;
features checked against torchvision's ResNet-50 loaded as the authors' ``load_gloria`` does and run
as their ``ImageEncoder.resnet_forward`` (299 px upsampling, global average pooling)."""

from __future__ import annotations

import io
import pickle
import sys
import types

import pytest
import torch
import torchvision
from torch import nn

from cxrbench.errors import CxrbenchError
from cxrbench.models import create_encoder, resolve_encoder


def _fake_omegaconf(monkeypatch) -> type:
    """A stand-in ``omegaconf.dictconfig.DictConfig`` (not installed here), so the checkpoint pickles an
    object under the same global name as the real ``hyper_parameters``."""
    module = types.ModuleType("omegaconf.dictconfig")

    class DictConfig:
        def __init__(self, content):
            self._content = content

    DictConfig.__module__, DictConfig.__qualname__ = "omegaconf.dictconfig", "DictConfig"
    module.DictConfig = DictConfig
    monkeypatch.setitem(sys.modules, "omegaconf", types.ModuleType("omegaconf"))
    monkeypatch.setitem(sys.modules, "omegaconf.dictconfig", module)
    return DictConfig


def save_gloria(path, monkeypatch, seed: int = 0) -> None:
    torch.manual_seed(seed)
    resnet = torchvision.models.resnet50()
    resnet.fc = nn.Identity()  # cnn_backbones.resnet_50
    for m in resnet.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 2.0)
    img = nn.Module()
    img.model, img.global_embedder = resnet, nn.Linear(2048, 768)
    img.local_embedder = nn.Conv2d(1024, 768, 1, bias=False)
    text = nn.Module()
    text.model = nn.Embedding(10, 768)
    gloria = nn.Module()
    gloria.img_encoder, gloria.text_encoder = img, text
    lightning = nn.Module()
    lightning.gloria = gloria
    with monkeypatch.context() as patch:
        config = _fake_omegaconf(patch)
        torch.save(
            {
                "epoch": 49,
                "global_step": 1000,
                "pytorch-lightning_version": "1.1.4",
                "state_dict": lightning.state_dict(),
                "hyper_parameters": config({"model": {"vision": {"model_name": "resnet_50"}}}),
                "optimizer_states": [],
                "lr_schedulers": [],
            },
            path,
        )


def authors_features(path, x: torch.Tensor, monkeypatch) -> torch.Tensor:
    """load_gloria's key fix (``k.split("gloria.")[-1]``) and ImageEncoder.resnet_forward's global_ft."""
    with monkeypatch.context() as patch:
        _fake_omegaconf(patch)
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    fixed = {k.split("gloria.")[-1]: v for k, v in ckpt["state_dict"].items()}
    model = torchvision.models.resnet50()
    model.fc = nn.Identity()
    model.load_state_dict(
        {k[len("img_encoder.model.") :]: v for k, v in fixed.items() if k.startswith("img_encoder.model.")}
    )
    model.eval()
    with torch.no_grad():
        x = nn.Upsample(size=(299, 299), mode="bilinear", align_corners=True)(x)
        return model(x)


def test_features_equal_the_authors_image_encoder(tmp_path, monkeypatch):
    path = tmp_path / "chexpert_resnet50.ckpt"
    save_gloria(path, monkeypatch)
    with pytest.raises(pickle.UnpicklingError):  # the hyper_parameters are a pickled object
        torch.load(path, weights_only=True)
    spec = resolve_encoder(f"gloria:{path}")
    assert (spec.arch, spec.input_size, spec.mean, spec.std, spec.resavable) == (
        "resnet50",
        224,
        (0.5,) * 3,
        (0.5,) * 3,
        False,
    )
    enc = spec.build(input_size=64)
    torch.manual_seed(4)
    grey = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        got = enc(grey)
    expected = authors_features(path, (grey.expand(-1, 3, -1, -1) - 0.5) / 0.5, monkeypatch)
    assert got.shape == (2, 2048) and "omegaconf" not in sys.modules
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert enc.tokens(grey).shape == (2, 10 * 10, 2048)  # layer4 of the 299 px input


def test_pickled_objects_are_never_constructed(tmp_path):
    path = tmp_path / "evil.ckpt"
    marker = tmp_path / "ran"

    class Boom:
        def __reduce__(self):
            return (exec, (f"open({str(marker)!r}, 'w').close()",))

    buffer = io.BytesIO()
    torch.save({"state_dict": {"gloria.img_encoder.model.conv1.weight": torch.zeros(64, 3, 7, 7)}, "x": Boom()}, buffer)
    path.write_bytes(buffer.getvalue())
    with pytest.raises(CxrbenchError, match=r"missing: bn1\.weight") as err:
        create_encoder(f"gloria:{path}", input_size=64)
    assert not marker.exists() and "\n" not in err.value.message


def test_missing_and_foreign_files_are_one_line(tmp_path):
    path = tmp_path / "chexpert_resnet50.ckpt"
    spec = resolve_encoder(f"gloria:{path}")
    assert "https://stanfordmedicine.box.com/s/j5h7q99f3pfi7enc0dom73m4nsm6yzvh" in spec.weights.missing_message
    torch.save({"state_dict": {"img_encoder.model.conv1.weight": torch.zeros(1)}}, path)
    with pytest.raises(CxrbenchError) as err:
        create_encoder(f"gloria:{path}")
    assert err.value.message == (
        f"{path} is not a GLoRIA checkpoint: expected keys gloria.img_encoder.model.*; "
        "found img_encoder.model.conv1.weight"
    )


def test_one_finetuning_step_trains(tmp_path, monkeypatch):
    from tests.models.conftest import assert_one_finetuning_step_trains

    path = tmp_path / "chexpert_resnet50.ckpt"
    save_gloria(path, monkeypatch)
    assert_one_finetuning_step_trains(resolve_encoder(f"gloria:{path}").build(input_size=64))
