"""Attribute targets for the bias probes: age in 10-year bins (multiclass), sex (binary: female),
race (multiclass) where the dataset records it; for CT, one slice per study: the one with the
largest body cross-section, as the chest CT study probes ("middle slices, as marked by the largest
body cross section area covered")."""

from __future__ import annotations

import numpy as np
import pandas as pd

from cxrbench.data.adapters.base import label_key
from cxrbench.errors import CxrbenchError

ATTRIBUTES = ("age", "sex", "race")
#: Adaptation kind of attribute probes (``attr``, ``attr-f0.10-s0``).
KIND = "attr"


def attribute_dataset(dataset: str, target: str) -> str:
    """The predictions folder of an attribute probe: ``DATASET+age`` (its own dataset for evaluate
    and compare, since its labels and, for CT, its samples differ from the dataset's)."""
    return f"{dataset}+{target}"


def middle_slices(samples: pd.DataFrame, images: np.ndarray | None = None) -> pd.DataFrame:
    """One row per study (its first series by id) for datasets of CT slices: the slice with the
    largest body cross-section (``body_area`` of its cached image, ties to the middle of the series'
    order), as the chest CT study picks the slice it probes; the middle slice by order when
    ``images`` (the prepared cache) is not given. Other datasets' rows unchanged."""
    if "series_id" not in samples or "slice_index" not in samples or samples["series_id"].isna().all():
        return samples
    study = samples["study_id"] if "study_id" in samples else samples["series_id"]
    study = study.fillna(samples["series_id"]).astype(str)
    first = samples.assign(_study=study).groupby("_study")["series_id"].transform("min")
    series = samples[samples["series_id"] == first]
    order = series.sort_values(["series_id", "slice_index"], kind="stable")
    if images is None:
        position = order.groupby("series_id").cumcount()
        size = order.groupby("series_id")["slice_index"].transform("size")
        return order[position == size // 2].sort_index()
    chosen = [
        rows.index[_largest(rows["cache_index"].to_numpy(dtype=np.int64), images)]
        for _, rows in order.groupby("series_id", sort=False)
    ]
    return samples.loc[sorted(chosen)]


def body_area(image: np.ndarray) -> int:
    """Pixels inside the body's outline on a windowed CT slice: everything brighter than the window's
    floor (air and lung are both at 0 in the soft-tissue window), with enclosed holes such as the
    lungs filled, so a slice is measured by its outline, not by how much of it is soft tissue. A
    slice in several windows (``[C, H, W]``) counts pixels above the floor of every window: a lung
    window shows the air around the body too."""
    from scipy import ndimage

    above = np.asarray(image) > 0
    return int(ndimage.binary_fill_holes(above if above.ndim == 2 else above.all(axis=0)).sum())


#: Series longer than this are measured at every k-th slice, then slice by slice around the best one.
_DENSE = 64


def _largest(rows: np.ndarray, images: np.ndarray) -> int:
    """Position (in ``rows``, the series in slice order) of the slice with the largest body area;
    ties go to the one nearest the middle."""
    n = len(rows)
    step = max(1, n // _DENSE)
    areas: dict[int, int] = {}

    def measure(positions) -> None:
        for k in positions:
            if k not in areas:
                areas[k] = body_area(images[int(rows[k])])

    def best() -> int:
        return max(areas, key=lambda k: (areas[k], -abs(k - n // 2)))

    measure(range(n // 2 % step, n, step))  # the middle slice is always among them
    if step > 1:
        top = best()
        measure(range(max(0, top - step + 1), min(n, top + step)))
    return best()


def _recorded(samples: pd.DataFrame, column: str) -> pd.Series | None:
    if column not in samples:
        return None
    values = samples[column]
    return None if values.isna().all() else values


def attribute_targets(samples: pd.DataFrame, target: str, *, dataset: str) -> tuple[list[str], np.ndarray, str]:
    """(labels, Y [N, L] float with NaN unknown, task) of ``target`` for the rows of ``samples``."""
    if target not in ATTRIBUTES:
        raise CxrbenchError(f"--target {target!r}: choose from {', '.join(ATTRIBUTES)}")
    values = _recorded(samples, target)
    if values is None:
        has = [a for a in ATTRIBUTES if _recorded(samples, a) is not None]
        raise CxrbenchError(f"dataset '{dataset}' records no {target} (it has: {', '.join(has) or 'none of them'})")
    if target == "sex":
        sex = values.astype(object).where(values.isin(["M", "F"]))
        y = np.where(sex.isna(), np.nan, (sex == "F").astype(float)).reshape(-1, 1)
        return ["female"], y, "multilabel"
    if target == "age":
        age = pd.to_numeric(values, errors="coerce")
        group = (age // 10 * 10).astype("Int64")
        labels = [f"age_{b}-{b + 9}" for b in sorted(group.dropna().unique())]
        codes = group.map({b: i for i, b in enumerate(sorted(group.dropna().unique()))})
    else:
        text = values.astype(object).where(values.notna())
        names = {v: label_key(f"race {v}") for v in text.dropna().unique()}
        labels = sorted(set(names.values()))
        codes = text.map(names).map({name: i for i, name in enumerate(labels)})
    if len(labels) < 2:
        raise CxrbenchError(
            f"dataset '{dataset}': every known {target} falls in one class ({labels[0]}); nothing to probe"
        )
    y = np.full((len(samples), len(labels)), np.nan)
    known = codes.notna().to_numpy()
    y[known] = 0.0
    y[np.flatnonzero(known), codes[known].to_numpy(dtype=np.int64)] = 1.0
    return labels, y, "multiclass"
