"""Image–text losses against references: CLIP vs open_clip's ClipLoss, ConVIRT vs InfoNCE and a
per-sample formula, GLoRIA's local term vs explicit loops, REFERS's view fusion vs a per-study softmax,
Modified ConVIRT vs its definition."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from cxrbench.pretrain.losses.clip import clip_loss
from cxrbench.pretrain.losses.convirt import convirt_loss, directional
from cxrbench.pretrain.losses.convirt_sections import sections_loss
from cxrbench.pretrain.losses.gloria import TAU1, TAU2, TAU3, gloria_loss, local_scores
from cxrbench.pretrain.losses.info_nce import info_nce
from cxrbench.pretrain.losses.refers import fuse_views


def _pairs(b=6, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, d, generator=g, dtype=torch.float64), torch.randn(b, d, generator=g, dtype=torch.float64)


def _ell(u, v, i, tau):
    """ConVIRT's ℓ_i(u→v) written out: -log exp(<u_i,v_i>/τ) / Σ_k exp(<u_i,v_k>/τ)."""
    cos = [float(F.cosine_similarity(u[i], v[k], dim=0)) for k in range(len(v))]
    return -(cos[i] / tau - math.log(sum(math.exp(c / tau) for c in cos)))


def test_convirt_equals_its_per_sample_formula_and_info_nce() -> None:
    v, u = _pairs()
    tau, lam = 0.1, 0.75
    want = sum(lam * _ell(v, u, i, tau) + (1 - lam) * _ell(u, v, i, tau) for i in range(6)) / 6
    assert float(convirt_loss(v, u, temperature=tau, weight=lam)) == pytest.approx(want, rel=1e-5)
    # image→text direction = InfoNCE with the other reports of the batch as negatives
    per = [info_nce(v[i : i + 1], u[i : i + 1], torch.cat([u[:i], u[i + 1 :]]), temperature=tau) for i in range(6)]
    to_text, _ = directional(v, u, temperature=tau)
    assert float(to_text) == pytest.approx(float(torch.stack(per).mean()), rel=1e-5)


def test_clip_equals_open_clip_clip_loss() -> None:
    from open_clip.loss import ClipLoss

    image, text = _pairs(8, 4, seed=1)
    scale = torch.tensor(math.log(1 / 0.07))
    want = ClipLoss()(F.normalize(image.float(), dim=1), F.normalize(text.float(), dim=1), scale.exp())
    torch.testing.assert_close(clip_loss(image, text, scale), want, rtol=1e-5, atol=1e-6)
    # the scale is capped at 100, as CLIP clamps it
    capped = ClipLoss()(F.normalize(image.float(), dim=1), F.normalize(text.float(), dim=1), torch.tensor(100.0))
    torch.testing.assert_close(clip_loss(image, text, torch.tensor(9.0)), capped, rtol=1e-5, atol=1e-6)


def test_gloria_local_scores_equal_explicit_loops() -> None:
    g = torch.Generator().manual_seed(2)
    regions, words = torch.randn(3, 4, 5, generator=g), torch.randn(3, 6, 5, generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 0]])
    got = local_scores(regions, words, mask)
    for j in range(3):
        for k in range(3):
            total = 0.0
            for i in range(int(mask[k].sum())):
                w = words[k, i]
                sims = torch.stack([F.cosine_similarity(w, regions[j, r], dim=0) for r in range(4)])
                a = torch.softmax(TAU1 * sims, 0)
                c = (a.unsqueeze(1) * regions[j]).sum(0)
                total += math.exp(TAU2 * float(F.cosine_similarity(c, w, dim=0)))
            assert float(got[j, k]) == pytest.approx(math.log(total) / TAU2, rel=1e-4)
    image, text = torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g)
    loss, glob, loc = gloria_loss(image, text, regions, words, mask)
    target = torch.arange(3)
    scores = TAU3 * F.normalize(image, dim=1) @ F.normalize(text, dim=1).T
    want_g = (F.cross_entropy(scores, target) + F.cross_entropy(scores.T, target)) / 2
    want_l = (F.cross_entropy(TAU3 * got, target) + F.cross_entropy(TAU3 * got.T, target)) / 2
    torch.testing.assert_close(glob, want_g)
    torch.testing.assert_close(loc, want_l)
    torch.testing.assert_close(loss, want_g + want_l)


def test_refers_fuses_each_studys_views_by_softmax_weights() -> None:
    g = torch.Generator().manual_seed(3)
    feats, scores = torch.randn(5, 3, generator=g), torch.randn(5, generator=g)
    groups = torch.tensor([0, 1, 0, 2, 1])
    fused = fuse_views(feats, scores, groups)
    for s in range(3):
        idx = (groups == s).nonzero().flatten()
        w = torch.softmax(scores[idx], 0)
        torch.testing.assert_close(fused[s], (w.unsqueeze(1) * feats[idx]).sum(0))


def test_sections_loss_is_its_definition() -> None:
    image, findings = _pairs(5, 4, seed=4)
    impression = _pairs(5, 4, seed=5)[0]
    total, g, loc = sections_loss(image, findings, impression, temperature=0.1)
    want_g = convirt_loss(image, (findings + impression) / 2, temperature=0.1, weight=0.75)
    want_l = (
        sum(0.75 * _ell(findings, impression, i, 0.1) + 0.25 * _ell(impression, findings, i, 0.1) for i in range(5)) / 5
    )
    assert float(g) == pytest.approx(float(want_g)) and float(loc) == pytest.approx(want_l, rel=1e-5)
    assert float(total) == pytest.approx(0.75 * want_l + 0.25 * float(want_g), rel=1e-5)
