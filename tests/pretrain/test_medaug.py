"""MedAug: partners chosen per study/laterality criterion, drawn reproducibly by the batch loader,
the key taken from the partner, the loss falls, exact resume, and the CLI (errors, encoder probes)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from cxrbench.cli import main
from cxrbench.data.partners import find_partners, laterality
from cxrbench.engine.data import EpochBatches
from cxrbench.engine.distributed import Dist
from cxrbench.engine.loop import TrainConfig
from cxrbench.errors import CxrbenchError
from cxrbench.pretrain.medaug import Method
from cxrbench.pretrain.moco import Method as MoCo
from tests.pretrain.tiny import TinyEncoder, assert_resumes_exactly, images, losses_on_a_fixed_batch, step

#: patient A: two studies of a frontal + lateral / two frontals; B: one image; C: a study and a view unrecorded
TABLE = pd.DataFrame(
    {
        "patient_id": ["A", "A", "A", "A", "B", "C", "C"],
        "study_id": ["s1", "s1", "s2", "s2", "s3", None, "s4"],
        "view": ["PA", "LATERAL", "PA", "AP", "PA", "PA", None],
    }
)


def _partners(study: str, laterality: str):
    return find_partners(TABLE["patient_id"], TABLE["study_id"], TABLE["view"], study=study, side=laterality)


@pytest.mark.parametrize(
    ("study", "laterality", "want"),
    [
        ("same", "all", [{1}, {0}, {3}, {2}, set(), set(), set()]),
        ("distinct", "all", [{2, 3}, {2, 3}, {0, 1}, {0, 1}, set(), set(), set()]),
        ("all", "all", [{1, 2, 3}, {0, 2, 3}, {0, 1, 3}, {0, 1, 2}, set(), {6}, {5}]),
        ("all", "same", [{2, 3}, set(), {0, 3}, {0, 2}, set(), set(), set()]),
        ("all", "distinct", [{1}, {0, 2, 3}, {1}, {1}, set(), set(), set()]),
        ("same", "distinct", [{1}, {0}, set(), set(), set(), set(), set()]),
        ("distinct", "same", [{2, 3}, set(), {0}, {0}, set(), set(), set()]),
    ],
)
def test_partners_are_the_patients_other_images_meeting_both_criteria(study, laterality, want) -> None:
    partners = _partners(study, laterality)
    got = [set(partners.members[partners.offsets[i] : partners.offsets[i + 1]].tolist()) for i in range(len(TABLE))]
    assert got == want


def test_laterality_is_frontal_lateral_or_unknown() -> None:
    views = ["PA", "AP", "FRONTAL", "LATERAL", "LL", "RL", "XTABLE LATERAL", "LAO", None, float("nan")]
    want = ["frontal"] * 3 + ["lateral"] * 4 + [None] * 3
    assert laterality(views).tolist() == want


def test_a_patient_id_shared_by_too_many_images_is_refused(monkeypatch) -> None:
    import cxrbench.data.partners as partners

    monkeypatch.setattr(partners, "MAX_IMAGES_PER_PATIENT", 3)
    with pytest.raises(CxrbenchError, match="patient id 'A' has 4 images"):
        _partners("same", "all")


def test_draws_are_uniform_among_candidates_and_fall_back_to_the_image_itself() -> None:
    partners = _partners("distinct", "all")
    rng = np.random.default_rng(0)
    draws = np.stack([partners.draw(np.arange(7), rng) for _ in range(400)])
    assert (draws[:, 4:] == np.arange(4, 7)).all()  # no eligible partner: the image itself
    for row, candidates in enumerate([{2, 3}, {2, 3}, {0, 1}, {0, 1}]):
        values, counts = np.unique(draws[:, row], return_counts=True)
        assert set(values.tolist()) == candidates and counts.min() > 150  # about 200 each


def test_the_loader_reads_partner_images_reproducibly_and_the_same_under_any_sharding() -> None:
    n = 12
    pixels = np.repeat(np.arange(n, dtype=np.uint8)[:, None, None] * 10, 4, axis=1).repeat(4, axis=2)
    rows = np.arange(n)[::-1].copy()  # cache index of row i is n-1-i: partners are rows, read by cache index
    patients = np.repeat(["a", "b", "c", "d"], 3)
    partners = find_partners(patients, None, None, study="all", side="all")

    def loader(shard=None) -> EpochBatches:
        return EpochBatches(
            pixels, rows, seed=3, batch_size=6, epochs=2, drop_last=True, shard=shard, partners=partners
        )

    data = loader()
    for k in range(len(data)):
        epoch, step_, batch = data[k]
        idx = data.plan(epoch)[step_]
        got = batch["partner_images"][:, 0, 0].numpy() // 10  # the cache index of each partner image
        for i, cache in zip(idx, got, strict=True):
            partner = n - 1 - cache
            assert partner != i and patients[partner] == patients[i]
        again = loader()[k][2]["partner_images"]
        torch.testing.assert_close(again, batch["partner_images"], rtol=0, atol=0)
        halves = [loader(Dist(r, 2).shard)[k][2]["partner_images"] for r in range(2)]
        torch.testing.assert_close(torch.cat(halves), batch["partner_images"], rtol=0, atol=0)
    first = [data[k][2]["partner_images"] for k in range(data.steps_per_epoch)]
    second = [data[k + data.steps_per_epoch][2]["partner_images"] for k in range(data.steps_per_epoch)]
    assert any(not torch.equal(a, b) for a, b in zip(first, second, strict=True))  # drawn anew each epoch


def _medaug(cls=Method, **kwargs):
    torch.manual_seed(0)
    return cls(TinyEncoder(), **{"queue_size": 16, "projection_dim": 4, "momentum": 0.9, **kwargs})


def _batch(n: int = 6) -> dict:
    x = torch.from_numpy(images(2 * n)).unsqueeze(1).float() / 255
    return {"images": x[:n], "partner_images": x[n:]}


def test_the_key_is_a_view_of_the_partner_image_as_moco_computes_it() -> None:
    batch = _batch()
    medaug, moco = _medaug(), _medaug(MoCo, preset="moco-cxr")
    got = medaug.loss(batch, step(total=6)).value
    want = moco.contrast(batch["images"], batch["partner_images"], step(total=6)).value
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    itself = medaug.loss({**batch, "partner_images": batch["images"]}, step(total=6)).value
    torch.testing.assert_close(itself, moco.loss(batch, step(total=6)).value, rtol=0, atol=0)  # fallback = MoCo
    assert not torch.isclose(got, itself)


def test_loss_is_finite_and_falls_on_a_fixed_batch() -> None:
    method = _medaug(queue_size=64)
    method.enqueue = lambda keys: None  # as for MoCo: a queue of this batch's own keys would raise the loss
    losses = losses_on_a_fixed_batch(method, _batch(), steps=10)
    assert losses[-1] < losses[0]


def test_defaults_are_moco_cxr_and_the_paper_best_criteria() -> None:
    method = _medaug(queue_size=None, momentum=None)
    assert (method.study, method.laterality) == ("same", "all")
    assert method.queue.shape[0] == 24576 and method.views.brightness == 0
    from cxrbench.pretrain.base import train_config

    config = train_config(Method, {}, {})
    assert (config.lr, config.batch_size, config.epochs) == (1e-4, 16, 20)
    with pytest.raises(CxrbenchError, match="'same' or 'distinct' or 'all'"):
        Method.options({"study": "any"})


def test_a_killed_run_resumes_to_the_same_weights_and_queue(tmp_path) -> None:
    config = TrainConfig(epochs=2, batch_size=4, lr=1e-2, optimizer="sgd", drop_last=True)
    partners = find_partners(np.repeat(["a", "b", "c", "d"], 3), None, None, study="all", side="all")
    history = assert_resumes_exactly(tmp_path, lambda: _medaug(queue_size=10), config, partners=partners)
    assert len(history) == 2


def test_missing_metadata_for_a_criterion_is_a_one_line_error() -> None:
    rows = TABLE.assign(study_id=None)
    with pytest.raises(CxrbenchError, match="records no study_id; use --option study=all"):
        Method.partner_candidates(rows, {"study": "same"}, dataset="x")
    assert len(Method.partner_candidates(rows, {"study": "all"}, dataset="x")) == len(rows)


def _cli(*argv: str) -> None:
    try:
        main(list(argv))
    except SystemExit as exc:
        assert exc.code in (0, None), f"cxrbench {' '.join(argv)} exited {exc.code}"


@pytest.fixture
def quiet(monkeypatch):
    monkeypatch.setenv("CXRBENCH_QUIET", "1")
    monkeypatch.delenv("CXRBENCH_DEBUG", raising=False)


def test_pretrains_on_phantoms_and_the_encoder_probes(phantom_run: Path, tmp_path: Path, quiet) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(phantom_run, run)
    r = ("--run", str(run))
    options = ("--option", "queue_size=32", "--option", "study=all")
    _cli(
        "pretrain",
        "medaug",
        "--dataset",
        "synthetic",
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--arch",
        "resnet10t",
        *options,
        *r,
    )
    manifest = json.loads((run / "encoders/medaug-synthetic/manifest.json").read_text())
    samples = pd.read_parquet(run / "prepared/synthetic/samples.parquet")
    train = samples[samples["split"] == "train"]
    assert manifest["extra"]["images_with_partner"] == int(train["patient_id"].duplicated(keep=False).sum()) > 0
    assert manifest["settings"]["options"] == {"queue_size": 32, "study": "all"}
    assert all(np.isfinite(manifest["extra"]["loss_per_epoch"]))
    _cli("probe", "--dataset", "synthetic", "--encoder", "medaug-synthetic", *r)
    assert (run / "predictions/synthetic/medaug-synthetic/probe.parquet").is_file()


def test_a_dataset_without_patient_ids_is_a_one_line_error(tmp_path: Path, capsys, quiet) -> None:
    root = tmp_path / "folder"
    rng = np.random.default_rng(0)
    for label in ("normal", "abnormal"):
        (root / label).mkdir(parents=True)
        for i in range(6):  # no patients.csv: every image is its own patient
            Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(root / label / f"{label}{i}.png")
    r = ("--run", str(tmp_path / "run"))
    _cli("prepare", "folder", "--root", str(root), "--size", "16", "--views", "all", "--workers", "1", *r)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["pretrain", "medaug", "--dataset", "folder", "--epochs", "1", "--arch", "resnet10t", *r])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("cxrbench: error: ")
    assert "'folder' has one train image per patient id" in err and "chexpert" in err and "mimic-cxr" in err
    assert not (tmp_path / "run/encoders/medaug-folder").exists()
