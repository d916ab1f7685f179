"""Masked-region reconstruction: exact masked share, rank slices, falling loss, and the progressive
chain (phases in order, each from the previous one's weights, resumed inside the phase it was cut in)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cxrbench.engine.device import Device
from cxrbench.engine.distributed import Dist
from cxrbench.engine.loop import Step, TrainConfig
from cxrbench.errors import CxrbenchError
from cxrbench.pretrain import masked
from cxrbench.pretrain.base import pretrain_loop
from cxrbench.pretrain.masked import region_masks
from tests.pretrain.tiny import TinyEncoder, assert_resumes_exactly, images, losses_on_a_fixed_batch, step


def _x(n: int = 6) -> torch.Tensor:
    return torch.from_numpy(images(n)).unsqueeze(1).float() / 255


def _method(**options) -> masked.Method:
    return masked.Method(TinyEncoder(), decoder_width=16, code_dim=8, codes=16, **options)


@pytest.mark.parametrize("size", [(16, 16), (17, 29), (64, 48)])
@pytest.mark.parametrize("ratio", [0.05, 0.1, 0.2, 0.33, 0.8])
def test_regions_cover_exactly_the_ratio_of_each_image(size, ratio) -> None:
    masks = region_masks(torch.rand(40, 3, generator=torch.Generator().manual_seed(7)), size, ratio)
    assert masks.shape == (40, 1, *size)
    assert (masks.flatten(1).sum(dim=1) == round(ratio * size[0] * size[1])).all()


def test_a_region_is_one_rectangle_with_at_most_a_partial_column() -> None:
    for mask in region_masks(torch.rand(30, 3, generator=torch.Generator().manual_seed(1)), (32, 32), 0.2)[:, 0]:
        rows, cols = mask.nonzero(as_tuple=True)
        box = mask[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        assert box[:, :-1].all()  # every column but the last is full
        last = box[:, -1]
        assert last.all() or (last[: int(last.sum())].all() and not last[int(last.sum()) :].any())


def test_masked_pixels_are_blanked_and_the_loss_terms_are_the_studys() -> None:
    torch.manual_seed(0)
    method, x = _method(ratios=[0.25], quantize=True, fill=0.5), _x()
    seen = []
    method.decoder.reconstruct = lambda encoder, inp, f=method.decoder.reconstruct: seen.append(inp) or f(encoder, inp)
    out = method.loss({"images": x}, step(3, total=6))
    mask = region_masks(torch.rand(6, 3, generator=torch.Generator().manual_seed(3)), (16, 16), 0.25)
    torch.testing.assert_close(seen[0], torch.where(mask, torch.full_like(x, 0.5), x))
    assert set(out.terms) == {"mse", "ssim", "quantization", "masked_mse"}
    weights = {"mse": 0.2, "ssim": 0.1, "quantization": 0.8, "masked_mse": 0.2}
    assert float(out.value) == pytest.approx(sum(weights[k] * float(v) for k, v in out.terms.items()), rel=1e-5)


class _NoGroup(Dist):
    """A rank of two without a process group: sums over ranks are left to the test."""

    def all_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor


def test_a_ranks_slice_reproduces_the_single_process_loss() -> None:
    torch.manual_seed(0)
    method, x = _method(ratios=[0.2]), _x()
    whole = method.loss({"images": x}, step(5, total=6))
    parts = []
    for rank, (lo, hi) in enumerate([(0, 3), (3, 6)]):
        dist = _NoGroup(rank=rank, world_size=2)
        ctx = Step(0, 0, 6, torch.Generator().manual_seed(5), dist, 0, 10)
        assert dist.bounds(6) == (lo, hi)
        parts.append(float(method.loss({"images": x[lo:hi]}, ctx).value))
    assert sum(parts) == pytest.approx(float(whole.value), rel=1e-5)


@pytest.mark.parametrize("quantize", [False, True])
def test_loss_is_finite_and_falls_on_a_fixed_batch(quantize: bool) -> None:
    torch.manual_seed(0)
    losses = losses_on_a_fixed_batch(_method(ratios=[0.2], quantize=quantize), {"images": _x(8)}, steps=8)
    assert losses[-1] < 0.8 * losses[0], losses


def test_bad_ratios_and_weights_are_one_line_errors() -> None:
    for bad in ([], [0.0], [0.2, 1.0]):
        with pytest.raises(CxrbenchError, match="ratios"):
            _method(ratios=bad)
    with pytest.raises(CxrbenchError, match="weight"):
        _method(mse_weight=-1.0)
    assert masked.Method.options({"ratios": "0.05,0.1", "quantize": "true"}) == {
        "ratios": [0.05, 0.1],
        "quantize": True,
    }


class _Recorder(masked.Method):
    """Records the ratio of every loss call and the weights each phase starts from."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.seen: list[float] = []
        self.starts: list[tuple[float, dict]] = []

    def enter_phase(self, phase: int) -> None:
        super().enter_phase(phase)
        self.starts.append((self.ratio, {k: v.clone() for k, v in self.state_dict().items()}))

    def loss(self, batch, step):
        self.seen.append(self.ratio)
        return super().loss(batch, step)


def test_the_chain_runs_its_ratios_in_order_each_from_the_previous_weights(tmp_path) -> None:
    torch.manual_seed(0)
    method = _Recorder(TinyEncoder(), ratios=[0.1, 0.2, 0.3], decoder_width=16, code_dim=8)
    config = TrainConfig(epochs=2, batch_size=4, lr=1e-2)
    history, log = pretrain_loop(
        method, images(8), np.arange(8), config, seed=0, device=Device.choose("cpu"), checkpoint_dir=tmp_path
    )
    assert method.seen == [0.1] * 4 + [0.2] * 4 + [0.3] * 4  # 2 epochs x 2 steps per phase
    assert [r for r, _ in method.starts] == [0.1, 0.2, 0.3] and len(history) == 6
    for phase in (1, 2):  # each phase starts from the weights the previous one ended with
        ended = torch.load(tmp_path / f"phase-{phase - 1}" / "last.pt", weights_only=True)["model"]
        started = method.starts[phase][1]
        assert list(started) == list(ended)
        for key in ended:
            torch.testing.assert_close(started[key], ended[key], rtol=0, atol=0)
    assert not torch.equal(method.starts[1][1]["decoder.out.weight"], method.starts[0][1]["decoder.out.weight"])
    rows = log.rows
    assert [r["step"] for r in rows] == list(range(1, 13)) and [r["phase"] for r in rows] == [0] * 4 + [1] * 4 + [2] * 4


@pytest.mark.parametrize(("kill_at", "left"), [(8, [0.2, 0.2]), (4, [0.1] * 3 + [0.2] * 3)])
def test_a_killed_chain_resumes_in_the_phase_it_was_cut_in(tmp_path, kill_at: int, left: list[float]) -> None:
    """Cut in phase 3's second step, or in phase 2's first (phase 1 finished, phase 2 not checkpointed)."""
    config = TrainConfig(epochs=1, batch_size=5, lr=1e-2)  # 12 images: 3 steps per phase, 9 in all
    made: list[_Recorder] = []

    def make() -> _Recorder:
        made.append(
            _Recorder(TinyEncoder(), ratios=[0.05, 0.1, 0.2], quantize=True, codes=16, decoder_width=16, code_dim=8)
        )
        return made[-1]

    history = assert_resumes_exactly(tmp_path, make, config, kill_at=kill_at)
    whole, cut, resumed = made
    assert len(history) == 3 and whole.seen == [0.05] * 3 + [0.1] * 3 + [0.2] * 3
    assert cut.seen == whole.seen[:kill_at]
    assert resumed.seen == left  # only the steps after the last checkpoint: finished phases are not rerun


@pytest.mark.parametrize("arch", ["resnet10t", "vit_tiny_patch16_224"])
def test_timm_cnns_and_vits_reconstruct_through_their_tokens(arch: str) -> None:
    from cxrbench.models.encoders import create_encoder

    torch.manual_seed(0)
    encoder = create_encoder("random", arch=arch, input_size=32)
    method = masked.Method(encoder, ratios=[0.2], decoder_width=16, quantize=True)
    x = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    out = method.loss({"images": x}, step(total=2))
    out.backward.backward()
    assert torch.isfinite(out.backward)
    grads = [p.grad for p in encoder.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
