"""Next-slice prediction (chest CT study, Tariq et al.): from slice n of a CT series, reconstruct slice n+1."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from cxrbench.data.partners import Partners
from cxrbench.engine.data import Batch
from cxrbench.engine.loop import Loss, Step
from cxrbench.errors import CxrbenchError
from cxrbench.models.decoder import Decoder, upsample_steps
from cxrbench.models.encoders import Encoder
from cxrbench.pretrain.base import Method as MethodBase
from cxrbench.pretrain.losses.reconstruction import Weights, reconstruction_terms, weighted_sum


def next_slices(series_ids: np.ndarray, slice_indices: np.ndarray) -> Partners:
    """Each row's one partner: the row of the same series whose ``slice_index`` is one higher; for
    the last slice of a series (no next one), the previous slice; none for a series of one slice
    (the row is then paired with itself). Rows are positions in the given arrays."""
    series, _ = pd.factorize(pd.Series(series_ids, dtype=object), use_na_sentinel=True)
    index = np.asarray(slice_indices, dtype=np.int64)
    order = np.lexsort((index, series))  # by series, then slice index
    s, i = series[order], index[order]
    follows = (s[1:] == s[:-1]) & (s[1:] >= 0) & (i[1:] == i[:-1] + 1)  # sorted k+1 is k's next slice
    nxt = np.full(len(order), -1, dtype=np.int64)
    prev = np.full(len(order), -1, dtype=np.int64)
    nxt[order[:-1][follows]] = order[1:][follows]
    prev[order[1:][follows]] = order[:-1][follows]
    mate = np.where(nxt >= 0, nxt, prev)
    counts = (mate >= 0).astype(np.int64)
    offsets = np.r_[0, np.cumsum(counts)].astype(np.int64)
    return Partners(offsets, mate[mate >= 0])


class Method(MethodBase):
    """The encoder and a decoder with no skip connections and a vector-quantised code
    (``cxrbench.models.decoder``; ``quantize=false`` for a continuous code) map slice n to slice
    n+1 of the same series (the last slice of a series to the one before it). Loss: the study's
    composite ``mse_weight`` MSE + ``ssim_weight`` (1 - SSIM) + ``quantization_weight``
    codebook/commitment term (defaults 0.2, 0.1, 0.8: the study's released training code).
    Needs a CT dataset (``series_id`` and ``slice_index`` per row: rsna-pe, lidc, the phantoms)."""

    defaults: ClassVar[dict[str, Any]] = {**MethodBase.defaults, "epochs": 25, "lr": 1e-3, "weight_decay": 0.0}
    drop_last: ClassVar[bool] = False

    def __init__(
        self,
        encoder: Encoder,
        *,
        quantize: bool = True,
        codes: int = 512,
        code_dim: int = 64,
        decoder_width: int = 64,
        decoder_blocks: int = 2,
        mse_weight: float = 0.2,
        ssim_weight: float = 0.1,
        quantization_weight: float = 0.8,
        channels: int = 1,
    ) -> None:
        super().__init__(encoder)
        self.weights = Weights(mse_weight, ssim_weight, quantization_weight, 0.0)
        self.decoder = Decoder(
            encoder.num_features,
            steps=upsample_steps(encoder, encoder.input_size),
            width=decoder_width,
            code_dim=code_dim,
            blocks=decoder_blocks,
            quantize=quantize,
            codes=codes,
            channels=channels,
        )

    @classmethod
    def partner_candidates(cls, rows: pd.DataFrame, options: Mapping[str, Any], *, dataset: str) -> Partners:
        """The next slice of each train row (``next_slices``); a one-line error for a dataset of
        single images (no ``series_id``)."""
        if any(c not in rows or rows[c].isna().all() for c in ("series_id", "slice_index")):
            raise CxrbenchError(
                f"next-slice predicts the next slice of a CT series, but dataset '{dataset}' has no series_id "
                "(use a CT dataset: rsna-pe, lidc, nifti-ct, synthetic-ct, synthetic-lidc)"
            )
        series = rows["series_id"].where(rows["series_id"].notna(), None).to_numpy(dtype=object)
        return next_slices(series, rows["slice_index"].fillna(-2).to_numpy())  # -2: no slice index

    def loss(self, batch: Batch, step: Step) -> Loss:
        images, target, dist, total = batch["images"], batch["partner_images"], step.dist, step.total
        out = self.decoder.reconstruct(self.encoder, images)
        terms = reconstruction_terms(out.image, target, self.weights, quantization=out.quantization)
        part = weighted_sum(terms, self.weights).sum() / total
        logged = {name: dist.all_sum(value.detach().sum() / total) for name, value in terms.items()}
        return Loss(part * dist.world_size, dist.all_sum(part.detach()), logged)
