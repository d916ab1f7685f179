"""Next-slice prediction: each slice's partner is the next slice of its series (the last one pairs with
the one before), the decoder's target is the partner image, the composite loss, and exact resume."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from cxrbench.engine.data import EpochBatches
from cxrbench.engine.loop import TrainConfig
from cxrbench.errors import CxrbenchError
from cxrbench.pretrain import next_slice
from cxrbench.pretrain.losses.ssim import ssim_loss
from cxrbench.pretrain.next_slice import next_slices
from tests.pretrain.tiny import TinyEncoder, assert_resumes_exactly, images, losses_on_a_fixed_batch, step


def _method(**options) -> next_slice.Method:
    return next_slice.Method(TinyEncoder(), decoder_width=16, code_dim=8, codes=16, **options)


def _partner(partners, row: int) -> int | None:
    lo, hi = partners.offsets[row], partners.offsets[row + 1]
    return int(partners.members[lo]) if hi > lo else None


def test_the_partner_is_the_next_slice_of_the_same_series_in_any_row_order() -> None:
    # rows shuffled: series a has slices 0..3, b has 0..1, c a single slice
    series = np.array(["a", "b", "a", "c", "a", "b", "a"], dtype=object)
    index = np.array([2, 1, 0, 0, 3, 0, 1])
    partners = next_slices(series, index)
    want = {0: 4, 1: 5, 2: 6, 3: None, 4: 0, 5: 1, 6: 0}  # a3 -> a2 and b1 -> b0: the last slice's previous
    assert {row: _partner(partners, row) for row in range(7)} == want
    assert partners.counts().tolist() == [1, 1, 1, 0, 1, 1, 1]


def test_a_missing_neighbour_is_not_bridged_and_ids_never_mix() -> None:
    # series "x" lacks slice 2; the same slice indices in another series are not partners
    partners = next_slices(np.array(["x", "x", "x", "y"], dtype=object), np.array([0, 1, 3, 2]))
    assert [_partner(partners, r) for r in range(4)] == [1, 0, None, None]


def test_the_loader_gives_each_slice_its_next_slice_as_partner_image() -> None:
    pixels = images(6)
    rows = np.array([5, 4, 3, 2, 1, 0])  # cache rows in reverse
    partners = next_slices(np.array(["s"] * 6, dtype=object), np.arange(6))
    data = EpochBatches(pixels, rows, seed=0, batch_size=6, epochs=1, partners=partners)
    order = data.plan(0)[0]
    _, _, batch = data[0]
    for k, i in enumerate(order):
        mate = i + 1 if i < 5 else 4
        np.testing.assert_array_equal(batch["partner_images"][k].numpy(), pixels[rows[mate]])


def test_the_decoder_reconstructs_the_partner_and_the_loss_is_the_studys_composite() -> None:
    torch.manual_seed(0)
    method = _method()
    x = torch.from_numpy(images(4)).unsqueeze(1).float() / 255
    y = torch.from_numpy(images(4, seed=1)).unsqueeze(1).float() / 255
    out = method.loss({"images": x, "partner_images": y}, step(0, total=4))
    assert set(out.terms) == {"mse", "ssim", "quantization"}
    with torch.no_grad():
        decoded = method.decoder.reconstruct(method.encoder, x)
    assert float(out.terms["mse"]) == pytest.approx(float(F.mse_loss(decoded.image, y)), rel=1e-5)
    assert float(out.terms["ssim"]) == pytest.approx(float(ssim_loss(decoded.image, y).mean()), rel=1e-5)
    weights = {"mse": 0.2, "ssim": 0.1, "quantization": 0.8}
    assert float(out.value) == pytest.approx(sum(weights[k] * float(v) for k, v in out.terms.items()), rel=1e-5)
    plain = next_slice.Method(TinyEncoder(), decoder_width=16, quantize=False, ssim_weight=0.0)
    terms = plain.loss({"images": x, "partner_images": y}, step(0, total=4)).terms
    assert set(terms) == {"mse", "quantization"} and float(terms["quantization"]) == 0.0  # no codebook


def test_loss_is_finite_and_falls_on_a_fixed_batch() -> None:
    torch.manual_seed(0)
    x = torch.from_numpy(images(8)).unsqueeze(1).float() / 255
    batch = {"images": x, "partner_images": x.flip(-1)}
    losses = losses_on_a_fixed_batch(_method(), batch, steps=10)
    assert losses[-1] < losses[0]


def test_a_killed_run_resumes_to_the_same_weights(tmp_path) -> None:
    config = TrainConfig(epochs=2, batch_size=4, lr=1e-2, optimizer="adamw")
    partners = next_slices(np.repeat(np.array(["p", "q", "r"], dtype=object), 4), np.tile(np.arange(4), 3))
    history = assert_resumes_exactly(tmp_path, _method, config, partners=partners)
    assert len(history) == 2


def test_a_dataset_without_series_is_a_one_line_error() -> None:
    rows = pd.DataFrame({"patient_id": ["a", "b"], "series_id": [None, None], "slice_index": [np.nan, np.nan]})
    with pytest.raises(CxrbenchError, match="dataset 'nih' has no series_id"):
        next_slice.Method.partner_candidates(rows, {}, dataset="nih")
    with pytest.raises(CxrbenchError, match="has no series_id"):
        next_slice.Method.partner_candidates(rows.drop(columns=["series_id"]), {}, dataset="x")
    with pytest.raises(CxrbenchError, match="loss weight"):
        _method(mse_weight=-1.0)
