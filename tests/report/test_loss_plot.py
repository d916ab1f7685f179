"""The training-loss plot: one point per logged step, written as a valid PNG (and PDF)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxrbench.errors import CxrbenchError
from cxrbench.report import plots


def _log(steps: int, *, terms: tuple[str, ...] = ()) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "step": np.arange(1, steps + 1),
            "epoch": np.arange(steps) // 4,
            "loss": np.linspace(3.0, 1.0, steps) + rng.normal(0, 0.05, steps),
            "lr": np.full(steps, 1e-3),
            "images_per_s": np.full(steps, 100.0),
        }
    )
    for term in terms:
        frame[term] = rng.random(steps)
    return frame


@pytest.fixture
def drawn(monkeypatch):
    """The figures ``_save`` got, so tests can read the drawn lines back."""
    figures = []
    save = plots._save

    def keep(fig, out_stem):
        figures.append(
            [
                (line.get_label(), np.asarray(line.get_xdata()), np.asarray(line.get_ydata()))
                for line in fig.axes[0].lines
            ]
        )
        return save(fig, out_stem)

    monkeypatch.setattr(plots, "_save", keep)
    return figures


def test_loss_plot_has_one_point_per_step_and_is_a_valid_png(tmp_path, drawn) -> None:
    log = _log(11, terms=("loss_rotation",))
    png, pdf = plots.plot_training_loss(log, tmp_path / "run-loss", title="t")
    assert (png.name, pdf.name) == ("run-loss.png", "run-loss.pdf")
    with Image.open(png) as image:
        image.verify()
    with Image.open(png) as image:
        assert image.format == "PNG" and min(image.size) > 100
    assert pdf.read_bytes().startswith(b"%PDF")
    (lines,) = drawn
    data = {label: (x, y) for label, x, y in lines if not label.startswith("_")}
    assert set(data) == {"loss", "loss_rotation"}  # lr and images/s are not loss terms
    x, y = data["loss"]
    np.testing.assert_array_equal(x, log["step"].to_numpy())
    np.testing.assert_allclose(y, log["loss"].to_numpy())
    epoch_marks = [label for label, *_ in lines if label.startswith("_")]
    assert len(epoch_marks) == 2  # epochs 1 and 2 start inside the 11 steps


def test_same_log_gives_the_same_bytes_and_a_log_without_loss_is_refused(tmp_path) -> None:
    a = plots.plot_training_loss(_log(5), tmp_path / "a")
    b = plots.plot_training_loss(_log(5), tmp_path / "b")
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
    with pytest.raises(CxrbenchError, match="loss"):
        plots.plot_training_loss(_log(5).drop(columns="loss"), tmp_path / "c")
