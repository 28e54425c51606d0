"""Sign packing of float32 activations into uint64 words (bit 1 = x >= 0), compiled; the popcount paths' input.

:func:`pack_nhwc` reads an NHWC (channels_last) float array, :func:`pack_nchw` a contiguous NCHW one;
both write ``(N*H*W, ceil(C / 64))`` words with the pad bits 0, and the ``_serial`` twins run on the
calling thread (no hand-off to worker threads for small inputs).
"""

from __future__ import annotations

import numpy as np
from numba import prange, types
from numba.extending import intrinsic

from .jit import jit, prefer_512_bit

__all__ = ["sign_bits64", "pack_nhwc", "pack_nhwc_serial", "pack_nchw", "pack_nchw_serial"]


@intrinsic
def sign_bits64(typingctx, x, off):  # type: ignore[no-untyped-def]
    """Bits ``x[off + i] >= 0`` for i < 64 of a float32 array as one uint64 (bit i = element i).

    One ``<64 x float>`` compare and a bitcast of the ``<64 x i1>`` result: on AVX-512 four
    ``vcmpps`` into mask registers, instead of 64 scalar compares and shifts. Ordered compare:
    NaN gives 0 (-1), as ``torch.where(x >= 0, 1, -1)`` does.
    """
    if x != types.Array(types.float32, 1, "C") or not isinstance(off, types.Integer):
        return None
    sig = types.uint64(x, types.int64)

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        from llvmlite import ir

        prefer_512_bit(builder.function)
        arr = context.make_array(signature.args[0])(context, builder, args[0])
        vty = ir.VectorType(ir.FloatType(), 64)
        v = builder.load(builder.bitcast(builder.gep(arr.data, [args[1]]), vty.as_pointer()), align=4)
        mask = builder.fcmp_ordered(">=", v, ir.Constant(vty, [0.0] * 64))
        return builder.bitcast(mask, ir.IntType(64))

    return sig, codegen



@jit()
def _pack_nhwc_pixel(q, x, c_, out):  # type: ignore[no-untyped-def]
    cw_ = out.shape[1]
    full = c_ // 64
    base = q * c_
    for j in range(full):
        out[q, j] = sign_bits64(x, base + j * 64)
    if full < cw_:  # the last, partial word: pad bits stay 0
        start = base + full * 64
        rem = c_ - full * 64
        if start + 64 <= x.size:
            # One vector compare of 64 floats (the next pixels' too), the bits past this pixel's
            # channels masked off: a 16-channel layer's pack cost 16 scalar compares per pixel.
            out[q, full] = sign_bits64(x, start) & ((np.uint64(1) << np.uint64(rem)) - np.uint64(1))
        else:  # the last pixels of the tensor: no 64 floats left to load
            word = np.uint64(0)
            for c in range(rem):
                word |= np.uint64(x[start + c] >= 0) << np.uint64(c)
            out[q, full] = word


@jit(parallel=True)
def pack_nhwc(x, c_, out):  # type: ignore[no-untyped-def]
    """x: float32 (N*H*W*C,) flat NHWC -> out: uint64 (N*H*W, CW), bit 1 where x >= 0."""
    for q in prange(out.shape[0]):
        _pack_nhwc_pixel(q, x, c_, out)


@jit()
def pack_nhwc_serial(x, c_, out):  # type: ignore[no-untyped-def]
    """:func:`pack_nhwc` on the calling thread (no hand-off to worker threads for small inputs)."""
    for q in range(out.shape[0]):
        _pack_nhwc_pixel(q, x, c_, out)


@jit()
def _pack_nchw_row(r, x, out):  # type: ignore[no-untyped-def]
    _, c_, h_, w_ = x.shape
    cw_ = out.shape[3]
    n = r // h_
    h = r - n * h_
    for w in range(w_):
        for j in range(cw_):
            out[n, h, w, j] = 0
    for c in range(c_):
        j = c // 64
        b = np.uint64(c - j * 64)
        for w in range(w_):
            out[n, h, w, j] |= np.uint64(x[n, c, h, w] >= 0) << b


@jit(parallel=True)
def pack_nchw(x, out):  # type: ignore[no-untyped-def]
    """x: float32 (N, C, H, W) C-contiguous -> out: uint64 (N, H, W, CW), bit 1 where x >= 0."""
    for r in prange(x.shape[0] * x.shape[2]):
        _pack_nchw_row(r, x, out)


@jit()
def pack_nchw_serial(x, out):  # type: ignore[no-untyped-def]
    """:func:`pack_nchw` on the calling thread."""
    for r in range(x.shape[0] * x.shape[2]):
        _pack_nchw_row(r, x, out)


