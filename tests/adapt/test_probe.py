"""LinearProbe / fit_probe against scikit-learn's LogisticRegression(lbfgs) at equal C, NaN masking,
C choice; the solver itself is tested in test_lbfgs.py."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import StandardScaler

from cxrbench.adapt.probe import LinearProbe, fit_probe
from cxrbench.errors import CxrbenchError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _data(seed=0, n=700, d=24, labels=3, nan_frac=0.1):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) * rng.uniform(0.3, 4.0, size=d) + rng.normal(size=d) * 3
    B = rng.normal(size=(d, labels))
    Y = ((X - X.mean(0)) / X.std(0) @ B / 3 + rng.normal(size=(n, labels)) > 0.3).astype(float)
    Y[rng.random(Y.shape) < nan_frac] = np.nan
    cut = (n * 5) // 10, (n * 7) // 10
    return (
        X[: cut[0]],
        Y[: cut[0]],
        X[cut[0] : cut[1]],
        Y[cut[0] : cut[1]],
        X[cut[1] :],
        Y[cut[1] :],
    )


@pytest.mark.parametrize("C", [0.01, 1.0])
def test_coefficients_match_sklearn_at_equal_C_with_nan_masking(C):
    Xtr, Ytr, Xva, Yva, Xte, Yte = _data()
    probe = fit_probe(Xtr, Ytr, Xva, Yva, Cs=[C], dtype="float64", tol=1e-9, max_iter=500)
    scaler = StandardScaler().fit(Xtr)  # statistics over all training rows, as the probe
    proba = probe.predict_proba(Xte)
    for j in range(Ytr.shape[1]):
        m = ~np.isnan(Ytr[:, j])
        lr = LogisticRegression(C=C, solver="lbfgs", tol=1e-10, max_iter=10_000)
        lr.fit(scaler.transform(Xtr[m]), Ytr[m, j])
        np.testing.assert_allclose(probe.weight_[:, j].numpy(), lr.coef_[0], atol=1e-5)
        assert abs(probe.bias_[j].item() - lr.intercept_[0]) < 1e-5
        t = ~np.isnan(Yte[:, j])
        ref = lr.predict_proba(scaler.transform(Xte[t]))[:, 1]
        np.testing.assert_allclose(proba[t, j], ref, atol=1e-5)
    assert probe.C_.tolist() == [C] * Ytr.shape[1]


def test_linear_probe_equals_sklearn_per_label_at_equal_C():
    # the estimator API: fit returns the probe; each label is sklearn's model on its known rows
    Xtr, Ytr, Xva, Yva, Xte, Yte = _data(seed=12, n=800, d=16, labels=3)
    est = LinearProbe(Cs=[0.3], max_iter=500, task="multilabel", device="cpu", dtype="float64", tol=1e-9)
    assert est.fit(Xtr, Ytr, Xva, Yva) is est
    scaler = StandardScaler().fit(Xtr)
    Zte = scaler.transform(Xte)
    logits, proba = est.decision_function(Xte), est.predict_proba(Xte)
    for j in range(Ytr.shape[1]):
        m = ~np.isnan(Ytr[:, j])
        lr = LogisticRegression(C=0.3, tol=1e-10, max_iter=10_000).fit(scaler.transform(Xtr[m]), Ytr[m, j])
        np.testing.assert_allclose(logits[:, j], lr.decision_function(Zte), atol=1e-5)
        np.testing.assert_allclose(proba[:, j], lr.predict_proba(Zte)[:, 1], atol=1e-6)
    assert est.C_.tolist() == [0.3, 0.3, 0.3]
    assert est.n_iter_.shape == (1, 3) and (est.n_iter_ > 0).all()


def test_unfitted_linear_probe_says_so():
    with pytest.raises(CxrbenchError, match="not fitted yet"):
        LinearProbe().predict_proba(np.zeros((2, 3)))


def test_float32_default_matches_sklearn_auc_within_0002():
    Xtr, Ytr, Xva, Yva, Xte, Yte = _data(seed=4, n=1500, d=64, labels=4)
    probe = fit_probe(Xtr, Ytr, Xva, Yva, Cs=[0.1])
    assert probe.weight_.dtype == torch.float32
    scaler = StandardScaler().fit(Xtr)
    proba = probe.predict_proba(Xte)
    for j in range(Ytr.shape[1]):
        m, t = ~np.isnan(Ytr[:, j]), ~np.isnan(Yte[:, j])
        lr = LogisticRegression(C=0.1).fit(scaler.transform(Xtr[m]), Ytr[m, j])
        ref = roc_auc_score(Yte[t, j], lr.predict_proba(scaler.transform(Xte[t]))[:, 1])
        assert abs(roc_auc_score(Yte[t, j], proba[t, j]) - ref) <= 0.002


def test_multiclass_matches_sklearn_multinomial():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(600, 12)) * 2 + 1
    y = (X @ rng.normal(size=(12, 4)) + rng.gumbel(size=(600, 4))).argmax(1)
    Y = np.eye(4)[y]
    Y[5] = np.nan  # an unknown row is left out
    probe = fit_probe(
        X[:400],
        Y[:400],
        X[400:500],
        Y[400:500],
        task="multiclass",
        Cs=[0.5],
        dtype="float64",
        tol=1e-9,
        max_iter=500,
    )
    keep = np.arange(400) != 5
    scaler = StandardScaler().fit(X[:400])  # standardisation uses every training row
    lr = LogisticRegression(C=0.5, tol=1e-10, max_iter=10_000)
    lr.fit(scaler.transform(X[:400][keep]), y[:400][keep])
    np.testing.assert_allclose(probe.weight_.numpy(), lr.coef_.T, atol=1e-5)
    np.testing.assert_allclose(probe.bias_.numpy(), lr.intercept_, atol=1e-5)
    P = probe.predict_proba(X[500:])
    np.testing.assert_allclose(P.sum(1), 1.0)
    np.testing.assert_allclose(P, lr.predict_proba(scaler.transform(X[500:])), atol=1e-6)


def test_C_is_chosen_per_label_on_validation_auc():
    # reference: sklearn fitted at each C, scored on val; the probe must pick the argmax
    Xtr, Ytr, Xva, Yva, _, _ = _data(seed=7, n=900, d=30, labels=2, nan_frac=0.0)
    Cs = (1e-3, 1e-1, 10.0)
    probe = fit_probe(Xtr, Ytr, Xva, Yva, Cs=Cs, dtype="float64", tol=1e-9, max_iter=500)
    scaler = StandardScaler().fit(Xtr)
    expected = []
    for j in range(2):
        aucs = []
        for C in Cs:
            lr = LogisticRegression(C=C, tol=1e-10, max_iter=10_000)
            lr.fit(scaler.transform(Xtr), Ytr[:, j])
            aucs.append(roc_auc_score(Yva[:, j], lr.decision_function(scaler.transform(Xva))))
        np.testing.assert_allclose(probe.val_auc_[:, j], aucs, atol=1e-6)
        expected.append(Cs[int(np.argmax(aucs))])
    assert len(set(expected)) == 2  # this data set needs a different C per label
    assert probe.C_.tolist() == expected


def test_hand_checkable_choice_and_tie_break():
    # one feature, perfectly separable in train: every C gives the same ranking on val
    # (same sign of the weight), so the val AUCs tie and the smallest C is chosen.
    x = np.array([[-2.0], [-1.0], [1.0], [2.0]])
    y = np.array([[0.0], [0.0], [1.0], [1.0]])
    xv = np.array([[-1.5], [0.5], [-0.5], [1.5]])
    yv = np.array([[0.0], [1.0], [0.0], [1.0]])
    probe = fit_probe(x, y, xv, yv, Cs=[10.0, 0.1, 1.0], dtype="float64")
    assert probe.val_auc_[:, 0].tolist() == [1.0, 1.0, 1.0]
    assert probe.C_.tolist() == [0.1]
    assert probe.weight_[0, 0] > 0
    # flipping the val labels makes every AUC 0: still a tie, still the smallest C
    flipped = fit_probe(x, y, xv, 1.0 - yv, Cs=[10.0, 0.1, 1.0], dtype="float64")
    assert flipped.val_auc_[:, 0].tolist() == [0.0, 0.0, 0.0] and flipped.C_.tolist() == [0.1]


def test_single_class_label_falls_back_to_constant_with_warning():
    Xtr, Ytr, Xva, Yva, Xte, _ = _data(seed=3, nan_frac=0.0)
    Ytr[:, 1] = 0.0
    Ytr[:3, 1] = np.nan
    with pytest.warns(UserWarning, match="label 1 has a single class"):
        probe = fit_probe(Xtr, Ytr, Xva, Yva, Cs=[1.0])
    assert np.isnan(probe.C_[1]) and probe.C_[0] == 1.0
    p = probe.predict_proba(Xte)[:, 1]
    n = np.sum(~np.isnan(Ytr[:, 1]))
    np.testing.assert_allclose(p, 0.5 / (n + 1.0), rtol=1e-5)  # (0 + 0.5) / (n + 1)


def test_single_class_in_val_uses_C_nearest_one():
    Xtr, Ytr, Xva, Yva, _, _ = _data(seed=5, nan_frac=0.0)
    Yva[:, 0] = 1.0
    with pytest.warns(UserWarning, match="validation AUC undefined for label 0"):
        probe = fit_probe(Xtr, Ytr, Xva, Yva, Cs=(0.01, 0.5, 100.0))
    assert probe.C_[0] == 0.5


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"task": "ordinal"}, "task must be one of multilabel, multiclass"),
        ({"Cs": []}, "Cs must be a non-empty"),
        ({"Cs": [0.0, 1.0]}, "Cs must be"),
        ({"max_iter": 0}, "max_iter must be a positive integer"),
        ({"dtype": "float16"}, "dtype must be one of float32, float64"),
    ],
)
def test_bad_parameters_are_named(kwargs, match):
    Xtr, Ytr, Xva, Yva, _, _ = _data(n=60)
    with pytest.raises(CxrbenchError, match=match):
        fit_probe(Xtr, Ytr, Xva, Yva, **kwargs)


def test_bad_arrays_are_named():
    Xtr, Ytr, Xva, Yva, _, _ = _data(n=60)
    with pytest.raises(CxrbenchError, match="X_val must have 24 columns"):
        fit_probe(Xtr, Ytr, Xva[:, :5], Yva)
    with pytest.raises(CxrbenchError, match="Y_train must hold 0, 1 or NaN"):
        fit_probe(Xtr, Ytr * 2, Xva, Yva)
    with pytest.raises(CxrbenchError, match="X_train has 30 rows but Y_train has 29"):
        fit_probe(Xtr, Ytr[:-1], Xva, Yva)
    bad = Xtr.copy()
    bad[0, 0] = np.nan
    with pytest.raises(CxrbenchError, match="X_train contains NaN"):
        fit_probe(bad, Ytr, Xva, Yva)
    with pytest.raises(CxrbenchError, match="one-hot"):
        fit_probe(Xtr, np.ones((30, 2)), Xva, np.ones((Xva.shape[0], 2)), task="multiclass")


def test_constant_feature_does_not_break_standardisation():
    Xtr, Ytr, Xva, Yva, Xte, _ = _data(seed=9, nan_frac=0.0)
    Xtr[:, 3] = 7.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        probe = fit_probe(Xtr, Ytr, Xva, Yva, Cs=[1.0])
    assert np.isfinite(probe.predict_proba(Xte)).all()
    assert probe.std_[3].item() == 1.0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_fit_matches_cpu_fit():
    Xtr, Ytr, Xva, Yva, Xte, _ = _data(seed=11)
    cpu = fit_probe(Xtr, Ytr, Xva, Yva, Cs=(0.01, 1.0), device="cpu", dtype="float64")
    gpu = fit_probe(Xtr, Ytr, Xva, Yva, Cs=(0.01, 1.0), device="cuda", dtype="float64")
    assert gpu.weight_.device.type == "cpu"  # the fitted probe always lives on the CPU
    np.testing.assert_array_equal(gpu.C_, cpu.C_)
    np.testing.assert_allclose(gpu.predict_proba(Xte), cpu.predict_proba(Xte), atol=1e-6)


def test_iteration_counts_are_reported_per_C_and_label():
    Xtr, Ytr, Xva, Yva, _, _ = _data(seed=6)
    capped = fit_probe(Xtr, Ytr, Xva, Yva, Cs=(0.01, 1.0), max_iter=3)
    assert capped.n_iter_.tolist() == [[3, 3, 3], [3, 3, 3]]  # every problem hits the cap
    free = fit_probe(Xtr, Ytr, Xva, Yva, Cs=(0.01, 1.0), dtype="float64")
    # same order of iterations as scikit-learn's lbfgs on the same objective and tolerance
    scaler = StandardScaler().fit(Xtr)
    for c, C in enumerate((0.01, 1.0)):
        for j in range(3):
            m = ~np.isnan(Ytr[:, j])
            lr = LogisticRegression(C=C).fit(scaler.transform(Xtr[m]), Ytr[m, j])
            assert 0 < free.n_iter_[c, j] <= 3 * lr.n_iter_[0] + 5


def _correlated(seed=0, n=2400, d=600, labels=3):
    """Features with a low-rank correlated part (as pooled CNN features) plus noise."""
    rng = np.random.default_rng(seed)
    Z = rng.normal(size=(n, 20))
    X = Z @ rng.normal(size=(20, d)) + 0.3 * rng.normal(size=(n, d)) + rng.normal(size=d) * 5
    Y = (Z[:, :labels] + rng.normal(size=(n, labels)) > 0.8).astype(float)
    return X[:1600], Y[:1600], X[1600:], Y[1600:]


def test_preconditioned_lbfgs_needs_fewer_iterations_than_sklearn_on_correlated_features():
    # d > 512 takes the low-rank (randomised eigen) preconditioner; a broken one would need
    # far more iterations than plain L-BFGS, or would not reach sklearn's solution
    Xtr, Ytr, Xva, Yva = _correlated()
    probe = fit_probe(Xtr, Ytr, Xva, Yva, Cs=[0.1], dtype="float64")
    scaler = StandardScaler().fit(Xtr)
    for j in range(Ytr.shape[1]):
        lr = LogisticRegression(C=0.1).fit(scaler.transform(Xtr), Ytr[:, j])
        assert probe.n_iter_[0, j] < lr.n_iter_[0], (probe.n_iter_[0, j], lr.n_iter_[0])
        ref = roc_auc_score(Yva[:, j], lr.decision_function(scaler.transform(Xva)))
        got = roc_auc_score(Yva[:, j], probe.decision_function(Xva)[:, j])
        assert abs(ref - got) < 1e-3


def test_standardise_matches_numpy_in_float64_and_transposes():
    from cxrbench.adapt.probe import _standardise

    rng = np.random.default_rng(5)
    X = rng.normal(size=(1000, 7)).astype(np.float32)
    X[:, 2] = 3.5  # constant: std 1, not 0 or noise
    X[:, 4] = 1e4 + 0.01 * X[:, 4]  # large offset, small spread
    XT, scaler = _standardise(X, torch.device("cpu"), torch.float32, chunk=64)
    mean, std = scaler.mean, scaler.std
    X64 = X.astype(np.float64)
    np.testing.assert_allclose(mean.numpy(), X64.mean(0), rtol=1e-9, atol=1e-6)
    ref_std = X64.std(0)
    ref_std[2] = 1.0
    np.testing.assert_allclose(std.numpy(), ref_std, rtol=1e-4)
    assert XT.shape == (7, 1000)
    np.testing.assert_allclose(XT.numpy().T, (X64 - X64.mean(0)) / ref_std, atol=1e-3)
    assert (XT[2] == 0).all()


def test_preconditioner_cuts_iterations_several_fold_on_a_power_law_spectrum():
    # pooled CNN features have eigenvalues decaying roughly as a power law: plain L-BFGS (sklearn)
    # crawls along the small ones; the preconditioned one should not
    rng = np.random.default_rng(8)
    n, d = 3000, 640
    basis = np.linalg.qr(rng.normal(size=(d, d)))[0]
    X = np.maximum((rng.normal(size=(n, d)) * np.arange(1, d + 1) ** -0.8) @ basis + 0.02, 0)
    Xs = StandardScaler().fit_transform(X)
    Y = (Xs @ rng.normal(size=(d, 2)) / d**0.5 + 0.5 * rng.normal(size=(n, 2)) > 0.4).astype(float)
    probe = fit_probe(X[:2000], Y[:2000], X[2000:], Y[2000:], Cs=[1.0], dtype="float64", max_iter=1000)
    Ztr = StandardScaler().fit(X[:2000]).transform(X[:2000])
    for j in range(2):
        lr = LogisticRegression(C=1.0, max_iter=1000).fit(Ztr, Y[:2000, j])
        assert 3 * probe.n_iter_[0, j] < lr.n_iter_[0], (probe.n_iter_[0, j], lr.n_iter_[0])
