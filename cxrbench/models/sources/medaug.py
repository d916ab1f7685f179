"""``medaug:PATH[#ARCH]``: a MedAug checkpoint (Vu et al., MLHC 2021; MoCo pretraining on MIMIC-CXR or
CheXpert with positive pairs chosen by patient metadata) exactly as published, e.g.
``medaug:/weights/medaug_mimic-cxr_resnet50.pth.tar`` (ResNet-50 on MIMIC-CXR, the benchmark's choice).

Format: MedAug trains with the same MoCo fork as MoCo-CXR (stanfordmlgroup/MedAug ``moco/main_moco.py``,
``save_checkpoint`` at lines 434-440) and loads with the same code (``finetune/saver/model_saver.py``
lines 209-226; cxrlearn ``models/medaug/medaug_cxrt.py`` lines 57-75): ``state_dict`` ->
``module.encoder_q.*`` without the ``fc`` projection head; ``encoder_k`` and the queue dropped (see
``_moco``). ARCH (resnet50 or resnet18) comes from the keys unless named.

Preprocessing: 320 px, CheXpert mean 0.5020 / std 0.085585 (MedAug ``moco/aihc_utils/image_transform.py``
lines 3-4, 27; ``main_moco.py --img-size/--crop`` default 320; its README finetunes with
``--normalization chexpert_norm``).

Weights: the MedAug repository publishes none; the benchmark's authors share theirs in cxrlearn's
``pretrained.zip`` (https://github.com/GulatiAditya/cxrlearn#1-pretrained-weights, a Google Drive folder;
MedAug's code is MIT). Nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

from cxrbench.models.sources._moco import MocoSpec, parse_moco

PREFIX = "medaug:"
USAGE = "medaug:PATH"
#: the authors' file name: a bare ``medaug`` means ``$CXRBENCH_WEIGHTS_DIR/medaug_mimic-cxr_resnet50.pth.tar``
FILE = "medaug_mimic-cxr_resnet50.pth.tar"
URLS = {"*": "https://github.com/GulatiAditya/cxrlearn#1-pretrained-weights"}


def parse(name: str, *, arch: str | None, run: Path | None) -> MocoSpec:
    return parse_moco(
        name,
        prefix=PREFIX,
        what="MedAug",
        urls=URLS,
        file_what="medaug_mimic-cxr_resnet50.pth.tar (in cxrlearn's pretrained.zip)",
    )
