"""What the image–report methods share: a text encoder beside the image encoder, projection heads into
one space, views that keep left and right (reports name sides), the training text of each row, and
the text tower written next to the encoder for zero-shot scoring and retrieval."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from cxrbench.data.augment import ViewSettings, part_views
from cxrbench.data.reports import sentences
from cxrbench.engine.data import Batch
from cxrbench.engine.loop import Step
from cxrbench.models.encoders import Encoder
from cxrbench.models.text import load_text_encoder
from cxrbench.models.tower_files import HEADS, HEADS_META, TEXT_DIR
from cxrbench.pretrain.base import Method as MethodBase
from cxrbench.rundir import atomic_path


def head(width: int, hidden: int, out: int) -> nn.Module:
    """A projection: linear when ``hidden`` is 0, else Linear–ReLU–Linear (ConVIRT's)."""
    if hidden <= 0:
        return nn.Linear(width, out)
    return nn.Sequential(nn.Linear(width, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out))


class ImageTextMethod(MethodBase):
    """An image encoder and a transformers text encoder trained together on image–report pairs.

    ``text_model`` (``--text-model``, filled in by the stage): a folder or hub id found offline.
    ``train_layers``: text blocks trained (the rest frozen; -1 all). ``pool``: the text feature (``cls``
    token, ``mean`` or ``max`` over tokens). ``sample_sentences``: train on one
    random sentence of the text per image per step (ConVIRT's sampling) rather than the whole text.
    """

    fields: ClassVar[tuple[str, ...]] = ("report",)
    defaults: ClassVar[dict[str, Any]] = {
        **MethodBase.defaults,
        "epochs": 30,
        "batch_size": 32,
        "lr": 1e-4,
        "optimizer": "adamw",
        "weight_decay": 1e-6,
    }

    def __init__(
        self,
        encoder: Encoder,
        *,
        text_model: str,
        train_layers: int = 6,
        pool: str = "cls",
        max_length: int = 128,
        projection_dim: int = 512,
        hidden_dim: int = 1024,
        sample_sentences: bool = False,
        augment: bool = True,
    ) -> None:
        super().__init__(encoder)
        self.text = load_text_encoder(text_model, max_length=max_length, pool=pool, train_layers=train_layers)
        self.image_head = head(encoder.num_features, hidden_dim, projection_dim)
        self.text_head = head(self.text.num_features, hidden_dim, projection_dim)
        self.sample_sentences, self.augment = sample_sentences, augment
        # no flips: a report's "left" must stay the image's left
        self.views = ViewSettings(min_scale=0.6, max_rotation_deg=10.0, flip=False, noise=0.0)

    def image_views(self, batch: Batch, step: Step) -> torch.Tensor:
        images = batch["images"]
        if not self.augment:
            return images
        return part_views(images, step.generator, self.views, step.dist.bounds(step.total), step.total)

    def texts(self, values: list[str], step: Step) -> list[str]:
        """The text of each row this step: whole, or one sentence drawn for the whole batch (so ranks agree)."""
        values = [v if isinstance(v, str) else "" for v in values]
        if not self.sample_sentences:
            return values
        lo, hi = step.dist.bounds(step.total)
        draws = torch.rand(step.total, generator=step.generator)[lo:hi]
        out = []
        for text, u in zip(values, draws.tolist(), strict=True):
            parts = sentences(text) or [text]
            out.append(parts[min(int(u * len(parts)), len(parts) - 1)])
        return out

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        return self.image_head(self.encoder(images))

    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        return self.text_head(self.text(texts).pooled)

    def save_text(self, home: Path) -> list[Path]:
        """Write the text tower (``text/``) and both projection heads beside the saved encoder."""
        from safetensors.torch import save_file

        written = self.text.save(Path(home) / TEXT_DIR)
        tensors = {f"image.{k}": v for k, v in self.image_head.state_dict().items()}
        tensors |= {f"text.{k}": v for k, v in self.text_head.state_dict().items()}
        tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        meta = {"image_layers": _layers(self.image_head), "text_layers": _layers(self.text_head)}
        with atomic_path(Path(home) / HEADS) as tmp:
            save_file(tensors, str(tmp))
        with atomic_path(Path(home) / HEADS_META) as tmp:
            tmp.write_text(json.dumps(meta))
        return [*written, Path(home) / HEADS, Path(home) / HEADS_META]


def after_gather(value: torch.Tensor, step: Step) -> torch.Tensor:
    """``value`` (a parameter used on the gathered batch, such as CLIP's temperature) with its gradient
    divided by the number of ranks: every rank computes the whole loss from it, and the loss is
    multiplied by ``world_size`` for the gathered parts, so DDP's average would count it that many times."""
    world = step.dist.world_size
    return value if world == 1 else value / world + value.detach() * (1 - 1 / world)


def _layers(module: nn.Module) -> int:
    return 1 if isinstance(module, nn.Linear) else 2


class SavedTextTower(nn.Module):
    """The text side of an encoder pretrained here: ``image(features)`` and ``text(strings)`` give
    embeddings in the shared space (not normalised)."""

    def __init__(self, home: Path) -> None:
        from safetensors.torch import load_file

        super().__init__()
        home = Path(home)
        meta = json.loads((home / HEADS_META).read_text())
        tensors = load_file(str(home / HEADS))
        self.text_encoder = load_text_encoder(str(home / TEXT_DIR), train_layers=0).eval()
        self.heads = nn.ModuleDict()
        for side in ("image", "text"):
            state = {k[len(side) + 1 :]: v for k, v in tensors.items() if k.startswith(side + ".")}
            if meta[f"{side}_layers"] == 1:
                module = nn.Linear(state["weight"].shape[1], state["weight"].shape[0])
            else:
                module = head(state["0.weight"].shape[1], state["0.weight"].shape[0], state["2.weight"].shape[0])
            module.load_state_dict(state)
            self.heads[side] = module.eval()

    def image(self, features: torch.Tensor) -> torch.Tensor:
        return self.heads["image"](features)

    def text(self, texts: list[str]) -> torch.Tensor:
        return self.heads["text"](self.text_encoder(texts).pooled)
