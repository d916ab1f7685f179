"""``convirt:PATH``: a ConVIRT image encoder (Zhang et al., 2020; image-report contrastive learning on
MIMIC-CXR, ResNet-50), e.g. ``convirt:/weights/convirt_chest_mimic.pt`` as the benchmark distributes it.

Format, either of the two the code writes or reads:

- the ConVIRT pretrainer's checkpoint (cxrlearn ``models/convirt/model/pretrainer.py`` ``save``, lines
  235-244): ``{"image_encoder", "text_encoder", "image_proj", "text_proj", "config"}``; cxrbench takes
  ``image_encoder``, a torchvision ResNet-50 whose ``fc`` was dropped (``model/pretrain_model.py`` lines
  126-128, ``model/vision.py``);
- a bare torchvision ResNet-50 state dict, as the benchmark's ``convirt_chest_mimic.pt`` is and as its
  loader reads it (cxrlearn ``models/convirt/convirt_cxrt.py`` lines 33-36: ``resnet50().load_state_dict``).

An ``fc`` in the file is the projection or classifier and is dropped; the feature is ResNet-50's pooled
``layer4`` (2048). Preprocessing (``models/convirt/utils/preprocess.py`` ``resize_and_normalize``, lines
88-102, used by every ConVIRT data loader at ``imsize=224``): padded square, 224 px, three channels,
ImageNet mean and std.

Weights: the ConVIRT authors publish none; the benchmark's authors share theirs in cxrlearn's
``pretrained.zip`` (https://github.com/GulatiAditya/cxrlearn#1-pretrained-weights; MIT). Nothing is
downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cxrbench.errors import CxrbenchError
from cxrbench.models.sources import _published as pub
from cxrbench.models.sources.base import IMAGENET_MEAN, IMAGENET_STD, EncoderSpec, build_timm

if TYPE_CHECKING:
    from torch import nn

PREFIX = "convirt:"
USAGE = "convirt:PATH"
#: the authors' file name: a bare ``convirt`` means ``$CXRBENCH_WEIGHTS_DIR/convirt_chest_mimic.pt``
FILE = "convirt_chest_mimic.pt"
WHAT = "ConVIRT"
URL = "https://github.com/GulatiAditya/cxrlearn#1-pretrained-weights"


@dataclass(frozen=True)
class ConvirtSpec(EncoderSpec):
    """ConVIRT's ResNet-50 image encoder, loaded exactly into timm's ``resnet50``."""

    def backbone(self, *, input_size: int, seed: int) -> nn.Module:
        path = Path(self.weights.location)
        ckpt = pub.read_checkpoint(path, WHAT)
        key = "image_encoder" if isinstance(ckpt, dict) and "image_encoder" in ckpt else None
        state = pub.state_dict_in(ckpt, key, path, WHAT)
        if "conv1.weight" not in state:
            raise CxrbenchError(
                f"{path} is not a {WHAT} checkpoint: expected an image_encoder entry or a torchvision ResNet-50 "
                f"state dict (conv1.weight, layer1.*, ...); found {pub.shown(list(state))}"
            )
        image = {k: v for k, v in state.items() if not k.startswith("fc.")}
        return pub.load_into(build_timm(self.arch, input_size=None, pretrained=False), image, path)


def parse(name: str, *, arch: str | None, run: Path | None) -> ConvirtSpec:
    path, _ = pub.split_name(name, PREFIX, (), "/weights/convirt_chest_mimic.pt")
    source = f"{PREFIX}{path}"
    weights = pub.published_weights(
        name, "resnet50", source, path, url=URL, what="convirt_chest_mimic.pt (in cxrlearn's pretrained.zip)"
    )
    return ConvirtSpec(
        name,
        "resnet50",
        source,
        weights,
        IMAGENET_MEAN,
        IMAGENET_STD,
        224,
        extra_inputs=pub.identity(path),
        readable="convirt-" + path.name.split(".")[0],
    )
