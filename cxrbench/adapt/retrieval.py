"""Image→report retrieval for encoders pretrained here with a text tower, on datasets whose samples carry
report sections: each test image's own report (the sections the encoder was pretrained on) ranked
among the distinct reports of the test split. ``evaluate`` writes the recall@1/5/10 table beside the metrics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cxrbench.data.prepared import SAMPLES, load_prepared
from cxrbench.data.reports import STORED, join_sections
from cxrbench.models.tower_files import HEADS, has_text_tower
from cxrbench.rundir import RunLayout, file_hash
from cxrbench.stats.retrieval import KS, recall_table

COLUMNS = ("dataset", "encoder", "split", "metric", "value", "ci_low", "ci_high", "n_images", "n_reports")


def retrieval_pairs(layout: RunLayout, files: list[Path]) -> list[tuple[str, str]]:
    """(dataset, encoder) of the predictions whose encoder is a pretrain output with a text tower."""
    pairs = sorted({(p.parent.parent.name, p.parent.name) for p in files})
    return [(d, e) for d, e in pairs if has_text_tower(layout.encoder(e)) and (layout.prepared(d) / SAMPLES).is_file()]


def retrieval_inputs(layout: RunLayout, pairs: list[tuple[str, str]]) -> dict[str, str]:
    """Hashes of what the retrieval table depends on: each encoder's projection heads (new with every
    pretraining) and each dataset's samples."""
    out = {}
    for dataset, encoder in pairs:
        for path in (layout.prepared(dataset) / SAMPLES, layout.encoder(encoder) / HEADS):
            out[f"retrieval:{layout.relative(path)}"] = file_hash(path)
    return out


def trained_sections(layout: RunLayout, encoder: str) -> tuple[str, ...]:
    """The report sections the encoder was pretrained on (its pretrain settings), else FINDINGS and IMPRESSION."""
    import json

    try:
        settings = json.loads((layout.encoder(encoder) / "manifest.json").read_text())["settings"]
        return tuple(s for s in settings.get("sections", STORED) if s in STORED) or STORED
    except (OSError, ValueError, KeyError, TypeError):
        return STORED


def retrieval_metrics(
    layout: RunLayout, pairs: list[tuple[str, str]], *, n_boot: int, seed: int, split: str = "test"
) -> pd.DataFrame:
    """recall@1/5/10 with bootstrap intervals per (dataset, encoder); pairs whose split has fewer than two
    distinct reports are left out."""
    import pyarrow.parquet as pq
    import torch
    import torch.nn.functional as F

    from cxrbench.adapt.features import read_features
    from cxrbench.adapt.zeroshot import text_tower
    from cxrbench.models.sources import resolve_encoder
    from cxrbench.stages.probe import features

    rows = []
    for dataset, encoder in pairs:
        prepared = load_prepared(layout, dataset)
        frame = prepared.split(split)
        sections = trained_sections(layout, encoder)
        texts = np.array(
            join_sections({s: frame[s].tolist() if s in frame else [None] * len(frame) for s in STORED}, sections),
            dtype=object,
        )
        frame, texts = frame[texts != ""], texts[texts != ""]
        distinct, target = np.unique(texts.astype(str), return_inverse=True)
        if len(distinct) < 2:
            continue
        spec = resolve_encoder(encoder, run=layout.root).require()
        size = int(prepared.manifest.settings["image"]["size"])
        _, path = features(layout, prepared, spec, input_size=size)
        ids, feats = read_features(pq.read_table(path))
        by_id = {s: i for i, s in enumerate(ids)}
        tower = text_tower(spec)
        with torch.no_grad():
            images = F.normalize(
                tower.image(torch.as_tensor(feats[[by_id[s] for s in frame["sample_id"]]])).float(), dim=-1
            )
            reports = torch.cat([tower.text(list(distinct[i : i + 64])).float() for i in range(0, len(distinct), 64)])
            similarity = (images @ F.normalize(reports, dim=-1).T).numpy()
        for row in recall_table(similarity, target, ks=KS, n_boot=n_boot, seed=seed):
            rows.append({"dataset": dataset, "encoder": encoder, "split": split, **row})
    return pd.DataFrame(rows, columns=list(COLUMNS))
