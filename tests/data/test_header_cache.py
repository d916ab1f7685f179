"""Remembered CT headers: a rerun reads only new or changed files and gets the same headers as a
fresh read; a damaged, foreign or out-of-date table is ignored; prepare uses it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cxrbench.data import header_cache, volumes
from cxrbench.data.ct_phantoms import write_ct_phantoms
from cxrbench.data.header_cache import HEADERS_FILE, remember_headers
from cxrbench.data.volumes import SliceHeader, read_headers


@pytest.fixture
def slices(tmp_path: Path) -> list[str]:
    write_ct_phantoms(tmp_path / "ct", n_patients=2, size=16, seed=1)
    files = sorted(str(p) for p in (tmp_path / "ct" / "train").rglob("*.dcm"))
    Path(files[3]).write_bytes(b"not a DICOM file at all")  # an unreadable one: its reason is kept too
    return files


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The files ``read_header`` is asked to read (in this process: ``workers=0``)."""
    seen: list[str] = []
    real = volumes.read_header

    def counting(path, *rest):
        seen.append(str(path))
        return real(path, *rest)

    monkeypatch.setattr(volumes, "read_header", counting)
    return seen


def test_a_second_read_reuses_every_header_and_equals_a_fresh_read(slices, reads, tmp_path: Path) -> None:
    fresh = read_headers(slices, workers=0)
    assert isinstance(fresh[3], str) and all(isinstance(h, SliceHeader) for i, h in enumerate(fresh) if i != 3)
    assert any(h.pixels is not None for h in fresh if isinstance(h, SliceHeader))
    assert not (tmp_path / HEADERS_FILE).exists()  # no table unless asked
    table = tmp_path / "run" / HEADERS_FILE
    with remember_headers(table):
        first = read_headers(slices, workers=0)
        reads.clear()
        again = read_headers(slices, workers=0)
    assert reads == [] and again == first == fresh


def _series_share_their_repeated_values(headers: list) -> int:
    """Asserts that a series' slices hold one object for each repeated value; returns how many series."""
    by_series: dict[str, list[SliceHeader]] = {}
    for h in headers:
        if isinstance(h, SliceHeader):
            assert not hasattr(h, "__dict__")  # slots: a header pass holds millions of them
            by_series.setdefault(h.series_uid, []).append(h)
    for series in by_series.values():
        assert len(series) > 2
        for name in ("series_uid", "study_uid", "patient_id", "orientation", "shape", "sex", "age", "pixels"):
            seen: dict = {}
            for h in series:  # equal values are one object (pixel layouts differ where offsets do)
                value = getattr(h, name)
                assert value is None or seen.setdefault(value, value) is value, name
        assert len({h.sop_uid for h in series}) == len({h.position for h in series}) == len(series)
    return len(by_series)


def test_the_slices_of_a_series_share_one_copy_of_their_repeated_values(slices, tmp_path: Path) -> None:
    # 1.8 M headers of RSNA PE held at once: 1.7 KB a header before, 0.6 KB with slots and sharing
    assert _series_share_their_repeated_values(read_headers(slices, workers=0)) == 2
    with remember_headers(tmp_path / HEADERS_FILE):
        read_headers(slices, workers=0)
        assert _series_share_their_repeated_values(read_headers(slices, workers=0)) == 2  # from the table


def test_only_new_or_changed_files_are_read_again(slices, reads, tmp_path: Path) -> None:
    table = tmp_path / HEADERS_FILE
    with remember_headers(table):
        read_headers(slices[:-1], workers=0)  # the last file is new next time
        info = os.stat(slices[0])
        os.utime(slices[0], ns=(info.st_atime_ns, info.st_mtime_ns + 1_000_000))  # touched
        reads.clear()
        headers = read_headers(slices, workers=0)
    assert sorted(reads) == sorted([slices[0], slices[-1]])
    assert headers == read_headers(slices, workers=0)


@pytest.mark.parametrize("damage", ["garbage", "old version", "other columns"])
def test_a_damaged_or_foreign_table_is_ignored_and_rewritten(
    slices, reads, tmp_path: Path, monkeypatch, damage
) -> None:
    table = tmp_path / HEADERS_FILE
    if damage == "garbage":
        table.write_bytes(b"PAR1 not really a table")
    else:
        with remember_headers(table):
            read_headers(slices, workers=0)
        if damage == "old version":
            monkeypatch.setattr(header_cache, "VERSION", header_cache.VERSION + 1)
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            old = pq.read_table(table)
            pq.write_table(old.append_column("extra", pa.array([1] * len(old))), table)
    reads.clear()
    with remember_headers(table):
        headers = read_headers(slices, workers=0)
        assert sorted(reads) == sorted(slices)
        reads.clear()
        assert read_headers(slices, workers=0) == headers and reads == []


def test_a_redone_ct_prepare_reads_no_header_again_unless_forced(tmp_path: Path, reads) -> None:
    from cxrbench.stages.prepare import prepare

    root = tmp_path / "ct"
    write_ct_phantoms(root, n_patients=2, size=16, seed=1)
    run = tmp_path / "run"
    prepare(run, "rsna-pe", root=root, workers=1)
    assert len(reads) == len(list(root.rglob("*.dcm")))
    reads.clear()
    manifest = prepare(run, "rsna-pe", root=root, workers=1, options={"labels": ["negative_exam_for_pe"]})
    assert reads == [] and manifest.settings["options"] == {"labels": ["negative_exam_for_pe"]}
    assert (run / "prepared/rsna-pe/cache" / HEADERS_FILE).is_file()
    prepare(run, "rsna-pe", root=root, workers=1, force=True)  # --force reads every header again
    assert len(reads) == len(list(root.rglob("*.dcm")))


def test_a_ct_prepare_stats_each_slice_file_once_for_its_stamps(tmp_path: Path, monkeypatch, reads) -> None:
    """The header pass, the image cache and the stage key of one prepare each ask for every slice's
    stamp; the file is stat'ed for it once (three times before). The next prepare stats afresh and
    sees a changed file."""
    import importlib
    from collections import Counter

    from cxrbench.data import cache, images
    from cxrbench.data.transforms import Preprocess

    stage = importlib.import_module("cxrbench.stages.prepare")
    write_ct_phantoms(tmp_path / "ct", n_patients=2, size=16, seed=3)
    slices = sorted(str(p) for p in (tmp_path / "ct").rglob("*.dcm"))
    asks, stats, inside = Counter(), Counter(), [False]
    real_stat, real_stamp = os.stat, images.file_stamp

    def stat(path, *args, **kwargs):
        if inside[0]:
            stats[str(path)] += 1
        return real_stat(path, *args, **kwargs)

    def stamp(path):
        asks[str(path)] += 1
        inside[0] = True
        try:
            return real_stamp(path)
        finally:
            inside[0] = False

    monkeypatch.setattr(os, "stat", stat)
    for module in (volumes, cache, stage):  # each imported file_stamp by name
        monkeypatch.setattr(module, "file_stamp", stamp)
    run = tmp_path / "run"
    stage.prepare(run, "rsna-pe", root=tmp_path / "ct", image=Preprocess(size=16), workers=0)
    assert {asks[p] for p in slices} == {3} and {stats[p] for p in slices} == {1}
    stats.clear()
    stamp(slices[0])
    assert stats[slices[0]] == 1  # outside a prepare: stat'ed each time it is asked
    info = real_stat(slices[0])
    os.utime(slices[0], ns=(info.st_atime_ns, info.st_mtime_ns + 1_000_000))
    reads.clear()
    stage.prepare(run, "rsna-pe", root=tmp_path / "ct", image=Preprocess(size=16), workers=0)
    assert reads == [slices[0]]  # the touched file's header read again, nothing else


def test_the_table_is_stamped_with_pydicoms_version_without_importing_it() -> None:
    # the parent of a CT prepare never needs pydicom (its workers read the headers): 0.4 s serial
    import subprocess
    import sys

    script = (
        "import sys\n"
        "from cxrbench.data.header_cache import _version\n"
        "stamp = _version().decode()\n"
        "loaded = any(m.split('.')[0] == 'pydicom' for m in sys.modules)\n"
        "import pydicom\n"
        "print(loaded, stamp.endswith('/pydicom ' + pydicom.__version__))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "True"]
