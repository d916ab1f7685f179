"""Text encoders for image–report pretraining and zero-shot scoring: any transformers ``AutoModel`` with
its ``AutoTokenizer`` (BioClinicalBERT, CXR-BERT, PubMedBERT), loaded offline.

A text model is named by a local folder (as ``save_pretrained`` writes it) or a hub id
(``emilyalsentzer/Bio_ClinicalBERT``) found in ``$CXRBENCH_WEIGHTS_DIR/ORG/NAME`` or the Hugging Face
cache; nothing is downloaded. Only the last ``train_layers`` transformer blocks are trained (ConVIRT
freezes the first 6 of BERT's 12); the embeddings and an unused pooler stay frozen.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cxrbench.errors import CxrbenchError
from cxrbench.models.sources.base import WeightSpec
from cxrbench.rundir import file_hash

POOLS = ("cls", "mean", "max")
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "spiece.model", "vocab.json")


def find_text_model(name: str) -> tuple[Path | None, dict[str, str]]:
    """The local folder of text model ``name`` (a folder path, or a hub id in the weights dir or the
    hub cache) and the identity of its content; (None, {}) when it is not here."""
    from cxrbench.models.sources.hf import WEIGHT_FILES, find_snapshot

    folder = Path(name).expanduser()
    if folder.is_dir():
        weights = next((folder / f for f in WEIGHT_FILES if (folder / f).is_file()), None)
        if (folder / "config.json").is_file() and weights is not None:
            return folder, {"weights": file_hash(weights)}
        return None, {}
    if name.count("/") != 1 or name.startswith(("/", ".", "~")):
        return None, {}
    repo, _, revision = name.partition("@")
    return find_snapshot(repo, revision or None)


def text_weights(name: str) -> WeightSpec:
    """The weight spec of a text model for ``weights check``: present or not, and how to fetch it."""
    folder, _ = find_text_model(name)
    looks_local = Path(name).expanduser().exists() or name.startswith(("/", ".", "~")) or name.count("/") != 1
    fetch = "" if looks_local else f"hf download {name.partition('@')[0]}"
    location = str(folder) if folder is not None else (name if looks_local else None)
    return WeightSpec(name, "text", "transformers", folder is not None, location, fetch)


def _transformer_layers(model: nn.Module) -> nn.ModuleList:
    """The model's list of transformer blocks (BERT's ``encoder.layer``, GPT's ``h``, ...): its longest ModuleList."""
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
    if not lists:
        raise CxrbenchError(f"{type(model).__name__} has no list of transformer layers to freeze")
    return max(lists, key=len)


@dataclass
class TextOutput:
    """Per-token features ``tokens`` [B, L, D], their ``mask`` [B, L] (1 for real tokens), ``pooled`` [B, D]."""

    tokens: torch.Tensor
    mask: torch.Tensor
    pooled: torch.Tensor


class TextEncoder(nn.Module):
    """A transformers text model + tokenizer: ``forward(texts)`` tokenizes (truncating to ``max_length``)
    and returns token features and a pooled feature (``pool``: class token, masked mean or max)."""

    def __init__(self, model: nn.Module, tokenizer: Any, *, name: str, max_length: int = 128, pool: str = "cls"):
        super().__init__()
        if pool not in POOLS:
            raise CxrbenchError(f"text pooling {pool!r}: choose one of {', '.join(POOLS)}")
        self.model, self.tokenizer, self.name = model, tokenizer, name
        self.max_length, self.pool = int(max_length), pool
        self.num_features = int(model.config.hidden_size)

    def train_last(self, n: int) -> None:
        """Train only the last ``n`` transformer blocks (``n < 0``: all, embeddings included; ``0``: none)."""
        layers = _transformer_layers(self.model)
        for p in self.model.parameters():
            p.requires_grad_(n < 0)
        if n > 0:
            for block in list(layers)[-n:]:
                for p in block.parameters():
                    p.requires_grad_(True)
        for name, p in self.model.named_parameters():
            if "pooler" in name.split("."):  # computed by BERT-like models but never used here
                p.requires_grad_(False)

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        device = next(self.model.parameters()).device
        batch = self.tokenizer(
            [t if isinstance(t, str) else "" for t in texts],
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        return {k: v.to(device) for k, v in batch.items()}

    def forward(self, texts: list[str]) -> TextOutput:
        batch = self.tokenize(texts)
        hidden = self.model(**batch).last_hidden_state
        mask = batch["attention_mask"].to(hidden.dtype)
        if self.pool == "cls":
            pooled = hidden[:, 0]
        elif self.pool == "mean":
            pooled = (hidden * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        else:
            pooled = hidden.masked_fill(mask.unsqueeze(-1) == 0, torch.finfo(hidden.dtype).min).amax(1)
        return TextOutput(hidden, mask, pooled)

    def save(self, folder: Path) -> list[Path]:
        """Write the model and tokenizer (``save_pretrained``) into ``folder``; the files written."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(str(folder), safe_serialization=True)
        self.tokenizer.save_pretrained(str(folder))
        (folder / "cxrbench_text.json").write_text(
            json.dumps({"name": self.name, "max_length": self.max_length, "pool": self.pool})
        )
        return sorted(p for p in folder.iterdir() if p.is_file())


def load_text_encoder(name: str, *, max_length: int = 128, pool: str = "cls", train_layers: int = -1) -> TextEncoder:
    """The text encoder ``name`` loaded offline, training its last ``train_layers`` blocks (-1: all);
    a one-line error with the download command when it is not here."""
    folder, _ = find_text_model(name)
    if folder is None:
        raise CxrbenchError(text_weights(name).missing_message)
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "some weights were not used" for a checkpoint with an MLM head
    try:
        model = AutoModel.from_pretrained(str(folder), local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable model is one line
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CxrbenchError(f"text model {name} ({folder}) could not be loaded: {first}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    saved = folder / "cxrbench_text.json"
    if saved.is_file():  # a text tower written by cxrbench pretrain keeps its settings
        meta = json.loads(saved.read_text())
        max_length, pool = int(meta.get("max_length", max_length)), str(meta.get("pool", pool))
    encoder = TextEncoder(model, tokenizer, name=name, max_length=max_length, pool=pool)
    encoder.train_last(train_layers)
    return encoder
