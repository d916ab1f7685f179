"""A tiny BERT (2 layers, width 16) with a word-level vocabulary, saved to a folder: a text model for
tests that needs no download."""

from __future__ import annotations

import re
from pathlib import Path

WORDS = (
    "findings impression no there is a are the of in and with small moderate large mild left right "
    "bilateral upper mid lower lobe zone pleural effusion effusions pneumothorax apical cardiomegaly "
    "heart size normal enlarged nodule nodules consolidation pneumonia possible cannot be excluded "
    "focal pulmonary acute cardiopulmonary process pa ap lateral view views chest portable seen "
    "silhouette cardiac borderline sin hallazg derram"
).split()


def tiny_bert(folder: Path, *, layers: int = 2, width: int = 16, seed: int = 0, extra_words: tuple = ()) -> Path:
    """Write a randomly initialised tiny BERT and its tokenizer into ``folder`` (vocabulary: ``WORDS``
    and ``extra_words``); returns it."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = [
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
        ".",
        ",",
        ";",
        "-",
        *map(str, range(10)),
        *WORDS,
        *extra_words,
    ]
    (folder / "vocab.txt").write_text("\n".join(dict.fromkeys(vocab)) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(folder / "vocab.txt"), do_lower_case=True)
    config = BertConfig(
        vocab_size=len(dict.fromkeys(vocab)),
        hidden_size=width,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * width,
        max_position_embeddings=128,
    )
    torch.manual_seed(seed)
    BertModel(config).save_pretrained(str(folder), safe_serialization=True)
    tokenizer.save_pretrained(str(folder))
    return folder


def words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())
