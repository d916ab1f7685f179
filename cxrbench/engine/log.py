"""The per-step training log: one row per optimizer step (step, epoch, loss terms, lr, images/s),
kept in the checkpoint so a resumed run's log is whole, and written as Parquet."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pyarrow as pa

from cxrbench.rundir import write_parquet


class StepLog:
    """Rows of the training log; ``rows`` travel in checkpoints."""

    def __init__(self, rows: list[dict[str, Any]] | None = None) -> None:
        self.rows: list[dict[str, Any]] = list(rows or [])
        self._clock = time.perf_counter()
        self._images = 0

    def tick(self, images: int) -> None:
        """Count images of the micro-batches since the last row (for images/s)."""
        self._images += images

    def add(self, *, step: int, epoch: int, lr: float, terms: dict[str, float]) -> None:
        now = time.perf_counter()
        rate = self._images / max(now - self._clock, 1e-9)
        self._clock, self._images = now, 0
        self.rows.append(
            {
                "step": step,
                "epoch": epoch,
                **{k: float(v) for k, v in terms.items()},
                "lr": float(lr),
                "images_per_s": float(rate),
            }
        )

    def table(self) -> pa.Table:
        names: list[str] = []
        for row in self.rows:
            names += [k for k in row if k not in names]
        return (
            pa.table({n: [row.get(n) for row in self.rows] for n in names})
            if self.rows
            else pa.table(
                {
                    "step": pa.array([], pa.int64()),
                    "epoch": pa.array([], pa.int64()),
                    "loss": pa.array([], pa.float64()),
                    "lr": pa.array([], pa.float64()),
                    "images_per_s": pa.array([], pa.float64()),
                }
            )
        )

    def write(self, path: Path) -> Path:
        return write_parquet(path, self.table())
