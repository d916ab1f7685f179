"""JCL loss: its closed form computed independently, and the Monte-Carlo expectation it bounds."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.special import logsumexp

from cxrbench.pretrain.losses.info_nce import info_nce
from cxrbench.pretrain.losses.jcl import jcl_loss


def _unit(x: np.ndarray, axis: int = -1) -> np.ndarray:
    return x / np.linalg.norm(x, axis=axis, keepdims=True)


def _inputs(b: int = 3, m: int = 4, d: int = 5, n: int = 7, spread: float = 0.4, seed: int = 0):
    rng = np.random.default_rng(seed)
    q = _unit(rng.normal(size=(b, d)))
    centre = rng.normal(size=(b, 1, d))
    keys = _unit(centre + spread * rng.normal(size=(b, m, d)))
    negatives = _unit(rng.normal(size=(n, d)))
    return q, keys, negatives


def _t(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(x)


@pytest.mark.parametrize("weight", [0.0, 1.0, 3.5])
def test_equals_the_closed_form_from_the_keys_mean_and_covariance(weight: float) -> None:
    q, keys, negatives = _inputs()
    t = 0.3
    want = []
    for qi, ki in zip(q, keys, strict=True):
        mu, sigma = ki.mean(axis=0), np.cov(ki.T, bias=True)  # the M keys' mean and (1/M) covariance
        pos = qi @ mu / t
        neg = negatives @ qi / t + weight * (qi @ sigma @ qi) / (2 * t * t)
        want.append(logsumexp(np.r_[pos, neg]) - pos)
    got = jcl_loss(_t(q), _t(keys), _t(negatives), temperature=t, covariance_weight=weight)
    assert float(got) == pytest.approx(np.mean(want), rel=1e-5)


def test_bounds_the_expected_info_nce_over_gaussian_positive_keys_monte_carlo() -> None:
    # For k ~ N(mu, Sigma) the expected InfoNCE E[log(1 + S exp(-q.k/t))] (S: the negatives' sum of
    # exp(q.n/t)) lies between its value at k = mu (convexity) and the JCL bound log(1 + S E[exp(-q.k/t)])
    # (concavity of log), which the Gaussian moment generating function turns into the closed form.
    q, keys, negatives = _inputs(b=1, m=6, spread=0.5, seed=1)
    t = 0.5
    qi, mu, sigma = q[0], keys[0].mean(axis=0), np.cov(keys[0].T, bias=True)
    samples = np.random.default_rng(2).multivariate_normal(mu, sigma, size=400_000, method="eigh")
    s = np.exp(negatives @ qi / t).sum()
    per_key = np.log1p(s * np.exp(-(samples @ qi) / t))
    bound = float(jcl_loss(_t(q), _t(keys), _t(negatives), temperature=t, covariance_weight=1.0))
    assert np.log1p(s * np.mean(np.exp(-(samples @ qi) / t))) == pytest.approx(bound, rel=2e-3)
    assert np.log1p(s * np.exp(-(mu @ qi) / t)) < per_key.mean() < bound


def test_keys_without_spread_give_info_nce_with_that_key() -> None:
    q, keys, negatives = _inputs()
    same = np.repeat(keys[:, :1], 4, axis=1)
    got = jcl_loss(_t(q), _t(same), _t(negatives), temperature=0.2, covariance_weight=5.0)
    want = info_nce(_t(q), _t(same[:, 0]), _t(negatives), temperature=0.2)
    torch.testing.assert_close(got, want.to(got.dtype))


def test_only_the_queries_get_gradients_and_shapes_are_checked() -> None:
    q, keys, negatives = (_t(x).float().requires_grad_() for x in _inputs())
    jcl_loss(q, keys, negatives).backward()
    assert q.grad is not None and keys.grad is None and negatives.grad is None
    with pytest.raises(ValueError, match="M >= 2"):
        jcl_loss(q, keys[:, :1], negatives)
    with pytest.raises(ValueError, match="negatives must be"):
        jcl_loss(q, keys, negatives[:, :2])
