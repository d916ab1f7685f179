"""``s2mts2:``: a mean-teacher checkpoint in the layout cxrlearn loads (``state_dict`` with ``encoder_q.``
student and ``encoder_k.`` teacher copies of a LeakyReLU DenseNet-121 with two heads), random weights;
features checked against torchvision's DenseNet-121 with LeakyReLU(0.1), loaded as cxrlearn's
``models/s2mts2/s2mts2_cxrt.py`` (lines 33-39) loads it."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from cxrbench.errors import CxrbenchError
from cxrbench.models import create_encoder, resolve_encoder

CLIP_MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
CLIP_STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)


def leaky(model: nn.Module) -> nn.Module:
    """Every ReLU module of a torchvision DenseNet replaced by LeakyReLU(0.1), as model_se.py builds it."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.ReLU):
                setattr(parent, name, nn.LeakyReLU(0.1, inplace=True))
    return model


def s2mts2_densenet(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = leaky(torchvision.models.densenet121())
    model.classifier = nn.Linear(1024, 1024)
    model.classifier_group = nn.Sequential(nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 128, bias=False))
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 2.0)
    return model


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("s2mts2") / "s2mts2-chexpert.pth.tar"
    holder = nn.Module()
    holder.encoder_q, holder.encoder_k = s2mts2_densenet(0), s2mts2_densenet(1)
    torch.save({"epoch": 100, "arch": "densenet121", "state_dict": holder.state_dict()}, path)
    return path


def authors_features(path, copy: str, x: torch.Tensor) -> torch.Tensor:
    """cxrlearn's loader (keep encoder_q.* but classifier_group, prefix removed) with the heads left out;
    the feature is features -> leaky_relu(0.1) -> global average pool, as model_se.DenseNet.forward."""
    state = torch.load(path, map_location="cpu")["state_dict"]
    prefix = f"{copy}."
    kept = {
        k[len(prefix) :]: v
        for k, v in state.items()
        if k.startswith(prefix) and not k.startswith((prefix + "classifier_group", prefix + "classifier"))
    }
    model = leaky(torchvision.models.densenet121())
    del model.classifier
    model.load_state_dict(kept, strict=True)
    model.eval()
    with torch.no_grad():
        feats = nn.functional.leaky_relu(model.features(x), 0.1)
        return nn.functional.adaptive_avg_pool2d(feats, 1).flatten(1)


@pytest.mark.parametrize(("variant", "copy"), [("", "encoder_q"), ("#teacher", "encoder_k")])
def test_features_equal_the_authors_densenet(checkpoint, variant, copy):
    spec = resolve_encoder(f"s2mts2:{checkpoint}{variant}")
    assert (spec.arch, spec.input_size, spec.resavable) == ("densenet121", 224, False)
    enc = spec.build(input_size=64)
    torch.manual_seed(3)
    grey = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        got = enc(grey)
    expected = authors_features(checkpoint, copy, (grey.expand(-1, 3, -1, -1) - CLIP_MEAN) / CLIP_STD)
    assert got.shape == (2, 1024)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_missing_and_foreign_files_are_one_line(tmp_path, checkpoint):
    missing = tmp_path / "s2mts2-chexpert.pth.tar"
    spec = resolve_encoder(f"s2mts2:{missing}")
    assert not spec.weights.present
    assert spec.weights.missing_message == (
        f"weights for s2mts2:{missing} (densenet121) are not available offline; fetch them with: download "
        "s2mts2-chexpert.pth.tar (in cxrlearn's pretrained.zip) from "
        f"https://github.com/GulatiAditya/cxrlearn#1-pretrained-weights and save it as {missing}"
    )
    torch.save({"state_dict": {"module.encoder_q.features.conv0.weight": torch.zeros(1)}}, missing)
    with pytest.raises(CxrbenchError) as err:
        create_encoder(f"s2mts2:{missing}")
    assert err.value.message == (
        f"{missing} is not a S2MTS2 (student) checkpoint: expected keys encoder_q.*; "
        "found module.encoder_q.features.conv0.weight"
    )
    torch.save({"model": {}}, missing)
    with pytest.raises(CxrbenchError, match=r"expected a 'state_dict' entry holding a state dict; found model"):
        create_encoder(f"s2mts2:{missing}")


def test_one_finetuning_step_trains(checkpoint):
    from tests.models.conftest import assert_one_finetuning_step_trains

    assert_one_finetuning_step_trains(resolve_encoder(f"s2mts2:{checkpoint}").build(input_size=64))
