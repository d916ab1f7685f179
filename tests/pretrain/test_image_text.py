"""The image–report methods (convirt, clip, gloria, refers, convirt-sections) on a tiny encoder and a tiny
BERT: the loss falls on a fixed batch, a killed run resumes bitwise, sentence sampling, the saved text
tower, and under two gloo ranks the summed gradients equal one process's."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cxrbench.engine.distributed import Dist
from cxrbench.engine.loop import Step, TrainConfig
from cxrbench.pretrain import get_method
from cxrbench.pretrain._image_text import SavedTextTower
from tests.models.tiny_text import tiny_bert
from tests.pretrain.tiny import TinyEncoder, assert_resumes_exactly, images, step

REPORTS = [
    "FINDINGS: There is a small left pleural effusion.",
    "FINDINGS: No pneumothorax. Heart size is normal.",
    "FINDINGS: There is moderate cardiomegaly.",
    "FINDINGS: Possible nodule in the right upper zone.",
    "FINDINGS: No focal consolidation.",
    "FINDINGS: Large right pneumothorax.",
    "FINDINGS: Bilateral pleural effusions.",
    "FINDINGS: Consolidation in the left lower lobe.",
]
FINDINGS = [r.removeprefix("FINDINGS: ") for r in REPORTS]
IMPRESSION = ["Effusion.", "Normal.", "Cardiomegaly.", None, "Normal.", "Pneumothorax.", "Effusions.", "Pneumonia."]
METHODS = ("convirt", "clip", "gloria", "refers", "convirt-sections")
SMALL = {"projection_dim": 8}


class _Encoder(TinyEncoder):
    """The tiny patch encoder with a pooled feature that sees where each patch is (so images differ)."""

    def __init__(self) -> None:
        super().__init__()
        self.mix = torch.nn.Linear(16 * 8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mix(self.tokens(x).flatten(1))


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return str(tiny_bert(tmp_path_factory.mktemp("bert"), width=32))


def _make(name: str, bert: str, **options):
    torch.manual_seed(0)
    extra = {} if name in ("clip", "gloria") else {"hidden_dim": 16}
    if name in ("clip", "refers"):  # a random tiny BERT's class token hardly differs between texts
        extra["pool"] = "mean"
    return get_method(name)(_Encoder(), text_model=bert, **SMALL, **extra, **options)


def _fields(n: int) -> dict:
    reps = (FINDINGS * (n // 8 + 1))[:n]
    return {
        "report": np.array((REPORTS * (n // 8 + 1))[:n], dtype=object),
        "findings": np.array(reps, dtype=object),
        "impression": np.array((IMPRESSION * (n // 8 + 1))[:n], dtype=object),
        "study": np.arange(n, dtype=np.int64) // 2,
    }


def _batch(method, n: int = 8) -> dict:
    fields = _fields(n)
    batch = {"images": torch.from_numpy(images(n)).unsqueeze(1).float() / 255}
    for f in method.fields:
        batch[f] = torch.from_numpy(fields[f]) if f == "study" else list(fields[f])
    return batch


@pytest.mark.parametrize("name", METHODS)
def test_loss_falls_on_a_fixed_batch(name, bert) -> None:
    method = _make(name, bert)
    batch = _batch(method)
    optimizer = torch.optim.Adam([p for p in method.parameters() if p.requires_grad], lr=5e-3)
    losses = []
    for i in range(15):
        loss = method.loss(batch, step(0, total=8, update=i, updates=15))  # the same views every step
        optimizer.zero_grad()
        loss.backward.backward()
        optimizer.step()
        losses.append(float(loss.value.detach()))
    assert all(np.isfinite(losses)) and losses[-1] < losses[0] * 0.9, losses


@pytest.mark.parametrize("name", METHODS)
def test_killed_run_resumes_exactly(name, bert, tmp_path) -> None:
    config = TrainConfig(epochs=2, batch_size=4, lr=1e-2, drop_last=True)
    method = get_method(name)
    fields = {f: _fields(12)[f] for f in method.fields}
    assert_resumes_exactly(tmp_path, lambda: _make(name, bert), config, n=12, fields=fields)


def test_sentence_sampling_draws_one_sentence_per_row_the_same_for_a_seed(bert) -> None:
    method = _make("convirt", bert, sample_sentences=True)
    texts = ["First one. Second one. Third one.", "Only sentence."]
    a = method.texts(texts, step(3, total=2))
    assert a == method.texts(texts, step(3, total=2))
    assert a[0] in ("First one.", "Second one.", "Third one.") and a[1] == "Only sentence."
    drawn = {method.texts(texts, step(s, total=2))[0] for s in range(20)}
    assert len(drawn) == 3


def test_frozen_text_layers_follow_train_layers(bert) -> None:
    method = _make("convirt", bert, train_layers=1)
    trainable = {n for n, p in method.text.model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("encoder.layer.1.") for n in trainable)


def test_saved_text_tower_reproduces_the_methods_embeddings(bert, tmp_path) -> None:
    method = _make("convirt", bert).eval()
    method.save_text(tmp_path)
    tower = SavedTextTower(tmp_path)
    x = torch.from_numpy(images(3)).unsqueeze(1).float() / 255
    with torch.no_grad():
        feats = method.encoder(x)
        torch.testing.assert_close(tower.image(feats), method.image_head(feats))
        torch.testing.assert_close(tower.text(REPORTS[:3]), method.embed_texts(REPORTS[:3]))


class _Ranks:
    """Stands in for a process group in one process: ``gather_batch`` returns the whole batch as the
    single-process run computed it, with only this rank's slice carrying gradient (what the real
    gather does). ``world_size`` 1 records the single-process tensors."""

    enabled = True

    def __init__(self, rank: int, world_size: int, recorded: list) -> None:
        self.rank, self.world_size, self.recorded, self.calls = rank, world_size, recorded, 0

    def bounds(self, n: int) -> tuple[int, int]:
        return Dist(self.rank, self.world_size).bounds(n)

    def gather_batch(self, part: torch.Tensor, total: int) -> torch.Tensor:
        if self.world_size == 1:
            self.recorded.append(part.detach())
            return part
        full = self.recorded[self.calls]
        self.calls += 1
        lo, hi = self.bounds(total)
        return torch.cat([full[:lo], part, full[hi:]])


def _gradients(name: str, bert: str, dist: _Ranks) -> tuple[float, dict]:
    method = _make(name, bert, augment=False).eval()  # no dropout: ranks and one process see the same
    batch = _batch(method)
    lo, hi = dist.bounds(8)
    part = {k: v[lo:hi] for k, v in batch.items()}
    loss = method.loss(part, Step(0, 0, 8, torch.Generator().manual_seed(0), dist, 0, 1))
    loss.backward.backward()
    return float(loss.value.detach()), {n: p.grad.clone() for n, p in method.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name", METHODS)
def test_ranks_average_to_the_single_process_gradient(name, bert) -> None:
    """DDP averages the ranks' gradients: with the whole batch gathered (and CLIP's temperature, used
    after the gather, counted once) that average equals one process's gradient."""
    recorded: list = []
    value, want = _gradients(name, bert, _Ranks(0, 1, recorded))
    parts = [_gradients(name, bert, _Ranks(rank, 2, recorded)) for rank in range(2)]
    for got_value, _ in parts:
        assert got_value == pytest.approx(value, rel=1e-5)
    for key, grad in want.items():
        mean = sum(g[key] for _, g in parts) / 2
        torch.testing.assert_close(mean, grad, rtol=1e-4, atol=1e-6, msg=key)
