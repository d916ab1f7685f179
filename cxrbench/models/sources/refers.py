"""``refers:PATH``: a REFERS ViT-B/16 (Zhou et al., Nat. Mach. Intell. 2022; cross-supervision between
MIMIC-CXR images and free-text reports) exactly as its authors publish it, e.g.
``refers:/weights/refers_checkpoint.pth``.

Format, either of the two the authors' code writes or reads:

- the state dict of their ``VisionTransformer`` (funnyzhou/REFERS ``Fine-tune/*/models/modeling.py``, the
  ViT-pytorch layout; cxrlearn ``models/refers/models/modeling.py``), as the REFERS fine-tuning scripts
  (``Fine-tune/NIH_ChestX-ray/train.py`` ``load_weights``) and cxrlearn (``models/refers/refers_cxrt.py``
  ``_load_weights``) read ``refers_checkpoint.pth``: keys ``transformer.embeddings.{patch_embeddings,
  position_embeddings,cls_token}``, ``transformer.encoder.layer.N.{attention_norm,attn.{query,key,value,
  out},ffn_norm,ffn.fc1,ffn.fc2}``, ``transformer.encoder.encoder_norm``; a ``head.*`` (a fine-tuned
  ``*_bestauc_checkpoint.bin``) is dropped;
- the pretrainer's checkpoint (``Pre-train/refers/utils/checkpointing.py`` ``CheckpointManager``:
  ``{"model", "optimizer", "scheduler", "iteration"}``), whose image encoder is ``model`` ->
  ``visual.vit.transformer.*`` (``Pre-train/refers/modules/visual_backbones.py`` ``ViTBackbone``).

The authors' loaders keep only the keys their model has and leave the rest at initialisation; cxrbench
needs every one of the ViT's tensors. They are renamed onto timm's ``vit_base_patch16_224`` (the same
blocks: pre-norm, exact GELU, LayerNorm eps 1e-6; ``query``/``key``/``value`` concatenated into ``qkv``).
A hybrid R50+ViT or a Google ``ViT-B_16.npz`` (the ImageNet-21k starting point, not REFERS) is refused.

Feature: the class token after ``encoder_norm`` (768 wide), what cxrlearn's feature extractor returns
(``VisionTransformer(get_fmap=True)``: ``x[:, 0]``) and what the fine-tuning head reads; tokens are all
normed tokens, class token first. Preprocessing (``Fine-tune/NIH_ChestX-ray/utils/data_utils.py``
``transform_test`` and ``my_dataset.py``): RGB (grey repeated), 224 px, ImageNet mean and std. Other
input sizes resample the position embeddings as timm does. The benchmark's cxrlearn fed every model
the same CLIP-normalised 224 px images (``datasets/prepare_dataset.py`` ``_transform``); cxrbench uses
the authors' own statistics.

Weights: https://drive.google.com/file/d/1JvtcYOdLWC9BTzCnCJqNzCP7R6CmUK1N/view (``refers_checkpoint.pth``,
linked from the REFERS README; also in cxrlearn's ``pretrained.zip``; REFERS code MIT). Nothing is
downloaded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cxrbench.errors import CxrbenchError
from cxrbench.models.sources import _published as pub
from cxrbench.models.sources.base import IMAGENET_MEAN, IMAGENET_STD, EncoderSpec, build_timm

if TYPE_CHECKING:
    import torch
    from torch import nn

PREFIX = "refers:"
USAGE = "refers:PATH"
#: the authors' file name: a bare ``refers`` means ``$CXRBENCH_WEIGHTS_DIR/refers_checkpoint.pth``
FILE = "refers_checkpoint.pth"
WHAT = "REFERS"
URL = "https://drive.google.com/file/d/1JvtcYOdLWC9BTzCnCJqNzCP7R6CmUK1N/view"
ARCH = "vit_base_patch16_224"
VIT = "transformer."
#: where the pretrainer's checkpoint keeps the image encoder (under its ``model`` entry)
PRETRAINER_VIT = "visual.vit.transformer."
#: REFERS ``VisionTransformer`` names (``transformer.`` removed) -> timm names (first match wins)
_RENAMES = (
    (r"^embeddings\.patch_embeddings\.", "patch_embed.proj."),
    (r"^embeddings\.position_embeddings$", "pos_embed"),
    (r"^embeddings\.cls_token$", "cls_token"),
    (r"^encoder\.encoder_norm\.", "norm."),
    (r"^encoder\.layer\.(\d+)\.attention_norm\.", r"blocks.\1.norm1."),
    (r"^encoder\.layer\.(\d+)\.ffn_norm\.", r"blocks.\1.norm2."),
    (r"^encoder\.layer\.(\d+)\.ffn\.(fc1|fc2)\.", r"blocks.\1.mlp.\2."),
    (r"^encoder\.layer\.(\d+)\.attn\.out\.", r"blocks.\1.attn.proj."),
)
_QKV = re.compile(r"^encoder\.layer\.(\d+)\.attn\.(query|key|value)\.(weight|bias)$")


def timm_state(vit: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A REFERS ViT state dict (``transformer.`` removed) in timm's key names; ``query``, ``key`` and
    ``value`` of a block are concatenated into ``qkv`` when all three are there. Unknown keys keep their
    names (so ``load_exact`` reports them as unexpected)."""
    import torch

    out: dict[str, torch.Tensor] = {}
    parts: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in vit.items():
        qkv = _QKV.match(key)
        if qkv:
            parts.setdefault((qkv[1], qkv[3]), {})[qkv[2]] = value
            continue
        out[next((re.sub(p, r, key) for p, r in _RENAMES if re.match(p, key)), key)] = value
    for (block, kind), found in parts.items():
        if set(found) == {"query", "key", "value"}:
            out[f"blocks.{block}.attn.qkv.{kind}"] = torch.cat([found["query"], found["key"], found["value"]])
        else:  # left as they are: load_exact names the missing qkv and these
            out.update({f"encoder.layer.{block}.attn.{name}.{kind}": v for name, v in found.items()})
    return out


def image_encoder(ckpt: object, path: Path) -> dict[str, torch.Tensor]:
    """The REFERS ViT's tensors (``transformer.`` removed) from either file layout the authors use."""
    if isinstance(ckpt, dict) and isinstance(ckpt.get("model"), dict):
        state = pub.state_dict_in(ckpt, "model", path, WHAT)
        return pub.strip_prefix(state, PRETRAINER_VIT, path=path, what=WHAT)
    state = pub.state_dict_in(ckpt, None, path, WHAT)
    return pub.strip_prefix(state, VIT, path=path, what=WHAT)


@dataclass(frozen=True)
class RefersSpec(EncoderSpec):
    """The REFERS ViT-B/16 renamed onto timm's ``vit_base_patch16_224`` and loaded exactly."""

    def backbone(self, *, input_size: int, seed: int) -> nn.Module:
        path = Path(self.weights.location)
        if path.suffix.lower() == ".npz":
            raise CxrbenchError(
                f"{path} is a Google ViT .npz (the ImageNet-21k weights REFERS starts from), not a {WHAT} "
                f"checkpoint; use refers_checkpoint.pth from {URL}"
            )
        mapped = timm_state(image_encoder(pub.read_checkpoint(path, WHAT), path))
        model = build_timm(self.arch, input_size=input_size, pretrained=False)
        if "pos_embed" in mapped:
            mapped["pos_embed"] = pub.fit_pos_embed(mapped["pos_embed"], model)
        return pub.load_into(model, mapped, path)


def parse(name: str, *, arch: str | None, run: Path | None) -> RefersSpec:
    path, _ = pub.split_name(name, PREFIX, (), "/weights/refers_checkpoint.pth")
    source = f"{PREFIX}{path}"
    weights = pub.published_weights(
        name, ARCH, source, path, url=URL, what="refers_checkpoint.pth (REFERS' pretrained ViT-B/16)"
    )
    return RefersSpec(
        name,
        ARCH,
        source,
        weights,
        IMAGENET_MEAN,
        IMAGENET_STD,
        224,
        extra_inputs=pub.identity(path),
        readable="refers-" + path.name.split(".")[0],
    )
