"""Binary convolutions on packed kernel rows: a kernel row's taps packed into shared words. Internal.

The XNOR-popcount kernels of :mod:`.popcount_avx512` give every (pixel, tap) its own 64-bit words,
so a 16-channel layer uses 16 bits of each word: a 3x3 kernel costs 9 words per output pixel where
its 144 bits fit in 3. Here the signs of one kernel row (``KW`` taps x ``C`` channels, contiguous in
NHWC) are packed together, ``NW = ceil(KW * C / 64)`` words per output column: 1 instead of 3 for
16 channels, 2 instead of 3 for 32, and for a multiple of 64 channels the same words as one per tap
(wide layers take this path for its row buffers, register epilogue and edge blocks). The
convolution is then a ``KH x 1`` one over those words and runs on the register-blocked vector loops
of ``popcount_avx512.make_xnor_rows`` (byte addressing, fused epilogue).

Packing, per input row: the signs of its pixels into a row buffer with zero padding on both sides
(one ``<16 x float>`` compare per 16 channels, ``C / 8`` bytes a pixel). The conv reads each output
column's kernel row in place, ``NW`` unaligned 64-bit loads at the column's first tap, the bits past
the kernel row masked off. A tap-packed layer with a multiple of 16 output channels writes those
row buffers for the next tap-packed layer itself, from the final values in its registers (after the
skip connection), so that layer packs nothing.

Zero padding stays exact: a tap in the padding has zero activation bits. Layers with a multiple of
16 output channels and at least ``XNOR_PIXELS`` output columns read every column's whole kernel row
and start the accumulators of blocks with padded taps at the correction of :func:`padding_starts`;
in the others the output columns whose kernel row reaches into the padding use a copy of the
weights with those taps zeroed too (one weight *variant* per padding pattern), so the padded taps add
no mismatches, and the valid count is ``rows * taps_inside * C``, as in the other kernels.

Importing this module compiles nothing and needs no torch.
"""

from __future__ import annotations

import numpy as np
from numba import prange, types
from numba.extending import intrinsic

from . import float_ops as fk
from . import popcount_avx512 as pa
from .jit import jit, prefer_512_bit


def tap_words(c_in: int, kw: int) -> int:
    """Words per kernel row when its ``kw`` taps of ``c_in`` channels are packed together."""
    return (kw * c_in + 63) // 64


def use_taps(c_in: int, kw: int) -> bool:
    """Whether this module's kernels apply: 16-bit channel units and a kernel row of several taps.
    Below 64 channels packing the taps saves words; from 64 on the row buffers still save the pack
    pass (written by the producer) and the skip connection's pass, and the padding starts let the
    edge columns run in register blocks."""
    return c_in % 16 == 0 and kw > 1


@jit()
def all_blocks(c_out, ow):  # type: ignore[no-untyped-def]
    """Whether :func:`conv_taps_rows` runs every output column in register blocks with the padding
    starts (else the edge columns one at a time with their weight variants)."""
    return c_out % 16 == 0 and ow >= pa.XNOR_PIXELS


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


def row_variants(h: int, kh: int, sh: int, ph: int, oh: int) -> tuple[np.ndarray, list]:
    """Per output row: the index of its ``(first kernel row inside, kernel rows inside)`` pair in the
    distinct pairs (returned second), clipped as :func:`conv_taps_rows` clips them."""
    pairs: list = []
    variant = np.zeros(oh, np.int64)
    for o in range(oh):
        ih0 = o * sh - ph
        kh0 = max(0, -ih0)
        pair = (kh0, max(0, min(kh, h - ih0) - kh0))
        if pair not in pairs:
            pairs.append(pair)
        variant[o] = pairs.index(pair)
    return variant, pairs


def padding_starts(bits: np.ndarray, c_in: int, w: int, sw: int, pw: int, ow: int, row_pairs: list) -> np.ndarray:
    """Accumulator start values that let an output column read its whole kernel row, taps in the zero
    padding included, so that edge columns run in the interior's register blocks with its weights.

    A padded tap reads activation bits 0 (-1): it adds its weight's ones to the mismatch count where
    the true product is 0. Starting the count at ``sum (C_in / 2 - ones)`` over the padded taps of the
    kernel rows used makes ``valid - 2 * count`` (``valid`` counting every tap) the dot over the taps
    inside, exactly (C_in is even). int64: ``2 * XNOR_PIXELS * C_out`` zeros (the start of every block
    without padding), then ``(len(row_pairs), OW, C_out)``.
    """
    c_out, kh, kw, _ = bits.shape
    ones = np.unpackbits(np.ascontiguousarray(bits).view(np.uint8), axis=-1).sum(axis=-1, dtype=np.int64)
    per_tap = c_in // 2 - ones
    table = np.zeros((len(row_pairs), ow, c_out), np.int64)
    for o in range(ow):
        padded = [t for t in range(kw) if not 0 <= o * sw - pw + t < w]
        column = per_tap[:, :, padded].sum(axis=2)
        for v, (k0, rows) in enumerate(row_pairs):
            table[v, o] = column[:, k0:k0 + rows].sum(axis=1)
    return np.concatenate([np.zeros(2 * pa.XNOR_PIXELS * c_out, np.int64), table.ravel()])


def block_tap_weights(bits: np.ndarray, c_in: int, ranges: list) -> np.ndarray:
    """Canonical ``(C_out, KH, KW, CW)`` weight words -> ``(V, ceil(C_out / 8), KH, NW, 8)``.

    Kernel row ``(o, kh)`` as one bit string, tap ``t``'s channels at bits ``t * c_in ...`` (its word
    ``j`` at ``t * c_in + 64 j``), cut into ``NW`` words; variant ``v`` keeps only the taps of
    ``ranges[v]``. Output channels past C_out are zero weights whose results are never written.
    """
    c_out, kh, kw, cw = bits.shape
    if cw != (c_in + 63) // 64:
        raise ValueError(f"{cw} words per tap for {c_in} input channels")
    nw = tap_words(c_in, kw)
    ob = (c_out + 7) // 8
    out = np.zeros((len(ranges), ob * 8, kh, nw), np.uint64)
    for v, (t0, t1) in enumerate(ranges):
        for o in range(c_out):
            for k in range(kh):
                row = 0
                for t in range(t0, t1):
                    for j in range(cw):
                        row |= int(bits[o, k, t, j]) << (t * c_in + 64 * j)
                for j in range(nw):
                    out[v, o, k, j] = (row >> (64 * j)) & 0xFFFFFFFFFFFFFFFF
    return np.ascontiguousarray(out.reshape(len(ranges), ob, 8, kh, nw).transpose(0, 1, 3, 4, 2))


def row_bytes(w: int, c_in: int, pw: int) -> int:
    """Bytes of one input row's sign buffer: the row and its zero padding (``C_in / 8`` bytes a pixel)
    and 8 bytes of slack (a kernel row's last 64-bit load may reach past the padding; those bits are
    masked off), rounded up to whole words."""
    return ((w + 2 * pw) * c_in // 8 + 8 + 7) // 8 * 8


@jit()
def tail_mask_of(c_in, kw, nw):  # type: ignore[no-untyped-def]
    """The bits of a kernel row's last word (of ``nw``) that belong to it: ``kw * c_in`` bits in all;
    the rest of the word is the next column's taps."""
    tail = kw * c_in - 64 * (nw - 1)
    if tail >= 64:
        return ~np.uint64(0)
    return (np.uint64(1) << np.uint64(tail)) - np.uint64(1)


_F32_FLAT = types.Array(types.float32, 1, "C")
_U8_FLAT = types.Array(types.uint8, 1, "C")


@intrinsic
def store_sign_bits16(typingctx, x, off, buf, boff):  # type: ignore[no-untyped-def]
    """``buf[boff:boff + 2]`` = the bits ``x[off + i] >= 0`` for i < 16, as one little-endian uint16
    (one ``<16 x float>`` compare; NaN gives 0, as ``torch.where(x >= 0, 1, -1)`` gives -1)."""
    if x != _F32_FLAT or buf != _U8_FLAT or not isinstance(off, types.Integer) or not isinstance(boff, types.Integer):
        return None

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        from llvmlite import ir

        prefer_512_bit(builder.function)
        arr = context.make_array(signature.args[0])(context, builder, args[0])
        out = context.make_array(signature.args[2])(context, builder, args[2])
        vty = ir.VectorType(ir.FloatType(), 16)
        v = builder.load(builder.bitcast(builder.gep(arr.data, [args[1]]), vty.as_pointer()), align=4)
        bits = builder.bitcast(builder.fcmp_ordered(">=", v, ir.Constant(vty, [0.0] * 16)), ir.IntType(16))
        builder.store(bits, builder.bitcast(builder.gep(out.data, [args[3]]), ir.IntType(16).as_pointer()), align=1)
        return context.get_dummy_value()

    return types.void(x, types.int64, buf, types.int64), codegen


@jit()
def _pack_sign_row(rr, xf, w_, c_, pw, rowbytes, buf):  # type: ignore[no-untyped-def]
    """Input row ``rr`` (= n * H + ih) of NHWC ``xf`` -> bytes ``[rr * rowbytes, (rr + 1) * rowbytes)``
    of ``buf``: ``pw`` zero pixels, the row's sign bits (``C / 8`` bytes a pixel), zeros to the end."""
    cb = c_ // 8
    start = rr * rowbytes
    for k in range(start, start + pw * cb):
        buf[k] = 0
    src = rr * w_ * c_
    dst = start + pw * cb
    for iw in range(w_):
        for j in range(0, c_, 16):
            store_sign_bits16(xf, src + iw * c_ + j, buf, dst + iw * cb + j // 8)
    for k in range(dst + w_ * cb, start + rowbytes):
        buf[k] = 0


@jit(parallel=True)
def pack_signs(xf, rows, w_, c_, pw, rowbytes, buf):  # type: ignore[no-untyped-def]
    """:func:`_pack_sign_row` for ``rows`` (= N * H) input rows across threads: the row buffers a
    tap-packed conv reads (``C`` a multiple of 16)."""
    for rr in prange(rows):
        _pack_sign_row(rr, xf, w_, c_, pw, rowbytes, buf)


@jit()
def pack_signs_serial(xf, rows, w_, c_, pw, rowbytes, buf):  # type: ignore[no-untyped-def]
    """:func:`pack_signs` on the calling thread."""
    for rr in range(rows):
        _pack_sign_row(rr, xf, w_, c_, pw, rowbytes, buf)


# The register blocks on the row buffers: bytes addressing, a tail mask per kernel row; the fused forms
# (16 output channels) also start from given accumulators, add the skip connection and write the next
# layer's signs.
xnor_taps_4x2 = pa.make_xnor_rows(pa.XNOR_PIXELS, 2, addressing="bytes", fused=True)
xnor_taps_8x2 = pa.make_xnor_rows(2 * pa.XNOR_PIXELS, 2, addressing="bytes", fused=True)
xnor_taps_7x2 = pa.make_xnor_rows(7, 2, addressing="bytes", fused=True)  # rows of 7, 14, 28 columns
xnor_taps_1x2 = pa.make_xnor_rows(1, 2, addressing="bytes", fused=True)
_rows_4x2 = pa.make_xnor_rows(pa.XNOR_PIXELS, 2, addressing="bytes")
_rows_4x1 = pa.make_xnor_rows(pa.XNOR_PIXELS, 1, addressing="bytes")
_rows_1x2 = pa.make_xnor_rows(1, 2, addressing="bytes")
_rows_1x1 = pa.make_xnor_rows(1, 1, addressing="bytes")


@jit()
def conv_taps_rows(r0, r1, a, rowbytes, wb, h_, nw, tail, kh_, kw_, c_in, c_out, sh, sw, ph, ow_lo, ow_hi, variant,
                   taps, rowvar, starts, epi, out, res, lo, hi, signs, srow, scol0):  # type: ignore[no-untyped-def]
    """Output rows ``r0 <= r < r1`` (r = n * OH + oh) of a tap-packed binary conv with its float epilogue
    and, when ``res`` has the output's shape, the residual add and activation ``clamp(out + res, lo, hi)``
    of a skip connection.

    a: uint8, the row buffers of :func:`pack_signs` (``rowbytes`` each; the conv reads each output
    column's kernel row in place: ``nw`` unaligned words, the last masked by ``tail``); wb: uint64, the
    blocked variants of :func:`block_tap_weights` (flat); ``[ow_lo, ow_hi)`` the output columns whose
    kernel row lies inside the input (variant 0); ``variant`` / ``taps`` per output column and
    ``rowvar`` per output row (uint64 in the plan); ``starts`` the int64 table of
    :func:`padding_starts`; ``epi`` the flat (4, C_out) epilogue table; out float32 ``(N, OH, OW, C_out)``.

    When C_out is a multiple of 16 every output value is final in registers, and with a non-empty
    ``signs`` its sign bits also go there, in the next tap-packed layer's row-buffer layout: row r at
    byte ``r * srow``, column ow at ``scol0 + ow * C_out / 8`` - that layer then packs nothing. Such
    layers with at least ``XNOR_PIXELS`` output columns run every column, edges included, in register
    blocks with the full kernel's weights (``starts`` corrects the padded taps): 8 pixels, or 7 where
    they tile the row (ResNet-18's 56, 28, 14, 7), then 4, the last block overlapping its neighbour;
    the others take the edge columns one at a time with their weight variant.
    """
    acc = np.empty(32 * pa.XNOR_PIXELS, dtype=np.int64)  # once per call: an allocation per row cost ~20%
    dummy = np.empty((1, 1, 1, 1), np.int32)
    outf = out.reshape(out.size)
    fuse = res.shape == out.shape
    resf = res.reshape(res.size)
    write = signs.size > 0
    fused = c_out % 16 == 0
    oh_, ow_ = out.shape[1], out.shape[2]
    ob_ = (c_out + 7) // 8
    wrow = nw * 8
    wblk = kh_ * wrow          # words between blocks of 8 output channels
    wvar = ob_ * wblk          # words between weight variants
    astep = sw * (c_in // 8)   # bytes between output columns' first taps
    blk = pa.XNOR_PIXELS
    blocked = all_blocks(c_out, ow_)
    sevens = ow_ % (2 * blk) != 0 and ow_ % 7 == 0  # 7-pixel blocks tile the row exactly
    big = 7 if sevens else 2 * blk
    for r in range(r0, r1):
        n = r // oh_
        oh = r - n * oh_
        ih0 = oh * sh - ph
        kh0 = max(0, -ih0)
        rows = max(0, min(kh_, h_ - ih0) - kh0)
        base = (n * h_ + ih0 + kh0) * rowbytes
        valid = rows * kw_ * c_in
        srow0 = (2 * blk + np.int64(rowvar[oh]) * ow_) * c_out  # this row's padding starts, column 0
        for ob in range(0, ob_, 2):
            o0 = ob * 8
            wofs = (ob * kh_ + kh0) * wrow
            if blocked:
                ow = 0
                while ow < ow_:
                    wide = ow + big <= ow_
                    if not wide and ow + blk > ow_:
                        ow = ow_ - blk  # the last block overlaps the previous one (same values rewritten)
                    npx = big if wide else blk
                    padded = rows < kh_ or ow < ow_lo or ow + npx > ow_hi
                    ioff = srow0 + ow * c_out + o0 if padded else 0
                    args = (a, base + ow * astep, astep, rowbytes, wb, wofs, wrow, wblk, rows, nw, tail, acc, outf,
                            epi, (r * ow_ + ow) * c_out, o0, c_out, valid, resf, lo, hi, signs,
                            r * srow + scol0 + (ow * c_out + o0) // 8, c_out // 8, fuse, write, starts, ioff)
                    if wide and sevens:
                        xnor_taps_7x2(*args)
                    elif wide:
                        xnor_taps_8x2(*args)
                    else:
                        xnor_taps_4x2(*args)
                    ow += npx
                continue
            two = ob + 1 < ob_
            ow = 0
            while ow < ow_:
                # the last interior run: one block overlapping the previous one (same values rewritten)
                if ow_lo <= ow < ow_hi < ow + blk and ow_hi - ow_lo >= blk:
                    ow = ow_hi - blk
                abase = base + ow * astep
                if not fused and ow >= ow_lo and ow + blk <= ow_hi:
                    if two:
                        _rows_4x2(a, abase, astep, rowbytes, wb, wofs, wrow, wblk, rows, nw, tail, acc)
                        pa.write_block(acc, blk, valid, n, oh, ow, o0, c_out, dummy, epi, out, True)
                        pa.write_block(acc[8 * blk:], blk, valid, n, oh, ow, o0 + 8, c_out, dummy, epi, out, True)
                    else:
                        _rows_4x1(a, abase, astep, rowbytes, wb, wofs, wrow, wblk, rows, nw, tail, acc)
                        pa.write_block(acc, blk, valid, n, oh, ow, o0, c_out, dummy, epi, out, True)
                    ow += blk
                    continue
                vofs = np.int64(variant[ow]) * wvar + wofs
                cvalid = rows * np.int64(taps[ow]) * c_in
                live = rows if cvalid > 0 else 0  # a column whose taps are all padding: dot 0
                if fused:
                    xnor_taps_1x2(a, abase, 0, rowbytes, wb, vofs, wrow, wblk, live, nw, tail, acc, outf, epi,
                                  (r * ow_ + ow) * c_out, o0, c_out, cvalid, resf, lo, hi, signs,
                                  r * srow + scol0 + (ow * c_out + o0) // 8, 0, fuse, write, starts, 0)
                    ow += 1
                    continue
                acc[:16] = 0
                if two:
                    _rows_1x2(a, abase, 0, rowbytes, wb, vofs, wrow, wblk, live, nw, tail, acc)
                else:
                    _rows_1x1(a, abase, 0, rowbytes, wb, vofs, wrow, wblk, live, nw, tail, acc)
                pa.write_block(acc, 1, cvalid, n, oh, ow, o0, c_out, dummy, epi, out, True)
                if two:
                    pa.write_block(acc[8:], 1, cvalid, n, oh, ow, o0 + 8, c_out, dummy, epi, out, True)
                ow += 1
        if fuse and not fused:
            fk._add_act_row(r, out, res, lo, hi, out)


@jit(parallel=True)
def conv_taps(a, rowbytes, wb, h_, nw, tail, kh_, kw_, c_in, c_out, sh, sw, ph, ow_lo, ow_hi, variant, taps, rowvar,
              starts, epi, out, res, lo, hi, signs, srow, scol0):  # type: ignore[no-untyped-def]
    """:func:`conv_taps_rows` of all output rows, in blocks of rows across threads."""
    rows = out.shape[0] * out.shape[1]
    blocks = min(rows, 64)  # (numba.get_num_threads() here would make the plan uncacheable: a ctypes global)
    for b in prange(blocks):
        conv_taps_rows(b * rows // blocks, (b + 1) * rows // blocks, a, rowbytes, wb, h_, nw, tail, kh_, kw_, c_in,
                       c_out, sh, sw, ph, ow_lo, ow_hi, variant, taps, rowvar, starts, epi, out, res, lo, hi, signs, srow,
                       scol0)
