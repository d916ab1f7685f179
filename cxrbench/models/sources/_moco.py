"""The MoCo checkpoint layout shared by ``mococxr:`` and ``medaug:`` (both trained with Stanford's fork of
facebookresearch/moco): ``{"epoch", "arch", "state_dict", "optimizer"}``, the state dict of a
``DataParallel``-wrapped ``MoCo`` module. Its keys are ``module.encoder_q.*`` (the query encoder, a
torchvision ResNet or DenseNet whose ``fc``/``classifier`` is the contrastive projection head),
``module.encoder_k.*`` (the momentum copy) and ``module.queue``/``module.queue_ptr``.

As the authors' own loader does (stanfordmlgroup/MoCo-CXR ``chexpert_supervised/chexpert-model/saver/
model_saver.py`` lines 209-226, copied unchanged into stanfordmlgroup/MedAug ``finetune/saver/
model_saver.py`` and GulatiAditya/cxrlearn ``models/mococxr/mococxr_cxrt.py`` lines 57-74), the encoder is
``encoder_q`` without its head; ``encoder_k`` and the queue are dropped. The architecture is the one the
keys hold (ResNet-18/50 or DenseNet-121, checked against the file's ``arch``), or the ``#ARCH`` of the name.
The feature is the authors' (``models/models.py``: the last feature map, ReLU, global average pooling).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cxrbench.errors import CxrbenchError
from cxrbench.models.sources import _published as pub
from cxrbench.models.sources.base import EncoderSpec, build_timm

if TYPE_CHECKING:
    from torch import nn

ARCHS = ("resnet50", "resnet18", "densenet121")
QUERY = "module.encoder_q."
#: the projection head replaced by MoCo's builder (a Linear, or Linear-ReLU-Linear with --mlp)
HEADS = ("fc.", "classifier.")
#: CheXpert pixel statistics the authors normalise with (MoCo-CXR ``moco_pretraining/moco/aihc_utils/
#: image_transform.py`` lines 3-4 and 27; MedAug ``moco/aihc_utils/image_transform.py`` the same)
CXR_MEAN = (0.5020, 0.5020, 0.5020)
CXR_STD = (0.085585, 0.085585, 0.085585)
#: ``main_moco.py --img-size/--crop`` default 320 (CheXpert's resolution), kept by the authors' scripts
INPUT_SIZE = 320


def arch_of_keys(keys: tuple[str, ...] | list[str]) -> str | None:
    """The torchvision architecture of a MoCo query encoder from its key names, or None."""
    query = [k[len(QUERY) :] for k in keys if k.startswith(QUERY)]
    if any(k.startswith("features.denseblock") for k in query):
        return "densenet121"
    if any(k.startswith("layer1.0.conv3.") for k in query):
        return "resnet50"
    if any(k.startswith("layer1.0.conv1.") for k in query):
        return "resnet18"
    return None


@dataclass(frozen=True)
class MocoSpec(EncoderSpec):
    """A MoCo checkpoint as its authors publish it: ``encoder_q`` without its head, into timm ``arch``
    (the same modules and key names as the torchvision model the authors trained)."""

    what: str = "MoCo"

    def backbone(self, *, input_size: int, seed: int) -> nn.Module:
        path = Path(self.weights.location)
        state = pub.state_dict_in(pub.read_checkpoint(path, self.what), "state_dict", path, self.what)
        encoder = pub.strip_prefix(state, QUERY, drop=HEADS, path=path, what=self.what)
        found = arch_of_keys([QUERY + k for k in encoder])
        if found and found != self.arch:
            raise CxrbenchError(f"{path} holds a {found} {self.what} encoder, not {self.arch}; name it #{found}")
        model = build_timm(self.arch, input_size=input_size, pretrained=False)
        return pub.load_into(model, encoder, path)


def parse_moco(name: str, *, prefix: str, what: str, urls: dict[str, str], file_what: str) -> MocoSpec:
    """The spec of ``PREFIX:PATH[#ARCH]``: the arch from the name, else from the file's keys (default
    ResNet-50 while the file is missing); ``urls`` per arch say where the authors publish it."""
    path, variant = pub.split_name(name, prefix, ARCHS, "/weights/checkpoint.pth.tar")
    arch = variant
    if arch is None and path.is_file():
        keys, meta = pub.checkpoint_keys(path, what)
        arch = arch_of_keys([k[len("state_dict.") :] for k in keys if k.startswith("state_dict.")])
        if arch is None:
            raise CxrbenchError(
                f"{path} is not a {what} checkpoint: expected state_dict keys {QUERY}* of a ResNet or DenseNet; "
                f"found {pub.shown(keys)}"
            )
        recorded = meta.get("arch")
        if isinstance(recorded, str) and recorded in ARCHS and recorded != arch:
            raise CxrbenchError(f"{path}: its arch says {recorded} but its keys are a {arch}")
    arch = arch or "resnet50"
    source = f"{prefix}{path}"
    weights = pub.published_weights(name, arch, source, path, url=urls.get(arch, urls["*"]), what=file_what)
    return MocoSpec(
        name,
        arch,
        source,
        weights,
        CXR_MEAN,
        CXR_STD,
        INPUT_SIZE,
        extra_inputs=pub.identity(path),
        readable=prefix[:-1] + "-" + path.name.split(".")[0],
        what=what,
    )
