"""``mococxr:PATH[#ARCH]``: a MoCo-CXR checkpoint (Sowrirajan et al., MIDL 2021; MoCo pretraining on
CheXpert) exactly as its authors publish it, e.g. ``mococxr:/weights/r5w-00001.pth.tar`` (ResNet-50, the
backbone of the ssl-cxr-13-datasets benchmark, which calls the file ``moco-cxr_resnet50.pth.tar``).

Format: the MoCo training checkpoint (see ``_moco``; written by stanfordmlgroup/MoCo-CXR
``moco_pretraining/moco/main_moco.py``'s ``save_checkpoint``, lines 336-340), read with
``weights_only``. The encoder is ``module.encoder_q`` without its projection head, as the authors'
``chexpert_supervised/chexpert-model/saver/model_saver.py`` (lines 209-226) loads it; ARCH (resnet50,
resnet18, densenet121; the authors publish r5w-*, r8w-* and d1w-*) comes from the keys unless named.

Preprocessing (the authors' ``aihc_utils/image_transform.py``): 320 px (``main_moco.py --img-size/--crop``
defaults), three equal channels, CheXpert mean 0.5020 and std 0.085585. (The benchmark's cxrlearn library
fed every model 224 px with CLIP statistics; ``--input-size`` picks another size.)

Weights: https://github.com/stanfordmlgroup/MoCo-CXR#checkpoints (Google Cloud Storage; MoCo's code is
CC-BY-NC 4.0). Nothing is downloaded: a missing file is reported with its URL.
"""

from __future__ import annotations

from pathlib import Path

from cxrbench.models.sources._moco import MocoSpec, parse_moco

PREFIX = "mococxr:"
USAGE = "mococxr:PATH"
#: the authors' file name: a bare ``mococxr`` means ``$CXRBENCH_WEIGHTS_DIR/r5w-00001.pth.tar``
FILE = "r5w-00001.pth.tar"
URLS = {
    "resnet50": "https://storage.googleapis.com/moco-cxr/r5w-00001.pth.tar",
    "resnet18": "https://storage.googleapis.com/moco-cxr/r8w-00001.pth.tar",
    "densenet121": "https://storage.googleapis.com/moco-cxr/d1w-00001.pth.tar",
    "*": "https://github.com/stanfordmlgroup/MoCo-CXR#checkpoints",
}


def parse(name: str, *, arch: str | None, run: Path | None) -> MocoSpec:
    return parse_moco(name, prefix=PREFIX, what="MoCo-CXR", urls=URLS, file_what="the MoCo-CXR checkpoint")
