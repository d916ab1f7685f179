"""``hf:ORG/NAME[@REVISION][#FEATURE]``: any transformers vision model (RAD-DINO, DINOv2, ViT, the
image tower of a CLIP or SigLIP checkpoint), loaded offline with ``AutoModel``.

Weights: the Hugging Face hub cache (``HF_HUB_CACHE``/``HF_HOME``) or ``$CXRBENCH_WEIGHTS_DIR/ORG/NAME/``
(``ORG/NAME@REVISION/`` for a revision), a folder as ``save_pretrained`` writes it. Mean, std and input
size come from its ``preprocessor_config.json`` (the crop size when the processor crops, else the size
it resizes to); ``--arch`` does not apply. FEATURE picks the pooled feature:

- ``cls``: the class token of the last hidden state (default; what the RAD-DINO and DINOv2 cards use),
- ``mean``: the mean of the patch tokens (class and register tokens left out),
- ``pooler``: the model's ``pooler_output`` (default for CLIP and SigLIP towers: their image embedding
  before the projection; SigLIP has no class token).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cxrbench.errors import CxrbenchError
from cxrbench.models.sources._hub import hub_cache_dir
from cxrbench.models.sources.base import IMAGENET_MEAN, IMAGENET_STD, EncoderSpec, WeightSpec
from cxrbench.rundir import file_hash

if TYPE_CHECKING:
    from torch import nn

PREFIX = "hf:"
USAGE = "hf:ORG/NAME"
FEATURES = ("cls", "mean", "pooler")
#: model types whose image embedding is the pooled output (contrastive image towers)
POOLED_TYPES = ("clip", "siglip", "siglip2", "chinese_clip", "altclip")
PREPROCESSOR = "preprocessor_config.json"
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
_NAME = re.compile(r"(?P<repo>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)(?:@(?P<rev>[\w./-]+))?(?:#(?P<feature>\w+))?")


def _complete(folder: Path) -> bool:
    return (folder / "config.json").is_file() and any((folder / f).is_file() for f in WEIGHT_FILES)


def find_snapshot(repo: str, revision: str | None) -> tuple[Path | None, dict[str, str]]:
    """The local folder of ``repo`` at ``revision`` (weights dir first, then the hub cache), and the
    identity of its content (the hub commit, or the weight file's hash)."""
    root = os.environ.get("CXRBENCH_WEIGHTS_DIR")
    if root:
        local = Path(root).expanduser() / (f"{repo}@{revision}" if revision else repo)
        if _complete(local):
            weights = next(local / f for f in WEIGHT_FILES if (local / f).is_file())
            return local, {"weights": file_hash(weights)}
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo, "config.json", cache_dir=hub_cache_dir(), revision=revision)
    if isinstance(found, str) and _complete(Path(found).parent):
        snapshot = Path(found).parent
        return snapshot, {"revision": snapshot.name}
    return None, {}


def preprocessing(folder: Path) -> tuple[tuple[float, ...], tuple[float, ...], int]:
    """Mean, std and square input size from ``folder/preprocessor_config.json``."""
    path = folder / PREPROCESSOR
    try:
        cfg = json.loads(path.read_text())
        if cfg.get("do_normalize", True):
            mean, std = tuple(float(v) for v in cfg["image_mean"]), tuple(float(v) for v in cfg["image_std"])
        else:
            mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
        size = cfg.get("crop_size") if cfg.get("do_center_crop") and cfg.get("crop_size") else cfg.get("size")
        if isinstance(size, dict):
            size = size.get("height") or size.get("shortest_edge")
        size = int(size)
    except FileNotFoundError:
        raise CxrbenchError(f"{folder} has no {PREPROCESSOR}; cxrbench takes mean, std and size from it") from None
    except (OSError, KeyError, TypeError, ValueError) as exc:
        raise CxrbenchError(f"{path} is not a usable image processor config ({type(exc).__name__}: {exc})") from None
    if len(mean) == 1:
        mean, std = mean * 3, std * 3
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0 or size < 16:
        raise CxrbenchError(f"{path}: image_mean/image_std need 3 values (std > 0) and a size >= 16")
    return mean, std, size


def _model_type(folder: Path) -> str:
    try:
        return str(json.loads((folder / "config.json").read_text()).get("model_type") or "transformers")
    except (OSError, ValueError, AttributeError):
        raise CxrbenchError(f"{folder / 'config.json'} is not a transformers config") from None


def _backbone_module_class():
    import torch
    from torch import nn

    class HfBackbone(nn.Module):
        """A transformers vision model as a backbone: ``forward`` gives the chosen pooled feature,
        ``forward_features`` the last hidden state (all tokens, class token first where there is one)."""

        def __init__(self, model: nn.Module, *, feature: str) -> None:
            import inspect

            super().__init__()
            self.model = model
            self.feature = feature
            config = model.config
            self.num_features = int(config.hidden_size)
            patch = getattr(config, "patch_size", None)
            self.patch_size = int(patch[0] if isinstance(patch, (tuple, list)) else patch) if patch else None
            self.image_size = getattr(config, "image_size", None)
            params = inspect.signature(model.forward).parameters
            self._interpolate = "interpolate_pos_encoding" in params

        def _run(self, x: torch.Tensor):
            kwargs = {}
            if self._interpolate and self.image_size and tuple(x.shape[-2:]) != (self.image_size,) * 2:
                kwargs["interpolate_pos_encoding"] = True
            return self.model(pixel_values=x, **kwargs)

        def forward_features(self, x: torch.Tensor) -> torch.Tensor:
            return self._run(x).last_hidden_state

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = self._run(x)
            if self.feature == "pooler":
                return out.pooler_output
            tokens = out.last_hidden_state
            patches = (x.shape[-2] // self.patch_size) * (x.shape[-1] // self.patch_size) if self.patch_size else 0
            prefix = tokens.shape[1] - patches
            if self.feature == "cls":
                if prefix < 1:
                    raise CxrbenchError(f"{type(self.model).__name__} has no class token; use #mean or #pooler")
                feats = tokens[:, 0]
            else:
                feats = tokens[:, max(prefix, 0) :].mean(1)
            pooled = getattr(out, "pooler_output", None)
            if self.training and pooled is not None:
                # the pooler's parameters join the graph with zero gradient, so DDP finds every parameter used
                feats = feats + 0.0 * pooled.sum()
            return feats

    return HfBackbone


@dataclass(frozen=True)
class HfSpec(EncoderSpec):
    """A transformers model in a local folder; ``feature`` picks the pooled feature."""

    resavable = False  # a saved copy would be rebuilt as a timm model

    feature: str = "cls"

    def backbone(self, *, input_size: int, seed: int) -> nn.Module:
        import torch
        from transformers import AutoModel
        from transformers.utils import logging as hf_logging

        folder = Path(self.weights.location)
        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
        try:
            model, info = AutoModel.from_pretrained(
                str(folder), local_files_only=True, output_loading_info=True, dtype=torch.float32
            )
        except Exception as exc:  # noqa: BLE001 - a foreign or corrupt folder is one line
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise CxrbenchError(f"cannot load {self.source} from {folder}: {first}") from None
        finally:
            if bars:
                hf_logging.enable_progress_bar()
        missing = sorted(info.get("missing_keys") or ())
        tower = getattr(model, "vision_model", None)
        if tower is not None and hasattr(model, "text_model"):  # a CLIP/SigLIP checkpoint: the image tower
            missing = [k for k in missing if k.startswith("vision_model.")]
            model = tower
        if self.feature != "pooler":
            missing = [k for k in missing if ".pooler." not in f".{k}" and ".head." not in f".{k}"]
        if missing:
            more = f" (+{len(missing) - 3} more)" if len(missing) > 3 else ""
            raise CxrbenchError(
                f"weights in {folder} do not fit {type(model).__name__}; missing: {', '.join(missing[:3])}{more}"
            )
        return _backbone_module_class()(model, feature=self.feature)

    def text_tower(self):
        """For zero-shot scoring of a CLIP or SigLIP checkpoint: ``(image, text)`` where ``image`` maps
        this encoder's pooled features into the joint space (CLIP's visual projection; SigLIP's pooled
        output is already there) and ``text(prompts)`` gives ``get_text_features`` of the tokenised
        prompts, with the tokenizer saved beside the weights, read offline."""
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.require()
        folder = Path(self.weights.location)
        try:
            model = AutoModel.from_pretrained(str(folder), local_files_only=True, dtype=torch.float32).eval()
        except Exception as exc:  # noqa: BLE001 - a foreign or corrupt folder is one line
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise CxrbenchError(f"cannot load {self.source} from {folder}: {first}") from None
        if not hasattr(model, "get_text_features") or not hasattr(model, "text_model"):
            raise CxrbenchError(f"encoder {self.name} has no text tower (zero-shot needs a CLIP or SigLIP checkpoint)")
        if self.feature != "pooler":
            raise CxrbenchError(f"zero-shot with {self.name}: use its #pooler feature (the image embedding)")
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        except Exception as exc:  # noqa: BLE001 - no tokenizer files in the snapshot
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise CxrbenchError(f"the tokenizer of {self.name} is not in {folder}: {first}") from None
        padding = "max_length" if self.arch == "siglip" else True  # SigLIP was trained on padded prompts
        projection = getattr(model, "visual_projection", None)

        def pooled(out):
            return out if isinstance(out, torch.Tensor) else out.pooler_output

        def text(prompts: list[str]) -> torch.Tensor:
            tokens = tokenizer(list(prompts), padding=padding, truncation=True, return_tensors="pt")
            with torch.no_grad():
                return pooled(model.get_text_features(**tokens))

        def image(features: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return projection(features) if projection is not None else features

        return image, text


def parse(name: str, *, arch: str | None, run: Path | None) -> HfSpec:
    match = _NAME.fullmatch(name[len(PREFIX) :])
    if match is None:
        raise CxrbenchError(
            f"encoder {name!r}: use hf:ORG/NAME[@REVISION][#FEATURE], e.g. hf:microsoft/rad-dino#cls "
            f"(FEATURE: {', '.join(FEATURES)})"
        )
    repo, revision, feature = match["repo"], match["rev"], match["feature"]
    if feature is not None and feature not in FEATURES:
        raise CxrbenchError(f"encoder {name!r}: feature #{feature} is not one of {', '.join(FEATURES)}")
    folder, identity = find_snapshot(repo, revision)
    rev = f" --revision {revision}" if revision else ""
    source = f"hf-hub:{repo}" + (f"@{revision}" if revision else "")
    fetch = f'hf download {repo}{rev} --include "*.json" "*.safetensors"'
    if folder is None:
        weights = WeightSpec(name, "transformers", source, False, None, fetch)
        return HfSpec(name, "transformers", source, weights, IMAGENET_MEAN, IMAGENET_STD, 224, feature=feature or "cls")
    model_type = _model_type(folder)
    mean, std, size = preprocessing(folder)
    feature = feature or ("pooler" if model_type in POOLED_TYPES else "cls")
    weights = WeightSpec(name, model_type, source, True, str(folder), fetch)
    return HfSpec(name, model_type, source, weights, mean, std, size, extra_inputs=identity, feature=feature)
