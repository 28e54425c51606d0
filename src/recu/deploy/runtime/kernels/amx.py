"""Binary conv2d on Intel AMX tiles (int8 +-1 operands). The driver is :mod:`.conv`.

A product of two signs is +-1, so the dot product of the sign vectors is an int8 dot product
(``tdpbssd``: 16 x 16 int32 results from 16 x 64 and 64 x 16 int8 tiles, 16,384 multiply-
accumulates per instruction). Zero padding is a 0 in the int8 input, so padded taps add 0, exactly
as in training. The integers equal the XNOR-popcount kernels' and ``F.conv2d(sign(A), sign(W))``.

Layout:

- input: int8 ``(N, Hp, Wp, Cp)`` with the spatial padding materialised as zeros (``Hp = H + 2 ph``,
  ``Wp = W + 2 pw``, ``Cp`` = C_in rounded up to 64, pad channels 0), plus slack at the end that
  the last tiles may read;
- weights: ``NB * T`` B tiles (:func:`amx_weights`), ``NB = ceil(C_out / 16)`` blocks of 16 output
  channels times ``T = KH * KW * Cp / 64`` steps (tap, 64-channel group), each 16 rows x 64 columns
  in AMX's VNNI order (row r holds input channels 4r..4r+3 of each of the 16 output channels):
  int8 +-1 for small layers, 1 bit per weight for large ones (:data:`INT8_WEIGHT_BYTES`), expanded
  to int8 in the kernel one step ahead of use, so deep layers stream 1-bit weights through the
  caches (at 512@7, 2.4 MB of int8 weights did not fit a 2 MB L2);
- a *pixel tile* is 16 output pixels whose input rows are equally spaced: with stride 1, 16
  consecutive positions of the padded plane flattened row by row (positions in the right-hand
  padding columns are computed and dropped, ``(KW - 1) / Wp`` of the work); with a larger stride,
  16 consecutive outputs of one output row. ``pix`` maps each tile row to its flat output pixel
  ``(n * OH + oh) * OW + ow`` or -1.

Register blocking: 4 pixel tiles x 1 block of 16 output channels in the 4 accumulator tiles
(tmm0-3), A tiles in tmm4/tmm5 alternately, B in tmm6/tmm7 alternately, so each B tile (the
weights, the larger operand on deep layers) is loaded once per 64 output pixels and feeds 4
``tdpbssd``. The OS must grant the process AMX state (``arch_prctl(ARCH_REQ_XCOMP_PERM)``):
:func:`request_amx` does, and the kernels are never called without it (an AMX instruction
without permission kills the process with SIGILL).
"""

from __future__ import annotations

import functools
import threading

import numpy as np
from numba import prange, types
from numba.extending import intrinsic

from .float_ops import add_clamp16
from .jit import epilogue, jit, prefer_512_bit

TILE_ROWS = 16  # pixels per A tile, output channels per B tile
TILE_BYTES = 64  # input channels per step (one A row)
GROUP = 4  # pixel tiles per register block

def tile_config() -> np.ndarray:
    """The 64-byte ``ldtilecfg`` block: palette 1, all 8 tiles 16 rows x 64 bytes."""
    cfg = np.zeros(64, np.uint8)
    cfg[0] = 1
    cfg[16:32].view(np.uint16)[:] = TILE_BYTES
    cfg[48:56] = TILE_ROWS
    return cfg


TILE_CONFIG = tile_config()


def _void_fn(builder, name, args):  # type: ignore[no-untyped-def]
    from llvmlite import ir
    from numba.core import cgutils

    return cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), args), name)


def _amx_attrs(fn) -> None:  # type: ignore[no-untyped-def]
    try:
        set.add(fn.attributes, '"target-features"="+amx-tile,+amx-int8"')
    except (AttributeError, TypeError):
        pass


@intrinsic
def tile_load_config(typingctx, cfg):  # type: ignore[no-untyped-def]
    """``ldtilecfg`` from a 64-byte uint8 array."""
    if cfg != types.Array(types.uint8, 1, "C"):
        return None

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        from llvmlite import ir

        _amx_attrs(builder.function)
        arr = context.make_array(signature.args[0])(context, builder, args[0])
        p8 = ir.IntType(8).as_pointer()
        builder.call(_void_fn(builder, "llvm.x86.ldtilecfg", [p8]), [builder.bitcast(arr.data, p8)])
        return context.get_dummy_value()

    return types.void(cfg), codegen


@intrinsic
def tile_release(typingctx):  # type: ignore[no-untyped-def]
    """``tilerelease``: return the tile state to its initial (unused) condition."""

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        _amx_attrs(builder.function)
        builder.call(_void_fn(builder, "llvm.x86.tilerelease", []), [])
        return context.get_dummy_value()

    return types.void(), codegen


@intrinsic
def dot_4x1(typingctx, x, abase, aidx, astride, wbits, woff, toff, steps, acc, scratch):  # type: ignore[no-untyped-def]
    """Accumulate 4 pixel tiles x 16 output channels over ``steps`` (tap, channel-group) steps.

    ``abase[aidx:aidx + 4]``: byte offsets of the 4 pixel tiles in ``x``; ``astride``: bytes between a
    tile's rows; ``toff`` int64[steps]: byte offset of each step from a pixel's own input row. The B
    tiles of this block are tiles ``first + t`` of ``wbits`` (:func:`amx_weights`), either int8
    (1024 bytes per tile, loaded as they are) or 1 bit per weight (uint64, 16 words per tile: word r
    = row r, bit 4n + i = input channel 4r + i of output channel n, 1 = +1). Bit tiles are expanded
    to int8 +-1 in ``scratch`` (2 x 1024 bytes, 64-byte aligned, one half per B tile register) one
    step ahead of their use, so deep layers stream their weights through the caches at 1 bit each;
    ``wbits`` then holds one more tile past the last one used (read ahead, never used). Writes the
    4 accumulators (int32 16 x 16 each) to ``acc[0:1024]``.
    """
    i = types.int64
    bits = wbits == types.Array(types.uint64, 1, "C")
    ok = (x == types.Array(types.int8, 1, "C") and (bits or wbits == types.Array(types.int8, 1, "C"))
          and abase == types.Array(types.int64, 1, "C") and toff == types.Array(types.int64, 1, "C")
          and acc == types.Array(types.int32, 1, "C") and scratch == types.Array(types.int8, 1, "C")
          and all(isinstance(v, types.Integer) for v in (aidx, astride, woff, steps)))
    if not ok:
        return None
    sig = types.void(x, abase, i, i, wbits, i, toff, i, acc, scratch)

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        from llvmlite import ir

        _amx_attrs(builder.function)
        prefer_512_bit(builder.function)
        i8, i64 = ir.IntType(8), ir.IntType(64)
        p8 = i8.as_pointer()
        v64 = ir.VectorType(i8, 64)
        xa, ba, wa, ta, ca, sa = (context.make_array(signature.args[k])(context, builder, args[k])
                                  for k in (0, 1, 4, 6, 8, 9))
        aidx_v, astride_v, woff_v, steps_v = args[2], args[3], args[5], args[7]
        xp = builder.bitcast(xa.data, p8)
        cp = builder.bitcast(ca.data, p8)
        sp = builder.bitcast(sa.data, p8)
        zero_t = _void_fn(builder, "llvm.x86.tilezero", [i8])
        load_t = _void_fn(builder, "llvm.x86.tileloadd64", [i8, p8, i64])
        dot_t = _void_fn(builder, "llvm.x86.tdpbssd", [i8, i8, i8])
        store_t = _void_fn(builder, "llvm.x86.tilestored64", [i8, p8, i64])
        plus = ir.Constant(v64, [1] * 64)
        minus = ir.Constant(v64, [-1] * 64)

        def tmm(k: int):  # type: ignore[no-untyped-def]
            return ir.Constant(i8, k)

        def expand(t, half: int) -> None:  # type: ignore[no-untyped-def]
            # 64 bits -> 64 bytes of +-1 per row: a mask register and one masked blend on AVX-512.
            if not bits:
                return
            first = builder.mul(builder.add(woff_v, t), ir.Constant(i64, TILE_ROWS))
            for r in range(TILE_ROWS):
                word = builder.load(builder.gep(wa.data, [builder.add(first, ir.Constant(i64, r))]))
                row = builder.select(builder.bitcast(word, ir.VectorType(ir.IntType(1), 64)), plus, minus)
                dst = builder.gep(sp, [ir.Constant(i64, 1024 * half + TILE_BYTES * r)])
                builder.store(row, builder.bitcast(dst, v64.as_pointer()), align=64)

        bases = [builder.load(builder.gep(ba.data, [builder.add(aidx_v, ir.Constant(i64, g))])) for g in range(GROUP)]
        for g in range(GROUP):
            builder.call(zero_t, [tmm(g)])
        row_bytes = ir.Constant(i64, TILE_BYTES)

        def step(t, half: int) -> None:  # type: ignore[no-untyped-def]
            b_tile = 6 + half
            if bits:
                b_ptr = builder.gep(sp, [ir.Constant(i64, 1024 * half)])
            else:
                b_ptr = builder.gep(builder.bitcast(wa.data, p8), [builder.mul(builder.add(woff_v, t), ir.Constant(i64, 1024))])
            builder.call(load_t, [tmm(b_tile), b_ptr, row_bytes])
            expand(builder.add(t, ir.Constant(i64, 1)), 1 - half)  # next step's B, while these dots run
            off = builder.load(builder.gep(ta.data, [t]))
            for g in range(GROUP):
                a_tile = 4 + g % 2
                builder.call(load_t, [tmm(a_tile), builder.gep(xp, [builder.add(bases[g], off)]), astride_v])
                builder.call(dot_t, [tmm(g), tmm(a_tile), tmm(b_tile)])

        # Two steps per iteration so that consecutive B tiles alternate between tmm6 and tmm7.
        expand(ir.Constant(i64, 0), 0)
        entry = builder.block
        loop = builder.append_basic_block("amx.loop")
        tail = builder.append_basic_block("amx.tail")
        last = builder.append_basic_block("amx.last")
        done = builder.append_basic_block("amx.done")
        pairs = builder.ashr(steps_v, ir.Constant(i64, 1))
        builder.cbranch(builder.icmp_signed(">", pairs, ir.Constant(i64, 0)), loop, tail)
        builder.position_at_end(loop)
        k = builder.phi(i64)
        t0 = builder.shl(k, ir.Constant(i64, 1))
        step(t0, 0)
        step(builder.add(t0, ir.Constant(i64, 1)), 1)
        k_next = builder.add(k, ir.Constant(i64, 1))
        builder.cbranch(builder.icmp_signed("<", k_next, pairs), loop, tail)
        k.add_incoming(ir.Constant(i64, 0), entry)
        k.add_incoming(k_next, loop)
        builder.position_at_end(tail)
        odd = builder.icmp_signed("!=", builder.and_(steps_v, ir.Constant(i64, 1)), ir.Constant(i64, 0))
        builder.cbranch(odd, last, done)
        builder.position_at_end(last)
        step(builder.sub(steps_v, ir.Constant(i64, 1)), 0)
        builder.branch(done)
        builder.position_at_end(done)
        for g in range(GROUP):
            builder.call(store_t, [tmm(g), builder.gep(cp, [ir.Constant(i64, 1024 * g)]), row_bytes])
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def write_rows(typingctx, acc, pix, pidx, out_i, epi, out_f, o0, affine):  # type: ignore[no-untyped-def]
    """Write the 64 accumulator rows of :func:`dot_4x1` (16 full output channels from ``o0``).

    Row q goes to output pixel ``pix[pidx + q]`` (skipped when -1): int32 dot products, or when
    ``affine`` the float32 :func:`epilogue`, 16 channels per vector instruction.
    """
    ok = (acc == types.Array(types.int32, 1, "C") and pix == types.Array(types.int64, 1, "C")
          and out_i == types.Array(types.int32, 2, "C") and out_f == types.Array(types.float32, 2, "C")
          and epi == types.Array(types.float32, 1, "C") and isinstance(pidx, types.Integer)
          and isinstance(o0, types.Integer) and affine == types.boolean)
    if not ok:
        return None
    sig = types.void(acc, pix, types.int64, out_i, epi, out_f, types.int64, types.boolean)

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        from llvmlite import ir
        from numba.core import cgutils

        prefer_512_bit(builder.function)
        i64 = ir.IntType(64)
        f16 = ir.VectorType(ir.FloatType(), TILE_ROWS)
        i16 = ir.VectorType(ir.IntType(32), TILE_ROWS)
        ca, pa, oi, ea, of = (context.make_array(signature.args[k])(context, builder, args[k]) for k in (0, 1, 3, 4, 5))
        pidx_v, o0_v, affine_v = args[2], args[6], args[7]
        c_out = builder.extract_value(of.shape, 1)
        c_out_i = builder.extract_value(oi.shape, 1)
        fma16 = cgutils.get_or_insert_function(builder.module, ir.FunctionType(f16, [f16] * 3), "llvm.fma.v16f32")

        def epi_vec(row: int):  # type: ignore[no-untyped-def]
            at = builder.add(builder.mul(c_out, ir.Constant(i64, row)), o0_v)
            return builder.load(builder.bitcast(builder.gep(ea.data, [at]), f16.as_pointer()), align=4)

        def rows(body) -> None:  # type: ignore[no-untyped-def]
            for q in range(GROUP * TILE_ROWS):
                p = builder.load(builder.gep(pa.data, [builder.add(pidx_v, ir.Constant(i64, q))]))
                with builder.if_then(builder.icmp_signed(">=", p, ir.Constant(i64, 0))):
                    v = builder.load(builder.bitcast(builder.gep(ca.data, [ir.Constant(i64, TILE_ROWS * q)]),
                                                     i16.as_pointer()), align=4)
                    body(p, v)

        with builder.if_else(affine_v) as (then, otherwise):
            with then:
                alpha, bias, bn_scale, bn_shift = (epi_vec(k) for k in range(4))

                def store_f(p, v):  # type: ignore[no-untyped-def]
                    # The same float32 steps as :func:`epilogue`.
                    t = builder.fadd(builder.fmul(builder.sitofp(v, f16), alpha), bias)
                    y = builder.call(fma16, [t, bn_scale, bn_shift])
                    dst = builder.gep(of.data, [builder.add(builder.mul(p, c_out), o0_v)])
                    builder.store(y, builder.bitcast(dst, f16.as_pointer()), align=4)

                rows(store_f)
            with otherwise:
                def store_i(p, v):  # type: ignore[no-untyped-def]
                    dst = builder.gep(oi.data, [builder.add(builder.mul(p, c_out_i), o0_v)])
                    builder.store(v, builder.bitcast(dst, i16.as_pointer()), align=4)

                rows(store_i)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def sign_int8_64(typingctx, x, src, y, dst):  # type: ignore[no-untyped-def]
    """``y[dst + i] = 1 if x[src + i] >= 0 else -1`` for i < 64 (NaN gives -1), one vector compare."""
    if x != types.Array(types.float32, 1, "C") or y != types.Array(types.int8, 1, "C"):
        return None
    sig = types.void(x, types.int64, y, types.int64)

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        from llvmlite import ir

        prefer_512_bit(builder.function)
        xa = context.make_array(signature.args[0])(context, builder, args[0])
        ya = context.make_array(signature.args[2])(context, builder, args[2])
        fv = ir.VectorType(ir.FloatType(), 64)
        bv = ir.VectorType(ir.IntType(8), 64)
        v = builder.load(builder.bitcast(builder.gep(xa.data, [args[1]]), fv.as_pointer()), align=4)
        s = builder.select(builder.fcmp_ordered(">=", v, ir.Constant(fv, [0.0] * 64)),
                           ir.Constant(bv, [1] * 64), ir.Constant(bv, [-1] * 64))
        builder.store(s, builder.bitcast(builder.gep(ya.data, [args[3]]), bv.as_pointer()), align=1)
        return context.get_dummy_value()

    return sig, codegen


@jit()
def _sign_pixel(x, src, c_, y, dst, cp_):  # type: ignore[no-untyped-def]
    full = c_ // 64
    for j in range(full):
        sign_int8_64(x, src + 64 * j, y, dst + 64 * j)
    for c in range(full * 64, c_):
        y[dst + c] = 1 if x[src + c] >= 0 else -1
    for c in range(c_, cp_):
        y[dst + c] = 0


@jit()
def _sign_row(r, x, h_, w_, c_, ph, pw, hp, wp, cp_, y):  # type: ignore[no-untyped-def]
    """Padded row ``r`` (= n * Hp + i) of :func:`sign_nhwc_padded_serial`: signs inside, zeros in the padding."""
    n = r // hp
    i = r - n * hp
    base = r * wp * cp_
    h = i - ph
    if h < 0 or h >= h_:
        y[base:base + wp * cp_] = 0
        return
    y[base:base + pw * cp_] = 0
    y[base + (pw + w_) * cp_:base + wp * cp_] = 0
    src = ((n * h_ + h) * w_) * c_
    if c_ == cp_:  # no pad channels: the row's interior is one contiguous run on both sides
        dst = base + pw * cp_
        for j in range(w_ * c_ // 64):
            sign_int8_64(x, src + 64 * j, y, dst + 64 * j)
        return
    for w in range(w_):
        _sign_pixel(x, src + w * c_, c_, y, base + (pw + w) * cp_, cp_)


@jit()
def sign_nhwc_padded_serial(x, n_, h_, w_, c_, ph, pw, cp_, y):  # type: ignore[no-untyped-def]
    """x: float32 flat NHWC -> y: int8 flat ``(N, H + 2 ph, W + 2 pw, Cp)`` + slack (zeroed): +-1 inside."""
    hp, wp = h_ + 2 * ph, w_ + 2 * pw
    for r in range(n_ * hp):
        _sign_row(r, x, h_, w_, c_, ph, pw, hp, wp, cp_, y)
    y[n_ * hp * wp * cp_:] = 0


@jit(inline="always")
def _add_residual(acc_rows, pix, q0, o0, width, out_f, res, rlo, rhi):  # type: ignore[no-untyped-def]
    """``out_f = clamp(out_f + res, rlo, rhi)`` on the block just written (its pixels, ``width`` channels
    from ``o0``): the plan's fused skip connection, applied while the block is in L1. The clamp is
    PyTorch's (NaN and -0.0 pass through)."""
    for q in range(acc_rows):
        p = pix[q0 + q]
        if p >= 0 and width == 16:  # one vector: the loop below stays scalar in place (out_f is read and written)
            add_clamp16(out_f, res, out_f, p * out_f.shape[1] + o0, rlo, rhi)
        elif p >= 0:
            for j in range(o0, o0 + width):
                v = out_f[p, j] + res[p, j]
                if v < rlo:
                    v = rlo
                if v > rhi:
                    v = rhi
                out_f[p, j] = v


@jit()
def _blocks(lo, hi, x, wb, toff, abase, astride, pix, c_out, out_i, epi, out_f, affine, cfg, res, rlo, rhi):  # type: ignore[no-untyped-def]
    """Register blocks ``lo <= b < hi``: block b is pixel-tile group ``b // NB``, output channels ``16 (b % NB)``.

    Output channels vary fastest, so a group's input tiles stay in L1 while the weights stream by.
    ``res``: a (pixels, C_out) float32 skip connection added (then clamped to [rlo, rhi]) to each
    block after its epilogue, or a 0-row array for none.
    """
    steps = toff.shape[0]
    nb_ = (c_out + TILE_ROWS - 1) // TILE_ROWS
    acc = np.empty(GROUP * 256, np.int32)
    scratch = np.empty(2 * 1024 + 64, np.int8)
    start = (-scratch.ctypes.data) % 64
    scratch = scratch[start:start + 2 * 1024]
    tile_load_config(cfg)
    for b in range(lo, hi):
        g = b // nb_
        nb = b - g * nb_
        dot_4x1(x, abase, g * GROUP, astride, wb, nb * steps, toff, steps, acc, scratch)
        o0 = nb * TILE_ROWS
        width = min(TILE_ROWS, c_out - o0)
        if width == TILE_ROWS:
            write_rows(acc, pix, g * GROUP * TILE_ROWS, out_i, epi, out_f, o0, affine)
        else:
            for q in range(GROUP * TILE_ROWS):
                p = pix[g * GROUP * TILE_ROWS + q]
                if p >= 0:
                    for j in range(width):
                        if affine:
                            out_f[p, o0 + j] = epilogue(acc[q * TILE_ROWS + j], epi, c_out, o0 + j)
                        else:
                            out_i[p, o0 + j] = acc[q * TILE_ROWS + j]
        if res.shape[0] > 0:
            _add_residual(GROUP * TILE_ROWS, pix, g * GROUP * TILE_ROWS, o0, width, out_f, res, rlo, rhi)
    tile_release()


@jit(parallel=True)
def conv_amx(x, wb, toff, abase, astride, pix, c_out, out_i, epi, out_f, affine, cfg, chunks):  # type: ignore[no-untyped-def]
    """Binary conv2d on AMX tiles, ``chunks`` runs of register blocks across threads.

    x: int8 padded input (flat); wb: int8 weights (flat, see module doc); toff: int64 byte offset of
    each (tap, channel group) step; abase: int64 byte offset of each pixel tile (a multiple of 4
    tiles); astride: bytes between a tile's rows; pix: int64 output pixel of each tile row or -1.
    affine False: out_i int32 (pixels, C_out) gets the dot products; True: out_f float32 gets
    :func:`epilogue` with ``epi`` the flat (4, C_out) table. cfg: :func:`tile_config`.
    """
    total = (abase.shape[0] // GROUP) * ((c_out + TILE_ROWS - 1) // TILE_ROWS)
    for ch in prange(chunks):
        _blocks(ch * total // chunks, (ch + 1) * total // chunks, x, wb, toff, abase, astride, pix, c_out,
                out_i, epi, out_f, affine, cfg, out_f[:0], np.float32(0), np.float32(0))


@jit()
def conv_amx_serial(x, wb, toff, abase, astride, pix, c_out, out_i, epi, out_f, affine, cfg, chunks):  # type: ignore[no-untyped-def]
    """:func:`conv_amx` on the calling thread (``chunks`` is ignored)."""
    total = (abase.shape[0] // GROUP) * ((c_out + TILE_ROWS - 1) // TILE_ROWS)
    _blocks(0, total, x, wb, toff, abase, astride, pix, c_out, out_i, epi, out_f, affine, cfg, out_f[:0], np.float32(0),
            np.float32(0))


@jit(parallel=True)
def sign_conv_amx(xf, n_, h_, w_, c_, ph, pw, cp_, x8, wb, toff, abase, astride, pix, c_out, out_i, epi, out_f,
                  affine, cfg, chunks, res, rlo, rhi):  # type: ignore[no-untyped-def]
    """:func:`sign_nhwc_padded_serial` of the float NHWC input ``xf`` into ``x8``, then :func:`conv_amx`: one call.

    ``res``, ``rlo``, ``rhi``: a skip connection added to the output, then clamped (see :func:`_blocks`);
    ``res`` with 0 rows for none."""
    hp, wp = h_ + 2 * ph, w_ + 2 * pw
    for r in prange(n_ * hp):
        _sign_row(r, xf, h_, w_, c_, ph, pw, hp, wp, cp_, x8)
    x8[n_ * hp * wp * cp_:] = 0
    total = (abase.shape[0] // GROUP) * ((c_out + TILE_ROWS - 1) // TILE_ROWS)
    for ch in prange(chunks):
        _blocks(ch * total // chunks, (ch + 1) * total // chunks, x8, wb, toff, abase, astride, pix, c_out,
                out_i, epi, out_f, affine, cfg, res, rlo, rhi)


@jit()
def sign_conv_amx_serial(xf, n_, h_, w_, c_, ph, pw, cp_, x8, wb, toff, abase, astride, pix, c_out, out_i, epi,
                         out_f, affine, cfg, chunks, res, rlo, rhi):  # type: ignore[no-untyped-def]
    """:func:`sign_conv_amx` on the calling thread (``chunks`` is ignored)."""
    sign_nhwc_padded_serial(xf, n_, h_, w_, c_, ph, pw, cp_, x8)
    total = (abase.shape[0] // GROUP) * ((c_out + TILE_ROWS - 1) // TILE_ROWS)
    _blocks(0, total, x8, wb, toff, abase, astride, pix, c_out, out_i, epi, out_f, affine, cfg, res, rlo, rhi)


@jit()
def _bits_row(r, a, c_, ph, pw, cp_, y):  # type: ignore[no-untyped-def]
    h_, w_ = a.shape[1], a.shape[2]
    hp, wp = h_ + 2 * ph, w_ + 2 * pw
    n = r // hp
    i = r - n * hp
    base = r * wp * cp_
    y[base:base + wp * cp_] = 0
    h = i - ph
    if h < 0 or h >= h_:
        return
    for w in range(w_):
        dst = base + (pw + w) * cp_
        for c in range(c_):
            bit = (a[n, h, w, c // 64] >> np.uint64(c % 64)) & np.uint64(1)
            y[dst + c] = 1 if bit else -1


@jit()
def bits_to_int8_padded(a, c_, ph, pw, cp_, y):  # type: ignore[no-untyped-def]
    """Packed NHWC uint64 signs -> the int8 padded layout of :func:`sign_nhwc_padded_serial` (for packed inputs)."""
    n_, h_ = a.shape[0], a.shape[1]
    hp, wp = h_ + 2 * ph, a.shape[2] + 2 * pw
    for r in range(n_ * hp):
        _bits_row(r, a, c_, ph, pw, cp_, y)
    y[n_ * hp * wp * cp_:] = 0


def aligned_empty(shape: int | tuple[int, ...], dtype: type = np.int8, align: int = 64) -> np.ndarray:
    """An uninitialised C-contiguous array whose data starts on an ``align``-byte boundary.

    A tile row (64 bytes) that straddles two cache lines costs two loads; NumPy's large buffers
    start 16 bytes past a page boundary.
    """
    dt = np.dtype(dtype)
    count = int(np.prod(shape))
    raw = np.empty(count * dt.itemsize + align, np.uint8)
    start = -raw.ctypes.data % align
    return raw[start:start + count * dt.itemsize].view(dt).reshape(shape)


_SCRATCH = threading.local()


def input_buffer(nbytes: int) -> np.ndarray:
    """A 64-byte aligned int8 buffer of ``nbytes`` for the padded input, reused per Python thread.

    A fresh buffer per call costs its page faults (tens of microseconds for a 200 kB layer input,
    as much as the convolution's arithmetic); the packer rewrites every byte, so reuse is safe for
    consecutive calls on one thread, and each thread has its own.
    """
    buf = getattr(_SCRATCH, "buf", None)
    if buf is None or buf.shape[0] < nbytes:
        buf = aligned_empty(max(nbytes, 1 << 16))
        _SCRATCH.buf = buf
    return buf[:nbytes]


# Up to this many int8 weight bytes a layer keeps its B tiles as int8 (no expansion work; they stay
# in L1/L2); larger layers keep 1 bit per weight and expand each tile just before use. Measured on a
# 2 MB-L2 core: int8 is ~20% faster at 64@56, bits ~25% faster at 512@7 (2.4 MB of int8 weights).
INT8_WEIGHT_BYTES = 256 * 1024


def amx_weights(bits: np.ndarray, int8_limit: int | None = None) -> np.ndarray:
    """Packed weights ``(C_out, KH, KW, CW)`` uint64 -> the B tiles of :func:`dot_4x1`, tile (nb, step).

    Tile (nb, t) holds output channels 16 nb ... 16 nb + 15 at step t = (tap, 64-channel group) in
    AMX's VNNI order: row r, column 4n + i = input channel 4r + i of output channel n. As int8 +-1
    (1024 bytes per tile) when the layer's int8 weights fit in ``int8_limit`` bytes (default
    :data:`INT8_WEIGHT_BYTES`), else as bits
    (uint64, 16 words per tile, 1 = +1) plus one zero tile for the kernel's read-ahead. Pad channels
    (input past C_in, output past C_out) hold -1, harmless: the input's pad channels are 0 and pad
    outputs are never written.
    """
    o, kh, kw, cw = bits.shape
    nb = -(-o // TILE_ROWS)
    signs = np.unpackbits(np.ascontiguousarray(bits).view(np.uint8), axis=-1, bitorder="little")
    w = np.zeros((nb * TILE_ROWS, kh * kw * cw, TILE_ROWS, 4), np.uint8)  # (o, step, r, i)
    w[:o] = signs.reshape(o, kh * kw * cw, TILE_ROWS, 4)
    # (nb, n, step, r, i) -> (nb, step, r, n, i): 64 columns per row, column 4n + i.
    w = np.ascontiguousarray(w.reshape(nb, TILE_ROWS, kh * kw * cw, TILE_ROWS, 4).transpose(0, 2, 3, 1, 4))
    if w.size <= (INT8_WEIGHT_BYTES if int8_limit is None else int8_limit):
        out = aligned_empty(w.size, np.int8)
        out[:] = (2 * w.reshape(-1).astype(np.int8) - 1)
        return out
    words = np.packbits(w.reshape(-1, 64), axis=-1, bitorder="little").view("<u8").reshape(-1)
    out = aligned_empty(words.size + TILE_ROWS, np.uint64)
    out[:words.size] = words
    out[words.size:] = 0
    return out


@functools.lru_cache(maxsize=256)
def plan(n: int, h: int, w: int, cw: int, kh: int, kw: int, sh: int, sw: int, ph: int, pw: int
         ) -> tuple[np.ndarray, np.ndarray, int, np.ndarray, int]:
    """Tiling of one conv geometry: (toff, abase, astride, pix, input bytes incl. slack), cached."""
    cp = cw * 64
    hp, wp = h + 2 * ph, w + 2 * pw
    oh, ow = (hp - kh) // sh + 1, (wp - kw) // sw + 1
    toff = np.array([(i * wp + j) * cp + 64 * b for i in range(kh) for j in range(kw) for b in range(cw)],
                    dtype=np.int64)
    plane = hp * wp * cp
    if sh == 1 and sw == 1:
        # Flattened padded plane: position q = i * Wp + j is output (i, j) when j < OW.
        per_image = -(-(oh * wp) // TILE_ROWS)
        q = np.arange(per_image * TILE_ROWS)
        i_, j_ = q // wp, q % wp
        ok = (j_ < ow) & (i_ < oh)
        pix_img = np.where(ok, i_ * ow + j_, -1)
        starts = np.arange(per_image) * TILE_ROWS * cp
        astride = cp
    else:
        blocks = -(-ow // TILE_ROWS)
        i_, b_ = np.divmod(np.arange(oh * blocks), blocks)
        starts = (i_ * sh * wp + b_ * TILE_ROWS * sw) * cp
        j_ = b_[:, None] * TILE_ROWS + np.arange(TILE_ROWS)[None, :]
        pix_img = np.where(j_ < ow, i_[:, None] * ow + j_, -1).reshape(-1)
        astride = sw * cp
    tiles = starts.shape[0]
    abase = (np.arange(n)[:, None] * plane + starts[None, :]).reshape(-1)
    pix = np.where(pix_img[None, :] < 0, -1, np.arange(n)[:, None] * (oh * ow) + pix_img[None, :]).reshape(-1)
    pad = -(n * tiles) % GROUP  # dummy tiles read the start of the buffer and write nothing
    abase = np.concatenate([abase, np.zeros(pad, np.int64)]).astype(np.int64)
    pix = np.concatenate([pix, -np.ones(pad * TILE_ROWS, np.int64)]).astype(np.int64)
    reach = int(abase.max()) + (TILE_ROWS - 1) * astride + int(toff.max()) + 64
    nbytes = max(n * plane, reach)
    return toff, abase, astride, pix, nbytes
