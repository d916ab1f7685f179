"""`cxrbench export`: a tiny phantom suite exported, checked file by file and opened in headless Chromium."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pandas as pd
import pytest

from cxrbench import __version__
from cxrbench.cli import main
from cxrbench.config import get_suite, load_config
from cxrbench.stages.suite import _fingerprint, run_suite
from tests.stages.conftest import cli

SUITE = """
[suites.tiny]
description = "phantoms <i>tiny</i> & \\"quick\\""
datasets = ["synthetic"]
encoders = ["random", "simclr"]
baseline = "random"
adaptations = ["probe"]
fractions = [0.5, 1.0]
seeds = [0, 1]
arch = "resnet10t"
[suites.tiny.prepare.synthetic]
n_patients = 80
size = 32
[suites.tiny.pretrain.simclr]
method = "simclr"
dataset = "synthetic"
epochs = 1
batch_size = 32
[suites.tiny.evaluate]
n_boot = 50
[suites.tiny.compare]
n_boot = 50
"""
CHROMIUM = Path(os.environ.get("CXRBENCH_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
)


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(run, config) of the tiny suite run to the end: 2 encoders x 2 label fractions x 2 seeds, probe only."""
    import torch

    home = tmp_path_factory.mktemp("export")
    config = home / "benchmarks.toml"
    config.write_text(SUITE)
    # the suite's prepare finds this one up to date (same settings); one decoding process, not a spawn pool
    cli("prepare", "synthetic", "--n-patients", "80", "--size", "32", "--workers", "1", "--run", str(home / "run"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_suite(home / "run", get_suite("tiny", config))
    finally:
        torch.set_num_threads(threads)
    return home / "run", config


@pytest.fixture(scope="module")
def bundle(finished: tuple[Path, Path]) -> Path:
    run, config = finished
    out = run.parent / "supplement"
    cli("export", "--suite", "tiny", "--config", str(config), "--run", str(run), str(out))
    return out


def _error(capsys: pytest.CaptureFixture, *args: str) -> str:
    with pytest.raises(SystemExit) as exc:
        main(list(args))
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cxrbench: error: ") and "\n" not in err
    return err


def _export_args(finished: tuple[Path, Path], out: Path) -> tuple[str, ...]:
    run, config = finished
    return ("export", "--suite", "tiny", "--config", str(config), "--run", str(run), str(out))


# --------------------------------------------------------------------------- the files


def test_bundle_copies_the_stage_outputs_unchanged_and_checksums_every_file(finished, bundle: Path) -> None:
    run, _ = finished
    compare = json.loads((run / "comparisons/manifest.json").read_text())
    evaluate = json.loads((run / "evaluation/manifest.json").read_text())
    copied = {**compare["outputs"], **evaluate["outputs"]}
    assert any(rel.endswith(".png") for rel in copied) and "evaluation/metrics.parquet" in copied
    for rel in copied:
        assert (bundle / rel).read_bytes() == (run / rel).read_bytes(), rel

    listed = {}
    for line in (bundle / "SHA256SUMS").read_text().splitlines():
        digest, rel = line.split("  ", 1)
        listed[rel] = digest
    on_disk = {p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file()}
    assert set(listed) == on_disk - {"SHA256SUMS"}
    for rel, digest in listed.items():
        assert hashlib.sha256((bundle / rel).read_bytes()).hexdigest() == digest, rel
    if shutil.which("sha256sum"):
        subprocess.run(["sha256sum", "--quiet", "-c", "SHA256SUMS"], cwd=bundle, check=True)

    metrics = pd.read_parquet(bundle / "evaluation/metrics.parquet")
    pd.testing.assert_frame_equal(pd.read_csv(bundle / "evaluation/metrics.csv"), metrics, check_dtype=False)


def test_manifests_cover_every_step_and_what_they_read(finished, bundle: Path) -> None:
    run, _ = finished
    record = json.loads((run / "suites/tiny.json").read_text())
    exported = {}
    for path in (bundle / "manifests").rglob("*manifest.json"):
        manifest = json.loads(path.read_text())
        rel = path.relative_to(bundle / "manifests").as_posix()
        assert path.read_bytes() == (run / rel).read_bytes()
        exported[manifest["key"]] = manifest
    assert set(record["keys"].values()) <= set(exported)
    assert {m["stage"] for m in exported.values()} >= {"prepare", "pretrain", "features", "probe", "evaluate"}
    # every input of an exported manifest that some stage made comes with that stage's manifest
    made = {(rel, d) for m in exported.values() for rel, d in m["outputs"].items()}
    for manifest in exported.values():
        for rel, digest in manifest["inputs"].items():
            if rel.startswith(("features/", "encoders/", "predictions/", "evaluation/")):
                assert (rel, digest) in made, rel
    assert (bundle / "manifests/suites/tiny.json").read_bytes() == (run / "suites/tiny.json").read_bytes()
    marker = json.loads((bundle / "export.json").read_text())
    assert marker["format"] == "cxrbench-export" and marker["steps"] == record["keys"]


def test_suite_toml_reads_back_to_the_same_suite(finished, bundle: Path) -> None:
    _, config = finished
    original = get_suite("tiny", config)
    again = load_config(bundle / "suite.toml")["tiny"]
    assert again == original
    assert _fingerprint(again) == _fingerprint(original)
    commands = (bundle / "commands.sh").read_text()
    assert "cxrbench run --suite tiny --config" in commands and "suite.toml" in commands


def test_suite_toml_round_trips_awkward_values(tmp_path: Path) -> None:
    from cxrbench.config import DatasetSpec, PretrainSpec, Suite
    from cxrbench.stages.export import suite_toml

    suite = Suite(
        name="odd name.v2",
        description='quotes " and \\ and\nnewline\ttab \x7f é',
        datasets=(DatasetSpec("csv", "/data/with space/ü", {"label_columns": ["a b", "c"], "split": "70/10/20"}),),
        encoders=("random", "file:/w/enc [1].pt", "moco"),
        baseline="random",
        fractions=(0.01, 1.0),
        seeds=(0, 1),
        pretrain={"moco": PretrainSpec("moco", "moco", "csv", {"lr": 1e-05, "temperature": 0.2, "nested": {"k": 1}})},
        finetune={"recipe": "vit", "patience": 3, "amp": False},
        compare={"alpha": 0.01, "plots": False},
    )
    path = tmp_path / "suite.toml"
    path.write_text(suite_toml(suite))
    assert load_config(path)["odd name.v2"] == suite


def test_bundle_has_the_environment(bundle: Path) -> None:
    from importlib import metadata

    env = json.loads((bundle / "environment.json").read_text())
    assert env["versions"]["cxrbench"] == __version__
    assert env["versions"]["torch"] == metadata.version("torch")
    assert env["python"].count(".") == 2 and env["platform"]
    freeze = dict(line.split("==", 1) for line in (bundle / "requirements.txt").read_text().splitlines())
    assert freeze["numpy"] == metadata.version("numpy") and freeze["torch"] == metadata.version("torch")
    # the versions the stages ran with, from their manifests
    assert set(env["stages"]["torch"]) == {metadata.version("torch")}


def test_export_with_predictions_copies_them(finished, tmp_path: Path) -> None:
    run, _ = finished
    out = tmp_path / "with-predictions"
    cli(*_export_args(finished, out), "--predictions")
    copied = sorted(p.relative_to(out).as_posix() for p in (out / "predictions").rglob("*.parquet"))
    assert copied == sorted(p.relative_to(run).as_posix() for p in (run / "predictions").rglob("*.parquet"))
    assert len(copied) == 8
    for rel in copied:
        assert (out / rel).read_bytes() == (run / rel).read_bytes()


# --------------------------------------------------------------------------- where it may write


def test_refuses_a_folder_that_is_not_an_export(finished, tmp_path: Path, capsys) -> None:
    out = tmp_path / "papers"
    out.mkdir()
    (out / "draft.tex").write_text("keep me")
    err = _error(capsys, *_export_args(finished, out))
    assert "not empty and not an earlier cxrbench export" in err
    assert [p.name for p in out.iterdir()] == ["draft.tex"]
    (tmp_path / "file").write_text("x")
    assert "is not a folder" in _error(capsys, *_export_args(finished, tmp_path / "file"))
    run, _ = finished
    assert "inside the run directory" in _error(capsys, *_export_args(finished, run / "export"))
    assert "holds the run directory" in _error(capsys, *_export_args(finished, run.parent))
    assert not list(tmp_path.glob(".*tmp-*"))


def test_replaces_an_earlier_export_and_an_empty_folder(finished, tmp_path: Path) -> None:
    out = tmp_path / "empty"
    out.mkdir()
    cli(*_export_args(finished, out))
    assert (out / "index.html").is_file()
    (out / "stale.txt").write_text("from the earlier export")
    cli(*_export_args(finished, out))
    assert not (out / "stale.txt").exists() and (out / "index.html").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["empty"]  # no temporary folder left


def test_failed_export_leaves_the_earlier_one_and_no_temporary(finished, tmp_path: Path, monkeypatch) -> None:
    from cxrbench.report import site

    out = tmp_path / "bundle"
    cli(*_export_args(finished, out))
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    dead = tmp_path / ".bundle.tmp-999999999"  # left by a killed export (no such pid)
    (dead / "new").mkdir(parents=True)

    def broken(page):
        raise RuntimeError("disk full")

    monkeypatch.setattr(site, "render_page", broken)
    with pytest.raises(SystemExit):
        main(list(_export_args(finished, out)))
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]


def test_refuses_an_unfinished_or_changed_suite(finished, tmp_path: Path, capsys) -> None:
    run, config = finished
    other = tmp_path / "other.toml"
    other.write_text(SUITE.replace("n_boot = 50\n[suites.tiny.compare]", "n_boot = 60\n[suites.tiny.compare]"))
    out = str(tmp_path / "out")
    assert "changed since it ran" in _error(
        capsys, "export", "--suite", "tiny", "--config", str(other), "--run", str(run), out
    )
    (tmp_path / "new-run").mkdir()
    err = _error(capsys, "export", "--suite", "tiny", "--config", str(config), "--run", str(tmp_path / "new-run"), out)
    assert "has not finished" in err and "cxrbench run --suite tiny" in err

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    table = copy / "comparisons/synthetic.csv"
    table.write_text(table.read_text().replace("0.", "1.", 1))
    err = _error(capsys, "export", "--suite", "tiny", "--config", str(config), "--run", str(copy), str(tmp_path / "o"))
    assert "run `cxrbench run --suite tiny` first" in err and "synthetic.csv" in err
    assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------------- in a browser

PROBE = """
<script>
window.addEventListener("load", () => {
  const cells = (row) => [...row.cells].map((c) => c.innerText.trim());
  const result = {
    images: [...document.images].map((i) => ({
      src: i.getAttribute("src"), url: i.src, complete: i.complete, width: i.naturalWidth, height: i.naturalHeight,
    })),
    links: [...document.querySelectorAll("a[href]")].map((a) => {
      const href = a.getAttribute("href");
      return {href, url: a.href, target: href.startsWith("#") ? !!document.getElementById(href.slice(1)) : null};
    }),
    tables: [...document.querySelectorAll("table.cxrbench")].map((t) => ({
      caption: t.caption ? t.caption.innerText.trim() : "",
      head: cells(t.tHead.rows[0]),
      rows: [...t.tBodies[0].rows].map(cells),
      visible: t.getBoundingClientRect().height > 0,
    })),
    scripts: document.scripts.length,
    facts: Object.fromEntries([...document.querySelectorAll("dl dt")].map((dt) => [dt.innerText, dt.nextElementSibling.innerText])),
    italics: document.querySelectorAll("i").length,
    title: document.title,
  };
  const pre = document.createElement("pre");
  pre.id = "probe-result";
  pre.textContent = JSON.stringify(result);
  document.body.appendChild(pre);
});
</script>
"""


class _Pre(HTMLParser):
    """The text of ``<pre id="probe-result">`` in a dumped DOM."""

    def __init__(self) -> None:
        super().__init__()
        self.inside, self.text = False, ""

    def handle_starttag(self, tag, attrs):
        self.inside = tag == "pre" and ("id", "probe-result") in attrs

    def handle_endtag(self, tag):
        self.inside = False

    def handle_data(self, data):
        if self.inside:
            self.text += data


@pytest.fixture(scope="module")
def chromium() -> Path:
    """Debian's chromium (or $CXRBENCH_CHROMIUM); the browser tests are skipped without it."""
    if not CHROMIUM.is_file():
        pytest.skip(f"no headless browser: {CHROMIUM} is not installed (apt-get install chromium)")
    return CHROMIUM


def _chromium(*args: str, profile: Path) -> subprocess.CompletedProcess:
    command = [str(CHROMIUM), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=True)


@pytest.fixture(scope="module")
def rendered(chromium: Path, bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """The bundle moved elsewhere, its page loaded by Chromium; (moved folder, what the page showed)."""
    moved = tmp_path_factory.mktemp("moved") / "supplement copy #1"  # a space and a # in the path
    shutil.copytree(bundle, moved)
    page = (moved / "index.html").read_text()
    assert "<script" not in page
    (moved / "probe.html").write_text(page.replace("</body>", PROBE + "</body>"))
    done = _chromium(
        "--virtual-time-budget=10000", "--dump-dom", moved.joinpath("probe.html").as_uri(), profile=moved.parent / "p"
    )
    parser = _Pre()
    parser.feed(done.stdout)
    assert parser.text, f"the probe script left no result; chromium said: {done.stderr[-2000:]}"
    return moved, json.loads(parser.text)


def test_every_image_loads_at_its_size(rendered) -> None:
    from PIL import Image

    moved, shown = rendered
    pngs = sorted(p.relative_to(moved).as_posix() for p in (moved / "comparisons/plots").glob("*.png"))
    assert len(pngs) == 7  # forest, label efficiency, one ROC per finding
    assert sorted(unquote(i["src"]) for i in shown["images"]) == pngs
    for image in shown["images"]:
        assert image["complete"] and image["width"] > 0, image
        with Image.open(moved / unquote(image["src"])) as png:
            assert (image["width"], image["height"]) == png.size


def test_no_broken_or_outside_links(rendered) -> None:
    moved, shown = rendered
    files = 0
    for link in shown["links"]:
        if link["href"].startswith("#"):
            assert link["target"], link
            continue
        url = urlparse(link["url"])
        assert url.scheme == "file", link
        path = Path(unquote(url.path))
        assert path.is_file(), link
        assert path.resolve().is_relative_to(moved.resolve()), link
        files += 1
    on_disk = {p.relative_to(moved).as_posix() for p in moved.rglob("*") if p.is_file()} - {"probe.html"}
    linked = {
        Path(unquote(urlparse(link["url"]).path)).relative_to(moved).as_posix()
        for link in shown["links"]
        if not link["href"].startswith("#")
    }
    assert on_disk - {"index.html"} <= linked  # the Files section reaches every file


def _cell(value, low, high, significant=False) -> str:
    text = [f"{v:.3f}".replace("-0.000", "0.000") for v in (value, low, high)]
    return f"{text[0]} [{text[1]}, {text[2]}]" + ("*" if significant else "")


def test_tables_show_the_parquet_numbers(rendered, finished) -> None:
    run, _ = finished
    moved, shown = rendered
    tables = {t["caption"]: t for t in shown["tables"]}
    assert all(t["visible"] for t in tables.values())
    table = tables["synthetic: AUC [95% CI] and difference vs random"]
    head = table["head"]
    assert head[:5] == ["encoder", "adaptation", "fraction", "seed", "statistic"] and head[-1] == "mean"
    rows = {tuple(r[:5]): dict(zip(head[5:], r[5:], strict=True)) for r in table["rows"]}

    comparison = pd.read_parquet(run / "comparisons/synthetic.parquet")
    assert len(comparison) == 2 * 2 * 6  # simclr at two fractions x two seeds x (5 findings + mean)
    for rec in comparison.itertuples():
        key = (rec.encoder, rec.adaptation, f"{rec.fraction:g}", str(rec.seed))
        assert rows[(*key, "AUC [CI]")][rec.label] == _cell(rec.auc, rec.auc_ci_low, rec.auc_ci_high)
        delta = _cell(rec.delta, rec.delta_ci_low, rec.delta_ci_high, rec.significant)
        assert rows[(*key, "Δ AUC [CI]")][rec.label] == delta
    metrics = pd.read_parquet(run / "evaluation/metrics.parquet")
    base = metrics[(metrics["encoder"] == "random") & (metrics["metric"] == "auc")]
    assert len(base) == 24
    for rec in base.itertuples():
        key = ("random", rec.adaptation, f"{rec.fraction:g}", str(rec.seed), "AUC [CI]")
        assert rows[key][rec.label] == _cell(rec.value, rec.ci_low, rec.ci_high)

    summary = tables["Maximum improvement over random"]
    assert summary["head"] == ["dataset", "random AUC (probe)", "best (probe)", "max Δ AUC (probe)"]
    full = comparison[(comparison["label"] == "mean") & (comparison["fraction"] == 1.0)]
    best = full.loc[full["delta"].idxmax()]
    base_full = base[(base["label"] == "mean") & (base["fraction"] == 1.0) & (base["seed"] == best["seed"])].iloc[0]
    expected = [
        "synthetic",
        _cell(base_full["value"], base_full["ci_low"], base_full["ci_high"]),
        f"{best['encoder']} (seed {best['seed']})",
        _cell(best["delta"], best["delta_ci_low"], best["delta_ci_high"], best["significant"]),
    ]
    assert summary["rows"] == [expected]

    # the mean over the two seeds of each fraction
    seeds = tables["Mean over seeds (label subsets): macro-mean AUC [95% CI] and difference vs random"]
    pooled = pd.read_parquet(run / "comparisons/seeds.parquet")
    assert len(pooled) == 2 and set(pooled["seeds"]) == {2}
    for rec in pooled.itertuples():
        per_seed = (
            full
            if rec.fraction == 1.0
            else comparison[(comparison["label"] == "mean") & (comparison["fraction"] == rec.fraction)]
        )
        assert abs(rec.delta - per_seed["delta"].mean()) < 1e-12
        row = next(r for r in seeds["rows"] if r[3] == f"{rec.fraction:g}")
        assert row[:3] == ["synthetic", "simclr", "probe"] and row[4] == "2"
        assert row[5] == _cell(rec.auc, rec.auc_ci_low, rec.auc_ci_high)
        assert row[7] == _cell(rec.delta, rec.delta_ci_low, rec.delta_ci_high, rec.significant)
    assert shown["scripts"] == 1 and shown["title"] == "cxrbench suite tiny"


def test_names_show_as_text_not_markup(rendered) -> None:
    _, shown = rendered
    assert shown["facts"]["description"] == 'phantoms <i>tiny</i> & "quick"'
    assert shown["italics"] == 0
    assert shown["facts"]["encoders"] == "random, simclr" and shown["facts"]["label fractions"] == "0.5, 1"


def test_the_page_renders_to_a_picture(rendered) -> None:
    from PIL import Image

    moved, _ = rendered
    shot = moved.parent / "page.png"
    _chromium(
        "--window-size=1280,2400", f"--screenshot={shot}", (moved / "index.html").as_uri(), profile=moved.parent / "p"
    )
    with Image.open(shot) as picture:
        assert picture.size == (1280, 2400)
        pixels = np.asarray(picture.convert("L"), dtype=float)
    # text, tables and plots, not a blank or error page: many dark pixels on a light page
    assert pixels.mean() > 180 and (pixels < 100).mean() > 0.005
