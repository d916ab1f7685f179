"""Segmentation: Dice/IoU per case against hand-computed counts, the U-Net on CNN and ViT encoders,
exact resume of a killed run, and the stage's per-case table on CT phantoms."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cxrbench.adapt.segment import RowsOf, UNet, dice_iou, overlap_counts, segment_loop, soft_dice_loss
from cxrbench.engine.device import Device
from cxrbench.engine.loop import TrainConfig
from cxrbench.models.encoders import create_encoder


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    yield


def test_dice_and_iou_per_case_pool_the_slices_of_a_case() -> None:
    truth = np.zeros((3, 4, 4), dtype=bool)
    pred = np.zeros((3, 4, 4), dtype=bool)
    truth[0, :2, :2] = True  # 4 pixels
    pred[0, :2, :3] = True  # 6 pixels: tp 4, fp 2
    truth[1, 3, 3] = True  # missed: fn 1 (same case as slice 0)
    # slice 2 is a case of its own with nothing in truth or prediction
    counts = overlap_counts(pred, truth, np.array(["a", "a", "b"]))
    assert counts.to_dict("list") == {"case": ["a", "b"], "tp": [4, 0], "fp": [2, 0], "fn": [1, 0]}
    dice, iou = dice_iou(counts["tp"], counts["fp"], counts["fn"])
    assert dice.tolist() == pytest.approx([8 / 11, 1.0]) and iou.tolist() == pytest.approx([4 / 7, 1.0])
    assert dice_iou([0], [3], [0])[0].tolist() == [0.0]  # predicted something where there is nothing


def test_soft_dice_loss_matches_the_formula() -> None:
    logits = torch.tensor([[[[0.0, 2.0], [-2.0, 10.0]]]])
    target = torch.tensor([[[[0.0, 1.0], [0.0, 1.0]]]])
    p = logits.sigmoid().flatten()
    want = 1 - (2 * (p * target.flatten()).sum() + 1) / (p.sum() + 2 + 1)
    torch.testing.assert_close(soft_dice_loss(logits, target), want.view(1))


@pytest.mark.parametrize(("arch", "size"), [("resnet18", 32), ("vit_tiny_patch16_224", 32)])
def test_unet_gives_one_logit_per_input_pixel_and_its_down_branch_is_the_encoder(arch: str, size: int) -> None:
    encoder = create_encoder("random", arch=arch, input_size=size)
    net = UNet(encoder, width=8)
    out = net(torch.rand(2, 1, 24, 24))
    assert out.shape == (2, 1, 24, 24)
    assert net.encoder is encoder and net.pyramid == (arch.startswith("vit"))
    out.mean().backward()
    params = [p for p in encoder.parameters() if p.requires_grad]
    first = next(iter(encoder.parameters()))  # the stem / patch embedding trains with the U-Net
    assert first.grad is not None and first.grad.abs().sum() > 0
    # all but a ViT's final norm (after the last block: the maps are taken before it) get gradients
    assert sum(p.grad is not None for p in params) >= len(params) - 2


class _Stop(Exception):
    pass


def test_a_killed_segmentation_run_resumes_to_the_same_weights(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (10, 16, 16), dtype=np.uint8)
    masks = (images > 200).astype(np.uint8)
    frame = pd.DataFrame(
        {"cache_index": np.arange(10), "sample_id": [f"s{i}" for i in range(10)], "series_id": ["a"] * 5 + ["b"] * 5}
    )
    config = TrainConfig(epochs=2, batch_size=4, lr=1e-3, optimizer="adamw")

    def run(directory: Path, **kwargs):
        torch.manual_seed(0)
        net = UNet(create_encoder("random", arch="resnet10t", input_size=16), width=4)
        best, curve, _ = segment_loop(
            net,
            images,
            masks,
            frame.iloc[:6],
            frame.iloc[6:],
            None,
            config,
            seed=0,
            device=Device.choose("cpu"),
            checkpoint_dir=directory,
            **kwargs,
        )
        return net, best, curve

    _, want, curve = run(tmp_path / "whole")
    assert [p["epoch"] for p in curve] == [0, 1] and all(0 <= p["val_dice"] <= 1 for p in curve)
    calls = []

    def kill(n: int = 1) -> None:
        calls.append(n)
        if len(calls) == 3:
            raise _Stop

    with pytest.raises(_Stop):
        run(tmp_path / "cut", checkpoint_every=1, advance=kill)
    _, got, resumed_curve = run(tmp_path / "cut", checkpoint_every=1)
    assert resumed_curve == curve
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=0, atol=0, msg=key)


def test_rows_of_reads_rows_on_demand_and_survives_pickling(tmp_path: Path) -> None:
    import pickle

    array = np.arange(5 * 2 * 2, dtype=np.uint8).reshape(5, 2, 2)
    np.save(tmp_path / "m.npy", array)
    view = RowsOf(np.load(tmp_path / "m.npy", mmap_mode="r"), np.array([4, 0, 2]))
    np.testing.assert_array_equal(view[np.array([2, 0])], array[[2, 4]])
    clone = pickle.loads(pickle.dumps(view))
    assert clone._array is None and len(pickle.dumps(view)) < 400
    np.testing.assert_array_equal(clone[np.array([1])], array[[0]])
