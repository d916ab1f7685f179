"""Encoders: a backbone plus the preprocessing its weights were trained with, created from one name
(``imagenet``, ``dinov2``, ``random``, ``file:PATH``, a ``pretrain`` output) by ``models.sources``."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from cxrbench.errors import CxrbenchError
from cxrbench.models.backbone import Backbone, dynamic_size, feature_maps, patch_size, tokens
from cxrbench.rundir import atomic_path

ENCODER_WEIGHTS = "encoder.safetensors"
ENCODER_META = "encoder.json"
_PREFIXES = ("module.", "encoder.", "backbone.", "model.", "_orig_mod.")


class Encoder(nn.Module):
    """Backbone + its preprocessing: ``forward(x)`` maps x in [0, 1], [B, 1 or 3, H, W] to [B, D].

    The one place where grey becomes 3 channels, images are resized to ``input_size`` (unless
    ``any_size``, see ``allow_any_size``) and mean/std normalisation is applied.
    """

    def __init__(
        self,
        backbone: Backbone,
        *,
        name: str,
        arch: str,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        input_size: int,
        source: str,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.name = name
        self.arch = arch
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.input_size = int(input_size)
        self.source = source
        self.num_features = int(backbone.num_features)
        self.patch_size: int | None = patch_size(backbone)
        self.any_size = False
        self.register_buffer("_mean", torch.tensor(self.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(self.std).view(1, 3, 1, 1), persistent=False)

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """Return x as 3 channels at ``input_size`` x ``input_size`` (at its own size if ``any_size``),
        normalised with mean/std."""
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise CxrbenchError(f"encoder input must have shape [B, 1 or 3, H, W], got {list(x.shape)}")
        x = x.to(self._mean.dtype)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[-2:] != (self.input_size, self.input_size) and not self.any_size:
            x = F.interpolate(
                x,
                size=(self.input_size, self.input_size),
                mode="bilinear",
                align_corners=False,
                antialias=True,
            )
        return (x - self._mean) / self._std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return pooled features [B, num_features] of images x in [0, 1]."""
        return self.backbone(self.preprocess(x))

    @torch.no_grad()
    def allow_any_size(self, size: int) -> bool:
        """Encode images at their own size from now on (multi-crop's smaller crops cost less and a
        ViT sees them at their own patch grid) if the backbone takes ``size`` x ``size`` images: CNNs
        do, a timm ViT after ``dynamic_size``; checked by one forward pass. False, and nothing changes
        (images are still resized to ``input_size``), for backbones that cannot."""
        dynamic_size(self.backbone)
        training = self.training
        self.eval()
        try:
            probe = torch.zeros(1, 3, size, size, dtype=self._mean.dtype, device=self._mean.device)
            fits = tuple(self.backbone(probe).shape) == (1, self.num_features)
        except Exception:  # noqa: BLE001 - any failure means the backbone needs its own size
            fits = False
        self.train(training)
        self.any_size = fits
        return fits

    def tokens(self, x: torch.Tensor) -> torch.Tensor | None:
        """Return tokens [B, N, num_features] of images x in [0, 1] (patches, map cells), or None."""
        return tokens(self.backbone, self.preprocess(x))

    def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Intermediate maps ``[B, C, h, w]`` of images x in [0, 1], shallow to deep (U-Net skips)."""
        return feature_maps(self.backbone, self.preprocess(x))

    def extra_repr(self) -> str:
        return f"name={self.name!r}, source={self.source!r}, input_size={self.input_size}"


def create_encoder(
    name: str,
    *,
    arch: str | None = None,
    run_dir: Path | None = None,
    input_size: int | None = None,
    seed: int = 0,
) -> Encoder:
    """The encoder called ``name`` with its weights and preprocessing, loaded offline (see
    ``cxrbench.models.sources`` for the names; ``seed`` fixes a random initialisation)."""
    from cxrbench.models.sources import resolve_encoder

    return resolve_encoder(name, arch=arch, run=run_dir).build(input_size=input_size, seed=seed)


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Return the tensors in a safetensors or ``.pt/.pth/.bin`` file (``weights_only`` loading)."""
    path = Path(path)
    if not path.is_file():
        raise CxrbenchError(f"weights file {path} does not exist")
    suffix = path.suffix.lower()
    try:
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        if suffix in (".pt", ".pth", ".bin", ".ckpt"):
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
        else:
            raise CxrbenchError(f"weights file {path} must end in .safetensors, .pt, .pth, .bin or .ckpt")
    except CxrbenchError:
        raise
    except Exception as exc:  # noqa: BLE001 - any unreadable file becomes one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CxrbenchError(f"cannot read weights file {path}: {first}") from None
    for key in ("state_dict", "model", "encoder", "backbone"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CxrbenchError(f"weights file {path} does not hold a state dict of tensors")
    return obj


def _strip_candidates(keys: list[str]) -> list[tuple[str, ...]]:
    """Return prefix chains (up to two deep) present in ``keys``, the empty chain first."""
    chains: list[tuple[str, ...]] = [()]
    for first in _PREFIXES:
        if any(k.startswith(first) for k in keys):
            chains.append((first,))
            for second in _PREFIXES:
                if any(k.startswith(first + second) for k in keys):
                    chains.append((first, second))
    return chains


def load_exact(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    """Load ``state`` into ``model`` exactly, stripping wrapper prefixes and classifier heads."""
    target = model.state_dict()
    best: dict[str, torch.Tensor] = state
    best_hits = -1
    for chain in _strip_candidates(list(state)):
        prefix = "".join(chain)
        sub = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        hits = sum(k in target for k in sub)
        if hits > best_hits:
            best, best_hits = sub, hits
    head = getattr(model, "pretrained_cfg", {}).get("classifier") or ""
    heads = tuple(h + "." for h in ((head,) if isinstance(head, str) else head) if h)
    extra = [k for k in best if k not in target and not (heads and k.startswith(heads))]
    missing = [k for k in target if k not in best]
    shapes = [
        f"{k} {list(best[k].shape)} vs {list(v.shape)}"
        for k, v in target.items()
        if k in best and best[k].shape != v.shape
    ]
    if extra or missing or shapes:
        parts = []
        for label, items in (("missing", missing), ("unexpected", extra), ("shape", shapes)):
            if items:
                more = f" (+{len(items) - 3} more)" if len(items) > 3 else ""
                parts.append(f"{label}: {', '.join(items[:3])}{more}")
        raise CxrbenchError(f"weights in {path} do not fit {type(model).__name__}; " + "; ".join(parts))
    model.load_state_dict({k: best[k] for k in target}, strict=True)


def save_encoder(encoder: Encoder, out_dir: Path, *, extra: dict | None = None) -> list[Path]:
    """Return the written ``encoder.safetensors`` and ``encoder.json`` in ``out_dir`` (atomic)."""
    from safetensors.torch import save_file

    if not isinstance(encoder, Encoder):
        raise CxrbenchError(f"save_encoder needs an Encoder, got {type(encoder).__name__}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in encoder.backbone.state_dict().items()}
    meta = {
        "name": encoder.name,
        "arch": encoder.arch,
        "mean": list(encoder.mean),
        "std": list(encoder.std),
        "input_size": encoder.input_size,
        "patch_size": encoder.patch_size,
        "num_features": encoder.num_features,
        "source": encoder.source,
        "extra": extra or {},
    }
    weights, meta_path = out_dir / ENCODER_WEIGHTS, out_dir / ENCODER_META
    with atomic_path(weights) as tmp:
        save_file(tensors, str(tmp), metadata={"arch": encoder.arch})
    with atomic_path(meta_path) as tmp:
        tmp.write_text(json.dumps(meta, indent=2, default=str))
    return [weights, meta_path]
