"""Binary convolutions of narrow layers with a kernel row's taps packed into shared words. Internal.

The XNOR-popcount kernels of :mod:`._numba_kernels` give every (pixel, tap) its own 64-bit words,
so a 16-channel layer uses 16 bits of each word: a 3x3 kernel costs 9 words per output pixel where
its 144 bits fit in 3. Here the signs of one kernel row (``KW`` taps x ``C`` channels, contiguous in
NHWC) are packed together, ``NW = ceil(KW * C / 64)`` words per output column: 1 instead of 3 for
16 channels, 2 instead of 3 for 32. The convolution is then a ``KH x 1`` one over those words and
runs on the same register-blocked vector kernels (``xnor_store_4x2`` ...).

Packing, per input row: the signs of its pixels into a row buffer of 16-bit units with zero
padding on both sides (one ``<16 x float>`` compare per 16 channels), then each output column's
words by unaligned 64-bit loads from the buffer at the column's first tap.

Zero padding stays exact: a tap in the padding has zero activation bits, and the output columns
whose kernel row reaches into the padding use a copy of the weights with those taps zeroed too
(one weight *variant* per padding pattern), so the padded taps add no mismatches; the valid count
is ``rows * taps_inside * C``, as in the other kernels.

Importing this module compiles nothing and needs no torch.
"""

from __future__ import annotations

import numpy as np
from numba import prange, types
from numba.extending import intrinsic

from . import _float_kernels as fk
from . import _numba_kernels as nk
from ._numba_kernels import _jit, _prefer_512_bit


def tap_words(c_in: int, kw: int) -> int:
    """Words per kernel row when its ``kw`` taps of ``c_in`` channels are packed together."""
    return (kw * c_in + 63) // 64


def use_taps(c_in: int, kw: int) -> bool:
    """Whether tap-row packing applies and saves words: 16-bit channel units, one word per tap at
    most (``c_in <= 64``), and fewer words than one per tap."""
    return c_in % 16 == 0 and c_in <= 64 and tap_words(c_in, kw) < kw


def column_variants(w: int, kw: int, sw: int, pw: int, ow: int) -> tuple[np.ndarray, np.ndarray, list]:
    """Per output column: its weight variant and its number of taps inside the input; and the
    variants as ``(first, stop)`` tap ranges (variant 0: all taps)."""
    ranges: list = [(0, kw)]
    variant = np.zeros(ow, np.int64)
    taps = np.zeros(ow, np.int64)
    for o in range(ow):
        iw0 = o * sw - pw
        rng = (max(0, -iw0), min(kw, w - iw0))
        if rng not in ranges:
            ranges.append(rng)
        variant[o] = ranges.index(rng)
        taps[o] = max(0, rng[1] - rng[0])
    return variant, taps, ranges


def interior_columns(variant: np.ndarray) -> tuple[int, int]:
    """``[lo, hi)``: the output columns whose kernel row lies inside the input (variant 0, contiguous);
    an empty range when there are none."""
    inside = np.flatnonzero(variant == 0)
    return (int(inside[0]), int(inside[-1]) + 1) if inside.size else (0, 0)


def block_tap_weights(bits: np.ndarray, c_in: int, ranges: list) -> np.ndarray:
    """Canonical ``(C_out, KH, KW, 1)`` weight words -> ``(V, ceil(C_out / 8), KH, NW, 8)``.

    Kernel row ``(o, kh)`` as one bit string, tap ``t``'s channels at bits ``t * c_in ...``, cut into
    ``NW`` words; variant ``v`` keeps only the taps of ``ranges[v]``. Output channels past C_out are
    zero weights whose results are never written.
    """
    c_out, kh, kw, cw = bits.shape
    if cw != 1 or c_in > 64:
        raise ValueError("tap packing needs one word per tap (C_in <= 64)")
    nw = tap_words(c_in, kw)
    ob = (c_out + 7) // 8
    out = np.zeros((len(ranges), ob * 8, kh, nw), np.uint64)
    for v, (t0, t1) in enumerate(ranges):
        for o in range(c_out):
            for k in range(kh):
                row = 0
                for t in range(t0, t1):
                    row |= int(bits[o, k, t, 0]) << (t * c_in)
                for j in range(nw):
                    out[v, o, k, j] = (row >> (64 * j)) & 0xFFFFFFFFFFFFFFFF
    return np.ascontiguousarray(out.reshape(len(ranges), ob, 8, kh, nw).transpose(0, 1, 3, 4, 2))


def row_buffer_units(w: int, c_in: int, pw: int) -> int:
    """16-bit units of one input row's sign buffer: the row, its padding and 4 units of slack
    (the last column's 64-bit load may reach past the padding; those bits are masked off)."""
    return (w + 2 * pw) * (c_in // 16) + 4


_U16_FLAT = types.Array(types.uint16, 1, "C")
_F32_FLAT = types.Array(types.float32, 1, "C")


@intrinsic
def sign_bits16(typingctx, x, off):  # type: ignore[no-untyped-def]
    """Bits ``x[off + i] >= 0`` for i < 16 as one uint16 (one ``<16 x float>`` compare; NaN gives 0)."""
    if x != _F32_FLAT or not isinstance(off, types.Integer):
        return None

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        from llvmlite import ir

        _prefer_512_bit(builder.function)
        arr = context.make_array(signature.args[0])(context, builder, args[0])
        vty = ir.VectorType(ir.FloatType(), 16)
        v = builder.load(builder.bitcast(builder.gep(arr.data, [args[1]]), vty.as_pointer()), align=4)
        return builder.bitcast(builder.fcmp_ordered(">=", v, ir.Constant(vty, [0.0] * 16)), ir.IntType(16))

    return types.uint16(x, types.int64), codegen


@intrinsic
def load_u64_unaligned(typingctx, buf, off):  # type: ignore[no-untyped-def]
    """The 64 bits at 16-bit unit ``off`` of ``buf`` (little-endian: unit ``off`` in the low bits)."""
    if buf != _U16_FLAT or not isinstance(off, types.Integer):
        return None

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        from llvmlite import ir

        arr = context.make_array(signature.args[0])(context, builder, args[0])
        ptr = builder.bitcast(builder.gep(arr.data, [args[1]]), ir.IntType(64).as_pointer())
        return builder.load(ptr, align=2)

    return types.uint64(buf, types.int64), codegen


@_jit()
def _pack_taps_row(rr, xf, w_, c_, kw_, sw, pw, ow_, nw, buf, out):  # type: ignore[no-untyped-def]
    """Input row ``rr`` (= n * H + ih) -> ``out[(rr * OW + ow) * NW + j]``, the NW words of every
    output column's kernel row (its taps' signs, padding 0)."""
    u = c_ // 16
    base = rr * w_ * c_
    for k in range(pw * u):
        buf[k] = 0
    for iw in range(w_):
        for j in range(u):
            buf[(pw + iw) * u + j] = sign_bits16(xf, base + iw * c_ + 16 * j)
    for k in range((pw + w_) * u, buf.size):
        buf[k] = 0
    tail = kw_ * c_ - 64 * (nw - 1)  # bits of the last word (1..64)
    mask = np.uint64(0xFFFFFFFFFFFFFFFF) if tail == 64 else (np.uint64(1) << np.uint64(tail)) - np.uint64(1)
    for ow in range(ow_):
        s = ow * sw * u
        o = (rr * ow_ + ow) * nw
        for j in range(nw - 1):
            out[o + j] = load_u64_unaligned(buf, s + 4 * j)
        out[o + nw - 1] = load_u64_unaligned(buf, s + 4 * (nw - 1)) & mask


@_jit(parallel=True)
def pack_taps(xf, rows, w_, c_, kw_, sw, pw, ow_, nw, bufs, out):  # type: ignore[no-untyped-def]
    """:func:`_pack_taps_row` for ``rows`` (= N * H) input rows across threads; ``bufs`` uint16
    ``(rows * row_buffer_units,)``, one row buffer each."""
    units = bufs.size // rows
    for rr in prange(rows):
        _pack_taps_row(rr, xf, w_, c_, kw_, sw, pw, ow_, nw, bufs[rr * units:(rr + 1) * units], out)


@_jit()
def pack_taps_serial(xf, rows, w_, c_, kw_, sw, pw, ow_, nw, bufs, out):  # type: ignore[no-untyped-def]
    """:func:`pack_taps` on the calling thread (one row buffer reused)."""
    units = bufs.size // rows
    for rr in range(rows):
        _pack_taps_row(rr, xf, w_, c_, kw_, sw, pw, ow_, nw, bufs[:units], out)


@_jit()
def conv_taps_rows(r0, r1, a, wb, h_, nw, kh_, kw_, c_in, c_out, sh, ph, ow_lo, ow_hi, variant, taps, epi,
                   out, res, lo, hi):  # type: ignore[no-untyped-def]
    """Output rows ``r0 <= r < r1`` (r = n * OH + oh) of a tap-packed binary conv with its float epilogue
    and, when ``res`` has the output's shape, the residual add and activation ``clamp(row + res)``
    of a skip connection, each row while it is still in L1.

    a: uint64, the words of :func:`pack_taps` (flat ``(N, H, OW, NW)``); wb: uint64, the blocked
    variants of :func:`block_tap_weights` (flat); ``[ow_lo, ow_hi)`` the output columns whose kernel
    row lies inside the input (variant 0); ``variant`` / ``taps`` per output column (integers; uint64
    in the plan); ``epi`` the flat (4, C_out) epilogue table; out float32 ``(N, OH, OW, C_out)``.
    """
    acc = np.empty(16 * nk.XNOR_PIXELS, dtype=np.int64)  # once per call: an allocation per row cost ~20%
    dummy = np.empty((1, 1, 1, 1), np.int32)
    fuse = res.shape == out.shape
    for r in range(r0, r1):
        _conv_taps_row(r, a, wb, h_, nw, kh_, kw_, c_in, c_out, sh, ph, ow_lo, ow_hi, variant, taps, epi, out,
                       acc, dummy)
        if fuse:
            fk._add_act_row(r, out, res, lo, hi, out)


@_jit(parallel=True)
def conv_taps(a, wb, h_, nw, kh_, kw_, c_in, c_out, sh, ph, ow_lo, ow_hi, variant, taps, epi, out, res, lo,
              hi):  # type: ignore[no-untyped-def]
    """:func:`conv_taps_rows` of all output rows, in blocks of rows across threads."""
    rows = out.shape[0] * out.shape[1]
    blocks = min(rows, 64)  # (numba.get_num_threads() here would make the plan uncacheable: a ctypes global)
    for b in prange(blocks):
        conv_taps_rows(b * rows // blocks, (b + 1) * rows // blocks, a, wb, h_, nw, kh_, kw_, c_in, c_out, sh, ph,
                       ow_lo, ow_hi, variant, taps, epi, out, res, lo, hi)


@_jit(inline="always")
def _conv_taps_row(r, a, wb, h_, nw, kh_, kw_, c_in, c_out, sh, ph, ow_lo, ow_hi, variant, taps, epi, out, acc,
                   dummy):  # type: ignore[no-untyped-def]
    oh_, ow_ = out.shape[1], out.shape[2]
    ob_ = (c_out + 7) // 8
    n = r // oh_
    oh = r - n * oh_
    ih0 = oh * sh - ph
    kh0 = max(0, -ih0)
    rows = max(0, min(kh_, h_ - ih0) - kh0)
    wrow = nw * 8
    wblk = kh_ * wrow          # words between blocks of 8 output channels
    wvar = ob_ * wblk          # words between weight variants
    arow = ow_ * nw            # words between input rows
    blk = nk.XNOR_PIXELS
    for ob in range(0, ob_, 2):
        o0 = ob * 8
        two = ob + 1 < ob_
        ow = 0
        while ow < ow_:
            # the last interior run: one block overlapping the previous one (same values rewritten)
            if ow_lo <= ow < ow_hi < ow + blk and ow_hi - ow_lo >= blk:
                ow = ow_hi - blk
            abase = ((n * h_ + ih0 + kh0) * ow_ + ow) * nw
            if ow >= ow_lo and ow + blk <= ow_hi:
                wofs = (ob * kh_ + kh0) * wrow
                valid = rows * kw_ * c_in
                if o0 + 16 <= c_out:
                    nk.xnor_store_4x2(a, abase, nw, arow, wb, wofs, wrow, wblk, rows, nw, acc, dummy, out, epi,
                                      (r * ow_ + ow) * c_out, c_out, o0, valid, True)
                elif two:
                    nk.xnor_rows_4x2(a, abase, nw, arow, wb, wofs, wrow, wblk, rows, nw, acc)
                    nk._write_block(acc, blk, valid, n, oh, ow, o0, c_out, dummy, epi, out, True)
                    nk._write_block(acc[8 * blk:], blk, valid, n, oh, ow, o0 + 8, c_out, dummy, epi, out, True)
                else:
                    nk.xnor_rows_4x1(a, abase, nw, arow, wb, wofs, wrow, wblk, rows, nw, acc)
                    nk._write_block(acc, blk, valid, n, oh, ow, o0, c_out, dummy, epi, out, True)
                ow += blk
                continue
            wofs = np.int64(variant[ow]) * wvar + (ob * kh_ + kh0) * wrow
            valid = rows * np.int64(taps[ow]) * c_in
            if valid > 0 and o0 + 16 <= c_out:
                nk.xnor_store_1x2(a, abase, 0, arow, wb, wofs, wrow, wblk, rows, nw, acc, dummy, out, epi,
                                  (r * ow_ + ow) * c_out, c_out, o0, valid, True)
                ow += 1
                continue
            acc[:16] = 0
            if valid > 0:
                if two:
                    nk.xnor_rows_1x2(a, abase, 0, arow, wb, wofs, wrow, wblk, rows, nw, acc)
                else:
                    nk.xnor_rows_1x1(a, abase, 0, arow, wb, wofs, wrow, wblk, rows, nw, acc)
            nk._write_block(acc, 1, valid, n, oh, ow, o0, c_out, dummy, epi, out, True)
            if two:
                nk._write_block(acc[8:], 1, valid, n, oh, ow, o0 + 8, c_out, dummy, epi, out, True)
            ow += 1
