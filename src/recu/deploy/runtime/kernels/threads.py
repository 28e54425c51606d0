"""numba's worker pool: starting it, launching kernels on it, and how many threads it uses.

Low in the kernels: it imports only :mod:`.jit` (the threading layer choice) and :mod:`.cache`.
"""

from __future__ import annotations

import sys
import threading

import numba

from . import jit as _jit_module  # noqa: F401  (chooses numba's threading layer before the pool starts)
from .cache import ensure_fresh_cache

__all__ = ["PARALLEL_MIN_WORK", "start_pool", "launch", "pool_threads", "use_threads", "set_num_threads"]

# Below this many inner-loop steps a kernel runs on the calling thread: waking workers costs
# tens of microseconds, and on a loaded machine a whole scheduler time slice.
PARALLEL_MIN_WORK = 1 << 16


# The workqueue layer aborts the process when two Python threads launch parallel kernels at once;
# serialise those launches (serial kernels need no lock and run concurrently).
_LAUNCH_LOCK = threading.Lock()


_POOL_STARTED = False


def start_pool() -> None:
    """Start numba's worker pool (once), leaving PyTorch's thread count as it was (when PyTorch is imported)."""
    global _POOL_STARTED
    if _POOL_STARTED:
        return
    ensure_fresh_cache()  # before any kernel loads from numba's cache
    torch = sys.modules.get("torch")  # not imported: no PyTorch runtime shares the pool, nothing to restore
    torch_threads = torch.get_num_threads() if torch is not None else None
    numba.get_num_threads()  # starts the pool; under OpenMP it sets the shared runtime's count to numba's
    if torch is not None and torch.get_num_threads() != torch_threads:
        torch.set_num_threads(torch_threads)
    _POOL_STARTED = True


def launch(fn, *args) -> None:  # type: ignore[no-untyped-def]
    """Call a compiled kernel; parallel ones one at a time under the workqueue threading layer."""
    start_pool()
    if getattr(fn, "targetoptions", {}).get("parallel") and numba.threading_layer() == "workqueue":
        with _LAUNCH_LOCK:
            fn(*args)
    else:
        fn(*args)


def pool_threads() -> int:
    """numba's current thread count (its pool started, PyTorch's count left alone)."""
    start_pool()
    return numba.get_num_threads()


def use_threads(work: int) -> bool:
    """Whether a kernel with ``work`` inner steps should use numba's worker threads."""
    return work >= PARALLEL_MIN_WORK and pool_threads() > 1


_THREAD_COUNT = threading.local()  # the numba thread count last set from each Python thread


def set_num_threads(n: int) -> int:
    """Threads used by the compiled kernels (numba) on the calling Python thread, clipped to numba's
    pool; returns the count. PyTorch's count is set separately.

    numba's count is per calling thread, and setting (or reading) it costs a few us - 1% of a batch-1
    ResNet-20 - so a count already set from this thread is not set again. (Someone else's
    ``numba.set_num_threads`` in between changes only the speed: every kernel gives the same bits on
    any thread count.)"""
    start_pool()
    n = max(1, min(int(n), numba.config.NUMBA_NUM_THREADS))
    if getattr(_THREAD_COUNT, "n", None) != n:
        numba.set_num_threads(n)
        _THREAD_COUNT.n = n
    return n
