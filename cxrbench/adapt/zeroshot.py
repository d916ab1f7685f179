"""Zero-shot scoring: each label scored by how much closer an image lies to its positive prompt than to
its negative one, in the joint space of an encoder with a text tower (an ``open_clip:`` checkpoint, or
an image–report method pretrained in the run). No labels are used; the scores are ordinary predictions.

Prompts: a TOML file, one table per label (the normalised label name), each with ``positive`` and
``negative`` strings or lists of strings (several prompts are averaged, as CLIP ensembles them):

    [pleural_effusion]
    positive = ["There is a pleural effusion."]
    negative = ["There is no pleural effusion."]

Labels the file does not name get the defaults below (CheXpert's and NIH's findings), and any other
label ``"There is <label words>."`` vs ``"There is no <label words>."``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tomllib
import torch
import torch.nn.functional as F

from cxrbench.errors import CxrbenchError

#: the phrase each default prompt names (``There is <phrase>.`` / ``There is no <phrase>.``)
PHRASES = {
    "atelectasis": "atelectasis",
    "cardiomegaly": "cardiomegaly",
    "consolidation": "consolidation",
    "edema": "pulmonary edema",
    "enlarged_cardiomediastinum": "an enlarged cardiomediastinum",
    "fracture": "a fracture",
    "lung_lesion": "a lung lesion",
    "lung_opacity": "a lung opacity",
    "pleural_effusion": "a pleural effusion",
    "effusion": "a pleural effusion",
    "pleural_other": "a pleural abnormality",
    "pneumonia": "pneumonia",
    "pneumothorax": "a pneumothorax",
    "support_devices": "a support device",
    "infiltration": "an infiltrate",
    "mass": "a mass",
    "nodule": "a pulmonary nodule",
    "emphysema": "emphysema",
    "fibrosis": "fibrosis",
    "pleural_thickening": "pleural thickening",
    "hernia": "a hernia",
}
#: labels whose prompts are not "there is / there is no"
SPECIAL = {
    "no_finding": (["No acute cardiopulmonary process."], ["There is an acute cardiopulmonary abnormality."]),
}
#: scores are sigmoid(SCALE · (cos to positive − cos to negative)): a two-way softmax at CLIP's
#: usual temperature would saturate to exact 0/1 ties; the order, hence AUC, is the same
SCALE = 10.0


@dataclass(frozen=True)
class Prompts:
    """The positive and negative prompts of each label."""

    positive: dict[str, list[str]]
    negative: dict[str, list[str]]


def default_prompts(label: str) -> tuple[list[str], list[str]]:
    if label in SPECIAL:
        pos, neg = SPECIAL[label]
        return list(pos), list(neg)
    phrase = PHRASES.get(label, label.replace("_", " "))
    bare = phrase.removeprefix("a ").removeprefix("an ")
    return [f"There is {phrase}."], [f"There is no {bare}."]


def load_prompts(labels: Sequence[str], path: Path | None = None) -> Prompts:
    """The prompts of ``labels``: the TOML file's where it names the label, else the defaults."""
    given: dict[str, Any] = {}
    if path is not None:
        try:
            given = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise CxrbenchError(f"prompts file {path} does not exist") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise CxrbenchError(f"prompts file {path} is not valid TOML: {exc}") from None
        unknown = sorted(set(given) - set(labels))
        if unknown:
            raise CxrbenchError(f"prompts file {path} names labels the dataset lacks: {', '.join(unknown[:5])}")
    positive, negative = {}, {}
    for label in labels:
        pos, neg = default_prompts(label)
        entry = given.get(label)
        if entry is not None:
            if not isinstance(entry, dict) or set(entry) - {"positive", "negative"}:
                raise CxrbenchError(f"prompts file {path}: [{label}] takes only 'positive' and 'negative'")
            pos, neg = (
                _strings(entry.get("positive", pos), path, label),
                _strings(entry.get("negative", neg), path, label),
            )
        positive[label], negative[label] = pos, neg
    return Prompts(positive, negative)


def _strings(value: Any, path: Path | None, label: str) -> list[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(i, str) and i.strip() for i in items):
        raise CxrbenchError(f"prompts file {path}: [{label}] prompts must be a string or a list of strings")
    return list(items)


@dataclass
class TextTower:
    """The text side of an encoder: ``image(features)`` maps its pooled features into the joint space,
    ``text(strings)`` embeds prompts there."""

    image: Callable[[torch.Tensor], torch.Tensor]
    text: Callable[[list[str]], torch.Tensor]


def text_tower(spec: Any) -> TextTower:
    """The text tower of an encoder spec; a one-line error for encoders without one."""
    from cxrbench.models.sources._saved import SavedSpec
    from cxrbench.models.sources.hf import HfSpec
    from cxrbench.models.tower_files import has_text_tower
    from cxrbench.pretrain._image_text import SavedTextTower

    if isinstance(spec, HfSpec):  # CLIP / SigLIP checkpoints: the image features may need projecting
        image, text = spec.text_tower()
        return TextTower(image=image, text=text)
    if hasattr(spec, "text_tower"):  # open_clip: its image features are already projected
        tower, tokenizer = spec.text_tower()
        return TextTower(image=lambda f: f, text=lambda texts: tower(tokenizer(texts)))
    if isinstance(spec, SavedSpec) and has_text_tower(spec.directory):
        saved = SavedTextTower(spec.directory)
        return TextTower(image=saved.image, text=saved.text)
    raise CxrbenchError(
        f"encoder {spec.name} has no text tower; zero-shot needs an open_clip: encoder, an hf: CLIP or SigLIP "
        "checkpoint, or one pretrained in the run by convirt, clip, gloria, refers or convirt-sections"
    )


def _prompt_embedding(tower: TextTower, prompts: list[str]) -> torch.Tensor:
    """The normalised mean of the normalised embeddings of ``prompts`` (CLIP's prompt ensembling)."""
    return F.normalize(F.normalize(tower.text(prompts).float(), dim=-1).mean(0), dim=0)


@torch.no_grad()
def zeroshot_scores(tower: TextTower, features: np.ndarray, labels: Sequence[str], prompts: Prompts) -> np.ndarray:
    """Scores ``[N, L]`` in (0, 1): sigmoid(SCALE · (cos(image, positive) − cos(image, negative))) per label."""
    images = F.normalize(tower.image(torch.as_tensor(features, dtype=torch.float32)).float(), dim=-1)
    pos = torch.stack([_prompt_embedding(tower, prompts.positive[label]) for label in labels])
    neg = torch.stack([_prompt_embedding(tower, prompts.negative[label]) for label in labels])
    delta = (images @ pos.T - images @ neg.T).double()
    return torch.sigmoid(SCALE * delta).numpy()
