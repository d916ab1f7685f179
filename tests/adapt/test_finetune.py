"""Finetuning pieces against references: recipes, class weights and losses vs torch/hand values,
mean AUC vs scikit-learn, early stopping, the multiclass path, and worker-process batch loading."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from torch import nn

from cxrbench.adapt.finetune import RECIPES, _loss, finetune_loop, positive_weights, recipe
from cxrbench.engine.device import Device
from cxrbench.errors import CxrbenchError
from cxrbench.stats.auc import mean_auc

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ------------------------------------------------------------------ recipes
def test_recipe_overrides_and_ignores_none() -> None:
    chosen = recipe("vit", lr=0.01, epochs=None, batch_size=8)
    assert (chosen.lr, chosen.batch_size, chosen.epochs) == (0.01, 8, RECIPES["vit"].epochs)
    assert chosen.optimizer == "adamw" and chosen.weighted_loss
    assert recipe("ssl-cxr") == RECIPES["ssl-cxr"]


@pytest.mark.parametrize(
    "name,overrides,needle",
    [
        ("nope", {}, "'nope'"),
        ("ssl-cxr", {"learning_rate": 1}, "learning_rate"),
        ("ssl-cxr", {"optimizer": "adam"}, "'adam'"),
        ("ssl-cxr", {"epochs": 0}, "epochs"),
        ("ssl-cxr", {"lr": -1.0}, "lr"),
    ],
)
def test_recipe_errors_name_the_bad_value(name: str, overrides: dict, needle: str) -> None:
    with pytest.raises(CxrbenchError, match=needle) as exc:
        recipe(name, **overrides)
    assert "\n" not in str(exc.value)


# ------------------------------------------------------------------ losses and metrics
def test_positive_weights_by_hand() -> None:
    y = np.array([[1, 0, np.nan], [0, 0, 1], [0, np.nan, 1], [1, 0, 1]], dtype=np.float32)
    # label 0: 2 pos / 2 neg; label 1: no positive -> 1; label 2: 3 pos / 0 neg
    np.testing.assert_allclose(positive_weights(y), [1.0, 1.0, 0.0])


def test_weighted_bce_masks_nan_and_matches_torch() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 3, generator=gen)
    targets = torch.tensor(
        [[1, 0, np.nan], [0, 1, 1], [np.nan, 0, 0], [1, 1, 0], [0, np.nan, 1], [1, 0, 0]], dtype=torch.float32
    )
    w = torch.tensor([2.0, 0.5, 3.0])
    known = ~torch.isnan(targets)
    reference = F.binary_cross_entropy_with_logits(logits[known], targets[known], pos_weight=w.expand(6, 3)[known])
    torch.testing.assert_close(_loss(logits, targets, task="multilabel", pos_weight=w), reference)
    # one entry by hand: -(w * y * log s(x) + (1 - y) log(1 - s(x)))
    x, y = float(logits[0, 0]), 1.0
    by_hand = -(2.0 * y * np.log(1 / (1 + np.exp(-x))))
    single = _loss(logits[:1, :1], targets[:1, :1], task="multilabel", pos_weight=w[:1])
    assert float(single) == pytest.approx(by_hand, rel=1e-5)
    assert float(_loss(logits, torch.full((6, 3), float("nan")), task="multilabel", pos_weight=None)) == 0.0


def test_multiclass_loss_is_weighted_cross_entropy() -> None:
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(8, 4, generator=gen)
    classes = torch.tensor([0, 1, 2, 3, 3, 2, 1, 1])
    onehot = F.one_hot(classes, 4).float()
    w = torch.tensor([1.0, 2.0, 0.5, 4.0])
    torch.testing.assert_close(
        _loss(logits, onehot, task="multiclass", pos_weight=None), F.cross_entropy(logits, classes)
    )
    torch.testing.assert_close(
        _loss(logits, onehot, task="multiclass", pos_weight=w), F.cross_entropy(logits, classes, weight=w)
    )


def test_mean_auc_matches_sklearn_skipping_one_class_labels() -> None:
    rng = np.random.default_rng(0)
    y = (rng.random((60, 3)) < 0.4).astype(np.float32)
    y[rng.random((60, 3)) < 0.2] = np.nan
    y[:, 2] = np.where(np.isnan(y[:, 2]), np.nan, 0.0)  # no positives among known: skipped
    s = rng.random((60, 3))
    expected = np.mean([roc_auc_score(y[~np.isnan(y[:, k]), k], s[~np.isnan(y[:, k]), k]) for k in range(2)])
    assert mean_auc(y, s) == pytest.approx(expected, rel=1e-12)
    assert np.isnan(mean_auc(np.zeros((5, 1)), rng.random((5, 1))))


# ------------------------------------------------------------------ the loop on a tiny model
class _Flat(nn.Module):
    """A BatchNorm-free encoder stand-in: mean-pooled 4x4 patches -> 16 features."""

    num_features = 16

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(16, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        patches = F.avg_pool2d(x, 4).flatten(1)[:, :16]
        return torch.tanh(self.proj(patches))


def _model(n_out: int) -> nn.Module:
    from cxrbench.adapt.finetune import Classifier

    torch.manual_seed(0)
    return Classifier(_Flat(), n_out)


def _images(n: int = 48, size: int = 16) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, size, size), dtype=np.uint8)


def _run(tmp_path: Path, targets: np.ndarray, *, task: str, **settings):
    images = _images(len(targets))
    rows = np.arange(len(targets))
    chosen = recipe("ssl-cxr", batch_size=8, lr=0.05, **settings)
    return finetune_loop(
        _model(targets.shape[1]),
        images,
        (rows[:32], targets[:32]),
        (rows[32:], targets[32:]),
        recipe=chosen,
        task=task,
        seed=0,
        device=Device.choose("cpu"),
        checkpoint_dir=tmp_path / "ck",
    )


def test_early_stopping_stops_patience_epochs_after_the_best(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    targets = (rng.random((48, 2)) < 0.5).astype(np.float32)  # noise: val AUC peaks early
    best, history, _ = _run(tmp_path, targets, task="multilabel", epochs=30, patience=2)
    aucs = [h["val_auc"] for h in history]
    best_epoch = int(np.argmax(aucs))  # first maximum, as selection keeps the earlier epoch on ties
    assert len(history) < 30
    assert len(history) == best_epoch + 2 + 1  # patience epochs without improvement, then stop
    assert all(a <= aucs[best_epoch] for a in aucs[best_epoch + 1 :])
    assert set(best) == set(_model(2).state_dict())


def test_multiclass_path_trains_and_predicts_softmax(tmp_path: Path) -> None:
    from cxrbench.adapt.finetune import predict

    classes = np.arange(48) % 3
    targets = np.eye(3, dtype=np.float32)[classes]
    best, history, _ = _run(tmp_path, targets, task="multiclass", epochs=2, weighted_loss=True)
    assert len(history) == 2 and all(np.isfinite(h["loss"]) for h in history)
    model = _model(3)
    model.load_state_dict(best)
    probs = predict(model, _images(48), np.arange(48), task="multiclass", device=Device.choose("cpu"), batch_size=7)
    assert probs.shape == (48, 3)
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)


# ------------------------------------------------------------------ loss scaling on resume
class _Stop(Exception):
    pass


def test_fp16_run_interrupted_after_a_checkpoint_resumes_to_the_same_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the checkpoint carries the grad scaler; here its scale doubles every step, so a resumed run
    # that started a fresh scaler would end on a different scale than the uninterrupted one
    monkeypatch.setattr(
        Device, "grad_scaler", lambda self: torch.amp.GradScaler("cpu", init_scale=2.0**4, growth_interval=1)
    )
    rng = np.random.default_rng(5)
    targets = (rng.random((48, 2)) < 0.4).astype(np.float32)
    images, rows = _images(48), np.arange(48)
    chosen = recipe("ssl-cxr", batch_size=8, lr=0.05, epochs=2, patience=5)
    half = Device.choose("cpu", precision="fp16")

    def run(directory: Path, advance=lambda n=1: None):
        return finetune_loop(
            _model(2),
            images,
            (rows[:32], targets[:32]),
            (rows[32:], targets[32:]),
            recipe=chosen,
            task="multilabel",
            seed=0,
            device=half,
            checkpoint_dir=directory,
            checkpoint_every=3,
            advance=advance,
        )

    reference, _, _ = run(tmp_path / "whole")
    calls = []

    def kill_after_step_3(n: int = 1) -> None:
        calls.append(n)
        if len(calls) == 4:  # step 4 ran; the checkpoint of step 3 is on disk
            raise _Stop

    with pytest.raises(_Stop):
        run(tmp_path / "cut", kill_after_step_3)
    saved = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)
    assert saved["step"] == 3 and set(saved["scaler"]) >= {"scale", "_growth_tracker"}
    resumed, _, _ = run(tmp_path / "cut")
    final = [torch.load(tmp_path / d / "last.pt", weights_only=True)["scaler"] for d in ("whole", "cut")]
    assert final[0] == final[1] and final[0]["scale"] > 2.0**4
    assert resumed.keys() == reference.keys()
    for key in reference:
        torch.testing.assert_close(resumed[key], reference[key], rtol=0, atol=0, msg=key)
