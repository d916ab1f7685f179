"""``open_clip:ORG/NAME[@REVISION]``: the image tower of an open_clip checkpoint on the Hugging Face hub
(``open_clip_config.json`` + ``open_clip_model.safetensors`` or ``open_clip_pytorch_model.bin``), e.g.
``open_clip:laion/CLIP-ViT-B-32-laion2B-s34B-b79K``.

Weights: the hub cache or ``$CXRBENCH_WEIGHTS_DIR/ORG/NAME/``; never downloaded. Only the image tower
is built (no text tower, so no tokenizer or text-model download); the feature is open_clip's
``encode_image`` (pooled and projected, not normalised). Mean, std and size come from the checkpoint's
``open_clip_config.json`` (open_clip's defaults where it gives none). open_clip ViTs run at any input
size (position embeddings resampled as open_clip does); other towers (timm) see their own size, the
input resized to it. ``--arch`` does not apply. Needs ``pip install open-clip-torch``.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cxrbench.errors import CxrbenchError
from cxrbench.models.sources._hub import hub_cache_dir
from cxrbench.models.sources.base import IMAGENET_MEAN, IMAGENET_STD, EncoderSpec, WeightSpec
from cxrbench.rundir import file_hash

if TYPE_CHECKING:
    from torch import nn

PREFIX = "open_clip:"
USAGE = "open_clip:ORG/NAME"
CONFIG = "open_clip_config.json"
WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
INSTALL = "pip install 'cxrbench[published]' (or pip install open-clip-torch)"
_NAME = re.compile(r"(?P<repo>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)(?:@(?P<rev>[\w./-]+))?")


def open_clip() -> Any:
    """The open_clip package, or a one-line error saying how to install it."""
    try:
        import open_clip as package
    except ImportError:
        raise CxrbenchError(f"open_clip: encoders need open-clip-torch; install it with: {INSTALL}") from None
    return package


def _weights_in(folder: Path) -> Path | None:
    if not (folder / CONFIG).is_file():
        return None
    return next((folder / f for f in WEIGHT_FILES if (folder / f).is_file()), None)


def find_checkpoint(repo: str, revision: str | None) -> tuple[Path | None, dict[str, str]]:
    """The weight file of ``repo`` (weights dir first, then the hub cache) and its content identity."""
    root = os.environ.get("CXRBENCH_WEIGHTS_DIR")
    if root:
        found = _weights_in(Path(root).expanduser() / (f"{repo}@{revision}" if revision else repo))
        if found:
            return found, {"weights": file_hash(found)}
    from huggingface_hub import try_to_load_from_cache

    config = try_to_load_from_cache(repo, CONFIG, cache_dir=hub_cache_dir(), revision=revision)
    found = _weights_in(Path(config).parent) if isinstance(config, str) else None
    return (found, {"revision": found.parent.name}) if found else (None, {})


def read_config(path: Path, package: Any) -> tuple[dict, tuple, tuple, int]:
    """Model config, mean, std and input size from an ``open_clip_config.json``."""
    try:
        cfg = json.loads(path.read_text())
        model_cfg = cfg["model_cfg"]
        vision = model_cfg["vision_cfg"]
        pre = cfg.get("preprocess_cfg") or {}
        mean = tuple(float(v) for v in pre.get("mean", package.constants.OPENAI_DATASET_MEAN))
        std = tuple(float(v) for v in pre.get("std", package.constants.OPENAI_DATASET_STD))
        size = vision.get("image_size", 224)
        size = int(size[0] if isinstance(size, (list, tuple)) else size)
    except (OSError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CxrbenchError(f"{path} is not a usable open_clip config ({type(exc).__name__}: {exc})") from None
    if "multimodal_cfg" in model_cfg:
        raise CxrbenchError(f"{path}: CoCa-style models are not supported as encoders; use a CLIP checkpoint")
    return model_cfg, mean, std, size


def _backbone_module_class():
    import torch
    import torch.nn.functional as F
    from torch import nn

    class OpenClipBackbone(nn.Module):
        """An open_clip image tower: ``forward`` gives ``encode_image``'s features; ``forward_features``
        the patch tokens for open_clip's own ViTs. ``native`` resizes input for fixed-size towers."""

        def __init__(self, visual: nn.Module, *, num_features: int, native: int | None) -> None:
            super().__init__()
            self.visual = visual
            self.num_features = int(num_features)
            self.native = native
            self._tokens = hasattr(visual, "output_tokens")
            if self._tokens:
                visual.output_tokens = True
            patch = getattr(visual, "patch_size", None)
            self.patch_size = int(patch[0] if isinstance(patch, (tuple, list)) else patch) if patch else None

        def _run(self, x: torch.Tensor):
            if self.native and tuple(x.shape[-2:]) != (self.native, self.native):
                x = F.interpolate(x, size=(self.native, self.native), mode="bilinear", antialias=True)
            return self.visual(x)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = self._run(x)
            return out[0] if self._tokens else out

        def forward_features(self, x: torch.Tensor) -> torch.Tensor | None:
            return self._run(x)[1] if self._tokens else None

    return OpenClipBackbone


@dataclass(frozen=True)
class OpenClipSpec(EncoderSpec):
    """An open_clip checkpoint; ``backbone`` builds its image tower alone and loads it exactly."""

    resavable = False  # a saved copy would be rebuilt as a timm model

    def backbone(self, *, input_size: int, seed: int) -> nn.Module:
        from torch import nn

        package = open_clip()
        from open_clip.factory import load_state_dict
        from open_clip.model import _build_vision_tower, resize_pos_embed

        path = Path(self.weights.location)
        model_cfg, *_ = read_config(path.parent / CONFIG, package)
        vision = dict(model_cfg["vision_cfg"])
        timm_tower = bool(vision.get("timm_model_name") or vision.get("hf_model_name"))
        if not timm_tower:
            vision["image_size"] = input_size
        visual = _build_vision_tower(model_cfg["embed_dim"], vision, quick_gelu=model_cfg.get("quick_gelu", False))
        try:
            state = load_state_dict(str(path), weights_only=True)
        except Exception as exc:  # noqa: BLE001 - a corrupt or foreign file is one line
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise CxrbenchError(f"cannot read open_clip weights {path}: {first}") from None
        state = {k: v for k, v in state.items() if k.startswith("visual.")}
        holder = nn.Module()
        holder.visual = visual
        resize_pos_embed(state, holder)  # in place, as open_clip does for another image size
        result = visual.load_state_dict({k[len("visual.") :]: v for k, v in state.items()}, strict=False)
        problems = [("missing", result.missing_keys), ("unexpected", result.unexpected_keys)]
        if any(keys for _, keys in problems):
            detail = "; ".join(f"{what}: {', '.join(keys[:3])}" for what, keys in problems if keys)
            raise CxrbenchError(f"weights in {path} do not fit its open_clip config; {detail}")
        native = self.input_size if timm_tower else None
        return _backbone_module_class()(visual, num_features=model_cfg["embed_dim"], native=native)

    def text_tower(self) -> tuple[nn.Module, Any]:
        """The checkpoint's text tower and its tokenizer, for zero-shot scoring: ``tower(tokenizer(texts))``
        gives open_clip's ``encode_text`` (projected, not normalised). The tokenizer is open_clip's own
        (CLIP's byte-pair encoding ships with it) or the Hugging Face one the config names, read offline."""
        self.require()
        package = open_clip()
        from open_clip.factory import load_state_dict
        from open_clip.model import _build_text_tower

        path = Path(self.weights.location)
        model_cfg, *_ = read_config(path.parent / CONFIG, package)
        text_cfg = dict(model_cfg.get("text_cfg") or {})
        tower = _build_text_tower(model_cfg["embed_dim"], text_cfg, quick_gelu=model_cfg.get("quick_gelu", False))
        state = load_state_dict(str(path), weights_only=True)
        custom = any(k.startswith("text.") for k in state)  # CustomTextCLIP keeps its tower under text.
        skip = ("visual.", "logit_scale", "logit_bias", "attn_mask")
        text = {
            (k[len("text.") :] if custom else k): v
            for k, v in state.items()
            if (k.startswith("text.") if custom else not k.startswith(skip))
        }
        result = tower.load_state_dict(text, strict=False)
        missing = [k for k in result.missing_keys if not k.endswith("attn_mask")]
        if missing or result.unexpected_keys:
            detail = f"missing: {', '.join(missing[:3])}" if missing else ""
            detail += f" unexpected: {', '.join(result.unexpected_keys[:3])}" if result.unexpected_keys else ""
            raise CxrbenchError(f"text weights in {path} do not fit its open_clip config; {detail.strip()}")
        context = int(text_cfg.get("context_length", 77))
        try:
            if text_cfg.get("hf_tokenizer_name"):
                tokenizer = package.tokenizer.HFTokenizer(text_cfg["hf_tokenizer_name"], context_length=context)
            else:
                tokenizer = package.tokenizer.SimpleTokenizer(context_length=context)
        except Exception as exc:  # noqa: BLE001 - a tokenizer not in the offline cache is one line
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise CxrbenchError(f"the tokenizer of {self.name} is not available offline: {first}") from None
        return tower.eval(), tokenizer


def parse(name: str, *, arch: str | None, run: Path | None) -> OpenClipSpec:
    package = open_clip()
    match = _NAME.fullmatch(name[len(PREFIX) :])
    if match is None:
        raise CxrbenchError(
            f"encoder {name!r}: use open_clip:ORG/NAME[@REVISION], e.g. open_clip:laion/CLIP-ViT-B-32-laion2B-s34B-b79K"
        )
    repo, revision = match["repo"], match["rev"]
    found, identity = find_checkpoint(repo, revision)
    source = f"hf-hub:{repo}" + (f"@{revision}" if revision else "")
    rev = f" --revision {revision}" if revision else ""
    fetch = f'hf download {repo}{rev} --include "open_clip_*"'
    if found is None:
        weights = WeightSpec(name, "open_clip", source, False, None, fetch)
        return OpenClipSpec(name, "open_clip", source, weights, IMAGENET_MEAN, IMAGENET_STD, 224)
    model_cfg, mean, std, size = read_config(found.parent / CONFIG, package)
    vision = model_cfg["vision_cfg"]
    arch_name = str(vision.get("timm_model_name") or f"vit-{vision.get('width', '?')}-p{vision.get('patch_size', '?')}")
    weights = WeightSpec(name, arch_name, source, True, str(found), fetch)
    return OpenClipSpec(name, arch_name, source, weights, mean, std, size, extra_inputs=identity)
