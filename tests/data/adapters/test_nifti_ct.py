"""NIfTI CT volumes: HU from the header's scaling, slices ordered along the affine's normal (not the
voxel index), one slice decoded per cache row, bad volumes quarantined, and nibabel as an extra."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxrbench.data.images import ImageError, read_image
from cxrbench.data.nifti import nibabel, read_slice_hu, slice_positions, split_slice
from cxrbench.data.transforms import Preprocess
from cxrbench.data.volumes import window_hu
from cxrbench.errors import CxrbenchError
from cxrbench.stages.prepare import prepare

nib = pytest.importorskip("nibabel")

SLOPE, INTER = 2.0, -1024.0


def _raw(n: int = 5) -> np.ndarray:
    """Stored values: 600 + 10 k + i + 3 j, so HU = 176 + 20 k + 2 i + 6 j (k: third voxel axis)."""
    i, j, k = np.meshgrid(np.arange(16), np.arange(12), np.arange(n), indexing="ij")
    return (600 + 10 * k + i + 3 * j).astype(np.int16)


def _write(path: Path, *, flip: bool = True, raw: np.ndarray | None = None) -> np.ndarray:
    """A volume whose third axis runs head to feet (``flip``): voxel k=0 is the top slice."""
    affine = np.diag([0.8, 0.8, -2.5 if flip else 2.5, 1.0])
    affine[:3, 3] = [-6.0, -4.0, 100.0]
    image = nib.Nifti1Image(_raw() if raw is None else raw, affine)
    image.header.set_slope_inter(SLOPE, INTER)
    nib.save(image, str(path))
    return affine


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_a_slice_is_in_hu_from_the_headers_scaling_and_shown_rows_by_columns(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"vol{suffix}"
    _write(path)
    reference = nib.load(str(path)).get_fdata()  # nibabel's own scaled volume
    for k in (0, 3, 4, 3):
        hu = read_slice_hu(path, k)
        want = (_raw()[:, :, k] * SLOPE + INTER).T  # hand-computed
        np.testing.assert_array_equal(hu, want)
        np.testing.assert_allclose(hu, reference[:, :, k].T)
        assert hu.shape == (12, 16) and hu[0, 1] == 176 + 20 * k + 2  # row 0, column 1: i = 1, j = 0
    image = read_image(f"{path}#2", image_format="ct:300:200")
    np.testing.assert_allclose(image, window_hu(read_slice_hu(path, 2), 300, 200))
    with pytest.raises(ImageError, match="outside the volume's 5 slices"):
        read_image(f"{path}#5", image_format="ct:50:350")
    with pytest.raises(ImageError, match="needs a ct:LEVEL:WIDTH"):
        read_image(f"{path}#1")


def test_positions_follow_the_normal_of_the_in_plane_axes() -> None:
    down = np.diag([0.8, 0.8, -2.5, 1.0])
    down[:3, 3] = [0, 0, 100]
    np.testing.assert_allclose(slice_positions(down, 3), [100, 97.5, 95])  # ascending = k descending
    # in-plane axes swapped (normal flips): the same voxel order now runs the other way
    swapped = down[:, [1, 0, 2, 3]]
    np.testing.assert_allclose(slice_positions(swapped, 3), [-100, -97.5, -95])
    with pytest.raises(ValueError, match="degenerate"):
        slice_positions(np.zeros((4, 4)), 3)
    assert split_slice("a/b.nii.gz#12") == ("a/b.nii.gz", 12)
    assert split_slice("a/b#1.png") == ("a/b#1.png", None)


def _dataset(root: Path) -> None:
    root.mkdir()
    _write(root / "a.nii.gz")
    _write(root / "b.nii", flip=False)
    (root / "broken.nii.gz").write_bytes(b"not a nifti file")
    pd.DataFrame(
        {
            "volume": ["a.nii.gz", "b.nii", "broken.nii.gz"],
            "patient_id": ["p1", "p2", "p3"],
            "sex": ["F", "M", "F"],
            "age": [61, 48, 70],
            "pe": [1, 0, 1],
        }
    ).to_csv(root / "labels.csv", index=False)


def test_prepare_orders_slices_along_the_normal_and_quarantines_a_bad_volume(tmp_path: Path) -> None:
    root = tmp_path / "nifti"
    _dataset(root)
    run = tmp_path / "run"
    prepare(run, "nifti-ct", root=root, options={"window": "300,600"}, image=Preprocess(size=16), workers=0)
    samples = pd.read_parquet(run / "prepared/nifti-ct/samples.parquet")
    assert len(samples) == 10 and set(samples["series_id"]) == {"a.nii.gz", "b.nii"}
    images = np.load(run / "prepared/nifti-ct/cache/images.npy", mmap_mode="r")
    for series, ks in (("a.nii.gz", [4, 3, 2, 1, 0]), ("b.nii", [0, 1, 2, 3, 4])):
        rows = samples[samples["series_id"] == series].sort_values("slice_index")
        assert rows["slice_index"].tolist() == [0, 1, 2, 3, 4]
        assert [int(p.rsplit("#", 1)[1]) for p in rows["path"]] == ks  # feet to head, whatever the voxel order
        assert np.all(np.diff(rows["slice_position"]) > 0)
        brightness = [float(images[c].mean()) for c in rows["cache_index"]]
        assert (np.diff(brightness) < 0).all() if series == "a.nii.gz" else (np.diff(brightness) > 0).all()
    by_series = samples.groupby("series_id")
    assert by_series["label:pe"].unique().map(list).to_dict() == {"a.nii.gz": [1.0], "b.nii": [0.0]}
    assert by_series["patient_id"].first().to_dict() == {"a.nii.gz": "p1", "b.nii": "p2"}
    quarantine = pd.read_parquet(run / "prepared/nifti-ct/quarantine.parquet")
    assert quarantine["reason"].str.contains("unreadable NIfTI volume").all() and len(quarantine) == 1


def test_without_nibabel_a_nifti_dataset_is_a_one_line_error(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "nibabel", None)
    with pytest.raises(CxrbenchError, match=r"pip install 'cxrbench\[ct\]'"):
        nibabel()
    root = tmp_path / "nifti"
    root.mkdir()
    from cxrbench.data.adapters import load_dataset

    with pytest.raises(CxrbenchError, match="need nibabel"):
        load_dataset("nifti-ct", root)
