"""CT in three windows, one channel each (`--option window=lung+soft-tissue+bone`): the decode against
hand-computed windows, the cache against three one-window caches, and every CT stage on the result."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from cxrbench.cli import main
from cxrbench.data.cache import build_cache, open_cache
from cxrbench.data.ct_phantoms import write_ct_phantoms, write_slice
from cxrbench.data.images import ct_format, ct_windows, image_channels, read_image
from cxrbench.data.transforms import Preprocess
from cxrbench.data.volumes import parse_windows, read_header
from cxrbench.engine.data import load_batch
from cxrbench.errors import CxrbenchError
from tests.stages.conftest import ARCH, cli, prepare_ct_phantoms

THREE = "lung+soft-tissue+bone"
WINDOWS = [(-600.0, 1500.0), (50.0, 350.0), (400.0, 1800.0)]


def _window(hu: np.ndarray, level: float, width: float) -> np.ndarray:
    return np.clip((hu - (level - width / 2)) / width, 0, 1)


def test_windows_parse_to_one_or_three_and_round_trip_through_the_format() -> None:
    assert parse_windows(THREE) == WINDOWS
    assert parse_windows("50,350") == [(50.0, 350.0)] and parse_windows("-600,1500+40:400+bone")[1] == (40.0, 400.0)
    fmt = ct_format(*WINDOWS)
    assert fmt == "ct:-600:1500+50:350+400:1800" and ct_windows(fmt) == WINDOWS and image_channels(fmt) == 3
    assert image_channels(ct_format((50, 350))) == 1 and image_channels("png") == 1 and image_channels(None) == 1
    for bad in ("lung+bone", "lung+bone+soft-tissue+mediastinum"):
        with pytest.raises(CxrbenchError, match="give one \\(grey\\) or three"):
            parse_windows(bad)
    with pytest.raises(CxrbenchError, match="window 'wide'"):
        parse_windows("lung+wide+bone")


def test_a_slice_in_three_windows_is_each_window_of_its_hu(tmp_path: Path) -> None:
    stored = np.array([[0, 899, 1074, 1249, 1424, 2000, 24, 1000]] * 8, dtype=np.int16)
    meta = {
        "sop": "1.2.3.4", "study": "1.2.3", "series": "1.2.3.5", "patient": "P", "sex": "F", "age": 50,
        "instance": 1, "position": (0.0, 0.0, 0.0), "pixel": 1.0, "thickness": 1.0,
    }  # fmt: skip
    path = tmp_path / "slice.dcm"
    write_slice(path, stored, meta)  # intercept -1024, slope 1
    hu = stored.astype(float) - 1024
    want = np.stack([_window(hu, *w) for w in WINDOWS])
    fmt = ct_format(*WINDOWS)
    got = read_image(path, image_format=fmt)
    assert got.shape == (3, 8, 8)
    np.testing.assert_allclose(got, want, atol=1e-6)
    layout = read_header(path).pixels  # the prepare decode's path: pixel bytes at the header's offset
    for uint8 in (False, True):
        np.testing.assert_array_equal(
            read_image(path, image_format=fmt, layout=layout, ct_uint8=uint8),
            read_image(path, image_format=fmt, ct_uint8=uint8),
        )
    assert (read_image(path, image_format=fmt, ct_uint8=True) == np.rint(want * 255)).all()
    volume = tmp_path / "v.nii.gz"  # the NIfTI path: [x, y, z] with the slice transposed
    nib.save(nib.Nifti1Image(np.stack([hu.T, hu.T], axis=-1).astype(np.float32), np.eye(4)), str(volume))
    np.testing.assert_allclose(read_image(f"{volume}#1", image_format=fmt), want, atol=1e-6)


@pytest.mark.parametrize("size", [48, 20])
def test_the_three_window_cache_holds_each_one_window_cache_as_a_channel(tmp_path: Path, size: int) -> None:
    write_ct_phantoms(tmp_path / "ct", n_patients=2, size=48, seed=3)
    paths = sorted(str(p) for p in (tmp_path / "ct").rglob("*.dcm"))[:6]
    settings = Preprocess(size=size, scaling="fixed")
    assert (
        build_cache(paths, tmp_path / "three", settings=settings, image_format=ct_format(*WINDOWS), workers=2)
        == [None] * 6
    )
    three = open_cache(tmp_path / "three")
    assert three.shape == (6, 3, size, size) and three.dtype == np.uint8
    for c, window in enumerate(WINDOWS):
        build_cache(paths, tmp_path / f"one{c}", settings=settings, image_format=ct_format(window), workers=0)
        np.testing.assert_array_equal(three[:, c], open_cache(tmp_path / f"one{c}"))
    batch = load_batch(three, [4, 1], torch.device("cpu"))
    assert batch.shape == (2, 3, size, size)
    torch.testing.assert_close(batch, torch.from_numpy(three[[4, 1]].astype(np.float32) / 255))


@pytest.fixture(scope="module")
def run3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """synthetic-ct and synthetic-lidc phantoms prepared in three windows at 32 px."""
    run = tmp_path_factory.mktemp("ct3") / "run"
    prepare_ct_phantoms(run, "--option", f"window={THREE}")
    return run


def test_every_ct_stage_runs_on_three_windows(run3: Path, tmp_path: Path, quiet) -> None:
    run = tmp_path / "run"
    shutil.copytree(run3, run)
    r = ("--run", str(run))
    images = np.load(run / "prepared/synthetic-ct/cache/images.npy", mmap_mode="r")
    assert images.ndim == 4 and images.shape[1:] == (3, 32, 32)
    manifest = json.loads((run / "prepared/synthetic-ct/manifest.json").read_text())
    assert manifest["extra"]["image_format"] == ct_format(*WINDOWS)
    assert not (images[:, 0] == images[:, 1]).all()  # the windows differ
    small = ("--option", "decoder_width=16")
    train = ("--epochs", "1", "--batch-size", "16", "--arch", ARCH)
    for method, options in (("masked", ("--option", "ratios=0.05", *small)), ("next-slice", small), ("denoise", small)):
        cli("pretrain", method, "--dataset", "synthetic-ct", *train, *options, *r)
        loss = json.loads((run / f"encoders/{method}/manifest.json").read_text())["extra"]["loss_per_epoch"]
        assert np.isfinite(loss).all()
    mae = ("--option", "decoder_dim=32", "--option", "decoder_depth=1", "--option", "decoder_heads=2")
    cli("pretrain", "mae", "--dataset", "synthetic-ct", "--epochs", "1", "--arch", "vit_tiny_patch16_224", *mae, *r)
    cli("probe", "--dataset", "synthetic-ct", "--encoder", "masked", *r)
    cli("probe", "--dataset", "synthetic-ct", "--encoder", "masked", "--target", "sex", *r)
    cli("finetune", "--dataset", "synthetic-ct", "--encoder", "denoise", "--epochs", "1", "--batch-size", "16", *r)
    cli("segment", "--dataset", "synthetic-lidc", "--encoder", "next-slice", "--epochs", "1", "--width", "4", *r)
    for out in (
        "predictions/synthetic-ct/masked/probe.parquet",
        "predictions/synthetic-ct+sex/masked/attr.parquet",
        "predictions/synthetic-ct/denoise/finetune.parquet",
        "segmentation/synthetic-lidc/next-slice/segment.parquet",
    ):
        assert (run / out).is_file(), out


def test_channels_are_not_a_user_option(run3: Path, tmp_path: Path, capsys, quiet) -> None:
    run = tmp_path / "run"
    shutil.copytree(run3, run)
    with pytest.raises(SystemExit):
        main(["pretrain", "denoise", "--dataset", "synthetic-ct", "--option", "channels=3", "--run", str(run)])
    assert "unknown option 'channels'" in capsys.readouterr().err


def test_a_three_window_cache_resumes_and_reuses_rows_like_a_grey_one(tmp_path: Path, monkeypatch) -> None:
    """Rows three times a grey row's bytes: a kill mid-build resumes, and a cache of other rows
    copies the unchanged ones, both equal to a fresh build."""
    import cxrbench.data.cache as cache_mod

    write_ct_phantoms(tmp_path / "ct", n_patients=2, size=32, seed=5)
    paths = sorted(str(p) for p in (tmp_path / "ct").rglob("*.dcm"))[:9]
    settings, fmt = Preprocess(size=24, scaling="fixed"), ct_format(*WINDOWS)
    build_cache(paths, tmp_path / "fresh", settings=settings, image_format=fmt, workers=0)
    fresh = np.asarray(open_cache(tmp_path / "fresh"))
    monkeypatch.setattr(cache_mod, "SYNC_SECONDS", 0.0)
    seen = []

    def killed_after_two_chunks(n: int) -> None:
        seen.append(n)
        if len(seen) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_cache(paths, tmp_path / "c", settings=settings, image_format=fmt, workers=0, chunk_size=3,
                    progress=killed_after_two_chunks)  # fmt: skip
    decoded: list[str] = []
    real = cache_mod.read_image
    monkeypatch.setattr(cache_mod, "read_image", lambda p, **kw: decoded.append(p) or real(p, **kw))
    build_cache(paths, tmp_path / "c", settings=settings, image_format=fmt, workers=0, chunk_size=3)
    assert decoded == paths[6:]
    np.testing.assert_array_equal(open_cache(tmp_path / "c"), fresh)
    decoded.clear()
    order = [paths[8], paths[2], paths[5]]  # other rows: copied, none decoded
    build_cache(order, tmp_path / "c", settings=settings, image_format=fmt, workers=0)
    assert decoded == []
    np.testing.assert_array_equal(open_cache(tmp_path / "c"), fresh[[8, 2, 5]])
