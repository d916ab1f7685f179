"""The shared decoder: vector quantisation checked by hand (nearest code, straight-through gradient,
codebook and commitment terms), output sizes from CNN and ViT token maps, and no side effects."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cxrbench.models.decoder import Decoder, VectorQuantizer, token_grid, upsample_steps


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    yield


def _quantizer(beta: float) -> VectorQuantizer:
    vq = VectorQuantizer(3, 2, beta=beta)
    with torch.no_grad():
        vq.codebook.weight.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0], [3.0, 0.0]]))
    return vq


def _cells() -> torch.Tensor:
    # one image, 2 channels, a 1x2 map: cells (0.9, 1.2) and (2.5, 0.1)
    return torch.tensor([[[[0.9, 2.5]], [[1.2, 0.1]]]], requires_grad=True)


def test_each_cell_becomes_its_nearest_code_and_the_loss_is_codebook_plus_beta_commitment() -> None:
    vq, z = _quantizer(0.25), _cells()
    quantised, loss = vq(z)
    torch.testing.assert_close(quantised.detach(), torch.tensor([[[[1.0, 3.0]], [[1.0, 0.0]]]]))
    assert vq.nearest(z).tolist() == [[[1, 2]]]
    squared = (0.1**2 + 0.2**2 + 0.5**2 + 0.1**2) / 4  # mean over the 2 cells x 2 channels
    assert float(loss.detach()) == pytest.approx(squared * 1.25)


def test_gradients_pass_straight_through_and_split_between_codebook_and_encoder() -> None:
    vq, z = _quantizer(0.25), _cells()
    quantised, _ = vq(z)
    weights = torch.tensor([[[[2.0, -1.0]], [[0.5, 3.0]]]])
    (quantised * weights).sum().backward()
    torch.testing.assert_close(z.grad, weights)  # straight-through: the decoder's gradient, unchanged
    assert vq.codebook.weight.grad is None or vq.codebook.weight.grad.abs().sum() == 0

    vq, z = _quantizer(0.25), _cells()
    _, loss = vq(z)
    loss.sum().backward()
    e = torch.tensor([[1.0, 3.0], [1.0, 0.0]])  # [channel, cell]
    cells = z.detach()[0, :, 0, :]
    torch.testing.assert_close(z.grad[0, :, 0, :], 0.25 * 2 * (cells - e) / 4)  # commitment only
    want = torch.zeros(3, 2)
    want[1] = 2 * (e[:, 0] - cells[:, 0]) / 4  # codebook term only; code 0 unused
    want[2] = 2 * (e[:, 1] - cells[:, 1]) / 4
    torch.testing.assert_close(vq.codebook.weight.grad, want)


@pytest.mark.parametrize(
    ("grid", "steps", "size"), [(2, 3, (16, 16)), (4, 2, (16, 16)), (3, 3, (20, 20)), (1, 0, (5, 7))]
)
def test_decoder_reaches_the_image_size_from_any_grid(grid: int, steps: int, size) -> None:
    torch.manual_seed(0)
    decoder = Decoder(6, steps=steps, width=16, code_dim=4, blocks=1, quantize=True, codes=8)
    tokens = torch.randn(2, 1 + grid * grid, 6)  # a class token first, as a ViT's
    out = decoder(tokens, size)
    assert out.image.shape == (2, 1, *size) and out.quantization.shape == (2,)
    assert len(decoder.ups) == steps and torch.isfinite(out.image).all()
    plain = Decoder(6, steps=steps, width=16, code_dim=4)(tokens, size)
    assert plain.quantization.tolist() == [0.0, 0.0] and plain.image.shape == (2, 1, *size)


def test_there_is_no_path_around_the_code() -> None:
    """Without skip connections the output depends on the image only through the code map."""
    torch.manual_seed(0)
    decoder = Decoder(6, steps=2, width=16, code_dim=4, quantize=True, codes=4)
    a, b = torch.randn(1, 4, 6), torch.randn(1, 4, 6)
    with torch.no_grad():  # one code for every cell: a and b get the same code map
        decoder.quantizer.codebook.weight.zero_()
    assert torch.equal(decoder(a, (8, 8)).image, decoder(b, (8, 8)).image)


def test_upsample_steps_probe_leaves_batchnorm_statistics_alone() -> None:
    class Cnn(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(1, 4, 3, stride=4, padding=1), nn.BatchNorm2d(4))

        def tokens(self, x):
            return self.body(x).flatten(2).transpose(1, 2)

    cnn = Cnn().train()
    before = {k: v.clone() for k, v in cnn.state_dict().items()}
    assert upsample_steps(cnn, 32) == 2 and upsample_steps(cnn, 30) == 2
    assert cnn.training
    for k, v in cnn.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_token_grid_keeps_the_row_major_patch_layout() -> None:
    patches = torch.arange(2 * 9 * 3, dtype=torch.float).view(2, 9, 3)
    grid = token_grid(torch.cat([torch.zeros(2, 2, 3), patches], dim=1))  # two prefix tokens dropped
    torch.testing.assert_close(grid[:, :, 2, 0], patches[:, 6])


def test_a_one_code_map_is_warned_about_once(capsys, monkeypatch) -> None:
    """A 1 x 1 token map (resnet10t at 32 px) gives the quantised code one of ``codes`` values per image."""
    monkeypatch.delenv("CXRBENCH_QUIET", raising=False)
    torch.manual_seed(0)
    decoder = Decoder(6, steps=2, width=16, code_dim=4, quantize=True, codes=8)
    for _ in range(2):
        decoder(torch.randn(2, 1 + 1, 6), (4, 4))  # a class token and one patch: a 1 x 1 map
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and "one of 8 codes per image" in err and "quantize=false" in err
    for quantize, grid in ((True, 2), (False, 1)):  # a 2 x 2 map, or a continuous code: nothing to say
        Decoder(6, steps=1, width=16, code_dim=4, quantize=quantize, codes=8)(
            torch.randn(2, 1 + grid * grid, 6), (4, 4)
        )
    assert "warning" not in capsys.readouterr().err
