"""Tests for cxrbench.report.plots: ROC numerics against scikit-learn, and the figure files."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score, roc_curve

from cxrbench.errors import CxrbenchError
from cxrbench.report.plots import (
    plot_forest,
    plot_label_efficiency,
    plot_roc,
    roc_band,
    roc_points,
)


def _scores(n: int, *, seed: int = 0, shift: float = 1.0, ties: bool = False):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(float)
    y[:2] = [0.0, 1.0]
    s = y * shift + rng.normal(size=n)
    if ties:
        s = np.round(s, 1)
    return y, s


def _assert_png_pdf(paths, stem):
    assert [p.name for p in paths] == [stem.name + ".png", stem.name + ".pdf"]
    png, pdf = (p.read_bytes() for p in paths)
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 2000
    assert pdf.startswith(b"%PDF") and len(pdf) > 1000
    assert plt.get_fignums() == []  # figures are closed


# --------------------------------------------------------------------------- ROC numerics


@pytest.mark.parametrize("ties", [False, True])
def test_roc_points_match_sklearn(ties):
    y, s = _scores(300, ties=ties)
    fpr, tpr = roc_points(y, s)
    ref_fpr, ref_tpr, _ = roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(fpr, ref_fpr)
    np.testing.assert_allclose(tpr, ref_tpr)


def test_weighted_roc_points_match_sklearn():
    y, s = _scores(200, ties=True, seed=4)
    w = np.random.default_rng(1).multinomial(200, np.full(200, 1 / 200)).astype(float)
    fpr, tpr = roc_points(y, s, sample_weight=w)
    ref_fpr, ref_tpr, _ = roc_curve(y, s, sample_weight=w, drop_intermediate=False)
    # sklearn keeps thresholds whose weight is zero as repeated points; compare the curves on a grid
    grid = np.linspace(0, 1, 101)
    keep = np.r_[True, (np.diff(ref_fpr) != 0) | (np.diff(ref_tpr) != 0)]
    ref_fpr, ref_tpr = ref_fpr[keep], ref_tpr[keep]
    assert np.trapezoid(tpr, fpr) == pytest.approx(roc_auc_score(y, s, sample_weight=w))
    np.testing.assert_allclose(np.interp(grid, fpr, tpr), np.interp(grid, ref_fpr, ref_tpr))


def test_roc_band_contains_estimate_and_auc_matches_sklearn():
    y, s = _scores(400, seed=2)
    groups = np.arange(400) // 2
    band = roc_band(y, s, groups=groups, n_boot=300, seed=0)
    assert band["auc"] == pytest.approx(roc_auc_score(y, s))
    assert band["auc_low"] < band["auc"] < band["auc_high"]
    assert np.all(band["low"] <= band["tpr_grid"] + 1e-12)
    assert np.all(band["tpr_grid"] <= band["high"] + 1e-12)
    assert band["low"][-1] == band["high"][-1] == 1.0
    # the grid curve is the exact curve where the exact curve has no vertical step
    exact = np.interp(band["grid"], band["fpr"], band["tpr"])
    assert np.all(band["tpr_grid"] >= exact - 1e-12)
    again = roc_band(y, s, groups=groups, n_boot=300, seed=0)
    np.testing.assert_array_equal(again["low"], band["low"])  # seeded: reproducible


def _envelope_tpr(fpr, tpr, g):
    """Highest TPR of the piecewise-linear curve through (fpr, tpr) at FPR g (brute force)."""
    best = -np.inf
    for i in range(fpr.size - 1):
        a0, a1, b0, b1 = fpr[i], fpr[i + 1], tpr[i], tpr[i + 1]
        if a0 <= g <= a1:
            best = max(best, b0, b1) if a0 == a1 else max(best, b0 + (b1 - b0) * (g - a0) / (a1 - a0))
    return best


@pytest.mark.parametrize("prev,groups", [(0.3, False), (0.04, True)])
def test_roc_band_equals_per_replicate_sklearn_roc_curve(prev, groups):
    """The vectorised band is the straightforward one: resample, roc_curve, read TPR on the grid."""
    rng = np.random.default_rng(3)
    n, n_boot, seed = 90, 60, 11
    y = (rng.random(n) < prev).astype(float)
    y[:2] = [0.0, 1.0]
    s = np.round(y * 0.8 + rng.normal(size=n), 1)  # many ties, some across classes
    g = np.array([f"p{i // 3:03d}" for i in range(n)]) if groups else None
    grid = np.linspace(0, 1, 41)
    band = roc_band(y, s, groups=g, n_boot=n_boot, seed=seed, grid=grid)
    # the same resamples, drawn by hand: whole groups (sorted) or images, n_boot draws of all units
    inverse = np.unique(g, return_inverse=True)[1] if groups else np.arange(n)
    units = inverse.max() + 1
    draws = np.random.default_rng(seed).integers(0, units, size=(n_boot, units))
    curves, aucs = [], []
    for d in draws:
        idx = np.repeat(np.arange(n), np.bincount(d, minlength=units)[inverse])
        if np.unique(y[idx]).size < 2:
            continue  # a replicate with one class has no curve
        fpr, tpr, _ = roc_curve(y[idx], s[idx], drop_intermediate=False)
        curves.append([_envelope_tpr(fpr, tpr, x) for x in grid])
        aucs.append(roc_auc_score(y[idx], s[idx]))
    if prev < 0.1:
        assert len(curves) < n_boot  # the rare label drops replicates
    low, high = np.quantile(np.array(curves), [0.025, 0.975], axis=0)
    np.testing.assert_allclose(band["low"], low, atol=1e-12)
    np.testing.assert_allclose(band["high"], high, atol=1e-12)
    assert (band["auc_low"], band["auc_high"]) == pytest.approx(tuple(np.quantile(aucs, [0.025, 0.975])), abs=1e-12)


def test_roc_band_cluster_bootstrap_is_wider_for_duplicated_patients():
    """Each patient contributes two identical images: resampling images ignores that and narrows."""
    y, s = _scores(300, seed=5)
    y2, s2 = np.repeat(y, 2), np.repeat(s, 2)
    patients = np.repeat(np.arange(300), 2)
    by_patient = roc_band(y2, s2, groups=patients, n_boot=400, seed=1)
    by_image = roc_band(y2, s2, n_boot=400, seed=1)
    width = lambda b: b["auc_high"] - b["auc_low"]  # noqa: E731
    assert width(by_patient) > 1.2 * width(by_image)


def test_roc_input_errors():
    with pytest.raises(CxrbenchError, match="one positive and one negative"):
        roc_points(np.zeros(5), np.arange(5.0))
    with pytest.raises(CxrbenchError, match="only 0 and 1"):
        roc_points(np.array([0, 1, 2]), np.arange(3.0))
    with pytest.raises(CxrbenchError, match="n_boot"):
        roc_band(np.array([0, 1]), np.array([0.1, 0.2]), n_boot=0)


# --------------------------------------------------------------------------- figures


def _preds() -> pd.DataFrame:
    frames = []
    for label, shift in [("Atelectasis", 1.0), ("pleural_effusion", 2.0)]:
        y, _ = _scores(120, seed=len(label))
        for k, encoder in enumerate(["imagenet", "dinov2"]):
            s = y * shift * (1 + 0.3 * k) + np.random.default_rng(k).normal(size=y.size)
            for split in ["val", "test"]:
                frames.append(
                    pd.DataFrame(
                        {
                            "encoder": encoder,
                            "adaptation": "probe",
                            "fraction": np.nan,
                            "seed": 0,
                            "sample_id": [f"s{i}" for i in range(y.size)],
                            "patient_id": [f"p{i // 2}" for i in range(y.size)],
                            "split": split,
                            "label": label,
                            "y_true": y,
                            "y_score": s,
                        }
                    )
                )
    return pd.concat(frames, ignore_index=True)


def test_plot_roc_writes_png_and_pdf(tmp_path):
    stem = tmp_path / "plots" / "nih.roc.Atelectasis"
    paths = plot_roc(_preds(), label="Atelectasis", out_stem=stem, n_boot=50, baseline="imagenet")
    _assert_png_pdf(paths, stem)
    with pytest.raises(CxrbenchError, match="'Nodule'"):
        plot_roc(_preds(), label="Nodule", out_stem=stem)


def test_plot_roc_names_model_without_both_classes(tmp_path):
    preds = _preds()
    preds.loc[(preds["encoder"] == "dinov2") & (preds["split"] == "test"), "y_true"] = 0.0
    with pytest.raises(CxrbenchError, match="dinov2 / probe"):
        plot_roc(preds, label="Atelectasis", out_stem=tmp_path / "roc", n_boot=20)


def _comparison() -> pd.DataFrame:
    rows = []
    for encoder, d in [("dinov2", 0.04), ("moco", -0.01)]:
        for i, label in enumerate(["Atelectasis", "pleural_effusion", "mean"]):
            rows.append(
                {
                    "encoder": encoder,
                    "adaptation": "probe",
                    "fraction": 1.0,
                    "seed": 0,
                    "label": label,
                    "n_pos": 10,
                    "n_neg": 90,
                    "auc": 0.8 + d,
                    "auc_ci_low": 0.78 + d,
                    "auc_ci_high": 0.82 + d,
                    "baseline_auc": 0.8,
                    "delta": d + 0.01 * i,
                    "delta_ci_low": d + 0.01 * i - 0.02,
                    "delta_ci_high": d + 0.01 * i + 0.02,
                    "p_value": 0.01,
                    "p_adjusted": 0.02,
                    "significant": d > 0,
                }
            )
    return pd.DataFrame(rows)


def test_plot_forest_writes_png_and_pdf(tmp_path):
    stem = tmp_path / "forest"
    _assert_png_pdf(plot_forest(_comparison(), stem), stem)
    with pytest.raises(CxrbenchError, match="delta"):
        plot_forest(_comparison().drop(columns=["delta"]), stem)


def _metrics(fractions, seeds=(0,)) -> pd.DataFrame:
    rows = []
    for encoder, base in [("imagenet", 0.70), ("dinov2", 0.74)]:
        for f in fractions:
            for sd in seeds:
                v = base + 0.04 * np.log10(f) + 0.004 * sd
                rows.append(
                    {
                        "dataset": "nih",
                        "encoder": encoder,
                        "adaptation": "finetune",
                        "fraction": f,
                        "seed": sd,
                        "label": "mean",
                        "metric": "auc",
                        "value": v,
                        "ci_low": v - 0.02,
                        "ci_high": v + 0.02,
                        "n_pos": np.nan,
                        "n_neg": np.nan,
                    }
                )
    return pd.DataFrame(rows)


def test_plot_label_efficiency(tmp_path):
    stem = tmp_path / "nih.label_efficiency"
    paths = plot_label_efficiency(
        _metrics([0.01, 0.1, 1.0], seeds=(0, 1)), dataset="nih", out_stem=stem, baseline="imagenet"
    )
    _assert_png_pdf(paths, stem)
    assert plot_label_efficiency(_metrics([1.0], seeds=(0, 1)), dataset="nih", out_stem=stem) == []
    with pytest.raises(CxrbenchError, match="'pad'"):
        plot_label_efficiency(_metrics([0.1, 1.0]), dataset="pad", out_stem=stem)


def test_failed_drawing_leaves_no_open_figure(tmp_path):
    bad = _comparison()
    bad["delta"] = bad["delta"].astype(object)
    bad.loc[0, "delta"] = "not a number"
    with pytest.raises(ValueError):
        plot_forest(bad, tmp_path / "forest")
    assert plt.get_fignums() == []


def test_plots_with_unchanged_inputs_are_copied_not_drawn(tmp_path, monkeypatch):
    import cxrbench.report.plots as plots

    cache = tmp_path / "cache"
    first = plot_roc(_preds(), label="Atelectasis", out_stem=tmp_path / "a" / "roc", n_boot=30, cache=cache)
    forest = plot_forest(_comparison(), tmp_path / "a" / "forest", cache=cache)
    drawn = []
    real_save = plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, stem: drawn.append(stem) or real_save(fig, stem))
    again = plot_roc(_preds(), label="Atelectasis", out_stem=tmp_path / "b" / "roc", n_boot=30, cache=cache)
    forest2 = plot_forest(_comparison(), tmp_path / "b" / "forest", cache=cache)
    assert drawn == []
    _assert_png_pdf(again, tmp_path / "b" / "roc")
    for old, new in zip(first + forest, again + forest2, strict=True):
        assert old.read_bytes() == new.read_bytes()
    # any change of the inputs draws again: the data, a setting, the title
    changed = _preds()
    row = changed.index[(changed["label"] == "Atelectasis") & (changed["split"] == "test")][-1]
    changed.loc[row, "y_score"] += 0.5
    plot_roc(changed, label="Atelectasis", out_stem=tmp_path / "c" / "roc", n_boot=30, cache=cache)
    plot_roc(_preds(), label="Atelectasis", out_stem=tmp_path / "c" / "roc", n_boot=31, cache=cache)
    plot_forest(_comparison(), tmp_path / "c" / "forest", title="other", cache=cache)
    assert len(drawn) == 3
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_same_inputs_give_byte_identical_files_whenever_drawn(tmp_path, monkeypatch):
    # the PDF backend dates its files from SOURCE_DATE_EPOCH when set, else the clock: two different
    # "times" stand for two runs a day apart, without waiting
    def draw(folder, epoch):
        monkeypatch.setenv("SOURCE_DATE_EPOCH", str(epoch))
        return (
            plot_roc(_preds(), label="Atelectasis", out_stem=folder / "roc", n_boot=20, baseline="imagenet")
            + plot_forest(_comparison(), folder / "forest", title="Δ AUC")
            + plot_label_efficiency(_metrics([0.1, 1.0]), dataset="nih", out_stem=folder / "eff")
        )

    first, second = draw(tmp_path / "a", 0), draw(tmp_path / "b", 86_400 * 400)
    assert len(first) == 6
    for old, new in zip(first, second, strict=True):
        assert old.read_bytes() == new.read_bytes(), new.name
        assert b"CreationDate" not in new.read_bytes()


def _jobs(folder):
    return [
        (plot_forest, (_comparison(), folder / "forest"), {"title": "t"}),
        (plot_roc, (_preds(),), {"label": "Atelectasis", "out_stem": folder / "roc-a", "n_boot": 30}),
        (plot_roc, (_preds(),), {"label": "pleural_effusion", "out_stem": folder / "roc-b", "n_boot": 30}),
    ]


def test_render_in_worker_processes_writes_the_serial_bytes(tmp_path, monkeypatch):
    import cxrbench.report.plots as plots

    monkeypatch.setenv("SOURCE_DATE_EPOCH", "0")  # PDFs without the time of drawing
    serial = [plots.render(_jobs(tmp_path / "serial"), workers=1)]
    serial.append([fn(*args, **kwargs) for fn, args, kwargs in _jobs(tmp_path / "calls")])
    cache = tmp_path / "cache"
    parallel = plots.render(_jobs(tmp_path / "parallel"), workers=3, cache=cache)
    assert plt.get_fignums() == []
    for run in serial:
        for mine, theirs in zip(parallel, run, strict=True):
            assert [p.name for p in mine] == [p.name for p in theirs]
            assert [p.read_bytes() for p in mine] == [p.read_bytes() for p in theirs]
    # drawn figures went to the cache: a second render copies them, drawing nothing
    monkeypatch.setattr(plots, "_fork_context", lambda: pytest.fail("nothing left to draw"))
    monkeypatch.setattr(plots, "_save", lambda *a: pytest.fail("nothing left to draw"))
    again = plots.render(_jobs(tmp_path / "again"), workers=3, cache=cache)
    assert [[p.read_bytes() for p in w] for w in again] == [[p.read_bytes() for p in w] for w in parallel]


def test_render_raises_the_first_failing_job(tmp_path):
    import cxrbench.report.plots as plots

    jobs = _jobs(tmp_path)
    jobs.insert(1, (plot_roc, (_preds(),), {"label": "Nodule", "out_stem": tmp_path / "roc-n", "n_boot": 30}))
    with pytest.raises(CxrbenchError, match="'Nodule'"):
        plots.render(jobs, workers=2)
