"""Phantom sites: site ``a`` is the default acquisition byte for byte; site ``b`` another hospital's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxrbench.data.synthetic import COLUMNS, check_phantoms, write_phantoms
from cxrbench.errors import CxrbenchError


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_site_a_is_the_default(tmp_path: Path) -> None:
    write_phantoms(tmp_path / "default", n_patients=10, size=32, seed=4)
    write_phantoms(tmp_path / "a", n_patients=10, size=32, seed=4, site="a")
    assert _files(tmp_path / "default") == _files(tmp_path / "a")


def test_site_b_has_its_own_patients_markers_and_contrast(tmp_path: Path) -> None:
    a = pd.read_csv(write_phantoms(tmp_path / "a", n_patients=12, size=64, seed=4), dtype=str)
    b = pd.read_csv(write_phantoms(tmp_path / "b", n_patients=12, size=64, seed=4, site="b"), dtype=str)
    assert list(b.columns) == list(COLUMNS)
    assert b["PatientID"].str.startswith("bp").all() and not set(a["PatientID"]) & set(b["PatientID"])
    spreads = {}
    for name, table, root in (("a", a, tmp_path / "a"), ("b", b, tmp_path / "b")):
        values = []
        for rel in table["Path"]:
            pixels = np.asarray(Image.open(root / rel)).astype(float)
            if name == "b":  # the laterality marker's first cell (row 0, column 0 of R and L) is burned in white
                assert pixels[3, 3] == pixels.max()
            values.append(pixels.std() / (pixels.max() - pixels.min()))
        spreads[name] = float(np.mean(values))
    assert spreads["b"] < 0.85 * spreads["a"]  # a flatter contrast curve
    # the same seed and site give the same bytes
    write_phantoms(tmp_path / "b2", n_patients=12, size=64, seed=4, site="b")
    assert _files(tmp_path / "b") == _files(tmp_path / "b2")


def test_unknown_site_is_refused() -> None:
    with pytest.raises(CxrbenchError, match="site='c': choose one of a, b"):
        check_phantoms(n_patients=10, size=32, seed=0, site="c")
