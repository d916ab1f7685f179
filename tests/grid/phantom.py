"""A tiny phantom suite for the grid tests: 40 patients of 32-px phantoms, a 1-epoch SimCLR encoder."""

from __future__ import annotations

from pathlib import Path

TOML = """
[suites.phantom]
datasets = ["synthetic"]
encoders = ["random", "simclr"]
baseline = "random"
adaptations = {adaptations}
fractions = [1.0]
seeds = [0]
arch = "resnet10t"

[suites.phantom.prepare.synthetic]
n_patients = 40
size = 32
seed = 0

[suites.phantom.pretrain.simclr]
method = "simclr"
dataset = "synthetic"
epochs = 1
batch_size = 16

[suites.phantom.finetune]
optimizer = "adamw"
lr = 0.001
epochs = 1
batch_size = 16

[suites.phantom.evaluate]
n_boot = 20

[suites.phantom.compare]
n_boot = 20
plots = false
"""


def write_suite(folder: Path, adaptations: tuple[str, ...] = ("probe",)) -> Path:
    """``folder/phantom.toml`` defining suite ``phantom``; returns its path."""
    path = folder / "phantom.toml"
    path.write_text(TOML.format(adaptations=list(adaptations)).replace("'", '"'))
    return path


def phantom(folder: Path, adaptations: tuple[str, ...] = ("probe",)):
    """The ``phantom`` Suite object."""
    from cxrbench.config import load_config

    return load_config(write_suite(folder, adaptations))["phantom"]


def tables(run: Path) -> dict[str, bytes]:
    """The result tables of a run: comparisons' Markdown and CSV files and the metrics, by name."""
    found = {p.relative_to(run).as_posix(): p.read_bytes() for p in (run / "comparisons").glob("*.md")}
    found.update({p.relative_to(run).as_posix(): p.read_bytes() for p in (run / "comparisons").glob("*.csv")})
    import pyarrow.parquet as pq

    found["metrics"] = pq.read_table(run / "evaluation" / "metrics.parquet").to_pandas().to_csv().encode()
    return found
