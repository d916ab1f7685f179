"""evaluate/compare on small synthetic predictions, checked against sklearn on the same resamples."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from cxrbench.errors import CxrbenchError
from cxrbench.stats.bootstrap import bootstrap_counts, bootstrap_pvalue, percentile_ci
from cxrbench.stats.delong import delong_test
from cxrbench.stats.engine import COMPARE_COLUMNS, METRIC_COLUMNS, compare, evaluate
from cxrbench.stats.multiplicity import adjust_pvalues
from cxrbench.stats.thresholds import threshold_metrics, youden_threshold


def make(n=60, labels=("a", "b"), encoders=("imagenet", "dinov2"), seed=0, prev=0.3, n_val=40):
    rng = np.random.default_rng(seed)
    frames = []
    for split, m in (("test", n), ("val", n_val)):
        ids = [f"{split}{i}" for i in range(m)]
        patients = [f"p-{split}{i // 3}" for i in range(m)]
        for lab in labels:
            y = (rng.random(m) < prev).astype(float)
            y[:2] = [0.0, 1.0][:m]
            for k, enc in enumerate(encoders):
                frames.append(
                    pd.DataFrame(
                        dict(encoder=enc, adaptation="probe", fraction=1.0, seed=0, sample_id=ids,
                             patient_id=patients, split=split, label=lab, y_true=y,
                             y_score=np.round(y * (0.5 + 0.4 * k) + rng.normal(size=m), 1))
                    )
                )  # fmt: skip
    return pd.concat(frames, ignore_index=True)


def _arrays(df, enc, label, split="test"):
    g = df[(df.encoder == enc) & (df.label == label) & (df.split == split)].dropna(subset=["y_true"])
    return g.sample_id.to_numpy(), g.y_true.to_numpy(), g.y_score.to_numpy()


def test_evaluate_matches_sklearn_on_the_same_resamples():
    df = make()
    out, warns = evaluate(df, n_boot=40, seed=7)
    assert list(out.columns) == METRIC_COLUMNS and warns == []
    counts = bootstrap_counts(60, n_boot=40, seed=7)  # test samples in order of appearance
    for enc in ("imagenet", "dinov2"):
        for lab in ("a", "b"):
            ids, y, s = _arrays(df, enc, lab)
            row = out[(out.encoder == enc) & (out.label == lab)].set_index("metric")
            reps = []
            for c in counts:
                idx = np.repeat(np.arange(60), c)
                reps.append(roc_auc_score(y[idx], s[idx]) if np.unique(y[idx]).size == 2 else np.nan)
            assert row.loc["auc", "value"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
            assert (row.loc["auc", "ci_low"], row.loc["auc", "ci_high"]) == pytest.approx(
                percentile_ci(reps), abs=1e-12
            )
            _, yv, sv = _arrays(df, enc, lab, "val")
            t = youden_threshold(yv, sv)
            assert row.loc["threshold", "value"] == t
            for m, v in threshold_metrics(y, s, t).items():
                assert row.loc[m, "value"] == pytest.approx(v, abs=1e-12)
            assert row.loc["auc", "n_pos"] == y.sum() and row.loc["auc", "n_neg"] == (1 - y).sum()
        mean = out[(out.encoder == enc) & (out.label == "mean") & (out.metric == "auc")].iloc[0]
        per = out[(out.encoder == enc) & out.label.isin(["a", "b"]) & (out.metric == "auc")]
        assert mean.value == pytest.approx(per.value.mean(), abs=1e-12)


def test_torch_cpu_device_equals_numpy():
    df = make(seed=1)
    a, _ = evaluate(df, n_boot=30)
    b, _ = evaluate(df, n_boot=30, device="cpu")
    np.testing.assert_allclose(a[["value", "ci_low", "ci_high"]], b[["value", "ci_low", "ci_high"]], atol=1e-6)


@pytest.mark.parametrize("test", ["bootstrap", "delong"])
def test_compare_deltas_pvalues_and_correction(test):
    df = make(seed=2, labels=("a", "b", "c"))
    out, warns = compare(df, baseline="imagenet", n_boot=30, seed=1, test=test, correction="holm")
    assert list(out.columns) == COMPARE_COLUMNS
    assert list(out.label) == ["a", "b", "c", "mean"] and (out.encoder == "dinov2").all()
    ev, _ = evaluate(df, n_boot=30, seed=1)
    counts = bootstrap_counts(60, n_boot=30, seed=1)
    for _, row in out[out.label != "mean"].iterrows():
        _, y, s = _arrays(df, "dinov2", row.label)
        _, _, sb = _arrays(df, "imagenet", row.label)
        auc_ev = ev[(ev.encoder == "dinov2") & (ev.label == row.label) & (ev.metric == "auc")].iloc[0]
        assert (row.auc, row.auc_ci_low, row.auc_ci_high) == pytest.approx(
            (auc_ev.value, auc_ev.ci_low, auc_ev.ci_high)
        )
        assert row.delta == pytest.approx(roc_auc_score(y, s) - roc_auc_score(y, sb), abs=1e-12)
        if test == "delong":
            res = delong_test(y, s, sb)
            assert row.p_value == pytest.approx(res.p_value, abs=1e-12)
            assert (row.delta_ci_low, row.delta_ci_high) == pytest.approx((res.ci_low, res.ci_high))
        else:
            d = []
            for c in counts:
                idx = np.repeat(np.arange(60), c)
                d.append(roc_auc_score(y[idx], s[idx]) - roc_auc_score(y[idx], sb[idx]))
            assert row.p_value == pytest.approx(bootstrap_pvalue(d), abs=1e-12)
            assert (row.delta_ci_low, row.delta_ci_high) == pytest.approx(percentile_ci(d), abs=1e-12)
    per = out[out.label != "mean"]
    np.testing.assert_allclose(per.p_adjusted, adjust_pvalues(per.p_value.to_numpy(), method="holm"))
    assert (out.significant == (out.p_adjusted < 0.05)).all()
    mean = out[out.label == "mean"].iloc[0]
    assert mean.p_adjusted == mean.p_value  # its own family of one


def test_patient_cluster_changes_resamples_but_not_points():
    df = make(seed=3)
    a, _ = evaluate(df, n_boot=30, cluster="image")
    b, _ = evaluate(df, n_boot=30, cluster="patient")
    np.testing.assert_allclose(a.value, b.value)
    assert not np.allclose(a.ci_low.dropna(), b.ci_low.dropna())


def test_unpairable_models_raise():
    df = make()
    df = df.drop(df[(df.encoder == "dinov2") & (df.sample_id == "test5") & (df.label == "a")].index)
    with pytest.raises(CxrbenchError, match="different sample_ids"):
        evaluate(df, n_boot=5)


def test_unknown_baseline_and_missing_twin():
    df = make()
    with pytest.raises(CxrbenchError, match="'moco'.*dinov2, imagenet"):
        compare(df, baseline="moco", n_boot=5)
    extra = df[df.encoder == "dinov2"].assign(adaptation="finetune")
    out, warns = compare(pd.concat([df, extra]), baseline="imagenet", n_boot=5)
    assert (out.adaptation == "probe").all()
    assert any("no baseline model" in w for w in warns)


def test_nan_scores_raise_naming_the_model():
    df = make()
    df.loc[(df.encoder == "dinov2") & (df.label == "b"), "y_score"] = np.nan
    with pytest.raises(CxrbenchError, match="dinov2.*'b'"):
        evaluate(df, n_boot=5)


def test_degenerate_label_constant_scores_and_dropped_replicates_are_reported():
    df = make(n=12)
    df.loc[(df.label == "b") & (df.split == "test"), "y_true"] = 0.0  # no positives in test
    df.loc[df.encoder == "imagenet", "y_score"] = 0.5  # constant scores
    out, warns = evaluate(df, n_boot=200, seed=0)
    b = out[out.label == "b"]
    assert b[b.metric != "threshold"].value.isna().all()
    assert any("'b'" in w and "only negatives" in w for w in warns)
    assert any("same score" in w for w in warns)
    # label a has 12 samples and few positives: some replicates lack a positive
    a_pos = int(df[(df.label == "a") & (df.split == "test") & (df.encoder == "imagenet")].y_true.sum())
    expected = int(
        (
            bootstrap_counts(12, n_boot=200, seed=0)[:, :12]
            @ np.r_[df[(df.label == "a") & (df.split == "test") & (df.encoder == "imagenet")].y_true]
            == 0
        ).sum()
    )
    assert a_pos >= 1
    if expected:
        assert any(f"{expected} of 200 bootstrap replicates" in w for w in warns)
    imagenet_auc = out[(out.encoder == "imagenet") & (out.label == "a") & (out.metric == "auc")].value.iloc[0]
    assert imagenet_auc == 0.5
    mean = out[(out.encoder == "imagenet") & (out.label == "mean") & (out.metric == "auc")].iloc[0]
    assert mean.value == 0.5  # label b left out of the mean


@pytest.mark.parametrize("test", ["bootstrap", "delong"])
def test_a_label_with_one_test_positive_gets_no_ci_of_the_difference_nor_p_value(test):
    df = make(n=30)
    one = (df.label == "a") & (df.split == "test")
    df.loc[one, "y_true"] = (df.loc[one, "sample_id"] == "test1").astype(float)  # a single positive
    out, warns = compare(df, baseline="imagenet", n_boot=200, test=test)
    a, b = (out[out.label == lab].iloc[0] for lab in ("a", "b"))
    assert (a.n_pos, a.n_neg) == (1, 29) and np.isfinite([a.auc, a.baseline_auc, a.delta]).all()
    assert np.isnan([a.delta_ci_low, a.delta_ci_high, a.p_value, a.p_adjusted]).all() and not a.significant
    assert np.isfinite([b.delta_ci_low, b.p_value, b.p_adjusted]).all()
    assert b.p_adjusted == pytest.approx(b.p_value)  # the family holds label b alone
    assert [w for w in warns if "too few" in w] == [
        "label 'a': 1 positive(s) and 29 negative(s) in test, too few for a CI of the difference or a p-value "
        "(none given)"
    ]
    mean = out[out.label == "mean"].iloc[0]
    assert np.isfinite(mean.p_value)  # b can be tested, so the mean can
    only_a = compare(df[df.label == "a"], baseline="imagenet", n_boot=200, test=test)[0]
    mean = only_a[only_a.label == "mean"].iloc[0]
    assert np.isfinite([mean.delta, mean.auc_ci_low, mean.auc_ci_high]).all()  # the AUC's own CI stays
    assert np.isnan([mean.delta_ci_low, mean.p_value]).all() and not mean.significant


def test_one_sample_and_bad_options():
    df = make(n=1, n_val=4)
    out, warns = evaluate(df, n_boot=5)
    assert out[out.metric == "auc"].value.isna().all() and warns
    with pytest.raises(CxrbenchError, match="n_boot"):
        evaluate(make(), n_boot=0)
    with pytest.raises(CxrbenchError, match="cluster"):
        evaluate(make(), n_boot=5, cluster="study")
    with pytest.raises(CxrbenchError, match="test must be"):
        compare(make(), baseline="imagenet", n_boot=5, test="wilcoxon")
    with pytest.raises(CxrbenchError, match="lack column"):
        evaluate(make().drop(columns="patient_id"), n_boot=5)


def _shuffled_problem(seed=11, n=240, n_val=80):
    """Three encoders x two adaptations x four labels, rows shuffled, some y_true unknown, ties in scores."""
    rng = np.random.default_rng(seed)
    frames = []
    for split, m in (("test", n), ("val", n_val)):
        ids = np.array([f"{split}-{i}" for i in range(m)], dtype=object)
        patients = np.array([f"p{i // 2}-{split}" for i in range(m)], dtype=object)
        for lab, prev in zip("wxyz", (0.05, 0.2, 0.4, 0.3), strict=True):
            y = (rng.random(m) < prev).astype(float)
            y[:2] = [0.0, 1.0]
            if lab == "z":
                y[rng.random(m) < 0.1] = np.nan  # unknown for a tenth of the samples
            for enc in ("imagenet", "dinov2", "moco"):
                for adapt in ("probe", "finetune"):
                    s = np.round(y * rng.uniform(0.2, 1.5) + rng.normal(size=m), 1)
                    frames.append(pd.DataFrame(dict(
                        encoder=enc, adaptation=adapt, fraction=1.0, seed=0, sample_id=ids,
                        patient_id=patients, split=split, label=lab, y_true=y, y_score=s)))  # fmt: skip
    df = pd.concat(frames, ignore_index=True)
    return df.iloc[rng.permutation(len(df))].reset_index(drop=True)


@pytest.mark.parametrize("cluster", ["image", "patient"])
def test_shuffled_multi_model_problem_matches_per_replicate_sklearn(cluster):
    df = _shuffled_problem()
    n_boot, seed = 40, 5
    out, _ = evaluate(df, n_boot=n_boot, seed=seed, cluster=cluster)
    assert len(out) == 6 * (4 * 7 + 6) and list(out.columns) == METRIC_COLUMNS
    known_test = df[(df.split == "test") & df.y_true.notna()]
    order = pd.unique(known_test.sample_id)  # bootstrap units: test samples in order of appearance
    patients = known_test.drop_duplicates("sample_id").set_index("sample_id").patient_id[order]
    counts = bootstrap_counts(
        order.size, n_boot=n_boot, seed=seed, clusters=patients.to_numpy() if cluster == "patient" else None
    )
    for enc, adapt, lab in [("moco", "finetune", "w"), ("imagenet", "probe", "z"), ("dinov2", "finetune", "y")]:
        g = known_test[(known_test.encoder == enc) & (known_test.adaptation == adapt) & (known_test.label == lab)]
        g = g.set_index("sample_id").reindex([o for o in order if o in set(g.sample_id)])
        pos = pd.Index(order).get_indexer(g.index)
        y, s = g.y_true.to_numpy(), g.y_score.to_numpy()
        gv = df[(df.split == "val") & (df.encoder == enc) & (df.adaptation == adapt) & (df.label == lab)]
        gv = gv.dropna(subset=["y_true"])
        thr = youden_threshold(gv.y_true, gv.y_score)
        reps = {k: [] for k in ("auc", "auprc", "accuracy", "sensitivity", "specificity", "f1")}
        for c in counts:
            idx = np.repeat(np.arange(y.size), c[pos])
            two = np.unique(y[idx]).size == 2
            reps["auc"].append(roc_auc_score(y[idx], s[idx]) if two else np.nan)
            reps["auprc"].append(average_precision_score(y[idx], s[idx]) if two else np.nan)
            for k, v in threshold_metrics(y[idx], s[idx], thr).items():
                reps[k].append(v if two else np.nan)
        row = out[(out.encoder == enc) & (out.adaptation == adapt) & (out.label == lab)].set_index("metric")
        assert row.loc["threshold", "value"] == thr
        assert row.loc["auc", "value"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
        assert row.loc["auprc", "value"] == pytest.approx(average_precision_score(y, s), abs=1e-12)
        assert (row.loc["auc", "n_pos"], row.loc["auc", "n_neg"]) == (y.sum(), (1 - y).sum())
        for k, r in reps.items():
            ci = percentile_ci(r)
            assert (row.loc[k, "ci_low"], row.loc[k, "ci_high"]) == pytest.approx(ci, abs=1e-12), k
    # macro means: mean of the per-label values of each model
    for _, g in out[out.metric == "auc"].groupby(["encoder", "adaptation"]):
        per = g[g.label != "mean"].value
        assert g[g.label == "mean"].value.iloc[0] == pytest.approx(per.mean(), abs=1e-12)


def test_shuffled_problem_compare_matches_per_replicate_sklearn():
    df = _shuffled_problem(seed=12)
    out, _ = compare(df, baseline="imagenet", n_boot=40, seed=3)
    assert len(out) == 2 * 2 * 5 and set(out.encoder) == {"dinov2", "moco"}
    known_test = df[(df.split == "test") & df.y_true.notna()]
    order = pd.Index(pd.unique(known_test.sample_id))
    counts = bootstrap_counts(order.size, n_boot=40, seed=3)

    def arrays(enc, lab):
        g = known_test[(known_test.encoder == enc) & (known_test.adaptation == "finetune") & (known_test.label == lab)]
        g = g.iloc[np.argsort(order.get_indexer(g.sample_id))]
        return order.get_indexer(g.sample_id), g.y_true.to_numpy(), g.y_score.to_numpy()

    pos, y, s = arrays("moco", "z")
    _, _, sb = arrays("imagenet", "z")
    d = []
    for c in counts:
        idx = np.repeat(np.arange(y.size), c[pos])
        d.append(roc_auc_score(y[idx], s[idx]) - roc_auc_score(y[idx], sb[idx]))
    row = out[(out.encoder == "moco") & (out.adaptation == "finetune") & (out.label == "z")].iloc[0]
    assert row.delta == pytest.approx(roc_auc_score(y, s) - roc_auc_score(y, sb), abs=1e-12)
    assert (row.delta_ci_low, row.delta_ci_high) == pytest.approx(percentile_ci(d), abs=1e-12)
    assert row.p_value == pytest.approx(bootstrap_pvalue(d), abs=1e-12)


def test_duplicate_rows_bad_split_and_bad_y_true_raise():
    df = make()
    with pytest.raises(CxrbenchError, match="duplicate rows"):
        evaluate(pd.concat([df, df.iloc[[3]]]), n_boot=5)
    with pytest.raises(CxrbenchError, match="'split' must be"):
        evaluate(df.assign(split=df.split.where(df.index != 4, "train")), n_boot=5)
    with pytest.raises(CxrbenchError, match="'y_true' must hold"):
        evaluate(df.assign(y_true=df.y_true.where(df.index != 4, 2.0)), n_boot=5)


# --------------------------------------------------------------------------- shared replicates


def _no_bootstrap(monkeypatch):
    """Make any bootstrap computation fail: what follows must come from the replicate cache."""
    import cxrbench.stats.engine as engine

    def fail(*args, **kwargs):
        raise AssertionError("replicates were recomputed instead of read from the cache")

    monkeypatch.setattr(engine, "replicate_metrics", fail)


def _same(a, b):
    """Bitwise equality of two (frame, warnings) results."""
    pd.testing.assert_frame_equal(a[0], b[0], check_exact=True)
    assert a[1] == b[1]


@pytest.mark.parametrize("cluster", ["image", "patient"])
def test_compare_reuses_the_replicates_of_evaluate_bitwise(tmp_path, monkeypatch, cluster):
    df = _shuffled_problem(seed=12)
    kw = dict(n_boot=40, seed=3, cluster=cluster)
    plain_eval = evaluate(df, **kw)
    plain = {t: compare(df, baseline="imagenet", test=t, **kw) for t in ("bootstrap", "delong")}
    _same(evaluate(df, cache=tmp_path, **kw), plain_eval)
    assert len(list(tmp_path.glob("*.npz"))) == 1
    _no_bootstrap(monkeypatch)
    for t in ("bootstrap", "delong"):
        _same(compare(df, baseline="imagenet", test=t, cache=tmp_path, **kw), plain[t])
    _same(evaluate(df, cache=tmp_path, **kw), plain_eval)
    # and the shared numbers are the per-replicate sklearn ones (independent recomputation)
    if cluster == "image":
        out, _ = compare(df, baseline="imagenet", cache=tmp_path, **kw)
        known_test = df[(df.split == "test") & df.y_true.notna()]
        order = pd.Index(pd.unique(known_test.sample_id))
        g = known_test[
            (known_test.encoder == "moco") & (known_test.adaptation == "finetune") & (known_test.label == "z")
        ]
        g = g.iloc[np.argsort(order.get_indexer(g.sample_id))]
        pos, y, s = order.get_indexer(g.sample_id), g.y_true.to_numpy(), g.y_score.to_numpy()
        reps = [
            roc_auc_score(y[i], s[i])
            for i in (np.repeat(np.arange(y.size), c[pos]) for c in bootstrap_counts(order.size, n_boot=40, seed=3))
        ]
        row = out[(out.encoder == "moco") & (out.adaptation == "finetune") & (out.label == "z")].iloc[0]
        assert (row.auc_ci_low, row.auc_ci_high) == pytest.approx(percentile_ci(reps), abs=1e-12)


def test_replicates_stored_by_compare_serve_evaluate_with_its_threshold_warnings(tmp_path, monkeypatch):
    df = make(seed=6)
    df = df[~((df.split == "val") & (df.label == "b"))]  # no validation for label b: threshold warnings
    plain_eval, plain_cmp = evaluate(df, n_boot=30), compare(df, baseline="imagenet", n_boot=30)
    assert any("no validation predictions" in w for w in plain_eval[1])
    _same(compare(df, baseline="imagenet", n_boot=30, cache=tmp_path), plain_cmp)  # fills the cache
    _no_bootstrap(monkeypatch)
    _same(evaluate(df, n_boot=30, cache=tmp_path), plain_eval)
    _same(compare(df, baseline="imagenet", n_boot=30, cache=tmp_path), plain_cmp)


def test_replicate_cache_misses_on_other_inputs_and_survives_a_bad_file(tmp_path):
    df = make(seed=7)
    evaluate(df, n_boot=20, cache=tmp_path)
    for kw in (dict(n_boot=21), dict(seed=1), dict(cluster="patient")):
        evaluate(df, cache=tmp_path, **{"n_boot": 20, **kw})
    evaluate(df.assign(y_score=df.y_score + 1e-9), n_boot=20, cache=tmp_path)  # other scores
    evaluate(df.sample(frac=1.0, random_state=0), n_boot=20, cache=tmp_path)  # other sample order
    files = sorted(tmp_path.glob("*.npz"), key=lambda p: p.stat().st_mtime)
    assert len(files) == 4  # six keys, the newest four kept
    for f in files:
        f.write_bytes(b"not a zip")  # a damaged cache file is recomputed, not trusted
    shuffled = df.sample(frac=1.0, random_state=0)
    _same(evaluate(shuffled, n_boot=20, cache=tmp_path), evaluate(shuffled, n_boot=20))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary files left


@pytest.mark.parametrize("n_s", [5, 70_000])
@pytest.mark.parametrize("n_groups", [300, 70_000])
@pytest.mark.parametrize("presorted", [False, True])
def test_stable_order_and_unique_inverse_match_numpy(n_s, n_groups, presorted):
    from cxrbench.stats.engine import _codes, _stable_order, _unique_inverse

    rng = np.random.default_rng(n_s + n_groups)
    group = rng.integers(0, n_groups, 50_000)
    sample = np.sort(rng.integers(0, n_s, 50_000)) if presorted else rng.integers(0, n_s, 50_000)
    perm, g, smp = _stable_order(group, sample, n_s)
    expected = np.argsort(group * n_s + sample, kind="stable")
    assert np.array_equal(perm, expected)
    assert np.array_equal(g, group[expected]) and np.array_equal(smp, sample[expected])
    values, inverse = _unique_inverse(group * 7)
    expected = np.unique(group * 7, return_inverse=True)
    assert np.array_equal(values, expected[0]) and np.array_equal(inverse, expected[1])
    # categorical columns are coded as factorize codes them (NaN a value of its own)
    col = pd.Series(np.array(["b", "a", None, "c", "a", None, "b"], dtype=object)[rng.integers(0, 7, 1000)])
    for series in (col, col.astype("category"), col.astype("category").cat.reorder_categories(["c", "b", "a"])):
        codes, vals = _codes(series)
        ref_codes, ref_vals = pd.factorize(col, use_na_sentinel=False)
        assert np.array_equal(codes, ref_codes)
        assert [v if isinstance(v, str) else "nan" for v in vals] == [
            v if isinstance(v, str) else "nan" for v in ref_vals
        ]


def test_bootstrap_threads_do_not_change_a_bit(monkeypatch):
    import cxrbench.stats.engine as engine

    df = _shuffled_problem(seed=21)
    results = []
    for n in (1, 3):
        monkeypatch.setattr(engine, "_threads", lambda n_tasks, n=n: n)
        results.append((evaluate(df, n_boot=300, seed=2), compare(df, baseline="imagenet", n_boot=300, seed=2)))
    for a, b in zip(*results, strict=True):
        _same(a, b)


def _seeded(n=80, labels=("a", "b"), seeds=(0, 1, 2), effects=None, rng_seed=5):
    """One test/val set; each (encoder, fraction, seed) its own scores (``effects``: the score shift
    given to positives)."""
    rng = np.random.default_rng(rng_seed)
    effects = effects or {"random": 0.3, "ssl": 0.9}
    frames = []
    for split, m in (("test", n), ("val", 30)):
        ids = [f"{split}{i}" for i in range(m)]
        for lab in labels:
            y = (rng.random(m) < 0.4).astype(float)
            y[:2] = [0.0, 1.0]
            for fraction, fraction_seeds in ((0.1, seeds), (1.0, (0,))):
                for seed in fraction_seeds:
                    for enc, effect in effects.items():
                        score = np.round(y * effect + rng.normal(size=m), 2)
                        frames.append(
                            pd.DataFrame(
                                dict(encoder=enc, adaptation="probe", fraction=fraction, seed=seed, sample_id=ids,
                                     patient_id=ids, split=split, label=lab, y_true=y, y_score=score)
                            )
                        )  # fmt: skip
    return pd.concat(frames, ignore_index=True)


def test_compare_over_seeds_matches_sklearn_on_the_same_resamples():
    from cxrbench.stats.engine import SEEDS_COLUMNS, compare_over_seeds

    df = _seeded()
    out = compare_over_seeds(df, baseline="random", n_boot=60, seed=3)
    assert list(out.columns) == SEEDS_COLUMNS
    # only the 10 % group has several seeds; fraction 1.0 ran with one
    assert len(out) == 1 and out.iloc[0][["encoder", "fraction", "seeds", "label"]].tolist() == ["ssl", 0.1, 3, "mean"]
    row = out.iloc[0]
    counts = bootstrap_counts(80, n_boot=60, seed=3)

    def macro(enc, seed, idx=None):
        aucs = []
        for lab in ("a", "b"):
            g = df[(df.encoder == enc) & (df.fraction == 0.1) & (df.seed == seed) & (df.label == lab)]
            g = g[g.split == "test"]
            y, s = g.y_true.to_numpy(), g.y_score.to_numpy()
            if idx is not None:
                y, s = y[idx], s[idx]
            aucs.append(roc_auc_score(y, s) if np.unique(y).size == 2 else np.nan)
        return np.mean(aucs)

    assert row.auc == pytest.approx(np.mean([macro("ssl", k) for k in (0, 1, 2)]), abs=1e-12)
    assert row.baseline_auc == pytest.approx(np.mean([macro("random", k) for k in (0, 1, 2)]), abs=1e-12)
    diffs = []
    for c in counts:
        idx = np.repeat(np.arange(80), c)
        diffs.append(np.mean([macro("ssl", k, idx) - macro("random", k, idx) for k in (0, 1, 2)]))
    assert (row.delta_ci_low, row.delta_ci_high) == pytest.approx(percentile_ci(diffs), abs=1e-12)
    assert row.p_value == pytest.approx(bootstrap_pvalue(diffs), abs=1e-12)
    assert row.p_adjusted == row.p_value and bool(row.significant) == (row.p_value < 0.05)
    # each seed's own comparison: the pooled delta is the mean of theirs
    per_seed, _ = compare(df, baseline="random", n_boot=60, seed=3)
    deltas = per_seed[(per_seed.label == "mean") & (per_seed.fraction == 0.1)].delta
    assert len(deltas) == 3 and row.delta == pytest.approx(deltas.mean(), abs=1e-12)


def test_compare_over_seeds_of_one_repeated_seed_equals_its_comparison_and_bh_spans_the_rows():
    from statsmodels.stats.multitest import multipletests

    from cxrbench.stats.engine import compare_over_seeds

    df = _seeded(seeds=(0,), effects={"random": 0.3, "ssl": 1.5, "other": 0.35})
    again = df[df.fraction == 0.1].assign(seed=1)  # the same predictions under a second seed
    df = pd.concat([df, again], ignore_index=True)
    pooled = compare_over_seeds(df, baseline="random", n_boot=80)
    single, _ = compare(df[df.seed == 0], baseline="random", n_boot=80)
    single = single[(single.label == "mean") & (single.fraction == 0.1)].set_index("encoder")
    pooled = pooled.set_index("encoder")
    assert sorted(pooled.index) == ["other", "ssl"] and set(pooled.seeds) == {2}
    for enc in ("ssl", "other"):
        for col in ("auc", "auc_ci_low", "auc_ci_high", "delta", "delta_ci_low", "delta_ci_high", "p_value"):
            assert pooled.loc[enc, col] == pytest.approx(single.loc[enc, col], abs=1e-12), (enc, col)
    expected = multipletests(pooled.p_value.to_numpy(), method="fdr_bh")[1]
    np.testing.assert_allclose(pooled.p_adjusted.to_numpy(), expected, atol=1e-12)
    assert pooled.loc["ssl", "significant"] and pooled.loc["ssl", "delta"] > 0.1


def test_compare_over_seeds_is_empty_without_repeated_seeds(monkeypatch):
    from cxrbench.stats import engine
    from cxrbench.stats.engine import SEEDS_COLUMNS, compare_over_seeds

    def no_bootstrap(*args, **kwargs):
        raise AssertionError("no model has two seeds: nothing to bootstrap again")

    with monkeypatch.context() as patch:
        patch.setattr(engine, "_run", no_bootstrap)
        out = compare_over_seeds(make(), baseline="imagenet", n_boot=20)
    assert out.empty and list(out.columns) == SEEDS_COLUMNS
    with pytest.raises(CxrbenchError, match="correction"):
        compare_over_seeds(make(), baseline="imagenet", correction="nope")
