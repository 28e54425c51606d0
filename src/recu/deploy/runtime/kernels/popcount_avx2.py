"""The ``avx2`` binary conv: the structure of the avx512 kernel in 256-bit registers, popcount by nibble lookup.

For x86 CPUs with AVX2 and without AVX-512 (AMD before Zen 4, most laptops). Weights blocked 4 output
channels per 256-bit vector (:func:`block_weights_avx2`), a register block of 4 output pixels x 8 output
channels. AVX2 has no vector popcount instruction: ``ctpop`` of the 32 bytes of a vector is lowered by
LLVM to the nibble lookup (vpand / vpsrlw / vpand, two vpshufb into a 16-entry table, vpaddb). The
per-byte counts are summed in 8-bit lanes over up to :data:`AVX2_BYTE_WORDS` words and only then widened
to 64-bit lanes by one vpsadbw (Mula's method): per 256 binary multiply-accumulates the loop issues xor,
the five lookup instructions and two byte adds, where ``ctpop <4 x i64>`` would add a vpsadbw and a
vpaddq to every word. Same arguments as :func:`recu.deploy.runtime.kernels.popcount_avx512.conv_fast`.
"""

from __future__ import annotations

import numpy as np
from numba import prange, types
from numba.extending import intrinsic

from .cpu import target_has_avx2
from .jit import epilogue, jit, prefer_vector_width
from .popcount_avx512 import block_weights

__all__ = ["AVX2_LANES", "block_weights_avx2", "conv_avx2", "conv_avx2_serial"]


AVX2_LANES = 4  # 4 x 64-bit lanes = one 256-bit register
# Per-byte counts stay in 8-bit lanes for at most this many words: 31 x 8 bits = 248 <= 255.
AVX2_BYTE_WORDS = 31

def block_weights_avx2(bits: np.ndarray) -> np.ndarray:
    """Canonical ``(C_out, KH, KW, CW)`` -> ``(ceil(C_out / 4), KH, KW, CW, 4)`` for :func:`conv_avx2`."""
    return block_weights(bits, AVX2_LANES)


def _byte_sums_to_u64(builder, counts):  # type: ignore[no-untyped-def]
    """<32 x i8> per-byte counts -> <4 x i64> sums of each lane's 8 bytes.

    ``vpsadbw`` against zero where the compile target has AVX2; elsewhere the same sums by pairwise
    shifts and adds (8-bit -> 16 -> 32 -> 64-bit lanes; each sum is at most 8 x 248, no overflow).
    """
    from llvmlite import ir
    from numba.core import cgutils

    i8x32 = ir.VectorType(ir.IntType(8), 32)
    i64x4 = ir.VectorType(ir.IntType(64), 4)
    if target_has_avx2():
        psadbw = cgutils.get_or_insert_function(builder.module, ir.FunctionType(i64x4, [i8x32, i8x32]),
                                                "llvm.x86.avx2.psad.bw")
        return builder.call(psadbw, [counts, ir.Constant(i8x32, [0] * 32)])
    v = counts
    for bits, n in ((8, 16), (16, 8), (32, 4)):  # add each lane's upper half to its lower half
        vty = ir.VectorType(ir.IntType(2 * bits), n)
        w = builder.bitcast(v, vty)
        low = builder.and_(w, ir.Constant(vty, [(1 << bits) - 1] * n))
        v = builder.add(low, builder.lshr(w, ir.Constant(vty, [bits] * n)))
    return v


def _store_dots_avx2(context, builder, signature, args, results, pixels: int, blocks: int):  # type: ignore[no-untyped-def]
    """Write ``dot = valid - 2 * popcount`` of the ``pixels x blocks`` accumulators to the NHWC output.

    The blocks of one pixel are adjacent channels, so they go out as one <4 * blocks x i32> (int32)
    or, with ``affine``, through the float32 :func:`epilogue` as one <4 * blocks x float>: for the
    usual 2 blocks, one 256-bit vector per pixel. The counts are narrowed to int32 first (exact:
    a dot is at most C_in * KH * KW) because AVX2 converts int32, not int64, to float in one
    instruction.
    """
    from llvmlite import ir
    from numba.core import cgutils

    i32, i64 = ir.IntType(32), ir.IntType(64)
    width = AVX2_LANES * blocks
    i32v = ir.VectorType(i32, width)
    f32v = ir.VectorType(ir.FloatType(), width)
    oi_arr = context.make_array(signature.args[11])(context, builder, args[11])
    of_arr = context.make_array(signature.args[12])(context, builder, args[12])
    ep_arr = context.make_array(signature.args[13])(context, builder, args[13])
    dst_v, ostride_v, o0_v, valid_v, affine_v = args[14], args[15], args[16], args[17], args[18]
    fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(f32v, [f32v] * 3), f"llvm.fma.v{width}f32")
    valid_splat = builder.shuffle_vector(
        builder.insert_element(ir.Constant(i32v, ir.Undefined), builder.trunc(valid_v, i32), ir.Constant(i32, 0)),
        ir.Constant(i32v, ir.Undefined), ir.Constant(ir.VectorType(i32, width), [0] * width))
    narrow = ir.VectorType(i32, AVX2_LANES)
    dots = []
    for p in range(pixels):
        parts = [builder.trunc(results[b * pixels + p], narrow) for b in range(blocks)]
        counts = parts[0]
        if blocks == 2:
            counts = builder.shuffle_vector(parts[0], parts[1], ir.Constant(ir.VectorType(i32, 8), list(range(8))))
        dots.append(builder.sub(valid_splat, builder.shl(counts, ir.Constant(i32v, [1] * width))))

    def dst_of(p: int):  # type: ignore[no-untyped-def]
        return builder.add(builder.add(dst_v, o0_v), builder.mul(ostride_v, ir.Constant(i64, p)))

    def epi_vec(row: int):  # type: ignore[no-untyped-def]
        # Row ``row`` of the (4, C_out) epilogue table, channels o0 ... o0 + width - 1.
        at = builder.add(builder.mul(ostride_v, ir.Constant(i64, row)), o0_v)
        return builder.load(builder.bitcast(builder.gep(ep_arr.data, [at]), f32v.as_pointer()), align=4)

    with builder.if_else(affine_v) as (then, otherwise):
        with then:
            alpha, bias, bn_scale, bn_shift = (epi_vec(k) for k in range(4))
            for p in range(pixels):
                # The same float32 steps as :func:`epilogue`.
                t = builder.fadd(builder.fmul(builder.sitofp(dots[p], f32v), alpha), bias)
                y = builder.call(fma, [t, bn_scale, bn_shift])
                builder.store(y, builder.bitcast(builder.gep(of_arr.data, [dst_of(p)]), f32v.as_pointer()), align=4)
        with otherwise:
            for p in range(pixels):
                builder.store(dots[p], builder.bitcast(builder.gep(oi_arr.data, [dst_of(p)]), i32v.as_pointer()),
                              align=4)


def _make_xnor_rows_avx2(pixels: int, blocks: int, store: bool = False):  # type: ignore[no-untyped-def]
    """The avx2 twin of :func:`_make_xnor_rows`: the same arguments and results, 4 lanes per block.

    For ``pixels`` output pixels p and ``blocks`` blocks b of 4 output channels (lane < 4)::

        acc[4 (b * pixels + p) + lane] = sum_{k < rows} sum_{t < n}
            popcount(a[aoff + k * arow + p * astep + t] XOR wb[woff + b * wblk + k * wrow + 4t + lane])

    With ``store`` (``blocks`` 1 or 2, all lanes real output channels) the results go straight to
    the output as in :func:`_make_xnor_rows` (:func:`_store_dots_avx2`).

    Each step XORs a <4 x i64> weight vector with a broadcast activation word and adds ``ctpop``
    of its 32 bytes (the nibble lookup on AVX2) to a <32 x i8> accumulator; after every
    :data:`AVX2_BYTE_WORDS` words, and at the end, the byte accumulators are widened into <4 x i64>
    ones (:func:`_byte_sums_to_u64`). The word counter runs across kernel rows, so a 3x3 layer of 64
    channels (9 words per output) widens once per output.
    """
    from llvmlite import ir
    from numba.core import cgutils

    if store and blocks not in (1, 2):
        raise ValueError(f"the avx2 store variant takes 1 or 2 blocks, got {blocks}")
    count = pixels * blocks

    def check(a, ints, wb, acc):  # type: ignore[no-untyped-def]
        arr_u64 = types.Array(types.uint64, 1, "C")
        return (a == arr_u64 and wb == arr_u64 and acc == types.Array(types.int64, 1, "C")
                and all(isinstance(v, types.Integer) for v in ints))

    i = types.int64
    if store:
        @intrinsic
        def xnor_rows(typingctx, a, aoff, astep, arow, wb, woff, wrow, wblk, rows, n, acc,  # type: ignore[no-untyped-def]
                      out_i, out_f, epi, dst, ostride, o0, valid, affine):
            if (not check(a, (aoff, astep, arow, woff, wrow, wblk, rows, n, dst, ostride, o0, valid), wb, acc)
                    or out_i != types.Array(types.int32, 4, "C") or out_f != types.Array(types.float32, 4, "C")
                    or epi != types.Array(types.float32, 1, "C")):
                return None
            sig = types.void(a, i, i, i, wb, i, i, i, i, i, acc, out_i, out_f, epi, i, i, i, i, types.boolean)
            return sig, codegen
    else:
        @intrinsic
        def xnor_rows(typingctx, a, aoff, astep, arow, wb, woff, wrow, wblk, rows, n, acc):  # type: ignore[no-untyped-def]
            if not check(a, (aoff, astep, arow, woff, wrow, wblk, rows, n), wb, acc):
                return None
            return types.void(a, i, i, i, wb, i, i, i, i, i, acc), codegen

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        prefer_vector_width(builder.function, 256)
        a_arr = context.make_array(signature.args[0])(context, builder, args[0])
        w_arr = context.make_array(signature.args[4])(context, builder, args[4])
        c_arr = context.make_array(signature.args[10])(context, builder, args[10])
        aoff_v, astep_v, arow_v = args[1], args[2], args[3]
        woff_v, wrow_v, wblk_v, rows_v, n_v = args[5], args[6], args[7], args[8], args[9]
        i64 = ir.IntType(64)
        vec = ir.VectorType(i64, AVX2_LANES)
        bvec = ir.VectorType(ir.IntType(8), 8 * AVX2_LANES)
        vptr = vec.as_pointer()
        zero = ir.Constant(i64, 0)
        one = ir.Constant(i64, 1)
        ctpop8 = cgutils.get_or_insert_function(builder.module, ir.FunctionType(bvec, [bvec]), "llvm.ctpop.v32i8")
        zero_mask = ir.Constant(ir.VectorType(ir.IntType(32), AVX2_LANES), [0] * AVX2_LANES)
        undef = ir.Constant(vec, ir.Undefined)
        init = ir.Constant(vec, [0] * AVX2_LANES)
        init_bytes = ir.Constant(bvec, [0] * (8 * AVX2_LANES))
        entry = builder.block
        row_head = builder.append_basic_block("xnor2.row")
        loop = builder.append_basic_block("xnor2.loop")
        widen = builder.append_basic_block("xnor2.widen")
        step_end = builder.append_basic_block("xnor2.step")
        row_end = builder.append_basic_block("xnor2.rowend")
        last = builder.append_basic_block("xnor2.last")
        done = builder.append_basic_block("xnor2.done")
        go = builder.and_(builder.icmp_signed(">", n_v, zero), builder.icmp_signed(">", rows_v, zero))
        builder.cbranch(go, row_head, done)

        # Outer loop over kernel rows (strided in NHWC), inner loop over the contiguous words of a
        # row; the byte accumulators and their word counter carry across rows.
        builder.position_at_end(row_head)
        k = builder.phi(i64)
        r_wide = [builder.phi(vec) for _ in range(count)]
        r_bytes = [builder.phi(bvec) for _ in range(count)]
        r_used = builder.phi(i64)
        a_row = builder.gep(a_arr.data, [builder.add(aoff_v, builder.mul(k, arow_v))])
        a_px = [builder.gep(a_row, [builder.mul(astep_v, ir.Constant(i64, p))]) for p in range(pixels)]
        w_row = builder.gep(w_arr.data, [builder.add(woff_v, builder.mul(k, wrow_v))])
        w_blk = [builder.gep(w_row, [builder.mul(wblk_v, ir.Constant(i64, b))]) for b in range(blocks)]
        builder.branch(loop)

        builder.position_at_end(loop)
        t = builder.phi(i64)
        wide = [builder.phi(vec) for _ in range(count)]
        byts = [builder.phi(bvec) for _ in range(count)]
        used = builder.phi(i64)
        t4 = builder.mul(t, ir.Constant(i64, AVX2_LANES))
        wvs = [builder.load(builder.bitcast(builder.gep(w_blk[b], [t4]), vptr), align=8) for b in range(blocks)]
        new_bytes = [None] * count
        for p in range(pixels):
            x = builder.load(builder.gep(a_px[p], [t]))
            xs = builder.shuffle_vector(builder.insert_element(undef, x, ir.Constant(ir.IntType(32), 0)),
                                        undef, zero_mask)
            for b in range(blocks):
                q = b * pixels + p
                counts = builder.call(ctpop8, [builder.bitcast(builder.xor(wvs[b], xs), bvec)])
                new_bytes[q] = builder.add(byts[q], counts)
        used_next = builder.add(used, one)
        t_next = builder.add(t, one)
        full = builder.icmp_signed("==", used_next, ir.Constant(i64, AVX2_BYTE_WORDS))
        branch = builder.cbranch(full, widen, step_end)
        branch.set_weights([1, AVX2_BYTE_WORDS - 1])  # keeps the wide accumulators out of the hot path

        builder.position_at_end(widen)  # byte lanes full: widen them into the 64-bit accumulators
        widened = [builder.add(wide[q], _byte_sums_to_u64(builder, new_bytes[q])) for q in range(count)]
        builder.branch(step_end)

        builder.position_at_end(step_end)
        s_wide = [builder.phi(vec) for _ in range(count)]
        s_bytes = [builder.phi(bvec) for _ in range(count)]
        s_used = builder.phi(i64)
        for q in range(count):
            s_wide[q].add_incoming(wide[q], loop)
            s_wide[q].add_incoming(widened[q], widen)
            s_bytes[q].add_incoming(new_bytes[q], loop)
            s_bytes[q].add_incoming(init_bytes, widen)
        s_used.add_incoming(used_next, loop)
        s_used.add_incoming(zero, widen)
        builder.cbranch(builder.icmp_signed("<", t_next, n_v), loop, row_end)
        t.add_incoming(zero, row_head)
        t.add_incoming(t_next, step_end)
        used.add_incoming(r_used, row_head)
        used.add_incoming(s_used, step_end)
        for q in range(count):
            wide[q].add_incoming(r_wide[q], row_head)
            wide[q].add_incoming(s_wide[q], step_end)
            byts[q].add_incoming(r_bytes[q], row_head)
            byts[q].add_incoming(s_bytes[q], step_end)

        builder.position_at_end(row_end)
        k_next = builder.add(k, one)
        builder.cbranch(builder.icmp_signed("<", k_next, rows_v), row_head, last)
        k.add_incoming(zero, entry)
        k.add_incoming(k_next, row_end)
        r_used.add_incoming(zero, entry)
        r_used.add_incoming(s_used, row_end)
        for q in range(count):
            r_wide[q].add_incoming(init, entry)
            r_wide[q].add_incoming(s_wide[q], row_end)
            r_bytes[q].add_incoming(init_bytes, entry)
            r_bytes[q].add_incoming(s_bytes[q], row_end)

        builder.position_at_end(last)  # widen what the byte lanes still hold
        final = [builder.add(s_wide[q], _byte_sums_to_u64(builder, s_bytes[q])) for q in range(count)]
        builder.branch(done)

        builder.position_at_end(done)
        results = [builder.phi(vec) for _ in range(count)]  # LLVM wants all phis first
        for q in range(count):
            results[q].add_incoming(init, entry)
            results[q].add_incoming(final[q], last)
        if store:
            _store_dots_avx2(context, builder, signature, args, results, pixels, blocks)
        else:
            for q in range(count):
                acc_ptr = builder.bitcast(builder.gep(c_arr.data, [ir.Constant(i64, AVX2_LANES * q)]), vptr)
                builder.store(results[q], acc_ptr, align=8)
        return context.get_dummy_value()

    return xnor_rows


# Register block: 4 output pixels x 2 blocks of 4 output channels: 8 byte accumulators in ymm
# registers next to the lookup table and the nibble mask; the 8 wide accumulators are touched once
# per AVX2_BYTE_WORDS words.
AVX2_PIXELS = 4
xnor2_rows_4x2 = _make_xnor_rows_avx2(AVX2_PIXELS, 2)
xnor2_rows_1x2 = _make_xnor_rows_avx2(1, 2)
xnor2_rows_4x1 = _make_xnor_rows_avx2(AVX2_PIXELS, 1)
xnor2_rows_1x1 = _make_xnor_rows_avx2(1, 1)
xnor2_store_4x2 = _make_xnor_rows_avx2(AVX2_PIXELS, 2, store=True)
xnor2_store_1x2 = _make_xnor_rows_avx2(1, 2, store=True)


@jit(inline="always")
def _write_block_avx2(acc, pixels, valid, n, oh, ow, o0, c_out, out_i, epi, out_f, affine):  # type: ignore[no-untyped-def]
    """Write one block of 4 output channels (fewer at the end of C_out) for ``pixels`` pixels from ``acc``."""
    if o0 + 4 <= c_out:  # constant trip count: LLVM writes the 4 lanes with a few vector instructions
        for p in range(pixels):
            if affine:
                for lane in range(4):
                    out_f[n, oh, ow + p, o0 + lane] = epilogue(valid - 2 * acc[4 * p + lane], epi, c_out, o0 + lane)
            else:
                for lane in range(4):
                    out_i[n, oh, ow + p, o0 + lane] = valid - 2 * acc[4 * p + lane]
        return
    for p in range(pixels):
        for lane in range(c_out - o0):
            dot = valid - 2 * acc[4 * p + lane]
            o = o0 + lane
            if affine:
                out_f[n, oh, ow + p, o] = epilogue(dot, epi, c_out, o)
            else:
                out_i[n, oh, ow + p, o] = dot


@jit()
def conv_avx2_row(r, a, wb, h_, w_, cw_, kh_, kw_, c_in, c_out, sh, sw, ph, pw, out_i, epi, out_f, affine):  # type: ignore[no-untyped-def]
    """Output row ``r`` (= n * OH + oh) of :func:`conv_avx2`: :func:`.popcount_avx512.conv_fast_row` with 4-lane blocks."""
    ob_ = (c_out + 3) // 4
    oh_ = out_f.shape[1] if affine else out_i.shape[1]
    ow_ = out_f.shape[2] if affine else out_i.shape[2]
    row = kw_ * cw_  # one kernel row of one pixel: contiguous in NHWC, so the inner loop is flat
    blk = AVX2_PIXELS
    # Output columns whose whole kernel row lies inside the input (no horizontal padding).
    ow_lo = min(ow_, (pw + sw - 1) // sw)
    ow_hi = max(ow_lo, min(ow_, (w_ + pw - kw_) // sw + 1))
    acc = np.empty(8 * blk, dtype=np.int64)
    n = r // oh_
    oh = r - n * oh_
    ih0 = oh * sh - ph
    kh0 = max(0, -ih0)
    kh1 = min(kh_, h_ - ih0)
    rows = max(0, kh1 - kh0)
    wblk = kh_ * row * 4  # words between consecutive blocks of 4 output channels
    # Weight blocks outermost: their 2*KH*KW*CW*4 words stay in L1 while the row is swept.
    for ob in range(0, ob_, 2):
        o0 = ob * 4
        two = ob + 1 < ob_
        ow = 0
        while ow < ow_:
            # the last interior run: one block overlapping the previous one (same values rewritten)
            if ow_lo <= ow < ow_hi < ow + blk and ow_hi - ow_lo >= blk:
                ow = ow_hi - blk
            iw0 = ow * sw - pw
            if ow >= ow_lo and ow + blk <= ow_hi:
                abase = ((n * h_ + ih0 + kh0) * w_ + iw0) * cw_
                wofs = (ob * kh_ + kh0) * row * 4
                valid = rows * kw_ * c_in
                if o0 + 8 <= c_out:
                    xnor2_store_4x2(a, abase, sw * cw_, w_ * cw_, wb, wofs, row * 4, wblk, rows, row, acc,
                                    out_i, out_f, epi, (r * ow_ + ow) * c_out, c_out, o0, valid, affine)
                elif two:
                    xnor2_rows_4x2(a, abase, sw * cw_, w_ * cw_, wb, wofs, row * 4, wblk, rows, row, acc)
                    _write_block_avx2(acc, blk, valid, n, oh, ow, o0, c_out, out_i, epi, out_f, affine)
                    _write_block_avx2(acc[4 * blk:], blk, valid, n, oh, ow, o0 + 4, c_out, out_i, epi, out_f,
                                      affine)
                else:
                    xnor2_rows_4x1(a, abase, sw * cw_, w_ * cw_, wb, wofs, row * 4, wblk, rows, row, acc)
                    _write_block_avx2(acc, blk, valid, n, oh, ow, o0, c_out, out_i, epi, out_f, affine)
                ow += blk
            else:
                kw0 = max(0, -iw0)
                kw1 = min(kw_, w_ - iw0)
                if kw1 > kw0 and rows > 0 and o0 + 8 <= c_out:
                    abase = ((n * h_ + ih0 + kh0) * w_ + iw0 + kw0) * cw_
                    wofs = ((ob * kh_ + kh0) * row + kw0 * cw_) * 4
                    xnor2_store_1x2(a, abase, 0, w_ * cw_, wb, wofs, row * 4, wblk, rows, (kw1 - kw0) * cw_, acc,
                                    out_i, out_f, epi, (r * ow_ + ow) * c_out, c_out, o0,
                                    rows * (kw1 - kw0) * c_in, affine)
                    ow += 1
                    continue
                acc[:8] = 0
                if kw1 > kw0 and rows > 0:  # else all taps are padding: dot 0
                    abase = ((n * h_ + ih0 + kh0) * w_ + iw0 + kw0) * cw_
                    wofs = ((ob * kh_ + kh0) * row + kw0 * cw_) * 4
                    if two:
                        xnor2_rows_1x2(a, abase, 0, w_ * cw_, wb, wofs, row * 4, wblk, rows, (kw1 - kw0) * cw_, acc)
                    else:
                        xnor2_rows_1x1(a, abase, 0, w_ * cw_, wb, wofs, row * 4, wblk, rows, (kw1 - kw0) * cw_, acc)
                valid = rows * max(0, kw1 - kw0) * c_in
                _write_block_avx2(acc, 1, valid, n, oh, ow, o0, c_out, out_i, epi, out_f, affine)
                if two:
                    _write_block_avx2(acc[4:], 1, valid, n, oh, ow, o0 + 4, c_out, out_i, epi, out_f, affine)
                ow += 1


@jit(parallel=True)
def conv_avx2(a, wb, h_, w_, cw_, kh_, kw_, c_in, c_out, sh, sw, ph, pw, out_i, epi, out_f, affine):  # type: ignore[no-untyped-def]
    """:func:`conv_fast` for AVX2 CPUs: the same arguments, except ``wb`` from :func:`block_weights_avx2`.

    8 output channels x 4 output pixels per step in 256-bit vectors, popcount by nibble lookup,
    output rows across threads. Exact on any CPU (LLVM lowers the popcount to what the target has).
    """
    rows = out_f.shape[0] * out_f.shape[1] if affine else out_i.shape[0] * out_i.shape[1]
    for r in prange(rows):
        conv_avx2_row(r, a, wb, h_, w_, cw_, kh_, kw_, c_in, c_out, sh, sw, ph, pw, out_i, epi, out_f, affine)


@jit()
def conv_avx2_serial(a, wb, h_, w_, cw_, kh_, kw_, c_in, c_out, sh, sw, ph, pw, out_i, epi, out_f, affine):  # type: ignore[no-untyped-def]
    """:func:`conv_avx2` on the calling thread."""
    rows = out_f.shape[0] * out_f.shape[1] if affine else out_i.shape[0] * out_i.shape[1]
    for r in range(rows):
        conv_avx2_row(r, a, wb, h_, w_, cw_, kh_, kw_, c_in, c_out, sh, sw, ph, pw, out_i, epi, out_f, affine)
