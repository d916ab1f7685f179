"""Zero-shot scoring: prompts (defaults, TOML, errors) and scores against a direct computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cxrbench.adapt.zeroshot import SCALE, TextTower, load_prompts, zeroshot_scores
from cxrbench.errors import CxrbenchError


def test_default_prompts_cover_chexpert_nih_and_any_label() -> None:
    p = load_prompts(["pleural_effusion", "no_finding", "mass", "lung_opacity", "odd_label"])
    assert p.positive["pleural_effusion"] == ["There is a pleural effusion."]
    assert p.negative["pleural_effusion"] == ["There is no pleural effusion."]
    assert p.positive["no_finding"] == ["No acute cardiopulmonary process."]
    assert p.negative["odd_label"] == ["There is no odd label."]


def test_toml_prompts_override_per_label(tmp_path) -> None:
    path = tmp_path / "prompts.toml"
    path.write_text('[nodule]\npositive = ["Nodule.", "A lung nodule."]\nnegative = "No nodule."\n')
    p = load_prompts(["nodule", "pneumothorax"], path)
    assert p.positive["nodule"] == ["Nodule.", "A lung nodule."] and p.negative["nodule"] == ["No nodule."]
    assert p.positive["pneumothorax"] == ["There is a pneumothorax."]
    for text, match in (
        ('[mass]\npositive = "x"\n', "labels the dataset lacks: mass"),
        ("[nodule]\npositive = []\n", "must be a string or a list"),
        ('[nodule]\nother = "x"\n', "only 'positive' and 'negative'"),
        ("[nodule\n", "not valid TOML"),
    ):
        path.write_text(text)
        with pytest.raises(CxrbenchError, match=match):
            load_prompts(["nodule"], path)
    with pytest.raises(CxrbenchError, match="does not exist"):
        load_prompts(["nodule"], tmp_path / "none.toml")


def test_scores_are_the_sigmoid_of_the_cosine_difference_with_prompt_ensembling() -> None:
    g = torch.Generator().manual_seed(0)
    table = {t: torch.randn(4, generator=g) for t in ("a+", "a-", "b+1", "b+2", "b-")}
    tower = TextTower(image=lambda f: 2 * f, text=lambda texts: torch.stack([table[t] for t in texts]))
    prompts = type("P", (), {"positive": {"a": ["a+"], "b": ["b+1", "b+2"]}, "negative": {"a": ["a-"], "b": ["b-"]}})
    feats = torch.randn(5, 4, generator=g).numpy()
    got = zeroshot_scores(tower, feats, ["a", "b"], prompts)
    b_pos = F.normalize(F.normalize(table["b+1"], dim=0) + F.normalize(table["b+2"], dim=0), dim=0)
    for i in range(5):
        x = torch.as_tensor(feats[i])
        cos = lambda v, x=x: float(F.cosine_similarity(x, v, dim=0))  # noqa: E731
        want_a = 1 / (1 + np.exp(-SCALE * (cos(table["a+"]) - cos(table["a-"]))))
        want_b = 1 / (1 + np.exp(-SCALE * (cos(b_pos) - cos(table["b-"]))))
        assert got[i, 0] == pytest.approx(want_a, rel=1e-5) and got[i, 1] == pytest.approx(want_b, rel=1e-5)
