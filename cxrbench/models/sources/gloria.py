"""``gloria:PATH``: a GLoRIA checkpoint (Huang et al., ICCV 2021; image-report contrastive learning on
CheXpert) exactly as its authors publish it, e.g. ``gloria:/weights/chexpert_resnet50.ckpt``.

Format: a PyTorch Lightning checkpoint of the authors' ``PretrainModel`` (marshuang80/gloria
``gloria/lightning/pretrain_model.py``: ``self.gloria = build_gloria_model(cfg)``), loaded by their
``gloria/gloria.py`` ``load_gloria`` (lines 84-95; cxrlearn ``models/gloria/gloria_cxrt.py`` lines 21-36):
``ckpt["state_dict"]`` keys ``gloria.img_encoder.model.*`` (a torchvision ResNet-50 with ``fc`` an
identity), ``gloria.img_encoder.{global,local}_embedder.*`` (projections into the text space) and
``gloria.text_encoder.*``. cxrbench loads ``gloria.img_encoder.model`` alone. ``hyper_parameters`` is a
pickled OmegaConf config: it is read as inert placeholders, never constructed (``_published``).

Feature: the authors' ``ImageEncoder.resnet_forward`` (``gloria/models/vision_model.py``): the input is
upsampled to 299 x 299 (bilinear, ``align_corners=True``), then ResNet-50 to ``layer4`` and global
average pooling: the 2048-wide ``global_ft`` the benchmark probes.

Preprocessing (``configs/chexpert_pretrain_config.yaml``: ``imsize: 256``, ``random_crop.crop_size: 224``,
``norm: half``; ``gloria/builder.py`` ``build_transformation``): 224 px, three channels, mean 0.5, std 0.5.

Weights: https://stanfordmedicine.box.com/s/j5h7q99f3pfi7enc0dom73m4nsm6yzvh (linked from the GLoRIA
README; code Apache-2.0). Nothing is downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cxrbench.models.sources import _published as pub
from cxrbench.models.sources.base import EncoderSpec, build_timm

if TYPE_CHECKING:
    from torch import nn

PREFIX = "gloria:"
USAGE = "gloria:PATH"
#: the authors' file name: a bare ``gloria`` means ``$CXRBENCH_WEIGHTS_DIR/chexpert_resnet50.ckpt``
FILE = "chexpert_resnet50.ckpt"
WHAT = "GLoRIA"
URL = "https://stanfordmedicine.box.com/s/j5h7q99f3pfi7enc0dom73m4nsm6yzvh"
IMAGE_MODEL = "gloria.img_encoder.model."
NATIVE = 299  # ImageEncoder.resnet_forward's fixed upsampling


def _backbone_module_class():
    import torch
    import torch.nn.functional as F
    from torch import nn

    class GloriaBackbone(nn.Module):
        """GLoRIA's image encoder: upsample to 299 x 299 as ``resnet_forward`` does, then the ResNet."""

        def __init__(self, model: nn.Module) -> None:
            super().__init__()
            self.model = model
            self.num_features = int(model.num_features)

        def _native(self, x: torch.Tensor) -> torch.Tensor:
            return F.interpolate(x, size=(NATIVE, NATIVE), mode="bilinear", align_corners=True)

        def forward_features(self, x: torch.Tensor) -> torch.Tensor:
            return self.model.forward_features(self._native(x))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.model(self._native(x))

    return GloriaBackbone


@dataclass(frozen=True)
class GloriaSpec(EncoderSpec):
    """The ResNet-50 of a GLoRIA Lightning checkpoint, behind GLoRIA's 299 px upsampling."""

    resavable = False  # a saved copy would be rebuilt as a plain timm ResNet-50 (no upsampling)

    def backbone(self, *, input_size: int, seed: int) -> nn.Module:
        path = Path(self.weights.location)
        ckpt = pub.read_checkpoint(path, WHAT, inert_objects=True)
        state = pub.state_dict_in(ckpt, "state_dict", path, WHAT)
        image = pub.strip_prefix(state, IMAGE_MODEL, drop=("fc.",), path=path, what=WHAT)
        model = pub.load_into(build_timm(self.arch, input_size=None, pretrained=False), image, path)
        return _backbone_module_class()(model)


def parse(name: str, *, arch: str | None, run: Path | None) -> GloriaSpec:
    path, _ = pub.split_name(name, PREFIX, (), "/weights/chexpert_resnet50.ckpt")
    source = f"{PREFIX}{path}"
    weights = pub.published_weights(
        name, "resnet50", source, path, url=URL, what="chexpert_resnet50.ckpt (GLoRIA's pretrained weights)"
    )
    return GloriaSpec(
        name,
        "resnet50",
        source,
        weights,
        (0.5, 0.5, 0.5),
        (0.5, 0.5, 0.5),
        224,
        extra_inputs=pub.identity(path),
        readable="gloria-" + path.name.split(".")[0],
    )
