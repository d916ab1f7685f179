"""Frozen-encoder features for every image of a prepared dataset, cached as Parquet and reused."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pyarrow as pa
import torch

from cxrbench.engine.data import load_batch
from cxrbench.engine.device import Device
from cxrbench.models.encoders import Encoder


@torch.no_grad()
def extract_features(
    encoder: Encoder,
    images: np.ndarray,
    rows: np.ndarray,
    *,
    batch_size: int = 64,
    device: Device,
    advance: Callable[[int], None] = lambda n=1: None,
) -> np.ndarray:
    """Features ``[len(rows), D]`` float32 of ``images[rows]``: eval mode, no grad, bf16 on GPU."""
    encoder = device.prepare(encoder.eval())
    out = np.empty((len(rows), encoder.num_features), dtype=np.float32)
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        batch = load_batch(images, chunk, device.device)
        with device.autocast():
            feats = encoder(batch)
        out[start : start + len(chunk)] = feats.float().cpu().numpy()
        advance(len(chunk))
    return out


def features_table(sample_ids: list[str], features: np.ndarray) -> pa.Table:
    """``sample_id`` + a fixed-size list column ``features`` (float32)."""
    flat = pa.array(features.reshape(-1), type=pa.float32())
    column = pa.FixedSizeListArray.from_arrays(flat, features.shape[1])
    return pa.table({"sample_id": pa.array(sample_ids, pa.string()), "features": column})


def read_features(table: pa.Table) -> tuple[list[str], np.ndarray]:
    """Inverse of ``features_table``."""
    column = table.column("features").combine_chunks()
    width = column.type.list_size
    values = column.flatten().to_numpy(zero_copy_only=False).reshape(-1, width)
    return table.column("sample_id").to_pylist(), values.astype(np.float32, copy=False)
