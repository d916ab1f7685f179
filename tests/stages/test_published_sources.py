"""The published-model sources through the CLI on the phantom run: a tiny random ``hf:`` model is
probed and finetuned like any encoder; pretraining from it is refused before anything runs."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from cxrbench.models.sources import resolve_encoder
from tests.stages.conftest import cli


@pytest.fixture
def tiny_hf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A random 1-layer DINOv2 in ``$CXRBENCH_WEIGHTS_DIR/org/tiny-dino`` (offline, no hub cache)."""
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    folder = tmp_path / "weights" / "org" / "tiny-dino"
    torch.manual_seed(0)
    config = Dinov2Config(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, image_size=28, patch_size=14
    )
    Dinov2Model(config).save_pretrained(folder)
    BitImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}).save_pretrained(folder)
    monkeypatch.setenv("CXRBENCH_WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return "hf:org/tiny-dino#mean"


def test_hf_encoder_probes_and_finetunes_on_the_phantom_run(run_copy: Path, tiny_hf: str) -> None:
    r = ("--run", str(run_copy))
    folder = resolve_encoder(tiny_hf).folder
    cli("probe", "--dataset", "synthetic", "--encoder", tiny_hf, *r)
    features = pd.read_parquet(run_copy / "features" / "synthetic" / f"{folder}.parquet")
    assert len(features) > 0
    cli(
        "finetune",
        "--dataset",
        "synthetic",
        "--encoder",
        tiny_hf,
        "--epochs",
        "1",
        "--batch-size",
        "32",
        *r,
    )
    predictions = sorted(p.name for p in (run_copy / "predictions" / "synthetic" / folder).glob("*.parquet"))
    assert any(p.startswith("probe") for p in predictions) and any(p.startswith("finetune") for p in predictions)


def test_pretraining_from_an_adapter_source_is_refused_at_once(run_copy: Path, tiny_hf: str) -> None:
    from cxrbench.errors import CxrbenchError
    from cxrbench.stages.pretrain import pretrain

    with pytest.raises(CxrbenchError, match="pretraining from this source is not supported") as err:
        pretrain(run_copy, "simclr", dataset="synthetic", init=tiny_hf)
    assert "\n" not in err.value.message
    assert not (run_copy / "encoders" / "simclr").exists()


def test_mixed_sources_compare_in_one_table(run_copy: Path, tiny_hf: str, tmp_path: Path) -> None:
    import timm
    from safetensors.torch import save_file

    from tests.stages.conftest import ARCH

    weights = tmp_path / "mine.safetensors"
    torch.manual_seed(1)
    save_file(timm.create_model(ARCH, num_classes=0).state_dict(), str(weights))
    r = ("--run", str(run_copy))
    encoders = {"random": ("--arch", ARCH), tiny_hf: (), f"file:{weights}": ("--arch", ARCH)}
    for name, extra in encoders.items():
        cli("probe", "--dataset", "synthetic", "--encoder", name, *extra, *r)
    cli("evaluate", "--n-boot", "20", *r)
    cli("compare", "--baseline", "random", "--n-boot", "20", "--no-plots", *r)
    table = pd.read_parquet(run_copy / "comparisons" / "synthetic.parquet")
    folders = {resolve_encoder(n, arch=ARCH if n != tiny_hf else None).folder for n in encoders if n != "random"}
    assert set(table["encoder"]) == folders and len(folders) == 2
    assert table["delta"].notna().all()
