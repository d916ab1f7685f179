"""Exclusive locks for one writer per stage output, on a local disk and on a cluster's shared one.

Two kinds, chosen by ``$CXRBENCH_LOCK`` (``auto``, ``flock``, ``file``; default ``auto``):

- ``flock``: ``flock(2)`` on a lock file. The kernel drops it when its process dies, so nothing is
  ever stale. On a local filesystem it is exact. On NFS, Linux emulates it with POSIX byte-range
  locks through the lock manager (NLM for v3, in-protocol for v4): it holds across clients only when
  the mount has locking (not ``nolock`` or ``local_lock=flock|all``, which make it per host), and a
  lock can be lost silently if the client's lease expires or the server restarts. On Lustre it is
  coherent across nodes only with the ``flock`` mount option; ``localflock`` makes it per node and
  ``noflock`` refuses it. GPFS and BeeGFS differ by version and settings. So on such mounts two
  nodes can both believe they hold the lock.
- ``file``: a lock file created atomically with ``link(2)`` (atomic on every NFS version, where
  ``O_EXCL`` was not before NFSv3), holding the holder's host, pid and a token. A thread touches it
  every ``$CXRBENCH_LOCK_HEARTBEAT`` seconds (10); a lock untouched for ``$CXRBENCH_LOCK_STALE``
  seconds (60), or held by a dead pid on this host, is stale and taken over. Ages are measured
  against the filesystem's own clock (the mtime of a file just written), so clock skew between
  nodes does not matter. It fails only when a live holder cannot touch the file for the stale time
  (a hung mount); the holder then notices that its token is gone and says so.

``auto`` picks ``file`` on network and cluster filesystems (nfs, lustre, gpfs, beegfs, ceph, cifs,
...) and ``flock`` elsewhere. Every process of one run must use the same kind: they use different
files and do not see each other's locks.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from cxrbench.errors import CxrbenchError

ENV = "CXRBENCH_LOCK"
MODES = ("auto", "flock", "file")
#: filesystem types whose flock is not reliable across nodes (or absent)
SHARED_FILESYSTEMS = frozenset(
    {
        "nfs",
        "nfs4",
        "lustre",
        "gpfs",
        "beegfs",
        "ceph",
        "cifs",
        "smb3",
        "9p",
        "fuse.sshfs",
        "fuse.glusterfs",
        "glusterfs",
        "panfs",
        "wekafs",
        "fuse.juicefs",
    }
)
FILE_SUFFIX = ".held"


class LockBusy(CxrbenchError):
    """The lock is held by a live process; ``holder`` says which (``pid N on HOST``)."""

    def __init__(self, message: str, holder: str) -> None:
        super().__init__(message)
        self.holder = holder


def heartbeat_seconds() -> float:
    return float(os.environ.get("CXRBENCH_LOCK_HEARTBEAT") or 10)


def stale_seconds() -> float:
    return float(os.environ.get("CXRBENCH_LOCK_STALE") or 60)


def filesystem_type(path: Path) -> str:
    """The type of the filesystem holding ``path`` (its nearest existing ancestor), from /proc/self/mounts."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    path = path.resolve()
    best, kind = "", "unknown"
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return kind
    for line in lines:
        fields = line.split()
        if len(fields) < 3:
            continue
        mount = fields[1].replace("\\040", " ")
        inside = path == Path(mount) or Path(mount) in path.parents
        if inside and len(mount) > len(best):
            best, kind = mount, fields[2]
    return kind


def lock_mode(directory: Path) -> str:
    """``flock`` or ``file`` for locks in ``directory``: ``$CXRBENCH_LOCK``, or by filesystem type."""
    mode = (os.environ.get(ENV) or "auto").strip().lower()
    if mode not in MODES:
        raise CxrbenchError(f"${ENV}={mode!r}: use one of {', '.join(MODES)}")
    if mode == "auto":
        return "file" if filesystem_type(directory) in SHARED_FILESYSTEMS else "flock"
    return mode


def _me() -> str:
    return f"pid {os.getpid()} on {platform.node()}"


@contextlib.contextmanager
def exclusive(lock_path: Path, *, what: str, mode: str | None = None) -> Iterator[None]:
    """Hold the lock ``lock_path`` or fail at once (``LockBusy``) naming the process that holds it."""
    lock_path = Path(lock_path)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    mode = mode or lock_mode(lock_path.parent)
    held = _flock(lock_path, what) if mode == "flock" else _file_lock(lock_path, what)
    with held:
        yield


def holder(lock_path: Path, *, mode: str | None = None) -> str | None:
    """Who holds ``lock_path`` now (``pid N on HOST``), or None when it is free (for ``status``)."""
    lock_path = Path(lock_path)
    mode = mode or lock_mode(lock_path.parent)
    if mode == "flock":
        import fcntl

        try:
            handle = open(lock_path)
        except OSError:
            return None
        with handle:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return handle.read().strip() or "another process"
            except OSError:
                return None
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
            return None
    held = _held_path(lock_path)
    data = _read(held)
    if data is None:
        return None
    return None if _stale(held, data, now=_fs_now(held.parent)) else _describe(data)


# ---------------------------------------------------------------------------------------------
# flock


@contextlib.contextmanager
def _flock(lock_path: Path, what: str) -> Iterator[None]:
    """``flock`` locks die with their process, so a lock file left by a killed run is simply taken over."""
    import fcntl

    handle = open(lock_path, "a+")
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            who = _flock_holder(handle)
            raise LockBusy(f"{what} is being written by {who} (lock {lock_path}); wait for it to finish", who) from None
        handle.seek(0)
        handle.truncate()
        handle.write(_me())
        handle.flush()
        yield
    finally:
        handle.close()


def _flock_holder(handle) -> str:
    """Who holds a flock: the holder writes ``pid N on HOST`` just after locking, so an empty file
    means it is about to; read again for up to 0.2 s before settling for "another process"."""
    for _ in range(20):
        handle.seek(0)
        who = handle.read().strip()
        if who:
            return who
        time.sleep(0.01)
    return "another process"


# ---------------------------------------------------------------------------------------------
# atomic lock files with a heartbeat


def _held_path(lock_path: Path) -> Path:
    return lock_path.with_name(lock_path.name + FILE_SUFFIX)


def _describe(data: dict) -> str:
    return f"pid {data.get('pid')} on {data.get('host')}"


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _create(path: Path, data: dict) -> float:
    """Create ``path`` holding ``data`` or raise FileExistsError; returns the filesystem's 'now'.

    The content is written to a unique file first and then hard-linked to ``path``: ``link`` fails
    when ``path`` exists, atomically, on every NFS version. A lost reply to a link that did happen is
    recognised by the unique file's link count.
    """
    tmp = path.with_name(f".{path.name}.{platform.node()}.{os.getpid()}.{secrets.token_hex(4)}")
    tmp.write_text(json.dumps(data))
    try:
        now = tmp.stat().st_mtime
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise
        except OSError:
            if tmp.stat().st_nlink != 2:
                raise
        return now
    finally:
        tmp.unlink(missing_ok=True)


def _fs_now(directory: Path) -> float:
    """The filesystem's clock: the mtime of a file written now (immune to skew between nodes)."""
    probe = directory / f".clock.{platform.node()}.{os.getpid()}.{secrets.token_hex(4)}"
    try:
        probe.write_bytes(b"")
        return probe.stat().st_mtime
    except OSError:
        return time.time()
    finally:
        probe.unlink(missing_ok=True)


def _stale(path: Path, data: dict, *, now: float) -> bool:
    """Held by a dead pid on this host, or not touched for the stale time."""
    if data.get("host") == platform.node() and isinstance(data.get("pid"), int):
        from cxrbench.rundir import _running

        if not _running(data["pid"]):
            return True
    try:
        age = now - path.stat().st_mtime
    except OSError:
        return False
    return age > stale_seconds()


def _take_over(path: Path, stale: dict) -> None:
    """Remove the stale lock ``path`` if it still holds ``stale``'s token, one taker at a time."""
    guard = path.with_name(path.name + ".takeover")
    try:
        _create(guard, {"host": platform.node(), "pid": os.getpid()})
    except FileExistsError:
        left = _read(guard) or {}
        if _stale(guard, left, now=_fs_now(path.parent)):
            guard.unlink(missing_ok=True)  # a taker died in the few microseconds it held the guard
        return
    try:
        current = _read(path)
        if current is not None and current.get("token") == stale.get("token"):
            path.unlink(missing_ok=True)
    finally:
        guard.unlink(missing_ok=True)


@contextlib.contextmanager
def _file_lock(lock_path: Path, what: str) -> Iterator[None]:
    held = _held_path(lock_path)
    token = secrets.token_hex(8)
    data = {"host": platform.node(), "pid": os.getpid(), "token": token, "since": time.time()}
    for _ in range(20):
        try:
            _create(held, data)
            break
        except FileExistsError:
            current = _read(held)
            if current is None:  # vanished, or half-visible: try again
                time.sleep(0.01)
                continue
            if _stale(held, current, now=_fs_now(held.parent)):
                _take_over(held, current)
                continue
            who = _describe(current)
            raise LockBusy(f"{what} is being written by {who} (lock {held}); wait for it to finish", who) from None
    else:
        raise LockBusy(f"{what}: could not take the lock {held} (contended); try again", "another process")
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(held, token, stop, what), name="lock-heartbeat", daemon=True)
    beat.start()
    try:
        yield
    finally:
        stop.set()
        beat.join()
        current = _read(held)
        if current is not None and current.get("token") == token:
            held.unlink(missing_ok=True)


def _heartbeat(held: Path, token: str, stop: threading.Event, what: str) -> None:
    """Touch the lock file until ``stop``; say so once if another process has taken it over."""
    while not stop.wait(heartbeat_seconds()):
        current = _read(held)
        if current is None or current.get("token") != token:
            from cxrbench.console import info

            info(f"{what}: lock {held} was taken over by another process (this one looked dead); results may clash")
            return
        with contextlib.suppress(OSError):
            os.utime(held)
