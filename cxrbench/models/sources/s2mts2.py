"""``s2mts2:PATH[#student|#teacher]``: an S2MTS2 checkpoint (Liu et al., MLMI 2021: self-supervised mean
teacher, DenseNet-121 on CheXpert) as the ssl-cxr-13-datasets benchmark distributes and loads it, e.g.
``s2mts2:/weights/s2mts2-chexpert.pth.tar``.

Format (GulatiAditya/cxrlearn ``models/s2mts2/s2mts2_cxrt.py`` lines 26-39): ``{"state_dict": ...}`` whose
keys are ``encoder_q.*`` (the student; no ``module.`` prefix) beside the momentum teacher ``encoder_k.*``.
The benchmark evaluates the student (it keeps ``encoder_q`` and drops every other key), so ``#student`` is
the default; ``#teacher`` loads ``encoder_k`` instead. The projection heads ``classifier`` and
``classifier_group`` are dropped: the feature is the backbone's pooled map, 1024 wide. (cxrlearn instead
runs the pretraining ``classifier`` twice and a freshly initialised ``classifier_group`` on top, which makes
its features depend on a random seed; cxrbench leaves that out.)

Architecture (cxrlearn ``models/s2mts2/utils/model_se.py`` lines 51-299): torchvision's DenseNet-121 with
every ReLU a LeakyReLU(0.1), including the one after ``norm5`` before pooling; built as timm's
``densenet121`` with that activation (the same module and key names).

Preprocessing: the S2MTS2 authors' code is not in reach here; cxrbench uses what the benchmark fed it
(cxrlearn ``datasets/prepare_dataset.py`` lines 10-27): 224 px, three channels, CLIP's mean
(0.4815, 0.4578, 0.4082) and std (0.2686, 0.2613, 0.2758).

Weights: cxrlearn's ``pretrained.zip`` (https://github.com/GulatiAditya/cxrlearn#1-pretrained-weights, a
Google Drive folder; cxrlearn is MIT). Nothing is downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cxrbench.models.sources import _published as pub
from cxrbench.models.sources.base import EncoderSpec

if TYPE_CHECKING:
    from torch import nn

PREFIX = "s2mts2:"
USAGE = "s2mts2:PATH"
#: the authors' file name: a bare ``s2mts2`` means ``$CXRBENCH_WEIGHTS_DIR/s2mts2-chexpert.pth.tar``
FILE = "s2mts2-chexpert.pth.tar"
WHAT = "S2MTS2"
URL = "https://github.com/GulatiAditya/cxrlearn#1-pretrained-weights"
COPIES = {"student": "encoder_q.", "teacher": "encoder_k."}
HEADS = ("classifier.", "classifier_group.")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
LEAKY_SLOPE = 0.1


def leaky_densenet121() -> nn.Module:
    """timm's DenseNet-121 (no classifier) with LeakyReLU(0.1) wherever torchvision's has a ReLU."""
    import functools

    import timm
    from torch import nn

    act = functools.partial(nn.LeakyReLU, negative_slope=LEAKY_SLOPE)
    return timm.create_model("densenet121", num_classes=0, act_layer=act)


@dataclass(frozen=True)
class S2mts2Spec(EncoderSpec):
    """The student (or teacher) DenseNet-121 of an S2MTS2 checkpoint, heads dropped."""

    resavable = False  # a saved copy would be rebuilt as timm's ReLU DenseNet-121

    copy: str = "student"

    def backbone(self, *, input_size: int, seed: int) -> nn.Module:
        path = Path(self.weights.location)
        state = pub.state_dict_in(pub.read_checkpoint(path, WHAT), "state_dict", path, WHAT)
        encoder = pub.strip_prefix(state, COPIES[self.copy], drop=HEADS, path=path, what=f"{WHAT} ({self.copy})")
        return pub.load_into(leaky_densenet121(), encoder, path)


def parse(name: str, *, arch: str | None, run: Path | None) -> S2mts2Spec:
    path, copy = pub.split_name(name, PREFIX, tuple(COPIES), "/weights/s2mts2-chexpert.pth.tar")
    source = f"{PREFIX}{path}"
    weights = pub.published_weights(
        name, "densenet121", source, path, url=URL, what="s2mts2-chexpert.pth.tar (in cxrlearn's pretrained.zip)"
    )
    return S2mts2Spec(
        name,
        "densenet121",
        source,
        weights,
        CLIP_MEAN,
        CLIP_STD,
        224,
        extra_inputs=pub.identity(path),
        readable="s2mts2-" + path.name.split(".")[0],
        copy=copy or "student",
    )
