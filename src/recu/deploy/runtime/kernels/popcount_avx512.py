"""The ``avx512`` binary conv: XNOR-popcount in 512-bit registers, the loop nest emitted as LLVM vector IR.

Weights blocked as ``(ceil(C_out / 8), KH, KW, CW, 8)`` (:func:`block_weights`) so that one 512-bit load
holds one word of 8 output channels. The loop nest over kernel rows and words is emitted as LLVM vector
IR (:func:`make_xnor_rows`): a register block of 4 output pixels x 16 output channels, each step XOR of
a weight vector with a broadcast activation word, ``vpopcntq``, ``vpaddq`` - 512 binary
multiply-accumulates per popcount - and the results written from the registers (or, in the ``store``
and ``fused`` forms, through the float32 epilogue in place).

Taps in the zero padding are skipped and only the valid ones counted, which is exact zero padding:
``dot = C_in * taps_valid - 2 * popcount(a XOR w)`` summed over the valid taps. The kernel-row taps
(:mod:`.taps`) reuse :func:`make_xnor_rows` with byte addressing.
"""

from __future__ import annotations

import numpy as np
from numba import prange, types
from numba.extending import intrinsic

from .jit import LANES, epilogue, jit, prefer_512_bit

__all__ = ["XNOR_PIXELS", "make_xnor_rows", "block_weights", "write_block", "conv_fast", "conv_fast_serial"]


def make_xnor_rows(pixels: int, blocks: int, store: bool = False, addressing: str = "words",  # type: ignore[no-untyped-def]
                    fused: bool = False):
    """An intrinsic ``xnor_rows(a, aoff, astep, arow, wb, woff, wrow, wblk, rows, n, acc)``.

    For ``pixels`` output pixels p and ``blocks`` blocks b of 8 output channels (lane < 8)::

        acc[8 (b * pixels + p) + lane] = sum_{k < rows} sum_{t < n}
            popcount(a[aoff + k * arow + p * astep + t] XOR wb[woff + b * wblk + k * wrow + 8t + lane])

    With ``store``, the intrinsic takes ``(..., n, acc, out_i, out_f, epi, dst, ostride, o0, valid,
    affine)`` and, instead of filling ``acc``, writes ``dot = valid - 2 * acc`` for all lanes straight
    to the flat NHWC output at ``dst + o0 + p * ostride + 8 * b``: int32, or when ``affine`` the float32
    :func:`epilogue` with ``epi`` the flat (4, C_out) table (``ostride`` = C_out). A few vector
    instructions per 8 channels, where the numba-level write of the same values cost ~40% of the
    kernel.
    Only for blocks whose 8 lanes are all real output channels.

    ``addressing="bytes"``: ``a`` is a uint8 array and ``aoff``, ``astep``, ``arow`` count bytes
    (word t of a row at ``+ 8t`` bytes, unaligned), and a ``tail`` word after ``n`` masks the last
    word of every row (``(a XOR w) AND tail``): the row buffers of :mod:`._tap_kernels`, read in
    place. ``fused`` (bytes, 2 blocks): see :func:`_emit_fused_epilogue` for its arguments; its last two,
    ``init`` (int64) and ``ioff``, give the accumulators' start values: ``init[ioff + p * c_out + 8b + lane]``
    (zeros, or the padding correction of :func:`._tap_kernels.padding_starts`).

    Written directly as LLVM vector IR: each <8 x i64> weight load feeds ``pixels`` XOR /
    ``ctpop`` / add chains, each broadcast activation word feeds ``blocks`` of them, and the
    ``pixels * blocks`` accumulators live in registers for the whole loop nest. Numba's own
    lowering of the same loop let the loop vectoriser interleave across ``t``, which cost
    5-10 cycles per step instead of about one.
    """
    from llvmlite import ir
    from numba.core import cgutils

    count = pixels * blocks
    by_bytes = addressing == "bytes"
    a_type = types.Array(types.uint8 if by_bytes else types.uint64, 1, "C")
    f32 = types.Array(types.float32, 1, "C")

    def check(a, ints, wb, acc):  # type: ignore[no-untyped-def]
        arr_u64 = types.Array(types.uint64, 1, "C")
        return (a == a_type and wb == arr_u64 and acc == types.Array(types.int64, 1, "C")
                and all(isinstance(v, types.Integer) for v in ints))

    i = types.int64
    if fused:
        @intrinsic
        def xnor_rows(typingctx, a, aoff, astep, arow, wb, woff, wrow, wblk, rows, n, tail, acc,  # type: ignore[no-untyped-def]
                      out, epi, dst, o0, c_out, valid, res, lo, hi, signs, sdst, sstride, fuse_res, write_signs,
                      init, ioff):
            ints = (aoff, astep, arow, woff, wrow, wblk, rows, n, tail, dst, o0, c_out, valid, sdst, sstride, ioff)
            if (not check(a, ints, wb, acc) or out != f32 or epi != f32 or res != f32 or init != acc
                    or signs != types.Array(types.uint8, 1, "C") or lo != types.float32 or hi != types.float32):
                return None
            sig = types.void(a, i, i, i, wb, i, i, i, i, i, types.uint64, acc, out, epi, i, i, i, i, res,
                             types.float32, types.float32, signs, i, i, types.boolean, types.boolean, init, i)
            return sig, codegen
    elif store:
        @intrinsic
        def xnor_rows(typingctx, a, aoff, astep, arow, wb, woff, wrow, wblk, rows, n, acc,  # type: ignore[no-untyped-def]
                      out_i, out_f, epi, dst, ostride, o0, valid, affine):
            if (not check(a, (aoff, astep, arow, woff, wrow, wblk, rows, n, dst, ostride, o0, valid), wb, acc)
                    or out_i != types.Array(types.int32, 4, "C") or out_f != types.Array(types.float32, 4, "C")
                    or epi != f32):
                return None
            sig = types.void(a, i, i, i, wb, i, i, i, i, i, acc, out_i, out_f, epi, i, i, i, i, types.boolean)
            return sig, codegen
    elif by_bytes:
        @intrinsic
        def xnor_rows(typingctx, a, aoff, astep, arow, wb, woff, wrow, wblk, rows, n, tail, acc):  # type: ignore[no-untyped-def]
            if not check(a, (aoff, astep, arow, woff, wrow, wblk, rows, n, tail), wb, acc):
                return None
            return types.void(a, i, i, i, wb, i, i, i, i, i, types.uint64, acc), codegen
    else:
        @intrinsic
        def xnor_rows(typingctx, a, aoff, astep, arow, wb, woff, wrow, wblk, rows, n, acc):  # type: ignore[no-untyped-def]
            if not check(a, (aoff, astep, arow, woff, wrow, wblk, rows, n), wb, acc):
                return None
            return types.void(a, i, i, i, wb, i, i, i, i, i, acc), codegen

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        prefer_512_bit(builder.function)
        tail_v = args[10] if by_bytes else None
        acc_at = 11 if by_bytes else 10
        a_arr = context.make_array(signature.args[0])(context, builder, args[0])
        w_arr = context.make_array(signature.args[4])(context, builder, args[4])
        c_arr = context.make_array(signature.args[acc_at])(context, builder, args[acc_at])
        aoff_v, astep_v, arow_v = args[1], args[2], args[3]
        woff_v, wrow_v, wblk_v, rows_v, n_v = args[5], args[6], args[7], args[8], args[9]
        i64 = ir.IntType(64)
        vec = ir.VectorType(i64, 8)

        def row_pointers(k):  # type: ignore[no-untyped-def]
            # kernel row k: each pixel's first activation word (i64*), each block's first weight vector
            start = builder.add(aoff_v, builder.mul(k, arow_v))
            a_px = [builder.gep(a_arr.data, [builder.add(start, builder.mul(astep_v, ir.Constant(i64, p)))])
                    for p in range(pixels)]
            if by_bytes:
                a_px = [builder.bitcast(ptr, i64.as_pointer()) for ptr in a_px]
            w_row = builder.gep(w_arr.data, [builder.add(woff_v, builder.mul(k, wrow_v))])
            w_blk = [builder.bitcast(builder.gep(w_row, [builder.mul(wblk_v, ir.Constant(i64, b))]), vec.as_pointer())
                     for b in range(blocks)]
            return a_px, w_blk

        start = None
        if fused:  # the accumulators' start values, <8 x i64> at init[ioff + p * c_out + 8b]
            init_arr = context.make_array(signature.args[26])(context, builder, args[26])
            start = []
            for q in range(count):
                b, p = divmod(q, pixels)
                at = builder.add(args[27], builder.add(builder.mul(args[16], ir.Constant(i64, p)), ir.Constant(i64, 8 * b)))
                start.append(builder.load(builder.bitcast(builder.gep(init_arr.data, [at]), vec.as_pointer()), align=8))
        results = _emit_xnor_nest(builder, pixels, blocks, rows_v, n_v, row_pointers, tail_v, 1 if by_bytes else 8,
                                  start)
        if fused:
            _emit_fused_epilogue(context, builder, signature, args, results, pixels)
        elif not store:
            for q in range(count):
                ptr = builder.bitcast(builder.gep(c_arr.data, [ir.Constant(i64, 8 * q)]), vec.as_pointer())
                builder.store(results[q], ptr, align=8)
        else:
            _emit_store_epilogue(context, builder, signature, args, results, pixels, blocks)
        return context.get_dummy_value()

    return xnor_rows


def _emit_xnor_nest(builder, pixels: int, blocks: int, rows_v, n_v, row_pointers, tail_v, a_align: int,  # type: ignore[no-untyped-def]
                    start=None):
    """The loop nest of :func:`make_xnor_rows`: kernel rows k < ``rows_v`` (outer), words t < ``n_v``
    of a row (inner); ``row_pointers(k)`` -> (per pixel i64*, per block <8 x i64>*). Returns the
    ``pixels * blocks`` accumulator vectors (q = b * pixels + p), the builder left after the loops.
    ``tail_v``: None, or the mask of each row's last word; ``start``: None (zeros) or the accumulators'
    start vectors."""
    from llvmlite import ir
    from numba.core import cgutils

    count = pixels * blocks
    i64 = ir.IntType(64)
    vec = ir.VectorType(i64, 8)
    zero, one = ir.Constant(i64, 0), ir.Constant(i64, 1)
    ctpop = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vec, [vec]), "llvm.ctpop.v8i64")
    zero_mask = ir.Constant(ir.VectorType(ir.IntType(32), 8), [0] * 8)
    undef = ir.Constant(vec, ir.Undefined)

    def splat(x):  # type: ignore[no-untyped-def]
        return builder.shuffle_vector(builder.insert_element(undef, x, ir.Constant(ir.IntType(32), 0)), undef,
                                      zero_mask)

    init = start if start is not None else [ir.Constant(vec, [0] * 8) for _ in range(count)]
    entry = builder.block
    row_head = builder.append_basic_block("xnor.row")
    loop = builder.append_basic_block("xnor.loop")
    row_end = builder.append_basic_block("xnor.rowend")
    done = builder.append_basic_block("xnor.done")
    go = builder.and_(builder.icmp_signed(">", n_v, zero), builder.icmp_signed(">", rows_v, zero))
    builder.cbranch(go, row_head, done)

    # Outer loop over kernel rows (strided in NHWC), inner loop over the contiguous words of a row.
    builder.position_at_end(row_head)
    k = builder.phi(i64)
    racc = [builder.phi(vec) for _ in range(count)]
    a_px, w_blk = row_pointers(k)
    tail_mask = splat(tail_v) if tail_v is not None else None
    last_t = builder.sub(n_v, one)
    if tail_mask is None:
        builder.branch(loop)
    else:  # the unmasked words (loop) only if the row has more than one
        builder.cbranch(builder.icmp_signed(">", last_t, zero), loop, row_end)

    def step(t, accs, mask):  # type: ignore[no-untyped-def]
        # word t of every pixel's kernel row against word t of each block's weights
        wvs = [builder.load(builder.gep(w_blk[b], [t]), align=8) for b in range(blocks)]
        new_accs = [None] * count
        for p in range(pixels):
            xs = splat(builder.load(builder.gep(a_px[p], [t]), align=a_align))
            for b in range(blocks):
                q = b * pixels + p
                diff = builder.xor(wvs[b], xs)
                if mask is not None:
                    diff = builder.and_(diff, mask)
                new_accs[q] = builder.add(accs[q], builder.call(ctpop, [diff]))
        return new_accs

    # Only a row's last word carries the next column's bits: with a tail mask the loop runs the words
    # before it unmasked and the last one (peeled) masked.
    builder.position_at_end(loop)
    t = builder.phi(i64)
    accs = [builder.phi(vec) for _ in range(count)]
    t_next = builder.add(t, one)
    body_accs = step(t, accs, None)
    builder.cbranch(builder.icmp_signed("<", t_next, n_v if tail_mask is None else last_t), loop, row_end)
    t.add_incoming(zero, row_head)
    t.add_incoming(t_next, loop)
    for q in range(count):
        accs[q].add_incoming(racc[q], row_head)
        accs[q].add_incoming(body_accs[q], loop)
    builder.position_at_end(row_end)
    row_accs = body_accs
    if tail_mask is not None:  # row_end is reached from the loop or, for a one-word row, from row_head
        last_accs = [builder.phi(vec) for _ in range(count)]
        for q in range(count):
            last_accs[q].add_incoming(racc[q], row_head)
            last_accs[q].add_incoming(body_accs[q], loop)
        row_accs = step(last_t, last_accs, tail_mask)
    row_last = builder.block
    k_next = builder.add(k, one)
    builder.cbranch(builder.icmp_signed("<", k_next, rows_v), row_head, done)
    k.add_incoming(zero, entry)
    k.add_incoming(k_next, row_last)
    for q in range(count):
        racc[q].add_incoming(init[q], entry)
        racc[q].add_incoming(row_accs[q], row_last)

    builder.position_at_end(done)
    results = [builder.phi(vec) for _ in range(count)]  # LLVM wants all phis first
    for q in range(count):
        results[q].add_incoming(init[q], entry)
        results[q].add_incoming(row_accs[q], row_last)
    return results


def _emit_store_epilogue(context, builder, signature, args, results, pixels: int, blocks: int):  # type: ignore[no-untyped-def]
    """The ``store`` form of :func:`make_xnor_rows`: dots (int32) or their float epilogue to the output."""
    from llvmlite import ir
    from numba.core import cgutils

    i64 = ir.IntType(64)
    vec = ir.VectorType(i64, 8)
    undef = ir.Constant(vec, ir.Undefined)
    zero_mask = ir.Constant(ir.VectorType(ir.IntType(32), 8), [0] * 8)
    oi_arr = context.make_array(signature.args[11])(context, builder, args[11])
    of_arr = context.make_array(signature.args[12])(context, builder, args[12])
    ep_arr = context.make_array(signature.args[13])(context, builder, args[13])
    dst_v, ostride_v, o0_v, valid_v, affine_v = args[14], args[15], args[16], args[17], args[18]
    f32x8 = ir.VectorType(ir.FloatType(), 8)
    i32x8 = ir.VectorType(ir.IntType(32), 8)
    fma8 = cgutils.get_or_insert_function(builder.module, ir.FunctionType(f32x8, [f32x8] * 3), "llvm.fma.v8f32")
    valid_splat = builder.shuffle_vector(
        builder.insert_element(undef, valid_v, ir.Constant(ir.IntType(32), 0)), undef, zero_mask)
    dots = [builder.sub(valid_splat, builder.shl(r, ir.Constant(vec, [1] * 8))) for r in results]

    def dst_of(q: int):  # type: ignore[no-untyped-def]
        b, p = divmod(q, pixels)
        return builder.add(builder.add(dst_v, o0_v),
                           builder.add(builder.mul(ostride_v, ir.Constant(i64, p)), ir.Constant(i64, 8 * b)))

    def epi_vec(row: int, b: int):  # type: ignore[no-untyped-def]
        # Row ``row`` of the (4, C_out) epilogue table, channels o0 + 8b ... o0 + 8b + 7.
        at = builder.add(builder.mul(ostride_v, ir.Constant(i64, row)), builder.add(o0_v, ir.Constant(i64, 8 * b)))
        return builder.load(builder.bitcast(builder.gep(ep_arr.data, [at]), f32x8.as_pointer()), align=4)

    with builder.if_else(affine_v) as (then, otherwise):
        with then:
            for b in range(blocks):
                alpha, bias, bn_scale, bn_shift = (epi_vec(k, b) for k in range(4))
                for p in range(pixels):
                    q = b * pixels + p
                    # The same float32 steps as :func:`epilogue`.
                    t = builder.fadd(builder.fmul(builder.sitofp(dots[q], f32x8), alpha), bias)
                    y = builder.call(fma8, [t, bn_scale, bn_shift])
                    builder.store(y, builder.bitcast(builder.gep(of_arr.data, [dst_of(q)]),
                                                     f32x8.as_pointer()), align=4)
        with otherwise:
            for q in range(len(results)):
                builder.store(builder.trunc(dots[q], i32x8),
                              builder.bitcast(builder.gep(oi_arr.data, [dst_of(q)]), i32x8.as_pointer()),
                              align=4)


def _emit_fused_epilogue(context, builder, signature, args, results, pixels: int):  # type: ignore[no-untyped-def]
    """The ``fused`` form of :func:`make_xnor_rows` (2 blocks = 16 output channels ``o0 ...``, as one
    <16 x float> per pixel). Arguments after ``acc``: ``out, epi, dst, o0, c_out, valid, res, lo, hi,
    signs, sdst, sstride, fuse_res, write_signs``. Pixel p's 16 values
    ``y = fma(float(valid - 2 acc) * alpha + bias, bn_scale, bn_shift)`` (:func:`epilogue`'s steps), with
    ``fuse_res`` then ``clamp(y + res, lo, hi)`` (a skip connection and its activation, as
    :func:`._float_kernels.add_clamp16`), go to the flat output at ``dst + p * c_out + o0``
    (``res`` at the same offsets); with ``write_signs`` the 16 bits ``y >= 0`` (NaN 0) go to ``signs``
    at byte ``sdst + p * sstride`` as one little-endian uint16: the next layer's packed input.
    """
    from llvmlite import ir
    from numba.core import cgutils

    i64, i32 = ir.IntType(64), ir.IntType(32)
    f32x16 = ir.VectorType(ir.FloatType(), 16)
    i32x16 = ir.VectorType(i32, 16)
    arrays = {j: context.make_array(signature.args[j])(context, builder, args[j]) for j in (12, 13, 18, 21)}
    out_arr, ep_arr, res_arr, sg_arr = arrays[12], arrays[13], arrays[18], arrays[21]
    dst_v, o0_v, c_out_v, valid_v, lo_v, hi_v, sdst_v, sstride_v = (args[j] for j in (14, 15, 16, 17, 19, 20, 22, 23))
    fuse_v, signs_v = args[24], args[25]
    fma16 = cgutils.get_or_insert_function(builder.module, ir.FunctionType(f32x16, [f32x16] * 3), "llvm.fma.v16f32")
    lanes0 = ir.Constant(ir.VectorType(i32, 16), [0] * 16)

    def splat16(x, ty):  # type: ignore[no-untyped-def]
        u = ir.Constant(ty, ir.Undefined)
        return builder.shuffle_vector(builder.insert_element(u, x, ir.Constant(i32, 0)), u, lanes0)

    def f16_at(arr, ofs):  # type: ignore[no-untyped-def]
        return builder.bitcast(builder.gep(arr.data, [ofs]), f32x16.as_pointer())

    # The counts are < 2^31: the low halves of the two blocks' i64 lanes, in channel order.
    even = ir.Constant(ir.VectorType(i32, 16), list(range(0, 32, 2)))
    valid16 = splat16(builder.trunc(valid_v, i32), i32x16)
    alpha, bias, bn_scale, bn_shift = (
        builder.load(f16_at(ep_arr, builder.add(builder.mul(c_out_v, ir.Constant(i64, j)), o0_v)), align=4)
        for j in range(4))
    ys, offsets = [], []
    for p in range(pixels):
        low = builder.shuffle_vector(builder.bitcast(results[p], i32x16), builder.bitcast(results[pixels + p], i32x16),
                                     even)
        dot = builder.sub(valid16, builder.shl(low, ir.Constant(i32x16, [1] * 16)))
        t = builder.fadd(builder.fmul(builder.sitofp(dot, f32x16), alpha), bias)
        ys.append(builder.call(fma16, [t, bn_scale, bn_shift]))
        offsets.append(builder.add(builder.add(dst_v, o0_v), builder.mul(c_out_v, ir.Constant(i64, p))))
    zero16 = ir.Constant(f32x16, [0.0] * 16)
    i16 = ir.IntType(16)

    def finish(values):  # type: ignore[no-untyped-def]
        for p, v in enumerate(values):
            builder.store(v, f16_at(out_arr, offsets[p]), align=4)
        with builder.if_then(signs_v):
            for p, v in enumerate(values):
                bits = builder.bitcast(builder.fcmp_ordered(">=", v, zero16), i16)
                at = builder.add(sdst_v, builder.mul(sstride_v, ir.Constant(i64, p)))
                builder.store(bits, builder.bitcast(builder.gep(sg_arr.data, [at]), i16.as_pointer()), align=1)

    with builder.if_else(fuse_v) as (then, otherwise):
        with then:
            lo16, hi16 = splat16(lo_v, f32x16), splat16(hi_v, f32x16)
            clamped = []
            for p in range(pixels):
                v = builder.fadd(ys[p], builder.load(f16_at(res_arr, offsets[p]), align=4))
                v = builder.select(builder.fcmp_ordered("<", v, lo16), lo16, v)  # _clamp's order: NaN, -0.0 kept
                clamped.append(builder.select(builder.fcmp_ordered(">", v, hi16), hi16, v))
            finish(clamped)
        with otherwise:
            finish(ys)



# Register block: 4 output pixels x 2 blocks of 8 output channels = 8 zmm accumulators, so each
# step issues 8 vpopcntq against 2 weight loads and 4 broadcasts, and the loop overhead of short
# rows (3 words when C_in = 64) is spread over 8 popcounts instead of 4.
XNOR_PIXELS = 4
xnor_rows_4x2 = make_xnor_rows(XNOR_PIXELS, 2)
xnor_rows_1x2 = make_xnor_rows(1, 2)
xnor_rows_4x1 = make_xnor_rows(XNOR_PIXELS, 1)
xnor_rows_1x1 = make_xnor_rows(1, 1)
xnor_store_4x2 = make_xnor_rows(XNOR_PIXELS, 2, store=True)
xnor_store_1x2 = make_xnor_rows(1, 2, store=True)



def block_weights(bits: np.ndarray, lanes: int = LANES) -> np.ndarray:
    """Canonical ``(C_out, KH, KW, CW)`` -> blocked ``(ceil(C_out / lanes), KH, KW, CW, lanes)``.

    ``lanes`` output channels per vector: 8 for :func:`conv_fast` (512 bits), 4 for :func:`conv_avx2`
    (256 bits). Output channels past C_out are zero weights whose results are never written.
    """
    o, kh, kw, cw = bits.shape
    ob = (o + lanes - 1) // lanes
    padded = np.zeros((ob * lanes, kh, kw, cw), dtype=np.uint64)
    padded[:o] = bits
    return np.ascontiguousarray(padded.reshape(ob, lanes, kh, kw, cw).transpose(0, 2, 3, 4, 1))


@jit(inline="always")
def write_block(acc, pixels, valid, n, oh, ow, o0, c_out, out_i, epi, out_f, affine):  # type: ignore[no-untyped-def]
    if o0 + 8 <= c_out:  # constant trip count: LLVM writes 8 lanes with a few vector instructions
        for p in range(pixels):
            if affine:
                for lane in range(8):
                    out_f[n, oh, ow + p, o0 + lane] = epilogue(valid - 2 * acc[8 * p + lane], epi, c_out, o0 + lane)
            else:
                for lane in range(8):
                    out_i[n, oh, ow + p, o0 + lane] = valid - 2 * acc[8 * p + lane]
        return
    for p in range(pixels):
        for lane in range(c_out - o0):
            dot = valid - 2 * acc[8 * p + lane]
            o = o0 + lane
            if affine:
                out_f[n, oh, ow + p, o] = epilogue(dot, epi, c_out, o)
            else:
                out_i[n, oh, ow + p, o] = dot


@jit()
def conv_fast_row(r, a, wb, h_, w_, cw_, kh_, kw_, c_in, c_out, sh, sw, ph, pw, out_i, epi, out_f, affine):  # type: ignore[no-untyped-def]
    """Output row ``r`` (= n * OH + oh) of :func:`conv_fast`."""
    ob_ = (c_out + 7) // 8
    oh_ = out_f.shape[1] if affine else out_i.shape[1]
    ow_ = out_f.shape[2] if affine else out_i.shape[2]
    row = kw_ * cw_  # one kernel row of one pixel: contiguous in NHWC, so the inner loop is flat
    blk = XNOR_PIXELS
    # Output columns whose whole kernel row lies inside the input (no horizontal padding).
    ow_lo = min(ow_, (pw + sw - 1) // sw)
    ow_hi = max(ow_lo, min(ow_, (w_ + pw - kw_) // sw + 1))
    acc = np.empty(16 * blk, dtype=np.int64)
    n = r // oh_
    oh = r - n * oh_
    ih0 = oh * sh - ph
    kh0 = max(0, -ih0)
    kh1 = min(kh_, h_ - ih0)
    rows = max(0, kh1 - kh0)
    wblk = kh_ * row * 8  # words between consecutive blocks of 8 output channels
    # Weight blocks outermost: their 2*KH*KW*CW*8 words stay in L1 while the row is swept.
    for ob in range(0, ob_, 2):
        o0 = ob * 8
        two = ob + 1 < ob_
        ow = 0
        while ow < ow_:
            # the last interior run: one block overlapping the previous one (same values rewritten)
            if ow_lo <= ow < ow_hi < ow + blk and ow_hi - ow_lo >= blk:
                ow = ow_hi - blk
            iw0 = ow * sw - pw
            if ow >= ow_lo and ow + blk <= ow_hi:
                abase = ((n * h_ + ih0 + kh0) * w_ + iw0) * cw_
                wofs = (ob * kh_ + kh0) * row * 8
                valid = rows * kw_ * c_in
                if o0 + 16 <= c_out:
                    xnor_store_4x2(a, abase, sw * cw_, w_ * cw_, wb, wofs, row * 8, wblk, rows, row, acc,
                                   out_i, out_f, epi, (r * ow_ + ow) * c_out, c_out, o0, valid, affine)
                elif two:
                    xnor_rows_4x2(a, abase, sw * cw_, w_ * cw_, wb, wofs, row * 8, wblk, rows, row, acc)
                    write_block(acc, blk, valid, n, oh, ow, o0, c_out, out_i, epi, out_f, affine)
                    write_block(acc[8 * blk:], blk, valid, n, oh, ow, o0 + 8, c_out, out_i, epi, out_f,
                                 affine)
                else:
                    xnor_rows_4x1(a, abase, sw * cw_, w_ * cw_, wb, wofs, row * 8, wblk, rows, row, acc)
                    write_block(acc, blk, valid, n, oh, ow, o0, c_out, out_i, epi, out_f, affine)
                ow += blk
            else:
                kw0 = max(0, -iw0)
                kw1 = min(kw_, w_ - iw0)
                if kw1 > kw0 and rows > 0 and o0 + 16 <= c_out:
                    abase = ((n * h_ + ih0 + kh0) * w_ + iw0 + kw0) * cw_
                    wofs = ((ob * kh_ + kh0) * row + kw0 * cw_) * 8
                    xnor_store_1x2(a, abase, 0, w_ * cw_, wb, wofs, row * 8, wblk, rows, (kw1 - kw0) * cw_, acc,
                                   out_i, out_f, epi, (r * ow_ + ow) * c_out, c_out, o0,
                                   rows * (kw1 - kw0) * c_in, affine)
                    ow += 1
                    continue
                acc[:16] = 0
                if kw1 > kw0 and rows > 0:  # else all taps are padding: dot 0
                    abase = ((n * h_ + ih0 + kh0) * w_ + iw0 + kw0) * cw_
                    wofs = ((ob * kh_ + kh0) * row + kw0 * cw_) * 8
                    if two:
                        xnor_rows_1x2(a, abase, 0, w_ * cw_, wb, wofs, row * 8, wblk, rows, (kw1 - kw0) * cw_, acc)
                    else:
                        xnor_rows_1x1(a, abase, 0, w_ * cw_, wb, wofs, row * 8, wblk, rows, (kw1 - kw0) * cw_, acc)
                valid = rows * max(0, kw1 - kw0) * c_in
                write_block(acc, 1, valid, n, oh, ow, o0, c_out, out_i, epi, out_f, affine)
                if two:
                    write_block(acc[8:], 1, valid, n, oh, ow, o0 + 8, c_out, out_i, epi, out_f, affine)
                ow += 1


@jit(parallel=True)
def conv_fast(a, wb, h_, w_, cw_, kh_, kw_, c_in, c_out, sh, sw, ph, pw, out_i, epi, out_f, affine):  # type: ignore[no-untyped-def]
    """Binary conv2d, 16 output channels x 4 output pixels per step, output rows across threads.

    a: uint64 (N*H*W*CW,) the packed NHWC input, flat. wb: uint64 (OB*KH*KW*CW*8,), the blocked
    weights (:func:`block_weights`), flat. (h_, w_, cw_) input geometry, (kh_, kw_) kernel size,
    c_in / c_out the true channel counts, (sh, sw) stride, (ph, pw) padding.
    affine False: out_i int32 (N, OH, OW, C_out) gets the dot products.
    affine True: out_f float32 (N, OH, OW, C_out) gets :func:`epilogue` of the dot products, ``epi``
    the flat (4, C_out) float32 table (alpha, conv bias, BatchNorm scale, BatchNorm shift).
    """
    rows = out_f.shape[0] * out_f.shape[1] if affine else out_i.shape[0] * out_i.shape[1]
    for r in prange(rows):
        conv_fast_row(r, a, wb, h_, w_, cw_, kh_, kw_, c_in, c_out, sh, sw, ph, pw, out_i, epi, out_f, affine)


@jit()
def conv_fast_serial(a, wb, h_, w_, cw_, kh_, kw_, c_in, c_out, sh, sw, ph, pw, out_i, epi, out_f, affine):  # type: ignore[no-untyped-def]
    """:func:`conv_fast` on the calling thread."""
    rows = out_f.shape[0] * out_f.shape[1] if affine else out_i.shape[0] * out_i.shape[1]
    for r in range(rows):
        conv_fast_row(r, a, wb, h_, w_, cw_, kh_, kw_, c_in, c_out, sh, sw, ph, pw, out_i, epi, out_f, affine)


