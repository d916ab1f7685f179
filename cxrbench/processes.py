"""Worker processes that end with the process that started them, even when it is SIGKILLed: the
decode pool of ``prepare``, the phantom writers and the figure workers of ``compare``."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_WATCH_SECONDS = 0.25


def die_with_parent(parent: int) -> None:
    """Worker-pool initializer: end this worker as soon as process ``parent`` is gone.

    Without it a SIGKILLed ``prepare`` leaves its decode workers blocked on the task queue for good
    (they hold both ends of its pipe, so they never see end-of-file). Pass ``os.getpid()`` of the
    process that creates the pool, as ``initializer=die_with_parent, initargs=(os.getpid(),)``.

    On Linux ``prctl(PR_SET_PDEATHSIG, SIGKILL)`` makes the kernel kill the worker when its parent
    dies. That signal is tied to the parent *thread* that created the worker: it is correct here
    because ``ProcessPoolExecutor`` starts spawn workers in ``submit`` (fork workers at the first
    ``submit``), in the thread that owns the pool, and that thread waits in ``shutdown`` until the
    workers are gone; it would kill live workers early if they were started by a thread that exits
    before the pool does (``max_tasks_per_child``: the pool's manager thread restarts workers).
    Everywhere, a daemon thread also compares ``os.getppid()`` with ``parent`` every 0.25 s; its
    first check covers a parent that died before the signal was armed.
    """
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):  # no usable libc: the watchdog alone
            pass

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(_WATCH_SECONDS)
        os._exit(1)  # nothing to flush: results only ever go to the parent, through its pipe

    if os.getppid() != parent:
        os._exit(1)
    threading.Thread(target=watch, name="die-with-parent", daemon=True).start()
