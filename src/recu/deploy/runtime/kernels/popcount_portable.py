"""The ``portable`` binary conv: canonical weights, one output channel at a time, a SWAR popcount.

It relies on no popcount instruction at all (shifts and masks only), so it runs wherever numba does;
same contract and results as :func:`recu.deploy.runtime.kernels.popcount_avx512.conv_fast`.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from .jit import epilogue, jit

__all__ = ["popcount_swar", "conv_portable", "conv_portable_serial"]


_M1 = np.uint64(0x5555555555555555)
_M2 = np.uint64(0x3333333333333333)
_M4 = np.uint64(0x0F0F0F0F0F0F0F0F)
_H01 = np.uint64(0x0101010101010101)
_S1 = np.uint64(1)
_S2 = np.uint64(2)
_S4 = np.uint64(4)
_S56 = np.uint64(56)


@jit(inline="always")
def popcount_swar(x):  # type: ignore[no-untyped-def]
    """Population count with shifts and masks only (no popcount instruction needed)."""
    x = x - ((x >> _S1) & _M1)
    x = (x & _M2) + ((x >> _S2) & _M2)
    x = (x + (x >> _S4)) & _M4
    return np.int64((x * _H01) >> _S56)




@jit()
def conv_portable_row(r, a, w, c_in, sh, sw, ph, pw, out_i, epi, out_f, affine):  # type: ignore[no-untyped-def]
    _, h_, w_, cw_ = a.shape
    o_, kh_, kw_ = w.shape[0], w.shape[1], w.shape[2]
    oh_ = out_f.shape[1] if affine else out_i.shape[1]
    ow_ = out_f.shape[2] if affine else out_i.shape[2]
    n = r // oh_
    oh = r - n * oh_
    ih0 = oh * sh - ph
    kh0 = max(0, -ih0)
    kh1 = min(kh_, h_ - ih0)
    for ow in range(ow_):
        iw0 = ow * sw - pw
        kw0 = max(0, -iw0)
        kw1 = min(kw_, w_ - iw0)
        valid = max(0, kh1 - kh0) * max(0, kw1 - kw0) * c_in
        for o in range(o_):
            s = 0
            for kh in range(kh0, kh1):
                for kw in range(kw0, kw1):
                    for j in range(cw_):
                        s += popcount_swar(a[n, ih0 + kh, iw0 + kw, j] ^ w[o, kh, kw, j])
            dot = valid - 2 * s
            if affine:
                out_f[n, oh, ow, o] = epilogue(dot, epi, o_, o)
            else:
                out_i[n, oh, ow, o] = dot


@jit(parallel=True)
def conv_portable(a, w, c_in, sh, sw, ph, pw, out_i, epi, out_f, affine):  # type: ignore[no-untyped-def]
    """Binary conv2d, one output channel at a time, SWAR popcount. w: uint64 (C_out, KH, KW, CW)."""
    rows = out_f.shape[0] * out_f.shape[1] if affine else out_i.shape[0] * out_i.shape[1]
    for r in prange(rows):
        conv_portable_row(r, a, w, c_in, sh, sw, ph, pw, out_i, epi, out_f, affine)


@jit()
def conv_portable_serial(a, w, c_in, sh, sw, ph, pw, out_i, epi, out_f, affine):  # type: ignore[no-untyped-def]
    """:func:`conv_portable` on the calling thread."""
    rows = out_f.shape[0] * out_f.shape[1] if affine else out_i.shape[0] * out_i.shape[1]
    for r in range(rows):
        conv_portable_row(r, a, w, c_in, sh, sw, ph, pw, out_i, epi, out_f, affine)


# --- The avx2 kernel: 256-bit vectors, popcount by nibble lookup -------------------------------
#
# For x86 CPUs with AVX2 and without AVX-512 (AMD before Zen 4, most laptops). The structure of
# :func:`conv_fast`, at half the width: weights blocked 4 output channels per 256-bit vector
# (:func:`block_weights_avx2`), a register block of 4 output pixels x 8 output channels. AVX2 has
# no vector popcount instruction: ``ctpop`` of the 32 bytes of a vector is lowered by LLVM to the
# nibble lookup (vpand / vpsrlw / vpand, two vpshufb into a 16-entry table, vpaddb). The per-byte
# counts are summed in 8-bit lanes over up to :data:`AVX2_BYTE_WORDS` words and only then widened
# to 64-bit lanes by one vpsadbw (Mula's method): per 256 binary multiply-accumulates the loop
# issues xor, the five lookup instructions and two byte adds, where ``ctpop <4 x i64>`` would add
# a vpsadbw and a vpaddq to every word.
