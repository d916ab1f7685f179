"""Worker processes that end with the process that started them, even when it is SIGKILLed: the
decode pool of ``prepare``, the phantom writers and the figure workers of ``compare``; and the
spawn pools of ``prepare``, shared between its parallel passes."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import Any

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


# ---------------------------------------------------------------- pools
_shared: dict[int, Any] = {}  # workers -> the pool kept open by ``shared_pool``


def _new_pool(workers: int):
    """A spawn pool (safe beside torch and threads, the same on every platform) whose workers end
    with this process."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    return ProcessPoolExecutor(workers, mp_context=context, initializer=_pool_worker, initargs=(os.getpid(),))


#: Thread pools of the numeric libraries, one thread each in a pool worker: the workers are the
#: parallelism. OpenBLAS otherwise starts a thread per core when numpy is imported, which spin
#: ~0.1 s of CPU each, taken from the workers beside them.
_ONE_THREAD = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def _pool_worker(parent: int) -> None:
    """Initializer of the spawn pools: ``die_with_parent``, and single-threaded numeric libraries
    (read when first imported, which a spawn worker has not done yet; values the user set stay)."""
    for name in _ONE_THREAD:
        os.environ.setdefault(name, "1")
    die_with_parent(parent)


@contextlib.contextmanager
def shared_pool(workers: int) -> Iterator[None]:
    """Keep one pool of ``workers`` processes for the ``worker_pool(workers)`` calls inside, so
    successive parallel passes (CT prepare's header pass, then its decode) start their processes and
    import their libraries once. Nested calls share the outer pool; it is shut down on leaving."""
    if workers in _shared or workers <= 1:
        yield
        return
    _shared[workers] = None  # created on first use
    try:
        yield
    finally:
        pool = _shared.pop(workers, None)
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


@contextlib.contextmanager
def worker_pool(workers: int) -> Iterator[Any]:
    """A process pool of ``workers`` (a ``ProcessPoolExecutor``): the shared one when a
    ``shared_pool`` of that size is open, else a new one shut down on leaving (queued tasks
    cancelled). On an exception the shared pool is retired too, so no later pass inherits it."""
    if workers in _shared:
        pool = _shared[workers]
        if pool is None:
            pool = _shared[workers] = _new_pool(workers)
        try:
            yield pool
        except BaseException:
            retire(pool)
            raise
        return
    pool = _new_pool(workers)
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def retire(pool) -> None:
    """Stop handing out ``pool`` (a broken or abandoned shared pool); the next ``worker_pool`` of its
    size starts a new one. A pool that is not shared is left to its own ``worker_pool``."""
    for workers, shared in list(_shared.items()):
        if shared is pool:
            _shared[workers] = None
            pool.shutdown(wait=True, cancel_futures=True)
