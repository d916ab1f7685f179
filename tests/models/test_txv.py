"""``txv:NAME``: torchxrayvision classifiers with random weights in torchxrayvision's own file layout;
features checked against ``xrv.models.DenseNet/ResNet`` on the image preprocessed by its transforms."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import torch
import torchvision

from cxrbench.adapt.finetune import Classifier
from cxrbench.errors import CxrbenchError
from cxrbench.models import create_encoder, resolve_encoder

xrv = pytest.importorskip("torchxrayvision")

DENSENET = "densenet121-res224-all"
RESNET = "resnet50-res512-all"


def _filename(weights: str) -> str:
    return os.path.basename(xrv.models.model_urls[weights]["weights_url"])


@pytest.fixture
def txv_home(tmp_path, monkeypatch):
    """An empty ``~/.torchxrayvision/models_data/`` (HOME in tmp_path); downloading fails the test."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("CXRBENCH_WEIGHTS_DIR", raising=False)

    def no_download(url, filename):
        raise AssertionError(f"tried to download {url}")

    monkeypatch.setattr(xrv.utils, "download", no_download)
    cache = tmp_path / "home" / ".torchxrayvision" / "models_data"
    cache.mkdir(parents=True)
    return cache


def _save_densenet(folder, weights: str = DENSENET, seed: int = 0, *, legacy: bool = False) -> None:
    """A random DenseNet pickled as a whole module, as torchxrayvision's release files are (``legacy``:
    torch < 1.6's format, which also records the module classes' source)."""
    torch.manual_seed(seed)
    model = xrv.models.DenseNet(num_classes=len(xrv.models.model_urls[weights]["labels"]))
    for m in model.modules():  # non-trivial batch-norm statistics, so eval mode is checked too
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 2.0)
    torch.save(model, folder / _filename(weights), _use_new_zipfile_serialization=not legacy)


def _txv_input(grey: np.ndarray) -> torch.Tensor:
    """torchxrayvision's documented preprocessing: normalize to [-1024, 1024], crop, resize."""
    img = xrv.utils.normalize(grey, 255, reshape=True)
    size = grey.shape[0]
    img = torchvision.transforms.Compose([xrv.datasets.XRayCenterCrop(), xrv.datasets.XRayResizer(size)])(img)
    return torch.from_numpy(img)[None]


def _grey(size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)


def _ours(grey: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(grey).float().div(255).view(1, 1, *grey.shape)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_densenet_features_equal_txv_features2(txv_home, legacy):
    _save_densenet(txv_home, legacy=legacy)
    enc = create_encoder(f"txv:{DENSENET}")
    assert (enc.input_size, enc.num_features, enc.arch, enc.patch_size) == (224, 1024, "densenet121", None)
    assert enc.source == "txv:" + xrv.models.model_urls[DENSENET]["weights_url"]
    reference = xrv.models.DenseNet(weights=DENSENET, cache_dir=str(txv_home))
    grey = _grey(224)
    with torch.no_grad():
        expected = reference.features2(_txv_input(grey))
        got = enc(_ours(grey))
        also_rgb = enc(_ours(grey).expand(-1, 3, -1, -1))
        tokens = enc.tokens(_ours(grey))
    # the same weights on the same pixels; (x - 0.5) * 2048 and (2x - 1) * 1024 differ by float rounding only
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(also_rgb, got, rtol=0, atol=0)
    assert tokens.shape == (1, 7 * 7, 1024)


def test_other_input_sizes_are_resized_to_native_as_txv_does(txv_home):
    _save_densenet(txv_home)
    enc = create_encoder(f"txv:{DENSENET}", input_size=96)
    reference = xrv.models.DenseNet(weights=DENSENET, cache_dir=str(txv_home))
    grey = _grey(96, seed=1)
    with torch.no_grad():
        torch.testing.assert_close(enc(_ours(grey)), reference.features2(_txv_input(grey)), rtol=1e-4, atol=1e-4)


def test_resnet50_features_equal_txv_features(txv_home):
    torch.manual_seed(0)
    model = torchvision.models.resnet50(num_classes=18, weights=None)
    model.conv1 = torch.nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    torch.save(model.state_dict(), txv_home / _filename(RESNET))  # this release file is a state dict
    enc = create_encoder(f"txv:{RESNET}")
    assert (enc.input_size, enc.num_features, enc.arch) == (512, 2048, "resnet50")
    reference = xrv.models.ResNet(weights=RESNET, cache_dir=str(txv_home))
    grey = _grey(512, seed=2)
    with torch.no_grad():
        torch.testing.assert_close(enc(_ours(grey)), reference.features(_txv_input(grey)), rtol=1e-4, atol=1e-4)


def test_missing_weights_give_the_url_and_never_download(txv_home):
    name = "txv:densenet121-res224-nih"
    spec = resolve_encoder(name)
    url = xrv.models.model_urls["densenet121-res224-nih"]["weights_url"]
    assert not spec.weights.present
    with pytest.raises(CxrbenchError) as err:
        create_encoder(name)
    assert err.value.message == (
        f"weights for {name} (densenet121) are not available offline; fetch them with: "
        f"curl -L --create-dirs -o {txv_home / os.path.basename(url)} {url}"
    )


def test_weights_dir_is_an_alternative_and_the_file_is_the_identity(txv_home, tmp_path, monkeypatch):
    local = tmp_path / "weights"
    local.mkdir()
    _save_densenet(local, "densenet121-res224-chex")
    monkeypatch.setenv("CXRBENCH_WEIGHTS_DIR", str(local))
    spec = resolve_encoder("txv:densenet121-res224-chex")
    assert spec.weights.present and spec.weights.location == str(local / _filename("densenet121-res224-chex"))
    first = spec.extra_inputs
    _save_densenet(local, "densenet121-res224-chex", seed=1)
    assert resolve_encoder("txv:densenet121-res224-chex").extra_inputs != first
    assert spec.folder.startswith("txv-densenet121-res224-chex-") and ":" not in spec.folder
    assert spec.build().num_features == 1024


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_pickled_objects_other_than_modules_are_refused(txv_home, legacy):
    torch.save({"payload": os.getcwd}, txv_home / _filename(DENSENET), _use_new_zipfile_serialization=not legacy)
    with pytest.raises(CxrbenchError, match=r"holds posix\.getcwd, which cxrbench does not unpickle") as err:
        create_encoder(f"txv:{DENSENET}")
    assert "\n" not in err.value.message


def test_unknown_names_and_missing_package_are_one_line(txv_home, monkeypatch):
    with pytest.raises(CxrbenchError, match="torchxrayvision weights are one of densenet121-res224-all") as err:
        resolve_encoder("txv:densenet121")
    assert "\n" not in err.value.message
    monkeypatch.setitem(sys.modules, "torchxrayvision", None)  # as if not installed
    with pytest.raises(CxrbenchError) as err:
        resolve_encoder(f"txv:{DENSENET}")
    assert err.value.message == (
        "txv: encoders need torchxrayvision; install it with: "
        "pip install 'cxrbench[published]' (or pip install torchxrayvision)"
    )


def test_one_finetuning_step_moves_the_backbone(txv_home):
    _save_densenet(txv_home)
    model = Classifier(create_encoder(f"txv:{DENSENET}", input_size=64), 2).train()
    assert not any("classifier" in k for k in model.encoder.backbone.state_dict())  # the txv head is dropped
    conv = model.encoder.backbone.model.features.conv0.weight
    before = conv.detach().clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    logits = model(torch.rand(2, 1, 64, 64))
    torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits)).backward()
    assert all(p.grad is not None for p in model.parameters())  # every parameter is used (DDP-safe)
    optimizer.step()
    assert not torch.equal(before, conv)
