"""A Hugging Face hub cache in tmp_path, laid out as the hub writes it, holding random timm weights."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch


def _write_blob(repo_dir: Path, snapshot: Path, filename: str, data: bytes) -> Path:
    """Store ``data`` as blobs/<sha256> and link snapshots/<rev>/<filename> to it, like the hub."""
    blob = repo_dir / "blobs" / hashlib.sha256(data).hexdigest()
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(data)
    link = snapshot / filename
    link.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(os.path.relpath(blob, link.parent), link)
    return link


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> Callable[[str], dict[str, torch.Tensor]]:
    """Point HF_HUB_CACHE at an empty cache (offline); calling the fixture with ``arch.tag``
    writes timm's random weights for it there and returns the state dict written."""
    from safetensors.torch import save_file

    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("CXRBENCH_WEIGHTS_DIR", raising=False)

    def add(model_id: str, *, seed: int = 1) -> dict[str, torch.Tensor]:
        import timm

        arch, tag = model_id.split(".", 1)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = timm.create_model(model_id, pretrained=False)
        state = {k: v.contiguous().clone() for k, v in model.state_dict().items()}
        repo_dir = cache / f"models--timm--{arch}.{tag}"
        revision = hashlib.sha1(model_id.encode()).hexdigest()
        (repo_dir / "refs").mkdir(parents=True)
        (repo_dir / "refs" / "main").write_text(revision)
        snapshot = repo_dir / "snapshots" / revision
        config = {
            "architecture": arch,
            "num_classes": model.num_classes,
            "num_features": model.num_features,
            "pretrained_cfg": {
                k: v for k, v in model.pretrained_cfg.items() if k in ("tag", "input_size", "mean", "std")
            },
        }
        _write_blob(repo_dir, snapshot, "config.json", json.dumps(config).encode())
        tmp = tmp_path / "weights.safetensors"
        save_file(state, str(tmp))
        _write_blob(repo_dir, snapshot, "model.safetensors", tmp.read_bytes())
        tmp.unlink()
        return state

    return add


@pytest.fixture(autouse=True)
def _one_torch_thread(one_torch_thread):
    """Every model test runs with one torch thread (see tests/conftest.py)."""


@pytest.fixture
def hub_repo(hub_cache) -> Callable[..., Path]:
    """Calling it with ``(repo, folder)`` copies a ``save_pretrained`` folder into the hub cache of
    ``hub_cache`` as the hub lays out a download (blobs, a snapshot, ``refs/<revision>``)."""

    def add(repo: str, folder: Path, *, revision: str = "main") -> Path:
        cache = Path(os.environ["HF_HUB_CACHE"])
        repo_dir = cache / f"models--{repo.replace('/', '--')}"
        commit = hashlib.sha1(f"{repo}@{revision}".encode()).hexdigest()
        (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
        (repo_dir / "refs" / revision).write_text(commit)
        snapshot = repo_dir / "snapshots" / commit
        for path in sorted(Path(folder).rglob("*")):
            if path.is_file():
                _write_blob(repo_dir, snapshot, str(path.relative_to(folder)), path.read_bytes())
        return snapshot

    return add


def assert_one_finetuning_step_trains(encoder) -> None:
    """Encoder + linear head: one SGD step gives every parameter a gradient and moves the backbone
    (what finetuning, and DDP's unused-parameter check, need of a source)."""
    from cxrbench.adapt.finetune import Classifier

    model = Classifier(encoder, 2).train()
    before = [p.detach().clone() for p in model.encoder.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    logits = model(torch.rand(2, 1, encoder.input_size, encoder.input_size))
    torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits)).backward()
    assert all(p.grad is not None for p in model.parameters())
    optimizer.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, model.encoder.parameters(), strict=True))
