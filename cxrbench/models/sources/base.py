"""What every encoder source returns: an ``EncoderSpec`` that knows its weights, its identity in the
run (folder name, settings and input hashes for stage keys) and how to build the backbone."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cxrbench.errors import CxrbenchError
from cxrbench.rundir import Manifest, safe_name

if TYPE_CHECKING:
    from torch import nn

    from cxrbench.models.encoders import Encoder

DEFAULT_ARCH = "resnet50"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class WeightSpec:
    """One encoder's weights: where they come from, whether they are here, how to get them."""

    encoder: str
    arch: str
    source: str
    present: bool
    location: str | None
    fetch_command: str

    @property
    def missing_message(self) -> str:
        """The one-line message a stage shows when these weights are missing."""
        if self.fetch_command:
            return (
                f"weights for {self.encoder} ({self.arch}) are not available offline; "
                f"fetch them with: {self.fetch_command}"
            )
        return f"weights for {self.encoder} ({self.arch}) are not available: {self.location} not found"


@dataclass(frozen=True)
class EncoderSpec:
    """An encoder name resolved once: weights, preprocessing, identity, and ``build``.

    Subclasses (one per source module) implement ``backbone``; everything a stage needs for its key
    (``settings``, ``inputs``, ``extra_inputs``) and for paths (``folder``) is here.
    """

    name: str
    arch: str
    source: str
    weights: WeightSpec
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    input_size: int = 224
    inputs: tuple[Manifest, ...] = ()
    extra_inputs: dict[str, str] = field(default_factory=dict)
    #: readable stem of the folder name when the name itself is not folder-safe (``file-enc``)
    readable: str | None = None

    @property
    def folder(self) -> str:
        """The encoder's folder name under ``features/`` and ``predictions/`` (folder-safe, unique)."""
        return safe_name(self.name, readable=self.readable)

    @property
    def settings(self) -> dict[str, Any]:
        """The encoder's part of a stage's settings (its stage-key identity)."""
        return {"encoder": self.name, "arch": self.arch, "source": self.source}

    def require(self) -> EncoderSpec:
        """Itself when its weights are present offline; else a one-line error with the fetch command."""
        if not self.weights.present:
            raise CxrbenchError(self.weights.missing_message)
        return self

    def backbone(self, *, input_size: int, seed: int) -> nn.Module:
        """The model with its weights loaded (see ``cxrbench.models.backbone``)."""
        raise NotImplementedError

    def build(self, *, input_size: int | None = None, seed: int = 0) -> Encoder:
        """The encoder in eval mode at ``input_size`` (default: the source's own), weights loaded offline."""
        from cxrbench.models.encoders import Encoder

        if input_size is not None and (
            isinstance(input_size, bool) or not isinstance(input_size, int) or input_size < 16
        ):
            raise CxrbenchError(f"input_size must be an integer >= 16 or None, got {input_size!r}")
        self.require()
        size = input_size or self.input_size
        backbone = self.backbone(input_size=size, seed=seed)
        encoder = Encoder(
            backbone, name=self.name, arch=self.arch, mean=self.mean, std=self.std, input_size=size, source=self.source
        )
        return encoder.eval()


# ---------------------------------------------------------------------------------------------
# timm, shared by the sources whose backbones are timm models.


def split_arch(arch: str) -> tuple[str, str | None]:
    """``resnet50.a1_in1k`` -> (``resnet50``, ``a1_in1k``); a one-line error for unknown timm names."""
    import timm

    bare, _, tag = arch.partition(".")
    if not timm.is_model(bare):
        raise CxrbenchError(
            f"unknown architecture {arch!r} for --arch; use a timm model name such as "
            "resnet50, densenet121 or vit_base_patch16_224"
        )
    return bare, (tag or None)


def timm_config(arch: str, tag: str | None = None) -> tuple[tuple, tuple, int]:
    """Mean, std and square input size from timm's pretrained config of ``arch[.tag]``."""
    from timm.models import get_pretrained_cfg

    try:
        cfg = get_pretrained_cfg(f"{arch}.{tag}" if tag else arch)
    except RuntimeError:
        cfg = None
    if cfg is None:
        return IMAGENET_MEAN, IMAGENET_STD, 224
    return tuple(cfg.mean), tuple(cfg.std), int(cfg.input_size[-1])


def has_hub_weights(arch: str, tag: str) -> bool:
    """True when timm knows Hugging Face weights ``arch.tag``."""
    from timm.models import get_pretrained_cfg

    try:
        cfg = get_pretrained_cfg(f"{arch}.{tag}")
    except RuntimeError:  # timm raises for an unknown tag of a known arch
        return False
    return cfg is not None and cfg.hf_hub_id is not None


def build_timm(arch: str, *, input_size: int | None, **kwargs: Any) -> nn.Module:
    """timm ``arch`` with no classifier, sized for ``input_size`` when it is a ViT."""
    import timm
    import torch

    if input_size:
        with torch.device("meta"):  # shape probe only: no memory, no weights
            probe = timm.create_model(arch, num_classes=0)
        embed = getattr(probe, "patch_embed", None)
        if embed is not None and tuple(embed.img_size) != (input_size, input_size):
            kwargs["img_size"] = input_size
    try:
        return timm.create_model(arch, num_classes=0, **kwargs)
    except Exception as exc:  # noqa: BLE001 - a corrupt or foreign weight file is one line
        if not kwargs.get("pretrained"):
            raise
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        where = kwargs.get("pretrained_cfg_overlay", {}).get("file")
        raise CxrbenchError(f"cannot load {arch} weights from {where}: {first}") from None


def saved_arch(directory: Path) -> str | None:
    """The ``arch`` recorded in a saved encoder's ``encoder.json``, or None when there is none."""
    import json

    from cxrbench.models.encoders import ENCODER_META

    meta = Path(directory) / ENCODER_META
    if not meta.is_file():
        return None
    try:
        return str(json.loads(meta.read_text())["arch"])
    except (ValueError, KeyError, TypeError) as exc:
        raise CxrbenchError(f"{meta} is not a valid encoder description ({exc})") from None
