"""Reading a prepared dataset back: the samples table, its labels and the decoded image cache."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cxrbench.data.samples import LABEL_PREFIX, label_columns
from cxrbench.errors import CxrbenchError
from cxrbench.rundir import Manifest, RunLayout, layout_of, read_complete

SAMPLES = "samples.parquet"
QUARANTINE = "quarantine.parquet"
CACHE_DIR = "cache"


@dataclass
class Prepared:
    """A prepared dataset: samples (one row per usable image), label names, task and pixels."""

    name: str
    samples: pd.DataFrame
    labels: list[str]
    task: str
    manifest: Manifest
    directory: Path

    def images(self) -> np.ndarray:
        """The decoded images as a read-only memmap ``[n_cached, size, size]`` uint8 (``[n_cached,
        C, size, size]`` for CT prepared in C windows)."""
        from cxrbench.data.cache import open_cache

        return open_cache(self.directory / CACHE_DIR)

    @property
    def channels(self) -> int:
        """Channels of each cached image: the number of CT windows, else 1."""
        images = self.images()
        return int(images.shape[1]) if images.ndim == 4 else 1

    def masks(self) -> np.ndarray:
        """The segmentation masks as a read-only memmap ``[n_cached, size, size]`` uint8 (0/1),
        row for row with ``images()``; a one-line error for a dataset without masks."""
        from cxrbench.data.masks import MASKS_FILE

        path = self.directory / CACHE_DIR / MASKS_FILE
        if "mask_rle" not in self.samples or not path.is_file():
            raise CxrbenchError(f"dataset '{self.name}' has no segmentation masks (lidc and synthetic-lidc have)")
        return np.load(path, mmap_mode="r")

    def split(self, name: str) -> pd.DataFrame:
        """Rows of one split, in table order."""
        return self.samples[self.samples["split"] == name]

    def targets(self, frame: pd.DataFrame) -> np.ndarray:
        """Label matrix ``[len(frame), n_labels]`` float32 with NaN for unknown."""
        return frame[[LABEL_PREFIX + label for label in self.labels]].to_numpy(dtype=np.float32)


def load_prepared(run: RunLayout | Path, dataset: str) -> Prepared:
    """The prepared dataset, or a one-line error saying which `cxrbench prepare` to run."""
    layout = layout_of(run)
    directory = layout.prepared(dataset)
    manifest = read_complete(
        layout, directory / "manifest.json", what=f"prepared dataset '{dataset}'", hint=f"cxrbench prepare {dataset}"
    )
    samples = pd.read_parquet(directory / SAMPLES)
    labels = [c[len(LABEL_PREFIX) :] for c in label_columns(samples)]
    return Prepared(dataset, samples, labels, manifest.extra.get("task", "multilabel"), manifest, directory)
