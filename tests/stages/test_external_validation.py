"""External validation on phantoms from two synthetic sites: train on site a, test on site b."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from cxrbench.cli import main
from cxrbench.data.prepared import Prepared
from cxrbench.stages.probe import feature_lookup
from tests.stages.conftest import ARCH, cli

SHARED = {"cardiomegaly": "cardiomegaly", "pleural_effusion": "effusion", "nodule": "nodule"} | {
    "pneumothorax": "pneumothorax",
    "consolidation": "consolidation",
}  # site-a label -> finding key (the synthetic adapter's names through the table)


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Site a (80 patients) and site b (60 other patients, another acquisition), 32 px."""
    run = tmp_path_factory.mktemp("sites") / "run"
    common = ("--size", "32", "--workers", "1", "--run", str(run))
    cli("prepare", "synthetic", "--n-patients", "80", *common)
    cli("prepare", "synthetic", "--option", "site=b", "--name", "site-b", "--n-patients", "60", *common)
    return run


@pytest.fixture(scope="module")
def probed(sites: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("probed") / "run"
    shutil.copytree(sites, run)
    r = ("--run", str(run))
    cli("probe", "--dataset", "synthetic", "--test-dataset", "site-b", "--encoder", "random", "--arch", ARCH, *r)
    cli("evaluate", "--n-boot", "60", *r)
    cli("compare", "--baseline", "random", "--n-boot", "60", "--no-plots", *r)
    return run


def _samples(run: Path, name: str) -> pd.DataFrame:
    return pd.read_parquet(run / "prepared" / name / "samples.parquet")


def test_sites_differ_in_acquisition_and_patients_but_share_labels(sites: Path) -> None:
    a, b = _samples(sites, "synthetic"), _samples(sites, "site-b")
    assert not set(a["patient_id"]) & set(b["patient_id"])
    assert [c for c in a if c.startswith("label:")] == [c for c in b if c.startswith("label:")]
    manifest = json.loads((sites / "prepared/site-b/manifest.json").read_text())
    assert manifest["settings"]["dataset"] == "synthetic" and manifest["settings"]["name"] == "site-b"
    assert "name" not in json.loads((sites / "prepared/synthetic/manifest.json").read_text())["settings"]
    images = {n: np.load(sites / "prepared" / n / "cache/images.npy", mmap_mode="r") for n in ("synthetic", "site-b")}
    # site b: a flatter contrast (less spread within an image) and a burned-in marker top left
    spread = {n: float(im.astype(float).std(axis=(1, 2)).mean()) for n, im in images.items()}
    assert spread["site-b"] < 0.85 * spread["synthetic"]
    corner = {n: float(im[:, 1:4, 1:4].astype(float).mean()) for n, im in images.items()}
    assert corner["site-b"] > corner["synthetic"] + 40


def test_external_predictions_hold_training_val_and_external_test(probed: Path) -> None:
    path = probed / "predictions/site-b/random/probe@synthetic.parquet"
    preds = pd.read_parquet(path)
    a, b = _samples(probed, "synthetic"), _samples(probed, "site-b")
    val = preds[preds["split"] == "val"]
    test = preds[preds["split"] == "test"]
    assert set(val["sample_id"]) == set(a.loc[a["split"] == "val", "sample_id"])  # thresholds: training val
    assert set(test["sample_id"]) == set(b.loc[b["split"] == "test", "sample_id"])  # external test only
    assert sorted(preds["label"].unique()) == sorted(SHARED.values())  # named by finding
    # the harmonised label's targets are the external dataset's own column
    effusion = test[test["label"] == "effusion"].set_index("sample_id")["y_true"]
    truth = b.set_index("sample_id").loc[effusion.index, "label:pleural_effusion"]
    np.testing.assert_array_equal(effusion.to_numpy(), truth.to_numpy())
    manifest = json.loads(path.with_name("probe@synthetic.manifest.json").read_text())
    assert manifest["complete"] and manifest["settings"]["test_split"] == "test"
    assert ["effusion", "pleural_effusion", "pleural_effusion"] in manifest["settings"]["labels"]["pairs"]


def test_external_scores_match_sklearn_trained_on_site_a_only(probed: Path) -> None:
    """The probe of one shared label, refitted with scikit-learn at the chosen C on site a's train."""
    manifest = json.loads((probed / "predictions/site-b/random/probe@synthetic.manifest.json").read_text())
    C = manifest["extra"]["chosen_C"]["cardiomegaly"]
    a, b = _samples(probed, "synthetic"), _samples(probed, "site-b")
    xa = feature_lookup(next((probed / "features/synthetic").glob("*.parquet")))
    xb = feature_lookup(next((probed / "features/site-b").glob("*.parquet")))
    train = a[(a["split"] == "train") & a["label:cardiomegaly"].notna()]
    mean, std = xa(a[a["split"] == "train"]).mean(0), xa(a[a["split"] == "train"]).std(0)
    std[std == 0] = 1.0
    model = LogisticRegression(C=C, max_iter=5000, tol=1e-10).fit(
        (xa(train) - mean) / std, train["label:cardiomegaly"].to_numpy()
    )
    preds = pd.read_parquet(probed / "predictions/site-b/random/probe@synthetic.parquet")
    rows = preds[(preds["split"] == "test") & (preds["label"] == "cardiomegaly")]
    frame = b.set_index("sample_id").loc[rows["sample_id"]].reset_index()
    expected = model.predict_proba((xb(frame) - mean) / std)[:, 1]
    np.testing.assert_allclose(rows["y_score"].to_numpy(), expected, atol=2e-3)


def test_evaluate_and_compare_report_the_external_group_with_cis(probed: Path) -> None:
    metrics = pd.read_parquet(probed / "evaluation/metrics.parquet")
    assert set(metrics["dataset"]) == {"synthetic", "synthetic → site-b"}
    ext = metrics[
        (metrics["dataset"] == "synthetic → site-b") & (metrics["label"] == "mean") & (metrics["metric"] == "auc")
    ]
    assert len(ext) == 1 and ext["ci_low"].iloc[0] < ext["value"].iloc[0] < ext["ci_high"].iloc[0]
    # the Youden threshold of an external label is the training dataset's (same val rows)
    thr = metrics[metrics["metric"] == "threshold"].set_index(["dataset", "label"])["value"]
    assert thr[("synthetic → site-b", "effusion")] == pytest.approx(thr[("synthetic", "pleural_effusion")])
    table = (probed / "comparisons/synthetic-to-site-b.md").read_text()
    assert "synthetic → site-b: AUC [95% CI]" in table

    view = pd.read_parquet(probed / "comparisons/external.parquet")
    assert len(view) == 1
    row = view.iloc[0]
    assert (row["train"], row["test"], row["encoder"], row["adaptation"]) == ("synthetic", "site-b", "random", "probe")
    preds = {
        "internal": pd.read_parquet(probed / "predictions/synthetic/random/probe.parquet"),
        "external": pd.read_parquet(probed / "predictions/site-b/random/probe@synthetic.parquet"),
    }
    aucs = {}
    for where, frame in preds.items():
        test = frame[(frame["split"] == "test") & frame["y_true"].notna()]
        per = {}
        for label, rows in test.groupby("label"):
            key = SHARED.get(label, label)
            if rows["y_true"].nunique() == 2:
                per[key] = roc_auc_score(rows["y_true"], rows["y_score"])
        aucs[where] = per
    both = sorted(set(aucs["internal"]) & set(aucs["external"]))
    assert row["n_labels"] == len(both)
    assert row["internal_auc"] == pytest.approx(np.mean([aucs["internal"][k] for k in both]))
    assert row["external_auc"] == pytest.approx(np.mean([aucs["external"][k] for k in both]))
    assert row["drop"] == pytest.approx(row["internal_auc"] - row["external_auc"])
    assert row["drop_ci_low"] < row["drop"] < row["drop_ci_high"]
    human = (probed / "comparisons/external.md").read_text()
    assert "synthetic → site-b" in human and "internal AUC" in human and "drop" in human


def test_the_external_val_split_is_never_read(probed: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "run"
    shutil.copytree(probed, run)
    shutil.rmtree(run / "predictions/site-b")  # the external stage runs again (features are reused)
    read: list[tuple[str, str]] = []
    original = Prepared.split

    def spy(self: Prepared, name: str) -> pd.DataFrame:
        read.append((self.name, name))
        if self.name == "site-b" and name != "test":
            raise AssertionError(f"the external dataset's {name} split was read")
        return original(self, name)

    monkeypatch.setattr(Prepared, "split", spy)
    cli(
        "probe",
        "--dataset",
        "synthetic",
        "--test-dataset",
        "site-b",
        "--encoder",
        "random",
        "--arch",
        ARCH,
        "--run",
        str(run),
    )
    assert ("site-b", "test") in read and ("synthetic", "val") in read
    with pytest.raises(AssertionError, match="val split was read"):  # the spy does catch a read
        Prepared.split(_prepared(run, "site-b"), "val")


def _prepared(run: Path, name: str) -> Prepared:
    from cxrbench.data.prepared import load_prepared

    return load_prepared(run, name)


def test_test_split_all_scores_every_external_image(probed: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(probed, run)
    r = ("--run", str(run))
    cli(
        "probe",
        "--dataset",
        "synthetic",
        "--test-dataset",
        "site-b",
        "--test-split",
        "all",
        "--encoder",
        "random",
        "--arch",
        ARCH,
        *r,
    )
    preds = pd.read_parquet(run / "predictions/site-b/random/probe@synthetic.parquet")
    test = preds[preds["split"] == "test"]
    assert set(test["sample_id"]) == set(_samples(run, "site-b")["sample_id"])


def test_finetune_external_uses_the_selected_weights(sites: Path, tmp_path: Path, one_torch_thread) -> None:
    run = tmp_path / "run"
    shutil.copytree(sites, run)
    cli(
        "finetune", "--dataset", "synthetic", "--test-dataset", "site-b", "--encoder", "random", "--arch", ARCH,
        "--epochs", "1", "--batch-size", "32", "--optimizer", "adamw", "--lr", "0.001", "--run", str(run),
    )  # fmt: skip
    internal = pd.read_parquet(run / "predictions/synthetic/random/finetune.parquet")
    external = pd.read_parquet(run / "predictions/site-b/random/finetune@synthetic.parquet")
    # the training val rows of the external file are the internal model's own scores, relabelled
    a = internal[(internal["split"] == "val") & (internal["label"] == "pleural_effusion")].set_index("sample_id")
    b = external[(external["split"] == "val") & (external["label"] == "effusion")].set_index("sample_id")
    np.testing.assert_allclose(b["y_score"].to_numpy(), a.loc[b.index, "y_score"].to_numpy(), atol=1e-5)
    assert set(external.loc[external["split"] == "test", "patient_id"]) <= set(_samples(run, "site-b")["patient_id"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--test-dataset", "synthetic"), "it is the training dataset"),
        (("--test-dataset", "site-b", "--test-split", "val"), "--test-split 'val'"),
        (("--test-dataset", "site-b", "--test-dataset", "site-b"), "given twice"),
        (("--test-dataset", "chexpert"), "run `cxrbench prepare chexpert` first"),
        (("--test-dataset", "site-c"), "run `cxrbench prepare DATASET --name site-c` first"),
    ],
)
def test_bad_external_options_are_one_line_errors(
    sites: Path, args: tuple[str, ...], message: str, capsys: pytest.CaptureFixture
) -> None:
    before = sorted(p.relative_to(sites) for p in sites.rglob("*"))
    with pytest.raises(SystemExit) as exc:
        main(["probe", "--dataset", "synthetic", "--encoder", "random", "--arch", ARCH, "--run", str(sites), *args])
    assert exc.value.code != 0
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert sorted(p.relative_to(sites) for p in sites.rglob("*")) == before  # refused before any work


def test_labels_command_shows_shared_labels(sites: Path, capsys: pytest.CaptureFixture) -> None:
    cli("labels", "--dataset", "synthetic", "--dataset", "site-b", "--run", str(sites))
    shown = capsys.readouterr().out
    assert "synthetic → site-b" in shown and "effusion" in shown and "only in site-b: -" in shown
    cli("labels", "--dataset", "nih", "--dataset", "chexpert")
    shown = capsys.readouterr().out
    assert "pleural_effusion" in shown and "only in nih:" in shown and "hernia" in shown


@pytest.mark.parametrize("name", ["external", "summary", "nih-to-chexpert", "../x", "a b", ".hidden"])
def test_names_that_would_shadow_or_escape_are_refused(name: str) -> None:
    from cxrbench.errors import CxrbenchError
    from cxrbench.stages.prepare import check_name

    with pytest.raises(CxrbenchError, match="--name"):
        check_name(name)
    assert check_name("site-b") == "site-b"


def test_a_dataset_probed_itself_and_as_an_external_test_at_another_size_keeps_both_features(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # site b prepared at 48 px, site a at 32: as site a's external test set its images are encoded
    # at 32 px, probed on their own at 48; the two were one features file, extracted again each time
    run = tmp_path / "run"
    common = ("--workers", "1", "--run", str(run))
    cli("prepare", "synthetic", "--n-patients", "40", "--size", "32", *common)
    cli("prepare", "synthetic", "--option", "site=b", "--name", "site-b", "--n-patients", "30", "--size", "48", *common)
    r = ("--encoder", "random", "--arch", ARCH, "--run", str(run))
    external = ("probe", "--dataset", "synthetic", "--test-dataset", "site-b", *r)
    cli(*external)
    cli("probe", "--dataset", "site-b", *r)
    folder = run / "features" / "site-b"
    assert sorted(p.name for p in folder.glob("*.parquet")) == ["random.parquet", "random@32px.parquet"]
    own = json.loads((folder / "random.manifest.json").read_text())
    other = json.loads((folder / "random@32px.manifest.json").read_text())
    assert (own["settings"]["input_size"], other["settings"]["input_size"]) == (48, 32)

    import cxrbench.stages.probe as probe_stage

    def no_extraction(*args, **kwargs):
        raise AssertionError("features extracted again")

    monkeypatch.setattr(probe_stage, "extract_features", no_extraction)
    cli(*external)  # both again: each finds its features up to date
    cli("probe", "--dataset", "site-b", *r)
