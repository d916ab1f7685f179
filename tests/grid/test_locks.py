"""Locks: two processes racing for one stage (flock and lock files), stale-lock takeover, heartbeat."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cxrbench.errors import CxrbenchError
from cxrbench.locks import FILE_SUFFIX, LockBusy, exclusive, filesystem_type, holder, lock_mode

REPO = Path(__file__).resolve().parents[2]

# one racer: waits for the start signal, then tries to write the stage; prints what happened
_RACER = """
import sys, time
from pathlib import Path
from cxrbench.locks import LockBusy
from cxrbench.rundir import Stage
run, go = Path(sys.argv[1]), Path(sys.argv[2])
stage = Stage(run, "demo", run / "demo" / "manifest.json", settings={"k": 1})
while not go.exists():
    time.sleep(0.005)
try:
    with stage.open() as todo:
        if todo:
            time.sleep(1.5)  # long enough for the other racer to find the lock held
            stage.write_text(run / "demo" / "out.txt", sys.argv[3])
    print("wrote" if todo else "skipped", flush=True)
except LockBusy as busy:
    print("busy", busy.holder, flush=True)
"""


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "CXRBENCH_QUIET": "1", **extra}


@pytest.mark.parametrize("mode", ["flock", "file"])
def test_two_processes_racing_for_one_stage_one_writes_the_other_is_told_who(tmp_path: Path, mode: str):
    go = tmp_path / "go"
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", _RACER, str(tmp_path), str(go), f"racer {i}"],
            stdout=subprocess.PIPE,
            text=True,
            env=_env(CXRBENCH_LOCK=mode),
        )
        for i in range(2)
    ]
    time.sleep(1.0)  # both importing and waiting at the start line
    go.touch()
    said = [r.communicate(timeout=60)[0].split() for r in racers]
    assert all(r.returncode == 0 for r in racers)
    winners = [i for i, s in enumerate(said) if s[0] == "wrote"]
    assert len(winners) == 1, said
    loser = said[1 - winners[0]]
    assert loser[:2] == ["busy", "pid"] and int(loser[2]) == racers[winners[0]].pid
    assert (tmp_path / "demo" / "out.txt").read_text() == f"racer {winners[0]}"
    manifest = json.loads((tmp_path / "demo" / "manifest.json").read_text())
    assert manifest["complete"] and list(manifest["outputs"]) == ["demo/out.txt"]
    if mode == "file":  # released: the lock file is gone
        assert not list((tmp_path / "demo").glob(f"*{FILE_SUFFIX}"))


def _held(lock: Path, *, host: str, pid: int, age: float = 0.0) -> Path:
    held = lock.with_name(lock.name + FILE_SUFFIX)
    held.parent.mkdir(parents=True, exist_ok=True)
    held.write_text(json.dumps({"host": host, "pid": pid, "token": "old"}))
    if age:
        past = time.time() - age
        os.utime(held, (past, past))
    return held


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_lock_file_of_a_dead_process_on_this_host_is_taken_over_at_once(tmp_path: Path):
    lock = tmp_path / "x.lock"
    held = _held(lock, host=platform.node(), pid=_dead_pid())
    with exclusive(lock, what="demo", mode="file"):
        data = json.loads(held.read_text())
        assert data["pid"] == os.getpid() and data["token"] != "old"
    assert not held.exists()


def test_a_lock_file_from_another_host_is_respected_while_fresh_and_taken_over_when_stale(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("CXRBENCH_LOCK_STALE", "30")
    lock = tmp_path / "x.lock"
    _held(lock, host="node-7", pid=1234, age=5)
    with pytest.raises(LockBusy) as info:
        with exclusive(lock, what="demo output", mode="file"):
            pytest.fail("took a fresh lock of another host")
    assert info.value.holder == "pid 1234 on node-7" and "\n" not in info.value.message
    assert holder(lock, mode="file") == "pid 1234 on node-7"
    _held(lock, host="node-7", pid=1234, age=31)  # its heartbeat stopped 31 s ago: the node is gone
    assert holder(lock, mode="file") is None
    with exclusive(lock, what="demo output", mode="file"):
        assert holder(lock, mode="file") == f"pid {os.getpid()} on {platform.node()}"


_HOLD = """
import sys, time
from pathlib import Path
from cxrbench.locks import exclusive
with exclusive(Path(sys.argv[1]), what="demo", mode="file"):
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def test_heartbeat_keeps_a_long_held_lock_from_looking_stale(tmp_path: Path, monkeypatch):
    lock = tmp_path / "x.lock"
    env = _env(CXRBENCH_LOCK_HEARTBEAT="0.1", CXRBENCH_LOCK_STALE="0.6")
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(lock), "2.5"], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout.readline().strip() == "locked"
        time.sleep(1.5)  # well past the stale time: only the heartbeat keeps it fresh
        monkeypatch.setenv("CXRBENCH_LOCK_STALE", "0.6")
        with pytest.raises(LockBusy, match=f"pid {proc.pid}"):
            with exclusive(lock, what="demo", mode="file"):
                pytest.fail("took over a lock whose holder is alive and beating")
    finally:
        proc.wait(timeout=30)
    assert holder(lock, mode="file") is None


def test_flock_holder_is_seen_while_held_and_not_after(tmp_path: Path):
    lock = tmp_path / "x.lock"
    assert holder(lock, mode="flock") is None
    with exclusive(lock, what="demo", mode="flock"):
        script = "import sys; from pathlib import Path; from cxrbench.locks import holder; print(holder(Path(sys.argv[1]), mode='flock'))"
        seen = subprocess.run([sys.executable, "-c", script, str(lock)], capture_output=True, text=True, env=_env())
        assert seen.stdout.strip() == f"pid {os.getpid()} on {platform.node()}"
    assert holder(lock, mode="flock") is None


def test_mode_follows_the_environment_and_the_filesystem_type(tmp_path: Path, monkeypatch):
    import shutil

    if shutil.which("findmnt"):  # util-linux's answer is the reference
        found = subprocess.run(
            ["findmnt", "-n", "-o", "FSTYPE", "--target", str(tmp_path)], capture_output=True, text=True
        )
        assert filesystem_type(tmp_path / "not" / "yet") == found.stdout.strip()
    monkeypatch.delenv("CXRBENCH_LOCK", raising=False)
    import cxrbench.locks as locks

    monkeypatch.setattr(locks, "filesystem_type", lambda path: "nfs4")
    assert lock_mode(tmp_path) == "file"
    monkeypatch.setattr(locks, "filesystem_type", lambda path: "lustre")
    assert lock_mode(tmp_path) == "file"
    monkeypatch.setattr(locks, "filesystem_type", lambda path: "ext4")
    assert lock_mode(tmp_path) == "flock"
    monkeypatch.setenv("CXRBENCH_LOCK", "file")
    assert lock_mode(tmp_path) == "file"
    monkeypatch.setenv("CXRBENCH_LOCK", "posix")
    with pytest.raises(CxrbenchError, match="CXRBENCH_LOCK='posix': use one of auto, flock, file"):
        lock_mode(tmp_path)
