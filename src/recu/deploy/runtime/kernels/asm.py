"""Assembly of the compiled kernels as numba builds them on this CPU, for inspection and the tests.

numba does not keep assembly for kernels loaded from its cache, so each function compiles an uncached
twin of the same Python function with the same options (a few seconds).
"""

from __future__ import annotations

import numpy as np

from .weights import PackedConvWeights

__all__ = ["fast_kernel_asm", "amx_kernel_asm", "avx2_kernel_asm", "fast_kernel_asm_has_vpopcntq"]


def fast_kernel_asm() -> str:
    """Assembly of the ``avx512`` kernel's row function as compiled on this CPU."""
    from numba import njit

    from .popcount_avx512 import conv_fast_row

    twin = njit(cache=False)(conv_fast_row.py_func)  # the row function holds the whole loop nest
    w = PackedConvWeights(np.zeros((8, 1, 1, 1), dtype=np.uint64), 64)
    twin(0, np.zeros(1, np.uint64), w.blocked().reshape(-1), 1, 1, 1, 1, 1, 64, 8, 1, 1, 0, 0,
         np.zeros((1, 1, 1, 8), np.int32), np.empty(0, np.float32), np.zeros((1, 1, 1, 1), np.float32), False)
    return "\n".join(twin.inspect_asm().values())


def amx_kernel_asm() -> str:
    """Assembly of the ``amx`` kernel's inner block function as compiled here (uncached twin, a few seconds)."""
    from numba import njit

    from . import amx as ak

    twin = njit(cache=False)(ak._blocks.py_func)
    w = PackedConvWeights(np.zeros((16, 1, 1, 1), dtype=np.uint64), 64)
    toff, abase, astride, pix, nbytes = ak.plan(1, 1, 1, 1, 1, 1, 1, 1, 0, 0)
    twin(0, 1, ak.aligned_empty(nbytes), w.amx_tiles(), toff, abase, astride, pix, 16,
         np.zeros((1, 16), np.int32), np.empty(0, np.float32), np.zeros((1, 1), np.float32), False, ak.TILE_CONFIG,
         np.zeros((0, 1), np.float32), np.float32(0), np.float32(0))
    return "\n".join(twin.inspect_asm().values())


def avx2_kernel_asm() -> str:
    """Assembly of the ``avx2`` kernel's row function as numba compiles it here (uncached twin, a few seconds).

    numba compiles for the host CPU unless ``NUMBA_CPU_NAME`` / ``NUMBA_CPU_FEATURES`` name
    another target; for an AVX2 target (``haswell`` with empty features) it holds the nibble
    lookup, ``vpshufb`` on ymm registers, and ``vpsadbw``. On a CPU with AVX-512 BITALG, LLVM uses
    ``vpopcntb`` for the byte counts instead.
    """
    from numba import njit

    from .popcount_avx2 import conv_avx2_row

    twin = njit(cache=False)(conv_avx2_row.py_func)  # the row function holds the whole loop nest
    w = PackedConvWeights(np.zeros((8, 1, 1, 1), dtype=np.uint64), 64)
    twin(0, np.zeros(1, np.uint64), w.blocked_avx2().reshape(-1), 1, 1, 1, 1, 1, 64, 8, 1, 1, 0, 0,
         np.zeros((1, 1, 1, 8), np.int32), np.empty(0, np.float32), np.zeros((1, 1, 1, 1), np.float32), False)
    return "\n".join(twin.inspect_asm().values())


def fast_kernel_asm_has_vpopcntq() -> bool:
    """True when the compiled fast kernel contains a 512-bit ``vpopcntq`` (on a VPOPCNTDQ CPU)."""
    asm = fast_kernel_asm()
    return any("vpopcntq" in line and "zmm" in line for line in asm.splitlines())
