"""``mococxr:`` and ``medaug:``: MoCo training checkpoints written as the authors' ``main_moco.py``
saves them (a DistributedDataParallel-wrapped MoCo module: encoder_q, encoder_k, queue; an MLP head),
with random weights; features checked against torchvision's model loaded by a re-creation of the
authors' loader (MoCo-CXR ``chexpert_supervised/chexpert-model/saver/model_saver.py`` lines 209-226)."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from cxrbench.errors import CxrbenchError
from cxrbench.models import create_encoder, resolve_encoder
from cxrbench.models.sources import check_weights

CXR_MEAN, CXR_STD = 0.5020, 0.085585


def _randomise_bn(model: nn.Module) -> None:
    for m in model.modules():  # non-trivial running statistics, so eval mode is checked too
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 2.0)


class _MoCo(nn.Module):
    """The module layout of moco/builder.py with ``--mlp``: two torchvision encoders whose head is an MLP."""

    def __init__(self, arch: str, dim: int = 128, queue: int = 32) -> None:
        super().__init__()
        self.encoder_q = getattr(torchvision.models, arch)(num_classes=dim)
        self.encoder_k = getattr(torchvision.models, arch)(num_classes=dim)
        head = "classifier" if arch.startswith("densenet") else "fc"
        for enc in (self.encoder_q, self.encoder_k):
            old = getattr(enc, head)
            setattr(enc, head, nn.Sequential(nn.Linear(old.in_features, old.in_features), nn.ReLU(), old))
            _randomise_bn(enc)
        self.register_buffer("queue", torch.randn(dim, queue))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))


def save_moco(path, arch: str = "resnet50", seed: int = 0, *, recorded_arch: str | None = None) -> None:
    """A checkpoint as main_moco.py's save_checkpoint writes it (DDP's ``module.`` prefix included)."""
    torch.manual_seed(seed)
    holder = nn.Module()
    holder.module = _MoCo(arch)
    torch.save(
        {
            "epoch": 20,
            "arch": recorded_arch or arch,
            "state_dict": holder.state_dict(),
            "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4, "params": [0, 1]}]},
        },
        path,
    )


def authors_model(path, arch: str) -> nn.Module:
    """torchvision ``arch`` loaded as the authors' model_saver.load_model does: keep module.encoder_q.*
    but its fc, drop encoder_k and the queue; their forward is features -> ReLU -> global average pool."""
    ckpt = torch.load(path, map_location="cpu")
    state = ckpt["state_dict"]
    for k in list(state):
        if k.startswith("module.encoder_q") and not k.startswith(
            ("module.encoder_q.fc", "module.encoder_q.classifier")
        ):
            state[k[len("module.encoder_q.") :]] = state.pop(k)
        else:
            del state[k]
    model = getattr(torchvision.models, arch)()
    if arch.startswith("densenet"):
        model.classifier = nn.Identity()  # torchvision's forward: relu(features) -> pool -> classifier
    else:
        model.fc = nn.Identity()  # layer4 ends in a ReLU, so features -> ReLU -> pool is torchvision's
    model.load_state_dict(state, strict=True)
    return model.eval()


def _authors_input(grey: torch.Tensor) -> torch.Tensor:
    """aihc_utils/image_transform.py at the image's own size: RGB, ToTensor, CheXpert Normalize."""
    return (grey.expand(-1, 3, -1, -1) - CXR_MEAN) / CXR_STD


@pytest.mark.parametrize("prefix", ["mococxr", "medaug"])
def test_resnet50_features_equal_the_authors_encoder_q(tmp_path, prefix):
    path = tmp_path / "moco-cxr_resnet50.pth.tar"
    save_moco(path)
    spec = resolve_encoder(f"{prefix}:{path}")
    assert (spec.arch, spec.input_size, spec.mean, spec.std) == ("resnet50", 320, (CXR_MEAN,) * 3, (CXR_STD,) * 3)
    assert spec.source == f"{prefix}:{path}" and spec.folder.startswith(f"{prefix}-moco-cxr_resnet50-")
    enc = spec.build(input_size=64)
    torch.manual_seed(1)
    grey = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        got = enc(grey)
        expected = authors_model(path, "resnet50")(_authors_input(grey))
    assert got.shape == (2, 2048)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_densenet121_is_chosen_by_the_keys_or_the_name(tmp_path):
    path = tmp_path / "d1w-00001.pth.tar"
    save_moco(path, "densenet121")
    assert resolve_encoder(f"mococxr:{path}").arch == "densenet121"
    enc = create_encoder(f"mococxr:{path}#densenet121", input_size=64)
    torch.manual_seed(2)
    grey = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(
            enc(grey), authors_model(path, "densenet121")(_authors_input(grey)), rtol=1e-4, atol=1e-4
        )
    with pytest.raises(
        CxrbenchError, match=r"holds a densenet121 MoCo-CXR encoder, not resnet50; name it #densenet121"
    ):
        create_encoder(f"mococxr:{path}#resnet50", input_size=64)


def test_missing_checkpoints_name_where_the_authors_publish_them(tmp_path):
    path = tmp_path / "nope" / "r5w-00001.pth.tar"
    spec = resolve_encoder(f"mococxr:{path}")
    assert not spec.weights.present and spec.arch == "resnet50" and spec.weights.location == str(path)
    with pytest.raises(CxrbenchError) as err:
        spec.build()
    assert err.value.message == (
        f"weights for mococxr:{path} (resnet50) are not available offline; fetch them with: "
        f"curl -L --create-dirs -o {path} https://storage.googleapis.com/moco-cxr/r5w-00001.pth.tar"
    )
    (medaug,) = check_weights([(f"medaug:{path}", None)])
    assert not medaug.present and "https://github.com/GulatiAditya/cxrlearn" in medaug.missing_message
    assert "\n" not in medaug.missing_message


def test_foreign_files_are_one_line_naming_expected_and_found_keys(tmp_path):
    plain = tmp_path / "plain.pth"
    torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}}, plain)
    with pytest.raises(CxrbenchError) as err:
        resolve_encoder(f"mococxr:{plain}")
    assert err.value.message == (
        f"{plain} is not a MoCo-CXR checkpoint: expected state_dict keys module.encoder_q.* of a ResNet or "
        "DenseNet; found state_dict.conv1.weight"
    )
    shapes = tmp_path / "shapes.pth.tar"
    save_moco(shapes, "resnet18")
    ckpt = torch.load(shapes)
    ckpt["state_dict"]["module.encoder_q.conv1.weight"] = torch.zeros(64, 1, 7, 7)
    torch.save(ckpt, shapes)
    with pytest.raises(CxrbenchError, match=r"shape: conv1\.weight \[64, 1, 7, 7\] vs \[64, 3, 7, 7\]") as err:
        create_encoder(f"mococxr:{shapes}", input_size=64)
    assert "\n" not in err.value.message
    with pytest.raises(CxrbenchError, match="#vit is not one of #resnet50, #resnet18, #densenet121"):
        resolve_encoder(f"mococxr:{shapes}#vit")
    pickled = tmp_path / "pickled.pth.tar"
    torch.save({"state_dict": {}, "args": torch.nn.Identity()}, pickled)
    with pytest.raises(CxrbenchError, match="never pickled objects"):
        resolve_encoder(f"medaug:{pickled}")


def test_one_finetuning_step_moves_the_backbone(tmp_path):
    from cxrbench.adapt.finetune import Classifier

    path = tmp_path / "r8w-00001.pth.tar"
    save_moco(path, "resnet18")
    model = Classifier(create_encoder(f"mococxr:{path}", input_size=64), 2).train()
    conv = model.encoder.backbone.conv1.weight
    before = conv.detach().clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    logits = model(torch.rand(2, 1, 64, 64))
    nn.functional.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits)).backward()
    assert all(p.grad is not None for p in model.parameters())  # no head left unused (DDP-safe)
    optimizer.step()
    assert not torch.equal(before, conv)


def test_one_finetuning_step_trains_from_medaug(tmp_path):
    from tests.models.conftest import assert_one_finetuning_step_trains

    path = tmp_path / "medaug_mimic-cxr_resnet50.pth.tar"
    save_moco(path, "resnet18")
    assert_one_finetuning_step_trains(resolve_encoder(f"medaug:{path}").build(input_size=64))
