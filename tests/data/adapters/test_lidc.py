"""LIDC-IDRI adapter: the readers' XML (real element names and namespace) parsed into per-slice
consensus masks, and phantom series in the TCIA layout whose masks cover the phantom nodules."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxrbench.data.adapters import lidc
from cxrbench.data.ct_phantoms import write_lidc_phantoms, write_slice
from cxrbench.data.masks import decode_rle
from cxrbench.errors import CxrbenchError
from cxrbench.stages.prepare import prepare

_SQUARE = "".join(
    f"<edgeMap><xCoord>{x}</xCoord><yCoord>{y}</yCoord></edgeMap>" for x, y in ((2, 2), (5, 2), (5, 5), (2, 5))
)
_BIG = "".join(
    f"<edgeMap><xCoord>{x}</xCoord><yCoord>{y}</yCoord></edgeMap>" for x, y in ((1, 1), (6, 1), (6, 6), (1, 6))
)


def _xml(sop: str, z: float) -> str:
    """Four readers as LIDC writes them: two outline the nodule (one larger), one marks a small
    nodule with one point, one a non-nodule locus; a hole (inclusion FALSE) in the larger one."""

    def roi(edges: str, inclusion: str = "TRUE", with_sop: bool = True) -> str:
        uid = f"<imageSOP_UID>{sop}</imageSOP_UID>" if with_sop else ""
        return f"<roi><imageZposition>{z}</imageZposition>{uid}<inclusion>{inclusion}</inclusion>{edges}</roi>"

    hole = "".join(
        f"<edgeMap><xCoord>{x}</xCoord><yCoord>{y}</yCoord></edgeMap>" for x, y in ((3, 3), (4, 3), (4, 4), (3, 4))
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?><LidcReadMessage xmlns="http://www.nih.gov" uid="1.1">'
        "<ResponseHeader><SeriesInstanceUid>1.2.3</SeriesInstanceUid></ResponseHeader>"
        f"<readingSession><unblindedReadNodule><noduleID>1</noduleID><characteristics><malignancy>3</malignancy>"
        f"</characteristics>{roi(_SQUARE)}</unblindedReadNodule></readingSession>"
        f"<readingSession><unblindedReadNodule><noduleID>a</noduleID>{roi(_BIG, with_sop=False)}"
        f"{roi(hole, 'FALSE')}</unblindedReadNodule></readingSession>"
        f"<readingSession><unblindedReadNodule><noduleID>s</noduleID>{roi('<edgeMap><xCoord>7</xCoord><yCoord>7</yCoord></edgeMap>')}"
        "</unblindedReadNodule></readingSession>"
        f"<readingSession><nonNodule><nonNoduleID>n</nonNoduleID><imageZposition>{z}</imageZposition>"
        "<locus><xCoord>4</xCoord><yCoord>4</yCoord></locus></nonNodule></readingSession>"
        "</LidcReadMessage>"
    )


def _series(folder: Path, n: int = 3) -> list[str]:
    sops = []
    for k in range(n):
        sop = f"1.2.3.{k + 1}"
        meta = {
            "sop": sop,
            "study": "1.2",
            "series": "1.2.3",
            "patient": "LIDC-IDRI-0007",
            "sex": "M",
            "age": 60,
            "instance": n - k,
            "position": (0.0, 0.0, -100.0 + 2.5 * k),
            "pixel": 0.7,
            "thickness": 2.5,
        }
        write_slice(folder / f"1-{n - k:03d}.dcm", np.full((8, 8), 1000, dtype=np.int16) + k, meta)
        sops.append(sop)
    return sops


def test_real_format_xml_gives_the_two_of_four_consensus_on_its_slice(tmp_path: Path) -> None:
    folder = tmp_path / "LIDC-IDRI" / "LIDC-IDRI-0007" / "01-01-2000-30178" / "3000566-03192"
    sops = _series(folder)
    (folder / "069.xml").write_text(_xml(sops[1], -97.5), encoding="utf-8")
    raw = lidc.load(tmp_path, workers=0)
    frame = raw.frame.set_index("sample_id")
    assert frame.loc[sops[0], "nodule"] == 0 and frame.loc[sops[0], "mask_rle"] == ""
    mask = decode_rle(frame.loc[sops[1], "mask_rle"])
    # reader 1: rows/cols 2..5; reader 2: 1..6 minus the hole 3..4; the point mark and the
    # non-nodule locus are not contours; >= 2 of 4 readers: rows/cols 2..5 without the hole
    want = np.zeros((8, 8), dtype=bool)
    want[2:6, 2:6] = True
    want[3:5, 3:5] = False
    np.testing.assert_array_equal(mask, want)
    assert frame.loc[sops[1], "nodule"] == 1 and frame.loc[sops[1], "patient_id"] == "LIDC-IDRI-0007"
    assert raw.image_format == "ct:50:350" and frame["slice_index"].tolist() == [0, 1, 2]
    loose = lidc.load(tmp_path, consensus=0.25, small_nodules=True, workers=0).frame.set_index("sample_id")
    assert (
        decode_rle(loose.loc[sops[1], "mask_rle"]).sum() == 36 + 1
    )  # the union (the hole is in reader 1's), plus the point mark


def test_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(CxrbenchError, match="no series folder with an LIDC XML"):
        lidc.load(tmp_path, workers=0)
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "069.xml").write_text("<LidcReadMessage", encoding="utf-8")
    with pytest.raises(CxrbenchError, match="unreadable LIDC XML"):
        lidc.load(tmp_path, workers=0)
    with pytest.raises(CxrbenchError, match="consensus"):
        lidc.load(tmp_path, consensus=2.0, workers=0)


def test_phantom_masks_cover_the_phantom_nodules_in_the_prepared_cache(tmp_path: Path) -> None:
    from cxrbench.data.transforms import Preprocess

    write_lidc_phantoms(tmp_path / "data", n_patients=3, size=48, seed=4)
    manifest = prepare(tmp_path / "run", "lidc", root=tmp_path / "data", image=Preprocess(size=48), workers=0)
    assert "prepared/lidc/cache/masks.npy" in manifest.outputs
    home = tmp_path / "run" / "prepared" / "lidc"
    samples = pd.read_parquet(home / "samples.parquet")
    images = np.load(home / "cache" / "images.npy")
    masks = np.load(home / "cache" / "masks.npy")
    assert masks.shape == images.shape and samples["label:nodule"].sum() > 0
    positive = samples[samples["label:nodule"] == 1]["cache_index"].to_numpy()
    negative = samples[samples["label:nodule"] == 0]["cache_index"].to_numpy()
    assert masks[negative].sum() == 0 and (masks[positive].reshape(len(positive), -1).sum(1) > 0).all()
    # a nodule (40 HU) is soft-tissue grey inside the black lung: the masked pixels are grey
    inside = images[positive][masks[positive] == 1]
    assert np.median(inside) > 60 and np.mean((inside > 30) & (inside < 200)) > 0.6
