"""Denoising (as in the chest CT study of Tariq et al.): remove 50% salt-and-pepper noise; MSE + SSIM."""

from __future__ import annotations

from cxrbench.models.decoder import upsample_steps
from cxrbench.models.encoders import Encoder
from cxrbench.pretrain._pretext import Denoise, PretextMethod
from cxrbench.pretrain.losses.reconstruction import Weights


class Method(PretextMethod):
    """The shared encoder-decoder (no skip connections) from the encoder's tokens (CNN feature map or
    ViT patches) to the clean image. ``amount``: the fraction of pixels turned white or black. Loss:
    the study's composite ``mse_weight`` MSE + ``ssim_weight`` (1 - SSIM) (+ ``quantization_weight``
    times the codebook/commitment loss of the study's vector-quantised code; ``quantize=false``: a
    continuous code, no such term);
    ``ssim_weight=0`` gives plain MSE."""

    def __init__(
        self,
        encoder: Encoder,
        *,
        amount: float = 0.5,
        decoder_width: int = 64,
        quantize: bool = True,
        mse_weight: float = 0.2,
        ssim_weight: float = 0.1,
        quantization_weight: float = 0.8,
        channels: int = 1,
    ) -> None:
        weights = Weights(mse=mse_weight, ssim=ssim_weight, quantization=quantization_weight, masked=0.0)
        steps = upsample_steps(encoder, encoder.input_size)
        task = Denoise(
            encoder.num_features,
            steps=steps,
            amount=amount,
            hidden=decoder_width,
            quantize=quantize,
            weights=weights,
            channels=channels,
        )
        super().__init__(encoder, [task])
