"""Denoising (as in the chest CT study of Tariq et al.): remove 50% salt-and-pepper noise; MSE."""

from __future__ import annotations

from cxrbench.models.encoders import Encoder
from cxrbench.pretrain._pretext import Denoise, PretextMethod


class Method(PretextMethod):
    """A small convolutional decoder from the encoder's tokens (CNN feature map or ViT patches) to
    the clean image. ``amount``: the fraction of pixels turned white or black. The study also used
    SSIM and a vector-quantised code; this is the plain MSE variant."""

    def __init__(self, encoder: Encoder, *, amount: float = 0.5, decoder_width: int = 64) -> None:
        super().__init__(encoder, [Denoise(encoder.num_features, amount=amount, hidden=decoder_width)])
