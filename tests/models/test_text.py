"""Text encoders: offline loading of a tiny BERT folder, pooling equal to transformers' own outputs,
freezing all but the last N layers, and the missing-model message with its download command."""

from __future__ import annotations

import pytest
import torch

from cxrbench.errors import CxrbenchError
from cxrbench.models.text import load_text_encoder, text_weights
from tests.models.tiny_text import tiny_bert


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return tiny_bert(tmp_path_factory.mktemp("bert"), layers=3)


def test_loads_offline_and_pools_like_transformers(bert) -> None:
    from transformers import AutoModel, AutoTokenizer

    texts = ["No pleural effusion.", "There is a small left pneumothorax seen in the upper zone."]
    ref_model = AutoModel.from_pretrained(str(bert)).eval()
    tok = AutoTokenizer.from_pretrained(str(bert))
    batch = tok(texts, padding=True, return_tensors="pt")
    hidden = ref_model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    for pool, want in (
        ("cls", hidden[:, 0]),
        ("mean", (hidden * mask).sum(1) / mask.sum(1)),
        ("max", torch.stack([hidden[i, : int(mask[i].sum())].amax(0) for i in range(2)])),
    ):
        enc = load_text_encoder(str(bert), pool=pool).eval()
        out = enc(texts)
        torch.testing.assert_close(out.pooled, want, rtol=1e-5, atol=1e-6)
        assert out.tokens.shape == hidden.shape and out.mask.tolist() == batch["attention_mask"].tolist()


def test_train_last_layers(bert) -> None:
    enc = load_text_encoder(str(bert), train_layers=1)
    trainable = {n for n, p in enc.model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("encoder.layer.2.") for n in trainable)
    enc.train_last(-1)
    frozen = {n for n, p in enc.model.named_parameters() if not p.requires_grad}
    assert frozen and all(n.startswith("pooler.") for n in frozen)
    enc.train_last(0)
    assert not any(p.requires_grad for p in enc.parameters())


def test_truncates_to_max_length(bert) -> None:
    enc = load_text_encoder(str(bert), max_length=6)
    assert enc(["no " * 40]).tokens.shape[1] == 6


def test_missing_model_names_the_download_command(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("CXRBENCH_WEIGHTS_DIR", str(tmp_path / "weights"))
    spec = text_weights("emilyalsentzer/Bio_ClinicalBERT")
    assert not spec.present and spec.fetch_command == "hf download emilyalsentzer/Bio_ClinicalBERT"
    with pytest.raises(CxrbenchError, match="fetch them with: hf download emilyalsentzer/Bio_ClinicalBERT"):
        load_text_encoder("emilyalsentzer/Bio_ClinicalBERT")
    with pytest.raises(CxrbenchError, match="not available"):
        load_text_encoder(str(tmp_path / "nowhere"))


def test_weights_dir_copy_is_found(tmp_path, monkeypatch, bert) -> None:
    import shutil

    shutil.copytree(bert, tmp_path / "weights" / "org" / "tinybert")
    monkeypatch.setenv("CXRBENCH_WEIGHTS_DIR", str(tmp_path / "weights"))
    assert text_weights("org/tinybert").present
    assert load_text_encoder("org/tinybert").num_features == 16
