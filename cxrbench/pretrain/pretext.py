"""Pretext tasks combined: the sum of rotation, flip and/or denoising losses (--option tasks=rotation,flip)."""

from __future__ import annotations

from cxrbench.errors import CxrbenchError
from cxrbench.models.decoder import upsample_steps
from cxrbench.models.encoders import Encoder
from cxrbench.pretrain._pretext import TASKS, Denoise, Flip, PretextMethod, Rotation


class Method(PretextMethod):
    """Several pretext tasks on one encoder, each with its own head, their losses summed (each logged
    as a term), as the chest CT study compares them; the options of ``flip`` and ``denoise`` apply."""

    def __init__(
        self,
        encoder: Encoder,
        *,
        tasks: list[str] = ["rotation", "flip"],  # noqa: B006 - read only
        vertical: bool = True,
        amount: float = 0.5,
        decoder_width: int = 64,
        channels: int = 1,
    ) -> None:
        unknown = [t for t in tasks if t not in TASKS]
        if unknown or len(set(tasks)) != len(tasks):
            raise CxrbenchError(f"pretext tasks {','.join(tasks)}: name each of {', '.join(TASKS)} at most once")
        width = encoder.num_features
        made = {
            "rotation": lambda: Rotation(width),
            "flip": lambda: Flip(width, vertical=vertical),
            "denoise": lambda: Denoise(
                width,
                steps=upsample_steps(encoder, encoder.input_size),
                amount=amount,
                hidden=decoder_width,
                channels=channels,
            ),
        }
        super().__init__(encoder, [made[t]() for t in tasks])
