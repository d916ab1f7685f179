"""``convirt:``: the ConVIRT pretrainer's checkpoint (image and text encoders, projections, config) and the
benchmark's bare ResNet-50 state dict, random weights; features checked against torchvision's ResNet-50
loaded as cxrlearn's ``convirt_cxrt.py`` / the pretrainer's ``load`` do, on ImageNet-normalised input."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from cxrbench.errors import CxrbenchError
from cxrbench.models import create_encoder, resolve_encoder
from cxrbench.models.sources.base import IMAGENET_MEAN, IMAGENET_STD

MEAN, STD = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def _resnet(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = torchvision.models.resnet50()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 2.0)
    return model


@pytest.mark.parametrize("layout", ["pretrainer", "bare"])
def test_features_equal_torchvision_resnet50(tmp_path, layout):
    path = tmp_path / "convirt_chest_mimic.pt"
    model = _resnet(0)
    if layout == "pretrainer":
        model.fc = nn.Identity()  # vision.drop_classifier
        text = nn.Embedding(8, 4)
        torch.save(
            {
                "image_encoder": model.state_dict(),
                "text_encoder": text.state_dict(),
                "image_proj": nn.Linear(2048, 512).state_dict(),
                "text_proj": nn.Linear(4, 512).state_dict(),
                "config": {"image_encoder": "resnet50", "lr": 1e-4, "amp": True},
            },
            path,
        )
    else:
        torch.save(model.state_dict(), path)  # fc included, as torchvision's state dict has it
    spec = resolve_encoder(f"convirt:{path}")
    assert (spec.arch, spec.input_size, spec.mean, spec.std) == ("resnet50", 224, IMAGENET_MEAN, IMAGENET_STD)
    enc = spec.build(input_size=64)
    # the authors' loader: torchvision resnet50 with the file's weights, the classifier left out
    ckpt = torch.load(path, map_location="cpu")
    reference = torchvision.models.resnet50()
    reference.fc = nn.Identity()
    reference.load_state_dict(
        {k: v for k, v in ckpt.get("image_encoder", ckpt).items() if not k.startswith("fc.")}, strict=True
    )
    torch.manual_seed(5)
    grey = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(
            enc(grey), reference.eval()((grey.expand(-1, 3, -1, -1) - MEAN) / STD), rtol=1e-4, atol=1e-4
        )


def test_missing_and_foreign_files_are_one_line(tmp_path):
    path = tmp_path / "convirt_chest_mimic.pt"
    assert "cxrlearn's pretrained.zip" in resolve_encoder(f"convirt:{path}").weights.missing_message
    torch.save({"model": {"encoder.conv1.weight": torch.zeros(1)}}, path)
    with pytest.raises(CxrbenchError) as err:
        create_encoder(f"convirt:{path}")
    assert err.value.message == f"{path} is not a ConVIRT checkpoint: expected a state dict; found model"
    torch.save({"features.conv0.weight": torch.zeros(1)}, path)
    with pytest.raises(CxrbenchError, match=r"expected an image_encoder entry or a torchvision ResNet-50"):
        create_encoder(f"convirt:{path}")


def test_one_finetuning_step_trains(tmp_path):
    from tests.models.conftest import assert_one_finetuning_step_trains

    path = tmp_path / "convirt_chest_mimic.pt"
    torch.save(_resnet(0).state_dict(), path)
    assert_one_finetuning_step_trains(resolve_encoder(f"convirt:{path}").build(input_size=64))
