"""CT downstream in evaluate/compare on phantoms: study-level PE predictions (max/mean of the slice
scores), attribute probes (middle slice per study, age bins and sex) with the bias table, and on a
synthetic CXR dataset; one-line errors for missing attributes and bad options."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from cxrbench.data.samples import LabelPolicy
from cxrbench.data.transforms import Preprocess
from cxrbench.errors import CxrbenchError
from cxrbench.stages.attributes import attribute_probe
from cxrbench.stages.compare import compare
from cxrbench.stages.evaluate import evaluate
from cxrbench.stages.prepare import prepare
from cxrbench.stages.probe import probe

ARCH = "resnet10t"
CT = "synthetic-ct"


def _other_encoder(folder: Path) -> str:
    """A second offline encoder: resnet10t with other random weights, as ``file:PATH``."""
    from safetensors.torch import save_file

    from cxrbench.models.sources.base import build_timm

    torch.manual_seed(1)
    model = build_timm(ARCH, input_size=32, pretrained=False)
    path = folder / "other.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return f"file:{path}"


@pytest.fixture(scope="module")
def ct_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """synthetic-ct (20 studies, 32 px) with slice probes of two encoders at fractions 0.5 and 1 and
    age/sex attribute probes of both."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    base = tmp_path_factory.mktemp("ct")
    run = base / "run"
    prepare(
        run, CT, root=None, options={"n_patients": 20, "phantom_size": 32}, image=Preprocess(size=32),
        policy=LabelPolicy(split=(0.4, 0.3, 0.3)), workers=0,
    )  # fmt: skip
    other = _other_encoder(base)
    for encoder in ("random", other):
        for fraction in (0.5, 1.0):
            probe(run, dataset=CT, encoder=encoder, arch=ARCH, fraction=fraction, device="cpu", max_iter=50)
        for target in ("age", "sex"):
            attribute_probe(run, dataset=CT, encoder=encoder, target=target, arch=ARCH, device="cpu", max_iter=50)
    torch.set_num_threads(threads)
    return run, other


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    yield


@pytest.fixture
def run(ct_run: tuple[Path, str], tmp_path: Path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(ct_run[0], target)
    return target


def _study_of(run: Path) -> pd.Series:
    samples = pd.read_parquet(run / "prepared" / CT / "samples.parquet")
    return samples.set_index("sample_id")["study_id"]


@pytest.mark.parametrize("aggregate", ["max", "mean"])
def test_study_level_predictions_aggregate_the_slices_of_each_study(run: Path, aggregate: str) -> None:
    evaluate(run, n_boot=30, study_aggregate=aggregate)  # the slices' own metrics are evaluated as before
    slices = pd.read_parquet(run / "predictions" / CT / "random" / "probe.parquet")
    studies = pd.read_parquet(run / "predictions" / f"{CT}+study" / "random" / "probe.parquet")
    slices["study"] = slices["sample_id"].map(_study_of(run))
    want = slices.groupby("study").agg(
        y_true=("y_true", "max"), y_score=("y_score", aggregate), split=("split", "first")
    )
    got = studies.set_index("sample_id").loc[want.index]
    assert got["y_true"].tolist() == want["y_true"].tolist()
    assert got["y_score"].to_numpy() == pytest.approx(want["y_score"].to_numpy())
    assert got["split"].tolist() == want["split"].tolist() and len(studies) == slices["study"].nunique()
    metrics = pd.read_parquet(run / "evaluation" / "metrics.parquet")
    study = metrics[(metrics["dataset"] == f"{CT}+study") & (metrics["label"] == "pe_present_on_image")]
    assert {"auc", "sensitivity", "specificity", "threshold"} <= set(study["metric"])
    assert set(study["fraction"]) == {0.5, 1.0}
    test = got[got["split"] == "test"]
    auc = study[(study["encoder"] == "random") & (study["metric"] == "auc") & (study["fraction"] == 1.0)]
    from sklearn.metrics import roc_auc_score

    assert auc["value"].iloc[0] == pytest.approx(roc_auc_score(test["y_true"], test["y_score"]))


def test_study_aggregate_none_removes_the_study_level_and_bad_values_are_refused(run: Path) -> None:
    evaluate(run, n_boot=30)
    assert (run / "predictions" / f"{CT}+study").is_dir()
    evaluate(run, n_boot=30, study_aggregate="none")
    assert not (run / "predictions" / f"{CT}+study").exists()
    metrics = pd.read_parquet(run / "evaluation" / "metrics.parquet")
    assert f"{CT}+study" not in set(metrics["dataset"])
    with pytest.raises(CxrbenchError, match="--study-aggregate 'median'"):
        evaluate(run, n_boot=30, study_aggregate="median")


def test_attribute_probes_use_the_middle_slice_of_each_study(run: Path) -> None:
    samples = pd.read_parquet(run / "prepared" / CT / "samples.parquet")
    preds = pd.read_parquet(run / "predictions" / f"{CT}+age" / "random" / "attr.parquet")
    picked = samples.set_index("sample_id").loc[preds["sample_id"].unique()]
    assert picked["study_id"].is_unique and set(picked["split"]) == {"val", "test"}
    sizes = samples.groupby("series_id")["slice_index"].size()
    assert (picked["slice_index"] == sizes.loc[picked["series_id"]].to_numpy() // 2).all()
    bins = sorted({f"age_{int(a // 10 * 10)}-{int(a // 10 * 10) + 9}" for a in samples["age"]})
    assert sorted(preds["label"].unique()) == bins
    truth = preds.pivot(index="sample_id", columns="label", values="y_true")
    assert (truth.sum(axis=1) == 1).all()  # one-hot age bins
    sex = pd.read_parquet(run / "predictions" / f"{CT}+sex" / "random" / "attr.parquet")
    want = (picked.loc[sex["sample_id"], "sex"] == "F").astype(float).to_numpy()
    assert sex["label"].unique().tolist() == ["female"] and sex["y_true"].tolist() == want.tolist()


def test_ct_attribute_probes_extract_features_of_their_slices_only_when_no_slice_has_any(run: Path) -> None:
    from cxrbench.adapt.features import read_features

    folder = run / "features" / CT
    # after the slice probe (the fixture's order) the attribute probes used its features of every slice
    assert not list(folder.glob("*@attribute-slices.parquet"))
    manifest = json.loads((run / "predictions" / f"{CT}+sex" / "random" / "attr.manifest.json").read_text())
    assert f"features/{CT}/random.parquet" in manifest["inputs"]
    full_ids, full = read_features(pq.read_table(folder / "random.parquet"))
    preds = pd.read_parquet(run / "predictions" / f"{CT}+sex" / "random" / "attr.parquet")
    # alone (no slice probe, features removed): only the attribute slices are extracted, same features
    shutil.rmtree(folder)
    shutil.rmtree(run / "predictions" / f"{CT}+sex")
    attribute_probe(run, dataset=CT, encoder="random", target="sex", arch=ARCH, device="cpu", max_iter=50)
    assert sorted(p.name for p in folder.glob("*.parquet")) == ["random@attribute-slices.parquet"]
    ids, feats = read_features(pq.read_table(folder / "random@attribute-slices.parquet"))
    samples = pd.read_parquet(run / "prepared" / CT / "samples.parquet").set_index("sample_id")
    assert set(preds["sample_id"]) <= set(ids) and len(ids) == samples["study_id"].nunique()
    by_id = {s: i for i, s in enumerate(full_ids)}
    np.testing.assert_allclose(feats, full[[by_id[s] for s in ids]], rtol=1e-4, atol=1e-5)
    again = pd.read_parquet(run / "predictions" / f"{CT}+sex" / "random" / "attr.parquet")
    pd.testing.assert_frame_equal(again, preds, atol=1e-5)
    # a slice probe afterwards does not make the attribute probe redo what its own features gave
    probe(run, dataset=CT, encoder="random", arch=ARCH, fraction=1.0, device="cpu", max_iter=50)
    assert (folder / "random.parquet").is_file()
    done = attribute_probe(run, dataset=CT, encoder="random", target="sex", arch=ARCH, device="cpu", max_iter=50)
    assert (
        done.key == json.loads((run / "predictions" / f"{CT}+sex" / "random" / "attr.manifest.json").read_text())["key"]
    )
    pd.testing.assert_frame_equal(pd.read_parquet(run / "predictions" / f"{CT}+sex" / "random" / "attr.parquet"), again)


def test_compare_gives_study_level_deltas_ct_label_efficiency_and_the_bias_table(run: Path) -> None:
    evaluate(run, n_boot=30)
    compare(run, baseline="random", n_boot=30)
    table = pd.read_parquet(run / "comparisons" / f"{CT}+study.parquet")
    assert set(table["fraction"]) == {0.5, 1.0} and (table["label"] == "pe_present_on_image").any()
    assert (run / "comparisons" / f"{CT}+study.md").is_file()
    for dataset in (CT, f"{CT}+study"):
        assert (run / "comparisons" / "plots" / f"{dataset}-efficiency.png").is_file()
    bias = pd.read_parquet(run / "comparisons" / "bias.parquet")
    assert set(bias["attribute"]) == {"age", "sex"} and set(bias["dataset"]) == {CT}
    assert (bias["encoder"] == "random").sum() == 2
    other = bias[bias["encoder"] != "random"]
    assert len(other) == 2 and other["Δ vs random [CI]"].str.contains(r"\[").all()
    table = pd.read_parquet(run / "comparisons" / f"{CT}+sex.parquet")
    mean = table[table["label"] == "mean"].iloc[0]
    assert other[other["attribute"] == "sex"]["AUC [CI]"].iloc[0].startswith(f"{mean['auc']:.3f}")
    for fmt in ("md", "csv", "tex", "html"):
        assert (run / "comparisons" / f"bias.{fmt}").is_file()
    summary = pd.read_parquet(run / "comparisons" / "summary.parquet")
    assert not summary.astype(str).apply(lambda c: c.str.contains(r"\+(age|sex)")).any().any()
    # another baseline: the bias table is still against random, from the same shared replicates
    (folder,) = set(bias["encoder"]) - {"random"}
    compare(run, baseline=folder, n_boot=30, plots=False)
    pd.testing.assert_frame_equal(pd.read_parquet(run / "comparisons" / "bias.parquet"), bias)


def test_a_missing_attribute_is_a_one_line_error(run: Path) -> None:
    with pytest.raises(CxrbenchError, match=r"dataset 'synthetic-ct' records no race \(it has: age, sex\)"):
        attribute_probe(run, dataset=CT, encoder="random", target="race", arch=ARCH, device="cpu")
    with pytest.raises(CxrbenchError, match="--target 'height'"):
        attribute_probe(run, dataset=CT, encoder="random", target="height", arch=ARCH, device="cpu")


def test_attribute_probes_work_on_a_cxr_dataset_with_age_and_sex(tmp_path: Path) -> None:
    run = tmp_path / "run"
    prepare(run, "synthetic", root=None, options={"n_patients": 40}, image=Preprocess(size=32), workers=0)
    attribute_probe(run, dataset="synthetic", encoder="random", target="sex", arch=ARCH, device="cpu", max_iter=30)
    samples = pd.read_parquet(run / "prepared" / "synthetic" / "samples.parquet")
    preds = pd.read_parquet(run / "predictions" / "synthetic+sex" / "random" / "attr.parquet")
    scored = samples[samples["split"].isin(["val", "test"])]
    assert sorted(preds["sample_id"]) == sorted(scored["sample_id"])  # every image: no series to pick from
    assert np.isin(preds["y_true"], [0.0, 1.0]).all()


def test_the_cli_probes_attributes_and_sets_the_study_aggregate(run: Path, capsys, monkeypatch) -> None:
    from tests.stages.conftest import cli

    monkeypatch.setenv("CXRBENCH_QUIET", "1")
    cli("probe", "--dataset", CT, "--encoder", "random", "--arch", ARCH, "--target", "sex", "--run", str(run))
    cli("evaluate", "--n-boot", "20", "--study-aggregate", "mean", "--run", str(run))
    manifest = pd.read_json(run / "evaluation" / "manifest.json", typ="series")
    assert manifest["settings"]["study_aggregate"] == "mean"
    capsys.readouterr()
    from cxrbench.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["probe", "--dataset", CT, "--encoder", "random", "--arch", ARCH, "--target", "race", "--run", str(run)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1 and "records no race" in err


def test_race_is_probed_where_a_csv_dataset_records_it(tmp_path: Path) -> None:
    from PIL import Image

    root = tmp_path / "data"
    (root / "img").mkdir(parents=True)
    rng = np.random.default_rng(0)
    races = ["White", "Black", "Asian"]
    lines = ["path,patient,finding,race"]
    for i in range(36):
        Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)).save(root / "img" / f"{i}.png")
        race = "" if i == 5 else races[i % 3]
        lines.append(f"img/{i}.png,p{i},{i % 2},{race}")
    (root / "meta.csv").write_text("\n".join(lines) + "\n")
    run = tmp_path / "run"
    options = {"csv": "meta.csv", "path_column": "path", "patient_column": "patient"}
    prepare(run, "csv", root=root, options=options, image=Preprocess(size=32), workers=0,
            policy=LabelPolicy(views="all"))  # fmt: skip
    attribute_probe(run, dataset="csv", encoder="random", target="race", arch=ARCH, device="cpu", max_iter=30)
    preds = pd.read_parquet(run / "predictions" / "csv+race" / "random" / "attr.parquet")
    assert sorted(preds["label"].unique()) == ["race_asian", "race_black", "race_white"]
    samples = pd.read_parquet(run / "prepared" / "csv" / "samples.parquet").set_index("sample_id")
    truth = preds.pivot(index="sample_id", columns="label", values="y_true")
    recorded = samples.loc[truth.index, "race"]
    for sample, race in recorded.items():
        if race is None:
            assert truth.loc[sample].isna().all()  # unknown race: left out of the probe's AUCs
        else:
            assert truth.loc[sample].idxmax() == f"race_{race.lower()}" and truth.loc[sample].sum() == 1
