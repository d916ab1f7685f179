"""`probe --adaptation zeroshot` on the phantom run with a tiny open_clip checkpoint: its scores equal
open_clip's own text embeddings against the cached image features (an encoder pretrained here is
scored in tests/stages/test_image_text_stages.py)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F

from cxrbench.adapt.features import read_features
from cxrbench.adapt.zeroshot import SCALE
from cxrbench.models.sources import resolve_encoder
from cxrbench.rundir import layout_of
from tests.models.conftest import hub_cache, hub_repo  # noqa: F401 - fixtures
from tests.stages.conftest import ARCH, cli

open_clip = pytest.importorskip("open_clip")

MODEL_CFG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1},
}


def test_open_clip_zeroshot_scores_equal_open_clips_text_embeddings(run_copy, hub_repo, tmp_path) -> None:  # noqa: F811
    folder = tmp_path / "clip"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": MODEL_CFG}))
    torch.manual_seed(0)
    model = open_clip.model.CLIP(**MODEL_CFG).eval()
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    hub_repo("org/tiny-clip", folder)
    prompts = tmp_path / "prompts.toml"
    prompts.write_text('[nodule]\npositive = "A pulmonary nodule."\nnegative = "No nodule."\n')
    r = ("--run", str(run_copy))
    cli("probe", "--dataset", "synthetic", "--encoder", "open_clip:org/tiny-clip", "--adaptation", "zeroshot",
        "--prompts", str(prompts), *r)  # fmt: skip
    spec = resolve_encoder("open_clip:org/tiny-clip", run=run_copy)
    preds = pd.read_parquet(run_copy / "predictions" / "synthetic" / spec.folder / "zeroshot.parquet")
    ids, feats = read_features(pq.read_table(layout_of(run_copy).features("synthetic", spec.folder)))
    by_id = dict(zip(ids, feats, strict=True))
    tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=16)
    with torch.no_grad():
        text = F.normalize(model.encode_text(tokenizer(["A pulmonary nodule.", "No nodule."])), dim=-1)
    rows = preds[preds["label"] == "nodule"].head(20)
    for sample, score in zip(rows["sample_id"], rows["y_score"], strict=True):
        image = F.normalize(torch.as_tensor(by_id[sample]), dim=0)
        delta = float(image @ text[0] - image @ text[1])
        assert score == pytest.approx(1 / (1 + np.exp(-SCALE * delta)), rel=1e-4)
    assert set(preds["split"]) == {"val", "test"} and preds["label"].nunique() == 5


def test_encoders_without_a_text_tower_are_refused(run_copy, capsys) -> None:
    from cxrbench.cli import main

    with pytest.raises(SystemExit):
        main(["probe", "--dataset", "synthetic", "--encoder", "random", "--arch", ARCH, "--adaptation", "zeroshot",
              "--run", str(run_copy)])  # fmt: skip
    assert "has no text tower" in capsys.readouterr().err
