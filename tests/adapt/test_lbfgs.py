"""The batched L-BFGS solver: K problems (labels x C) at once equal scikit-learn's lbfgs one by one;
its preconditioner and randomised eigen-decomposition against numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from cxrbench.adapt.lbfgs import Preconditioner, fit_logistic

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _binary_problems(seed=0, n=500, d=12, labels=2, Cs=(0.05, 2.0)):
    """Standardised features XT [d, n] and len(Cs) * labels masked binary problems (k = c * L + l)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) @ rng.normal(size=(d, d))
    X = (X - X.mean(0)) / X.std(0)
    Y = (X @ rng.normal(size=(d, labels)) / d**0.5 + rng.normal(size=(n, labels)) > 0.3).astype(float)
    M = (rng.random((n, labels)) > 0.15).astype(float)
    K = len(Cs) * labels
    Yk = torch.as_tensor(np.tile(Y.T, (len(Cs), 1)))[:, None]
    Mk = torch.as_tensor(np.tile(M.T, (len(Cs), 1)))[:, None]
    C = torch.tensor(Cs, dtype=torch.float64).repeat_interleave(labels)
    assert Yk.shape == (K, 1, n)
    return torch.as_tensor(X.T.copy()), Yk, Mk, C, X, (Y, M)


def test_batched_binary_problems_equal_sklearn_one_by_one():
    XT, Y, M, C, X, (y, m) = _binary_problems()
    theta, n_iter = fit_logistic(XT, Y, M, C, softmax=False, tol=1e-10, max_iter=1000)
    assert theta.shape == (4, 1, 13) and theta.dtype == torch.float64
    L = y.shape[1]
    for k in range(4):
        j, rows = k % L, m[:, k % L] == 1
        lr = LogisticRegression(C=C[k].item(), tol=1e-12, max_iter=10_000).fit(X[rows], y[rows, j])
        np.testing.assert_allclose(theta[k, 0, :-1].numpy(), lr.coef_[0], atol=1e-5)
        assert theta[k, 0, -1].item() == pytest.approx(lr.intercept_[0], abs=1e-5)
        assert 0 < n_iter[k] < 1000


def test_softmax_problem_equals_sklearn_multinomial():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(400, 8))
    y = (X @ rng.normal(size=(8, 3)) + rng.gumbel(size=(400, 3))).argmax(1)
    Y = torch.as_tensor(np.eye(3)[y].T)[None]  # [K=1, G=3, N]
    M = torch.ones(1, 1, 400, dtype=torch.float64)
    theta, _ = fit_logistic(
        torch.as_tensor(X.T.copy()),
        Y,
        M,
        torch.tensor([0.7], dtype=torch.float64),
        softmax=True,
        tol=1e-10,
        max_iter=1000,
    )
    lr = LogisticRegression(C=0.7, tol=1e-12, max_iter=10_000).fit(X, y)
    np.testing.assert_allclose(theta[0, :, :-1].numpy(), lr.coef_, atol=1e-5)
    np.testing.assert_allclose(theta[0, :, -1].numpy(), lr.intercept_, atol=1e-5)


def test_problems_left_out_of_runs_stay_at_the_prior_and_cap_counts_iterations():
    XT, Y, M, C, _, (y, m) = _binary_problems()
    runs = torch.tensor([True, False, True, False])
    theta, n_iter = fit_logistic(XT, Y, M, C, softmax=False, runs=runs, max_iter=2)
    assert n_iter.tolist() == [2, 0, 2, 0]
    assert (theta[1, 0, :-1] == 0).all()
    pos, n = (y[:, 1] * m[:, 1]).sum(), m[:, 1].sum()
    assert theta[1, 0, -1].item() == pytest.approx(np.log((pos + 0.5) / (n - pos + 0.5)))


def test_top_eigen_matches_a_full_eigendecomposition():
    from cxrbench.adapt.lbfgs import _top_eigen

    rng = np.random.default_rng(3)
    Q, _ = np.linalg.qr(rng.normal(size=(300, 300)))
    lam = 100.0 * 0.8 ** np.arange(300)  # a decaying spectrum, as a feature covariance's
    gram = torch.as_tensor((Q * lam) @ Q.T)
    got_lam, got_V = _top_eigen(gram, 20)
    got = np.sort(got_lam.numpy())[::-1]
    ref_lam, ref_V = np.linalg.eigh(gram.numpy())
    ref = ref_lam[::-1][:20]
    # Ritz values never exceed the true ones; with two power iterations the leading ones are
    # close and the tail (where the spectrum decays slowly) is within a few per cent
    assert (got <= ref * (1 + 1e-9)).all()
    np.testing.assert_allclose(got[:10], ref[:10], rtol=1e-3)
    np.testing.assert_allclose(got, ref, rtol=0.03)
    # the leading eigenvectors span the same subspace: their projectors agree
    top = np.argsort(got_lam.numpy())[::-1][:5]
    V = got_V.numpy()[:, top]
    np.testing.assert_allclose(V @ V.T, ref_V[:, -5:] @ ref_V[:, -5:].T, atol=1e-3)


def test_fit_leaves_the_torch_thread_count_as_it_found_it():
    # the CPU fit runs torch's elementwise work on one thread while numpy's BLAS takes the cores
    XT, Y, M, C, _, _ = _binary_problems(n=200)
    torch.set_num_threads(2)  # the fixture restores the original afterwards
    fit_logistic(XT, Y, M, C, softmax=False)
    assert torch.get_num_threads() == 2


@pytest.mark.parametrize(("m", "d"), [(40, 30), (300, 600), (1100, 50)])
def test_preconditioner_equals_the_inverse_of_the_starting_hessian_where_it_is_exact(m, d):
    # few rows (kernel route, also with fewer rows than features) and few features (full eigh):
    # M = (I + a X'X/m)^-1 on the weights and 1/a on the intercept, against numpy's inverse
    rng = np.random.default_rng(m)
    sample = rng.normal(size=(m, d)) @ rng.normal(size=(d, d)) / d**0.5
    a = torch.tensor([[3.0], [0.5]], dtype=torch.float64)  # two problems
    P = Preconditioner(torch.as_tensor(sample), a, a)
    x = torch.as_tensor(rng.normal(size=(2, 1, d + 1)))
    got = P(x).numpy()
    gram = sample.T @ sample / m
    for k, ak in enumerate((3.0, 0.5)):
        ref = np.linalg.solve(np.eye(d) + ak * gram, x[k, 0, :d].numpy())
        np.testing.assert_allclose(got[k, 0, :d], ref, rtol=1e-8, atol=1e-10)
        assert got[k, 0, d] == pytest.approx(x[k, 0, d].item() / ak)
