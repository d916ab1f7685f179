"""Run-directory spine: atomic writes, manifests, stage keys, skipping, --force and locks."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from cxrbench import rundir
from cxrbench.errors import CxrbenchError
from cxrbench.rundir import (
    Manifest,
    Stage,
    atomic_path,
    manifest_path_for,
    read_complete,
    stage_lock,
)


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if ".tmp-" in p.name)


# --- resolve_run ---------------------------------------------------------------------------


def test_resolve_run_prefers_argument_then_env_then_default(tmp_path, monkeypatch):
    monkeypatch.setenv("CXRBENCH_RUN", str(tmp_path / "env"))
    assert rundir.resolve_run(tmp_path / "arg") == tmp_path / "arg"
    assert rundir.resolve_run(None) == tmp_path / "env"
    monkeypatch.delenv("CXRBENCH_RUN")
    assert rundir.resolve_run(None) == Path("runs/default")


def test_resolve_run_rejects_a_file(tmp_path):
    file = tmp_path / "not-a-dir"
    file.write_text("x")
    with pytest.raises(CxrbenchError, match="not-a-dir"):
        rundir.resolve_run(file)


# --- atomic writes -------------------------------------------------------------------------


def test_atomic_path_exception_leaves_no_file_and_no_temp(tmp_path):
    target = tmp_path / "sub" / "out.parquet"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half written")
            assert not target.exists()  # nothing at the final name while writing
            raise RuntimeError("boom")
    assert not target.exists()
    assert _leftovers(target.parent) == []


def test_atomic_path_exception_keeps_previous_content(tmp_path):
    target = tmp_path / "out.txt"
    rundir.write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("new")
            raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert _leftovers(tmp_path) == []


def test_atomic_dir_replaces_the_folder_whole_only_at_the_end(tmp_path):
    target = tmp_path / "bundle"
    (target / "old-sub").mkdir(parents=True)
    (target / "old-sub" / "stale.txt").write_text("old")
    with rundir.atomic_dir(target) as tmp:
        (tmp / "index.html").write_text("new")
        assert (target / "old-sub" / "stale.txt").read_text() == "old"  # untouched while writing
    assert sorted(p.name for p in target.iterdir()) == ["index.html"]
    assert _leftovers(tmp_path) == []


def test_atomic_dir_exception_keeps_the_old_folder_and_leaves_no_temp(tmp_path):
    target = tmp_path / "bundle"
    target.mkdir()
    (target / "a.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with rundir.atomic_dir(target) as tmp:
            (tmp / "a.txt").write_text("new")
            raise RuntimeError("boom")
    assert (target / "a.txt").read_text() == "old"
    assert _leftovers(tmp_path) == []


def test_atomic_dir_removes_what_a_killed_writer_left(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # a pid that has exited
    stale = tmp_path / f".bundle.tmp-{child.pid}"
    (stale / "new").mkdir(parents=True)
    (stale / "new" / "half.html").write_text("<html")
    with rundir.atomic_dir(tmp_path / "bundle") as tmp:
        (tmp / "index.html").write_text("done")
    assert _leftovers(tmp_path) == [] and (tmp_path / "bundle" / "index.html").read_text() == "done"


def test_write_helpers_round_trip(tmp_path):
    frame = pd.DataFrame({"a": [1, 2, 3], "b": ["x", None, "z"]})
    rundir.write_parquet(tmp_path / "t.parquet", frame)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "t.parquet"), frame)
    rundir.write_json(tmp_path / "v.json", {"b": [1, 2], "a": None})
    assert json.loads((tmp_path / "v.json").read_text()) == {"a": None, "b": [1, 2]}
    assert _leftovers(tmp_path) == []


def test_file_hash_matches_hashlib(tmp_path):
    import hashlib

    data = os.urandom(10_000)
    (tmp_path / "f").write_bytes(data)
    assert rundir.file_hash(tmp_path / "f", chunk=1000) == hashlib.sha256(data).hexdigest()


def test_output_hash_is_plain_sha256_up_to_a_block_and_a_hash_of_block_hashes_past_it(tmp_path):
    import hashlib

    import blake3

    data = os.urandom(10_000)
    (tmp_path / "f").write_bytes(data)
    assert rundir.output_hash(tmp_path / "f", block=10_000) == hashlib.sha256(data).hexdigest()
    parts = [blake3.blake3(data[i : i + 3000]).digest() for i in range(0, 10_000, 3000)]  # the last block short
    expected = "blake3-blocks-3000:" + blake3.blake3(b"".join(parts)).hexdigest()
    assert rundir.output_hash(tmp_path / "f", block=3000) == expected
    # the scheme of manifests written before BLAKE3: SHA-256 throughout
    parts = [hashlib.sha256(data[i : i + 3000]).digest() for i in range(0, 10_000, 3000)]
    older = "sha256-blocks-3000:" + hashlib.sha256(b"".join(parts)).hexdigest()
    assert rundir.output_hash(tmp_path / "f", block=3000, scheme="sha256-blocks-") == older


def test_output_matches_block_hashes_and_older_plain_ones(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(os.urandom(10_000))
    plain, blocks = rundir.file_hash(path), rundir.output_hash(path, block=3000)
    older = rundir.output_hash(path, block=3000, scheme="sha256-blocks-")  # an earlier manifest's
    assert blocks.startswith("blake3-blocks-3000:") and older.startswith("sha256-blocks-3000:")
    assert all(rundir.output_matches(path, digest) for digest in (plain, blocks, older))
    other = plain[:-1] + ("1" if plain[-1] == "0" else "0")  # one hex digit changed (random bytes: it may be 0)
    bad = [
        f"{scheme}{n}:{digest.split(':')[1]}"
        for scheme in rundir._SCHEMES
        for n in ("0", "x")
        for digest in (blocks, older)
    ]
    # a digest read under the other scheme
    bad += ["sha256-blocks-3000:" + blocks.split(":")[1], "blake3-blocks-3000:" + older.split(":")[1], other]
    for digest in bad:
        assert not rundir.output_matches(path, digest)
    with open(path, "r+b") as handle:  # one byte changed inside the third block
        handle.seek(7000)
        byte = handle.read(1)
        handle.seek(7000)
        handle.write(bytes([byte[0] ^ 1]))
    assert not any(rundir.output_matches(path, digest) for digest in (plain, blocks, older))


def test_a_large_output_gets_a_block_hash_that_verify_and_export_check(tmp_path, monkeypatch):
    from cxrbench.stages.export import _Bundle
    from cxrbench.stages.verify import verify

    monkeypatch.setattr(rundir, "HASH_BLOCK", 512)
    stage = Stage(tmp_path, "demo", tmp_path / "evaluation" / "demo" / "manifest.json", settings={}, seed=0)
    out = tmp_path / "evaluation" / "demo" / "out.parquet"
    with stage.open():
        stage.write_parquet(out, pd.DataFrame({"v": range(1000)}))
    assert out.stat().st_size > 512
    recorded = Manifest.read(tmp_path / "evaluation" / "demo" / "manifest.json").outputs["evaluation/demo/out.parquet"]
    assert recorded == rundir.output_hash(out, block=512) and recorded.startswith("blake3-blocks-512:")
    assert [f.problem for f in verify(tmp_path)] == [None]
    bundle = _Bundle(tmp_path / "bundle")
    bundle.copy(rundir.RunLayout(tmp_path), "evaluation/demo/out.parquet", recorded)
    assert bundle.files["evaluation/demo/out.parquet"] == rundir.file_hash(out)  # SHA256SUMS stays plain SHA-256
    out.write_bytes(out.read_bytes()[:-1] + b"\0")
    assert "differs" in verify(tmp_path)[0].problem
    with pytest.raises(CxrbenchError, match="changed after its stage wrote it"):
        _Bundle(tmp_path / "bundle2").copy(rundir.RunLayout(tmp_path), "evaluation/demo/out.parquet", recorded)


# --- manifests and keys --------------------------------------------------------------------


def test_manifest_read_tolerates_garbage(tmp_path):
    assert Manifest.read(tmp_path / "absent.json") is None
    (tmp_path / "bad.json").write_text("{not json")
    assert Manifest.read(tmp_path / "bad.json") is None
    (tmp_path / "list.json").write_text("[1, 2]")
    assert Manifest.read(tmp_path / "list.json") is None
    (tmp_path / "extra.json").write_text(json.dumps({"stage": "s", "key": "k", "settings": {}, "bogus": 1}))
    assert Manifest.read(tmp_path / "extra.json") is None


def test_manifest_path_for_is_distinct_per_adaptation(tmp_path):
    # label-efficiency runs carry a dot in their name: finetune-f0.10-s1.parquet
    names = [
        "probe.parquet",
        "probe-f0.01-s0.parquet",
        "probe-f0.10-s0.parquet",
        "probe-f0.10-s1.parquet",
    ]
    sidecars = {manifest_path_for(tmp_path / n) for n in names}
    assert len(sidecars) == len(names)
    assert manifest_path_for(tmp_path / "probe.parquet") == tmp_path / "probe.manifest.json"
    assert manifest_path_for(tmp_path / "finetune-f0.10-s1.parquet").name == "finetune-f0.10-s1.manifest.json"


def test_stage_key_depends_on_settings_inputs_and_version(monkeypatch):
    base = rundir.stage_key("probe", {"a": 1, "b": 2}, {"x.parquet": "h1"})
    assert base == rundir.stage_key("probe", {"b": 2, "a": 1}, {"x.parquet": "h1"})  # order-free
    assert base != rundir.stage_key("probe", {"a": 1, "b": 3}, {"x.parquet": "h1"})
    assert base != rundir.stage_key("probe", {"a": 1, "b": 2}, {"x.parquet": "h2"})
    assert base != rundir.stage_key("finetune", {"a": 1, "b": 2}, {"x.parquet": "h1"})
    seeded = {rundir.stage_key("probe", {"a": 1, "b": 2}, {"x.parquet": "h1"}, seed) for seed in (None, 0, 1)}
    assert len(seeded) == 3 and base in seeded
    monkeypatch.setattr(rundir, "__version__", "999.0")
    assert base != rundir.stage_key("probe", {"a": 1, "b": 2}, {"x.parquet": "h1"})


# --- the Stage protocol --------------------------------------------------------------------


def _stage(run: Path, *, settings=None, inputs=(), extra_inputs=None, keep=()) -> Stage:
    return Stage(
        run,
        "demo",
        run / "demo" / "manifest.json",
        settings=settings or {"k": 1},
        inputs=inputs,
        extra_inputs=extra_inputs,
        seed=3,
        keep=keep,
    )


def _run_stage(run: Path, value: int = 1, **kw) -> tuple[Stage, int]:
    """Run the demo stage; returns it and how many times its body did work (0 or 1)."""
    stage = _stage(run, **kw)
    did = 0
    with stage.open() as todo:
        if todo:
            did = 1
            stage.write_parquet(run / "demo" / "out.parquet", pd.DataFrame({"v": [value]}))
    return stage, did


def test_stage_writes_complete_manifest_with_hashes(tmp_path):
    stage, did = _run_stage(tmp_path)
    assert did == 1
    manifest = Manifest.read(tmp_path / "demo" / "manifest.json")
    assert manifest is not None and manifest.complete
    assert manifest.key == stage.key and manifest.seed == 3 and manifest.settings == {"k": 1}
    assert manifest.outputs == {"demo/out.parquet": rundir.file_hash(tmp_path / "demo" / "out.parquet")}
    assert manifest.versions["cxrbench"] and manifest.versions["python"]
    assert manifest.timings["seconds"] >= 0
    assert read_complete(tmp_path, tmp_path / "demo" / "manifest.json", what="demo", hint="x").key == stage.key


def test_stage_skips_when_up_to_date_and_says_so(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("CXRBENCH_QUIET", raising=False)
    _run_stage(tmp_path)
    first = (tmp_path / "demo" / "manifest.json").read_text()
    capsys.readouterr()
    stage, did = _run_stage(tmp_path, value=2)
    assert did == 0 and stage.skipped
    assert "up to date" in capsys.readouterr().err
    assert (tmp_path / "demo" / "manifest.json").read_text() == first
    assert pd.read_parquet(tmp_path / "demo" / "out.parquet")["v"].tolist() == [1]


def test_another_seed_redoes_the_stage(tmp_path):
    """``pretrain --seed 1`` into the encoder that seed 0 made was reported up to date, keeping seed 0's."""
    _run_stage(tmp_path)
    stage = Stage(tmp_path, "demo", tmp_path / "demo" / "manifest.json", settings={"k": 1}, seed=4)
    with stage.open() as todo:
        assert todo
        stage.write_parquet(tmp_path / "demo" / "out.parquet", pd.DataFrame({"v": [2]}))
    assert Manifest.read(tmp_path / "demo" / "manifest.json").seed == 4
    _, did = _run_stage(tmp_path)  # seed 3 again: redone, not taken from seed 4's manifest
    assert did == 1


def test_force_redoes_an_up_to_date_stage(tmp_path):
    _run_stage(tmp_path)
    stage = _stage(tmp_path)
    with stage.open(force=True) as todo:
        assert todo
        stage.write_parquet(tmp_path / "demo" / "out.parquet", pd.DataFrame({"v": [2]}))
    assert pd.read_parquet(tmp_path / "demo" / "out.parquet")["v"].tolist() == [2]
    assert Manifest.read(tmp_path / "demo" / "manifest.json").complete


@pytest.mark.parametrize("change", ["settings", "extra_inputs", "inputs"])
def test_changed_settings_or_inputs_redo_the_stage(tmp_path, change):
    upstream = Manifest(stage="up", key="u", settings={}, outputs={"up/a.parquet": "hash-1"}, complete=True)
    _, did = _run_stage(tmp_path, inputs=[upstream], extra_inputs={"rows": "r1"})
    assert did == 1
    kw = {"inputs": [upstream], "extra_inputs": {"rows": "r1"}}
    if change == "settings":
        kw["settings"] = {"k": 2}
    elif change == "extra_inputs":
        kw["extra_inputs"] = {"rows": "r2"}
    else:
        kw["inputs"] = [Manifest(stage="up", key="u", settings={}, outputs={"up/a.parquet": "hash-2"}, complete=True)]
    _, did = _run_stage(tmp_path, **kw)
    assert did == 1
    _, did = _run_stage(tmp_path, **kw)
    assert did == 0


def test_missing_output_makes_the_stage_rerun(tmp_path):
    _run_stage(tmp_path)
    (tmp_path / "demo" / "out.parquet").unlink()
    with pytest.raises(CxrbenchError, match="out.parquet is missing"):
        read_complete(tmp_path, tmp_path / "demo" / "manifest.json", what="demo", hint="cxrbench demo")
    _, did = _run_stage(tmp_path)
    assert did == 1


def test_manifest_incomplete_while_the_stage_runs(tmp_path):
    _run_stage(tmp_path)  # a complete previous manifest exists
    stage = _stage(tmp_path, settings={"k": 2})
    with stage.open() as todo:
        assert todo
        during = Manifest.read(tmp_path / "demo" / "manifest.json")
        assert during is not None and during.complete is False
        with pytest.raises(CxrbenchError, match="is incomplete"):
            read_complete(tmp_path, tmp_path / "demo" / "manifest.json", what="demo", hint="cxrbench demo")
        stage.write_parquet(tmp_path / "demo" / "out.parquet", pd.DataFrame({"v": [5]}))
    assert Manifest.read(tmp_path / "demo" / "manifest.json").complete


def test_interrupted_stage_is_not_up_to_date_next_time(tmp_path):
    _run_stage(tmp_path)
    stage = _stage(tmp_path, settings={"k": 2})
    with pytest.raises(KeyboardInterrupt):
        with stage.open() as todo:
            assert todo
            stage.write_parquet(tmp_path / "demo" / "out.parquet", pd.DataFrame({"v": [5]}))
            raise KeyboardInterrupt
    manifest = Manifest.read(tmp_path / "demo" / "manifest.json")
    assert manifest is not None and not manifest.complete
    assert _stage(tmp_path, settings={"k": 2}).up_to_date() is None
    _, did = _run_stage(tmp_path, settings={"k": 2})
    assert did == 1
    # and the lock was released by the interrupted run
    with stage_lock(tmp_path / "demo" / "manifest.json.lock", what="demo"):
        pass


def test_rerun_with_new_key_drops_previous_outputs(tmp_path):
    stage = _stage(tmp_path)
    with stage.open() as todo:
        assert todo
        stage.write_text(tmp_path / "demo" / "old.txt", "old")
    stage = _stage(tmp_path, settings={"k": 2})
    with stage.open() as todo:
        assert todo
        assert not (tmp_path / "demo" / "old.txt").exists()
        stage.write_text(tmp_path / "demo" / "new.txt", "new")
    assert list(Manifest.read(tmp_path / "demo" / "manifest.json").outputs) == ["demo/new.txt"]


def test_an_up_to_date_stage_clears_a_killed_writers_manifest_temporary(tmp_path):
    _run_stage(tmp_path)
    stale = tmp_path / "demo" / ".manifest.json.tmp-999999999"  # no such process
    stale.write_text("{half a manifest")
    live = tmp_path / "demo" / f".manifest.json.tmp-{os.getpid()}"  # being written: kept
    live.write_text("{")
    _, did = _run_stage(tmp_path)
    assert did == 0 and not stale.exists() and live.exists()


def test_a_kept_output_survives_a_rerun_with_a_new_key(tmp_path):
    stage = _stage(tmp_path)
    with stage.open() as todo:
        assert todo
        stage.write_text(tmp_path / "demo" / "cache.bin", "self-checked")
        stage.write_text(tmp_path / "demo" / "old.txt", "old")
    stage = _stage(tmp_path, settings={"k": 2}, keep=[tmp_path / "demo" / "cache.bin"])
    with stage.open() as todo:
        assert todo
        assert (tmp_path / "demo" / "cache.bin").read_text() == "self-checked"
        assert not (tmp_path / "demo" / "old.txt").exists()
        stage.record(tmp_path / "demo" / "cache.bin")
    assert list(Manifest.read(tmp_path / "demo" / "manifest.json").outputs) == ["demo/cache.bin"]


# --- locks ---------------------------------------------------------------------------------

_HOLDER = """
import sys, time
from pathlib import Path
from cxrbench.rundir import stage_lock
with stage_lock(Path(sys.argv[1]), what="demo output"):
    print("locked", flush=True)
    time.sleep(60)
"""


def _spawn_holder(lock: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(lock)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_lock_held_by_another_process_names_the_holder(tmp_path):
    lock = tmp_path / "demo" / "x.lock"
    proc = _spawn_holder(lock)
    try:
        with pytest.raises(CxrbenchError) as info:
            with stage_lock(lock, what="demo output"):
                pytest.fail("acquired a lock another process holds")
        message = str(info.value)
        assert f"pid {proc.pid}" in message and "demo output" in message and str(lock) in message
        assert "\n" not in message
    finally:
        proc.kill()
        proc.wait()


def test_stage_open_refuses_while_another_process_writes(tmp_path):
    stage = _stage(tmp_path)
    lock = stage.lock_path
    proc = _spawn_holder(lock)
    try:
        with pytest.raises(CxrbenchError, match=f"pid {proc.pid}"):
            with stage.open():
                pass
        assert not stage.manifest_path.exists()  # the refused writer touched nothing
    finally:
        proc.kill()
        proc.wait()


def test_lock_of_a_killed_process_is_taken_over(tmp_path):
    lock = tmp_path / "x.lock"
    proc = _spawn_holder(lock)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert f"pid {proc.pid}" in lock.read_text()  # the stale lock file is still there
    started = time.monotonic()
    with stage_lock(lock, what="demo"):
        assert lock.read_text() == f"pid {os.getpid()} on {os.uname().nodename}"
    assert time.monotonic() - started < 1.0


def test_lock_is_released_after_use(tmp_path):
    lock = tmp_path / "x.lock"
    with stage_lock(lock, what="demo"):
        pass
    with stage_lock(lock, what="demo"):
        pass


# --- the layout: folder-safe names, nothing outside the run ------------------------------------


@pytest.mark.parametrize("name", ["imagenet", "simclr", "Pleural Effusion", "finetune-f0.10-s1", "a_b+c=d.e"])
def test_safe_names_stay_as_they_are(name):
    assert rundir.safe_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "file:/w/enc.safetensors",
        "hf:org/model",
        "../../x",
        "/../../../../x",
        "..",
        ".hidden",
        "a/b",
        "x" * 200,
        "trailing.",
        "tab\there",
    ],
)
def test_unsafe_names_become_one_path_component(name, tmp_path):
    safe = rundir.safe_name(name)
    assert rundir.is_safe_name(safe) and "/" not in safe and ":" not in safe and ".." not in safe
    assert rundir.safe_name(name) == safe  # deterministic
    assert rundir.safe_name(safe) == safe  # idempotent
    layout = rundir.RunLayout(tmp_path)
    assert layout.predictions("ds", name, "probe").parent.parent.parent == layout.predictions_root


def test_different_unsafe_names_never_share_a_folder():
    names = ["file:/a/enc.pt", "file:/b/enc.pt", "hf:org/enc", "hf:org-enc", "a/b", "a:b", "a b/"]
    assert len({rundir.safe_name(n) for n in names}) == len(names)
    assert rundir.safe_name("file:/a/enc.pt", readable="file-enc").startswith("file-enc-")


def test_layout_refuses_paths_outside_the_run(tmp_path):
    layout = rundir.RunLayout(tmp_path / "run")
    assert layout.inside("comparisons/x.md") == tmp_path / "run" / "comparisons" / "x.md"
    for bad in ("../x", tmp_path / "elsewhere", "comparisons/../../x"):
        with pytest.raises(CxrbenchError, match="outside the run directory"):
            layout.inside(bad)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "link").symlink_to(tmp_path)
    with pytest.raises(CxrbenchError, match="outside the run directory"):
        layout.inside("link/x")


def test_stage_refuses_to_write_record_or_delete_outside_the_run(tmp_path):
    run = tmp_path / "run"
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    stage = Stage(run, "compare", run / "comparisons" / "manifest.json", settings={})
    with pytest.raises(CxrbenchError, match="outside the run"):
        with stage.open() as todo:
            assert todo
            stage.write_text(run / "comparisons" / ".." / ".." / "x.png", "no")
    assert not (tmp_path / "x.png").exists()
    with pytest.raises(CxrbenchError, match="outside the run"):
        stage.record(victim)
    # a manifest that lists an outside file (tampered, or written by an old version) never deletes it
    Manifest(stage="compare", key="old", settings={}, outputs={"../victim.txt": "0"}, complete=True).write(
        run / "comparisons" / "manifest.json"
    )
    with pytest.raises(CxrbenchError, match="outside the run"):
        with Stage(run, "compare", run / "comparisons" / "manifest.json", settings={"n": 2}).open():
            pass
    assert victim.read_text() == "keep me"


def test_a_truncated_output_is_not_up_to_date_and_is_redone(tmp_path):
    run = tmp_path / "run"
    out = run / "predictions" / "ds" / "enc" / "probe.parquet"

    def write():
        stage = Stage(run, "probe", manifest_path_for(out), settings={"a": 1})
        with stage.open() as todo:
            if todo:
                stage.write_parquet(out, pd.DataFrame({"x": range(1000)}))
        return stage

    assert not write().skipped
    assert write().skipped
    data = out.read_bytes()
    out.write_bytes(data[: len(data) // 2])  # truncated by a full disk, a bad copy, ...
    with pytest.raises(CxrbenchError, match=r"has \d+ bytes, \d+ were written; rerun `cxrbench probe --force`"):
        read_complete(run, manifest_path_for(out), what="predictions", hint="cxrbench probe")
    again = write()
    assert not again.skipped and pd.read_parquet(out)["x"].tolist() == list(range(1000))
    out.write_bytes(data[:-8] + b"XXXXXXXX")  # same size, other bytes at the end
    assert "changed after it was written" in Manifest.read(manifest_path_for(out)).intact(run)


def test_clear_tree_removes_empty_parents_up_to_the_run(tmp_path):
    layout = rundir.RunLayout(tmp_path / "run")
    a = layout.checkpoints("finetune", "ds", "enc", "probe") / "key"
    b = layout.checkpoints("finetune", "ds", "other", "probe") / "key"
    for d in (a, b):
        d.mkdir(parents=True)
        (d / "last.pt").write_text("x")
    rundir.clear_tree(layout, a.parent)
    assert not a.parent.exists() and b.exists()
    rundir.clear_tree(layout, b.parent)
    assert not (tmp_path / "run" / "checkpoints").exists() and (tmp_path / "run").exists()


def test_a_relative_run_directory_gives_the_same_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    layout = rundir.RunLayout(Path("runs/default"))
    assert layout.encoder("moco") == tmp_path / "runs" / "default" / "encoders" / "moco"
    assert layout.inside("evaluation/metrics.parquet") == tmp_path / "runs/default/evaluation/metrics.parquet"
    assert layout.relative(layout.predictions("ds", "enc", "probe")) == "predictions/ds/enc/probe.parquet"


# --- the run's own manifests -----------------------------------------------------------------


def test_every_layout_path_lies_in_one_of_the_run_areas(tmp_path):
    """manifests() looks only in RunLayout.AREAS: a path method outside them would hide its stage."""
    import inspect

    layout = rundir.RunLayout(tmp_path)
    paths = []
    for name, member in inspect.getmembers(rundir.RunLayout):
        if name.startswith("_") or name in ("inside", "relative", "manifests"):
            continue
        if isinstance(member, property):
            paths.append(getattr(layout, name))
        elif inspect.isfunction(member):
            arguments = ["x"] * (len(inspect.signature(member).parameters) - 1)  # *parts: one
            paths.append(member(layout, *arguments))
    assert len(paths) >= 15
    for path in paths:
        assert Path(path).relative_to(tmp_path).parts[0] in rundir.RunLayout.AREAS, path


def test_a_run_kept_inside_another_is_not_read_as_its_own(tmp_path):
    outer, inner = rundir.RunLayout(tmp_path / "a"), rundir.RunLayout(tmp_path / "a" / "b")
    for layout, value in ((outer, 1), (inner, 2)):
        home = layout.prepared("ds")
        stage = Stage(layout, "prepare", home / "manifest.json", settings={"v": value}, what="demo")
        with stage.open() as todo:
            assert todo
            stage.write_parquet(home / "samples.parquet", pd.DataFrame({"v": [value]}))
    assert outer.manifests() == [outer.prepared("ds") / "manifest.json"]
    assert rundir.current_outputs(outer) == {
        "prepared/ds/samples.parquet": rundir.file_hash(outer.prepared("ds") / "samples.parquet")
    }
    assert inner.manifests() == [inner.prepared("ds") / "manifest.json"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_killed_writer_not_yet_reaped_counts_as_gone(tmp_path):
    """A SIGKILLed writer whose parent has not reaped it (a zombie: its pid still answers signal 0)
    leaves a temporary the next write removes, as for any writer that is gone; a live one keeps it."""
    writer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        target = tmp_path / "plot.png"
        left = tmp_path / f".plot.png.tmp-{writer.pid}"
        left.write_bytes(b"half a png")
        rundir.remove_stale_temporaries(target)
        assert left.exists()  # its writer is alive
        os.kill(writer.pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while not rundir._zombie(writer.pid) and time.monotonic() < deadline:  # killed, not reaped (no wait())
            time.sleep(0.01)
        os.kill(writer.pid, 0)  # the pid is still taken ...
        assert not rundir._running(writer.pid)  # ... by a zombie
        rundir.remove_stale_temporaries(target)
        assert not left.exists()
    finally:
        writer.kill()
        writer.wait()
    assert not rundir._zombie(writer.pid) and not rundir._running(writer.pid)  # reaped: gone from /proc


def test_block_digest_of_any_range_equals_hashing_its_bytes(tmp_path):
    """Blocks at any offset, the last one short, one past the end: the digest of exactly those bytes."""
    import blake3

    path = tmp_path / "f"
    data = os.urandom(3 * 4096 + 777)
    path.write_bytes(data)
    for start, block in [(0, 4096), (4096, 8192), (5000, 4096), (3 * 4096, 4096), (12_000, 10_000), (len(data), 64)]:
        assert rundir.block_digest(path, start, block) == blake3.blake3(data[start : start + block]).digest()
        expected = hashlib.sha256(data[start : start + block]).digest()
        assert rundir.block_digest(path, start, block, scheme="sha256-blocks-") == expected


def test_remembered_block_digests_are_used_only_while_the_file_is_unchanged(tmp_path):
    import blake3

    path = tmp_path / "f"
    data = os.urandom(10_000)
    path.write_bytes(data)
    parts = [blake3.blake3(data[i : i + 3000]).digest() for i in range(0, 10_000, 3000)]
    expected = "blake3-blocks-3000:" + blake3.blake3(b"".join(parts)).hexdigest()
    assert [rundir.block_digest(path, start, 3000) for start in range(0, 10_000, 3000)] == parts
    # wrong digests handed over for two blocks: output_hash takes them (so it did not read those blocks)
    rundir.remember_block_digests(path, 3000, {0: b"x" * 32, 6000: parts[2]})
    taken = "blake3-blocks-3000:" + blake3.blake3(b"x" * 32 + b"".join(parts[1:])).hexdigest()
    # remembered digests are BLAKE3 ones: an older scheme's hash reads every block
    assert rundir.output_hash(path, block=3000, scheme="sha256-blocks-") == rundir.output_hash(
        path, block=3000, scheme="sha256-blocks-", fresh=True
    )
    assert rundir.output_hash(path, block=3000) == taken
    assert rundir.output_hash(path, block=3000, fresh=True) == expected  # verify's way: every block read
    assert rundir.output_matches(path, expected) and not rundir.output_matches(path, taken)
    assert rundir.output_hash(path, block=2000) == rundir.output_hash(path, block=2000, fresh=True)  # other blocks
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1000))  # touched since: the digests are stale
    assert rundir.output_hash(path, block=3000) == expected
