"""Process helpers for the kill tests (Linux /proc): who is still running, and a stage entry point
for processes forked from a preloaded fork server."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path


def stat(pid: int) -> tuple[str, int, str] | None:
    """(state, process group, start time) of ``pid``, or None when there is no such process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # the command name may hold spaces and parentheses
    return fields[0], int(fields[2]), fields[19]


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:120]
    except OSError:
        return "?"


def descendants(pid: int) -> dict[int, str]:
    """Every live descendant of ``pid``: pid -> start time (to tell a reused pid from the same process)."""
    found: dict[int, str] = {}
    todo = [pid]
    while todo:
        parent = todo.pop()
        for children in Path(f"/proc/{parent}/task").glob("*/children"):
            try:
                pids = [int(p) for p in children.read_text().split()]
            except OSError:  # the thread or process ended meanwhile
                continue
            for child in pids:
                info = stat(child)
                if info is not None and child not in found:
                    found[child] = info[2]
                    todo.append(child)
    return found


def alive(processes: dict[int, str]) -> dict[int, str]:
    """Those of ``processes`` still running, with their command lines (a zombie has exited)."""
    running = {}
    for pid, started in processes.items():
        info = stat(pid)
        if info is not None and info[2] == started and info[0] != "Z":
            running[pid] = cmdline(pid)
    return running


def group_alive(group: int) -> dict[int, str]:
    """Running (not zombie) processes of process group ``group``, with their command lines."""
    running = {}
    for entry in Path("/proc").glob("[0-9]*"):
        info = stat(int(entry.name))
        if info is not None and info[1] == group and info[0] != "Z":
            running[int(entry.name)] = cmdline(int(entry.name))
    return running


def group_ends(group: int, after: str, within: float = 5.0) -> None:
    """Every process of ``group`` ends within ``within`` seconds; else they are killed and this fails."""
    deadline = time.monotonic() + within
    while group_alive(group):
        if time.monotonic() > deadline:
            left = group_alive(group)
            os.killpg(group, signal.SIGKILL)
            raise AssertionError(f"after {after}: {left} outlived it by {within} s")
        time.sleep(0.05)


def run_cli(argv: list[str], stderr: str) -> None:
    """``cxrbench ARGV`` in a session of its own (its pid is the group of all it starts), its
    standard error into the file ``stderr``; for ``multiprocessing`` fork-server processes."""
    os.setsid()
    with open(os.devnull, "w") as null, open(stderr, "w") as err:
        os.dup2(null.fileno(), 1)
        os.dup2(err.fileno(), 2)
    # A resource tracker of its own, as a `cxrbench` process has: the semaphores of a killed
    # decode pool are then cleaned up (and reported) here, not at the end of the pytest session.
    from multiprocessing import resource_tracker

    resource_tracker._resource_tracker._fd = resource_tracker._resource_tracker._pid = None
    from cxrbench.cli import main

    try:
        main(argv)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
