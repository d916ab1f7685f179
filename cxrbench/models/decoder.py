"""An image decoder for any encoder's tokens, with an optional vector-quantised bottleneck (van den
Oord et al. 2017), as in the chest CT study's encoder-decoder: the encoder's last map alone goes
through a narrow code and back up to the image, with no skip connections, so everything the
decoder needs must be in the code. Shared by the reconstruction pretext tasks (``masked``,
``denoise``) and reusable for CT slices.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cxrbench.errors import CxrbenchError


def token_grid(tokens: torch.Tensor) -> torch.Tensor:
    """Tokens ``[B, N, D]`` as a square map ``[B, D, g, g]``; leading extra tokens (class, register
    tokens of a ViT) are dropped."""
    b, n, d = tokens.shape
    g = math.isqrt(n)
    if g == 0:
        raise CxrbenchError("the encoder returned no tokens to decode")
    return tokens[:, n - g * g :].transpose(1, 2).reshape(b, d, g, g)


class VectorQuantizer(nn.Module):
    """Nearest-code quantisation of a map ``[B, D, h, w]`` with a learned codebook of ``codes`` vectors.

    Forward returns the quantised map with straight-through gradients (the decoder's gradient reaches
    the encoder unchanged) and the per-image loss ``|sg[z] - e|^2 + beta |z - sg[e]|^2`` (codebook
    term + commitment term, each a mean over the image's cells and channels).
    """

    def __init__(self, codes: int, dim: int, *, beta: float = 0.25) -> None:
        super().__init__()
        if codes < 2 or dim < 1 or beta < 0:
            raise CxrbenchError(f"vector quantiser: need >= 2 codes, dim >= 1, beta >= 0 (got {codes}, {dim}, {beta})")
        self.beta = beta
        self.codebook = nn.Embedding(codes, dim)
        nn.init.uniform_(self.codebook.weight, -1 / codes, 1 / codes)

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """The index of the nearest code of each cell of ``z`` ``[B, D, h, w]`` -> ``[B, h, w]``."""
        flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]).float()
        book = self.codebook.weight.float()
        with torch.autocast(z.device.type, enabled=False):  # distances in float32 under autocast too
            dist = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ book.T + book.pow(2).sum(1)
        return dist.argmin(dim=1).view(z.shape[0], *z.shape[2:])

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        codes = self.nearest(z.detach())
        e = self.codebook(codes).permute(0, 3, 1, 2).to(z.dtype)
        codebook = (e - z.detach()).float().pow(2).flatten(1).mean(dim=1)
        commitment = (z - e.detach()).float().pow(2).flatten(1).mean(dim=1)
        quantised = z + (e - z).detach()  # straight-through: forward e, backward identity
        return quantised, codebook + self.beta * commitment


class _Residual(nn.Module):
    """conv3x3 - ReLU - conv1x1 added to its input (within the decoder; not a skip from the encoder)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ReLU(),
            nn.Conv2d(width, width, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, width, kernel_size=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


@dataclass
class Decoded:
    """A decoder's output: the image ``[B, C, H, W]`` and the per-image quantisation loss ``[B]``
    (zeros without a quantiser)."""

    image: torch.Tensor
    quantization: torch.Tensor


def upsample_steps(encoder: nn.Module, size: int) -> int:
    """The x2 upsampling steps from ``encoder``'s token map to ``size`` pixels, found by encoding one
    blank image (in eval mode, without gradients: BatchNorm statistics are left as they were)."""
    was_training = encoder.training
    encoder.eval()
    try:
        with torch.no_grad():
            device = next(encoder.parameters()).device
            tokens = encoder.tokens(torch.zeros(1, 1, size, size, device=device))
    finally:
        encoder.train(was_training)
    if tokens is None:
        raise CxrbenchError("this method needs an encoder with tokens (a CNN feature map or ViT patches)")
    grid = token_grid(tokens).shape[-1]
    return max(0, math.ceil(math.log2(size / grid)))


class Decoder(nn.Module):
    """Encoder tokens ``[B, N, in_dim]`` -> image ``[B, channels, H, W]``.

    A 1x1 convolution compresses each cell to a ``code_dim`` code (vector-quantised when
    ``quantize``), then a 3x3 convolution to ``width`` channels and ``blocks`` residual blocks, then
    ``steps`` x2 upsampling steps (bilinear upsample + 3x3 convolution, halving the channels down to
    16), a resize to the image size where the steps overshoot it, and a 3x3 convolution to ``channels``.
    """

    def __init__(
        self,
        in_dim: int,
        *,
        steps: int,
        width: int = 64,
        code_dim: int = 64,
        blocks: int = 2,
        quantize: bool = False,
        codes: int = 512,
        beta: float = 0.25,
        channels: int = 1,
    ) -> None:
        super().__init__()
        if width < 1 or code_dim < 1 or blocks < 0 or steps < 0:
            raise CxrbenchError(
                f"decoder: width and code_dim must be >= 1, blocks and steps >= 0 "
                f"(got {width}, {code_dim}, {blocks}, {steps})"
            )
        self.compress = nn.Conv2d(in_dim, code_dim, kernel_size=1)
        self.quantizer = VectorQuantizer(codes, code_dim, beta=beta) if quantize else None
        self._warned = False
        self.expand = nn.Sequential(
            nn.Conv2d(code_dim, width, kernel_size=3, padding=1), *[_Residual(width) for _ in range(blocks)], nn.ReLU()
        )
        self.ups = nn.ModuleList()
        c = width
        for _ in range(steps):
            self.ups.append(nn.Conv2d(c, max(c // 2, 16), kernel_size=3, padding=1))
            c = max(c // 2, 16)
        self.out = nn.Conv2d(c, channels, kernel_size=3, padding=1)

    def code(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The (quantised) code map ``[B, code_dim, g, g]`` of ``tokens`` and the per-image quantisation loss."""
        z = self.compress(token_grid(tokens))
        if self.quantizer is None:
            return z, z.new_zeros(z.shape[0], dtype=torch.float32)
        if z.shape[-2:] == (1, 1) and not self._warned:
            from cxrbench.console import info

            self._warned = True  # once: the bench on 32-px phantoms found such a code worse than none
            info(
                f"[yellow]warning:[/] the encoder's token map is 1 x 1 at this input size, so the vector-quantised "
                f"code passes one of {self.quantizer.codebook.num_embeddings} codes per image to the decoder; "
                "larger images or --option quantize=false keep more of each image"
            )
        return self.quantizer(z)

    def reconstruct(self, encoder: nn.Module, x: torch.Tensor) -> Decoded:
        """Encode images ``x`` ``[B, 1, H, W]`` with ``encoder`` and decode them back to ``H x W``."""
        tokens = encoder.tokens(x)
        if tokens is None:
            raise CxrbenchError("this method needs an encoder with tokens (a CNN feature map or ViT patches)")
        return self(tokens, tuple(x.shape[-2:]))

    def forward(self, tokens: torch.Tensor, size: tuple[int, int]) -> Decoded:
        z, quantization = self.code(tokens)
        h = self.expand(z)
        for conv in self.ups:
            h = F.relu(conv(F.interpolate(h, scale_factor=2, mode="bilinear", align_corners=False)))
        if tuple(h.shape[-2:]) != tuple(size):
            h = F.interpolate(h, size=tuple(size), mode="bilinear", align_corners=False)
        return Decoded(self.out(h), quantization)
