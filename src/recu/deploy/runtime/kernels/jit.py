"""The bottom of the kernels: how every kernel is compiled, and the arithmetic they all share.

- :func:`jit`: ``njit(cache=True)`` (or uncached where no cache directory is writable).
- :func:`prefer_512_bit`: per-function LLVM attributes that let a kernel use 512-bit vectors.
- :func:`fma32` and :func:`epilogue`: the float32 fused multiply-add and a binary layer's eval-mode
  epilogue, with PyTorch's rounding steps.
- numba's threading layer (OpenMP first), chosen here because every kernel module imports this one
  before any parallel kernel can run.

Imports nothing else of recu: every kernel module builds on it.

fastmath is deliberately off everywhere: the binary kernels are integer code (it would buy nothing),
the packers compare floats, where ``nnan`` could change the sign given to NaN, and the float kernels
must round exactly as PyTorch does.
"""

from __future__ import annotations

import os
import warnings

import numba
import numpy as np
from numba import njit, types
from numba.extending import intrinsic

# Threading layer: OpenMP first. PyTorch ships its own libgomp under the same soname, so numba's
# OpenMP pool *is* PyTorch's: one set of workers, which spin briefly between parallel regions, so a
# parallel kernel starts in microseconds. numba's own workqueue pool sleeps between launches, and
# waking it cost 100-200 us per launch on this VM (a 2-thread 64@56 layer took 0.30 ms against
# 0.12 ms on one thread). Starting numba's OpenMP pool resets the shared runtime's thread count to
# numba's, under PyTorch's feet: :func:`start_pool` puts PyTorch's count back. An explicit
# NUMBA_THREADING_LAYER is always respected.
if "NUMBA_THREADING_LAYER" not in os.environ and numba.config.THREADING_LAYER == "default":
    numba.config.THREADING_LAYER_PRIORITY = ["omp", "workqueue", "tbb"]

__all__ = ["LANES", "jit", "prefer_vector_width", "prefer_512_bit", "fma32", "epilogue"]

LANES = 8  # 8 x 64-bit lanes = one 512-bit register


def jit(**options):  # type: ignore[no-untyped-def]
    """``njit(cache=True, **options)``, or without the cache when no cache directory is writable."""

    def wrap(fn):  # type: ignore[no-untyped-def]
        try:
            return njit(cache=True, **options)(fn)
        except RuntimeError as e:  # numba: "cannot cache function ...: no locator available"
            warnings.warn(f"recu.deploy: numba cache unavailable ({e}); kernels compile on every run",
                          RuntimeWarning, stacklevel=2)
            return njit(cache=False, **options)(fn)

    return wrap


def prefer_vector_width(fn, bits: int) -> None:  # type: ignore[no-untyped-def]
    """Pin the vector width LLVM prefers in ``fn`` (the function a kernel loop is lowered into) to ``bits``.

    LLVM tunes Ice Lake-class CPUs to prefer 256-bit vectors, which halves the bits per ``vpopcntq``;
    these per-function attributes lift that for the kernels alone, leaving the rest of the process's
    numba code as it was (and pin the avx2 kernel to 256 bits whatever the CPU). llvmlite only lists
    enum attributes, hence ``set.add``.
    """
    try:
        for attr in (f'"prefer-vector-width"="{bits}"', f'"min-legal-vector-width"="{bits}"'):
            set.add(fn.attributes, attr)
    except (AttributeError, TypeError):  # another llvmlite: only speed is lost, results are the same
        pass


def prefer_512_bit(fn) -> None:  # type: ignore[no-untyped-def]
    """:func:`prefer_vector_width` 512: the avx512 and float kernels."""
    prefer_vector_width(fn, 512)


@intrinsic
def fma32(typingctx, x, y, z):  # type: ignore[no-untyped-def]
    """float32 fused multiply-add ``x * y + z`` with one rounding (``llvm.fma.f32``)."""
    if not (x == y == z == types.float32):
        return None

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        return builder.fma(*args)

    return types.float32(types.float32, types.float32, types.float32), codegen


@jit(inline="always")
def epilogue(dot, epi, c_out, o):  # type: ignore[no-untyped-def]
    """Output channel ``o`` of a binary layer in eval mode, with PyTorch's float32 rounding steps.

    ``epi`` is the flat (4, C_out) table of alpha, conv bias, BatchNorm scale a and shift b
    (a = 1, b = 0 without a BatchNorm): ``fma(float32(dot) * alpha + bias, a, b)``. ``conv * alpha``
    and ``+ bias`` round like the layer's own ops, and PyTorch's CPU BatchNorm kernel computes
    ``fma(x, a, b)`` with ``a = gamma * rsqrt(var + eps)``, ``b = fma(-mean, a, beta)``, so the result
    is bit-identical to the layer followed by its BatchNorm (checked by the tests); fma(t, 1, 0) = t.
    """
    t = np.float32(np.float32(np.float32(dot) * epi[o]) + epi[c_out + o])
    return fma32(t, epi[2 * c_out + o], epi[3 * c_out + o])

