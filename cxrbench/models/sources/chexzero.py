"""``chexzero:PATH``: the image tower of a CheXzero checkpoint (Tiu et al., Nat. Biomed. Eng. 2022: OpenAI
CLIP ViT-B/32 trained on MIMIC-CXR images and reports; the ssl-cxr-13-datasets benchmark's
"CXR-RePaiR-CLIP", Endo et al., ML4H 2021, from the same code) exactly as its authors publish it, e.g.
``chexzero:/weights/best_64_5e-05_original_22000_0.864.pt``.

Format: the ``state_dict()`` of an OpenAI-CLIP ``CLIP`` module, saved as is (rajpurkarlab/CheXzero
``run_train.py`` ``save``; the model is ``clip.load("ViT-B/32", jit=False)``, ``train.py`` ``load_clip``,
and both ``zero_shot.py`` ``load_clip`` and cxrlearn ``models/chexzero/chexzero_cxrt.py`` ``_load_clip``
read the file back with a strict ``load_state_dict``). Keys: ``visual.*`` (the image tower:
``conv1``, ``class_embedding``, ``positional_embedding``, ``ln_pre``, ``transformer.resblocks.N.*``,
``ln_post``, ``proj``), and the text tower (``token_embedding``, ``positional_embedding``,
``transformer.*``, ``ln_final``, ``text_projection``) with ``logit_scale``. Weights trained on a GPU are
half precision (CLIP's ``convert_weights``); they are read into float32. cxrbench loads ``visual.*`` alone,
renamed onto timm's ``vit_base_patch32_clip_quickgelu_224`` (the same blocks: pre-norm, QuickGELU,
LayerNorm eps 1e-5, a bias-free patch convolution), with CLIP's projection ``proj`` kept beside it.

Feature: the projected 512-wide image embedding, ``ln_post`` of the class token times ``proj`` (CLIP's
``encode_image``, not normalised). The benchmark probes exactly this: cxrlearn's ``_chexzero`` returns
``cheXZero.visual`` as the feature extractor and puts its ``Linear(512, n)`` on the tower's output, and
the paper's Table 3 counts 512 parameters per output for linear probing. ``tokens`` are the 768-wide
tokens after ``ln_post`` (class token first), as open_clip gives them.

Preprocessing (``zero_shot.py`` ``make`` and ``train.py`` ``load_data``, ``pretrained=True``): the
grey image repeated to three channels, normalised with the authors' MIMIC-CXR pixel statistics on the
0-255 scale (mean 101.48761, std 83.43944, here divided by 255) and resized to 224 px. Other input
sizes resample the position embeddings as timm does. The benchmark's cxrlearn fed every model the same
CLIP-normalised 224 px images (``datasets/prepare_dataset.py`` ``_transform``); cxrbench uses the
authors' own statistics.

Weights: https://drive.google.com/drive/folders/1makFLiEMbSleYltaRxw81aBhEDMpVwno (linked from the
CheXzero README; code MIT; cxrlearn ships the same model as ``pretrained/chexzero.pt``). Nothing is
downloaded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cxrbench.models.sources import _published as pub
from cxrbench.models.sources.base import EncoderSpec, build_timm

if TYPE_CHECKING:
    import torch
    from torch import nn

PREFIX = "chexzero:"
USAGE = "chexzero:PATH"
#: the authors' best checkpoint, looked for in $CXRBENCH_WEIGHTS_DIR when a suite says just ``chexzero``
FILE = "best_64_5e-05_original_22000_0.864.pt"
WHAT = "CheXzero"
URL = "https://drive.google.com/drive/folders/1makFLiEMbSleYltaRxw81aBhEDMpVwno"
ARCH = "vit_base_patch32_clip_quickgelu_224"
VISUAL = "visual."
#: the authors' pixel statistics on the 0-255 scale (``zero_shot.py`` and ``train.py``: ``Normalize``)
MEAN = (101.48761 / 255,) * 3
STD = (83.43944 / 255,) * 3
INPUT_SIZE = 224
#: OpenAI CLIP ``VisionTransformer`` names -> timm ``VisionTransformer`` names (first match wins)
_RENAMES = (
    (r"^conv1\.", "patch_embed.proj."),
    (r"^ln_pre\.", "norm_pre."),
    (r"^ln_post\.", "norm."),
    (r"^transformer\.resblocks\.(\d+)\.ln_1\.", r"blocks.\1.norm1."),
    (r"^transformer\.resblocks\.(\d+)\.ln_2\.", r"blocks.\1.norm2."),
    (r"^transformer\.resblocks\.(\d+)\.attn\.in_proj_(weight|bias)$", r"blocks.\1.attn.qkv.\2"),
    (r"^transformer\.resblocks\.(\d+)\.attn\.out_proj\.", r"blocks.\1.attn.proj."),
    (r"^transformer\.resblocks\.(\d+)\.mlp\.c_fc\.", r"blocks.\1.mlp.fc1."),
    (r"^transformer\.resblocks\.(\d+)\.mlp\.c_proj\.", r"blocks.\1.mlp.fc2."),
)


def timm_state(visual: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An OpenAI CLIP image tower's state dict (``visual.`` removed) in the key names of
    ``ClipImageTower``: ``vit.<timm name>`` and ``proj``. Unknown keys keep their names (so
    ``load_exact`` reports them as unexpected)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in visual.items():
        if key == "proj":
            out["proj"] = value
            continue
        if key == "class_embedding" and value.ndim == 1:
            name, value = "cls_token", value.view(1, 1, -1)
        elif key == "positional_embedding" and value.ndim == 2:
            name, value = "pos_embed", value.unsqueeze(0)
        else:
            name = next((re.sub(p, r, key) for p, r in _RENAMES if re.match(p, key)), key)
        out[f"vit.{name}"] = value
    return out


def _backbone_module_class():
    import torch
    from torch import nn

    class ClipImageTower(nn.Module):
        """CLIP's image tower: a timm ViT whose normed class token is projected by ``proj`` (``forward``,
        ``encode_image``); ``forward_features`` gives the ViT's tokens."""

        def __init__(self, vit: nn.Module, embed_dim: int) -> None:
            super().__init__()
            self.vit = vit
            self.proj = nn.Parameter(torch.zeros(int(vit.num_features), int(embed_dim)))
            self.num_features = int(embed_dim)
            self.patch_size = int(vit.patch_embed.patch_size[0])

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.vit(x) @ self.proj

        def forward_features(self, x: torch.Tensor) -> torch.Tensor:
            return self.vit.forward_features(x)

    return ClipImageTower


@dataclass(frozen=True)
class ChexzeroSpec(EncoderSpec):
    """CheXzero's CLIP image tower from the authors' state dict, on timm's ViT-B/32 CLIP."""

    resavable = False  # a saved copy would be rebuilt as a plain timm ViT (no projection)

    def backbone(self, *, input_size: int, seed: int) -> nn.Module:
        path = Path(self.weights.location)
        state = pub.state_dict_in(pub.read_checkpoint(path, WHAT), None, path, WHAT)
        visual = pub.strip_prefix(state, VISUAL, path=path, what=WHAT)
        mapped = timm_state(visual)
        proj = mapped.get("proj")
        embed_dim = int(proj.shape[1]) if proj is not None and proj.ndim == 2 else 512
        vit = build_timm(self.arch, input_size=input_size, pretrained=False)
        if "vit.pos_embed" in mapped:
            mapped["vit.pos_embed"] = pub.fit_pos_embed(mapped["vit.pos_embed"], vit)
        return pub.load_into(_backbone_module_class()(vit, embed_dim), mapped, path)


def parse(name: str, *, arch: str | None, run: Path | None) -> ChexzeroSpec:
    path, _ = pub.split_name(name, PREFIX, (), "/weights/best_64_5e-05_original_22000_0.864.pt")
    source = f"{PREFIX}{path}"
    weights = pub.published_weights(
        name, ARCH, source, path, url=URL, what="a CheXzero checkpoint (.pt, the authors' model weights)"
    )
    return ChexzeroSpec(
        name,
        ARCH,
        source,
        weights,
        MEAN,
        STD,
        INPUT_SIZE,
        extra_inputs=pub.identity(path),
        readable="chexzero-" + path.name.split(".")[0],
    )
