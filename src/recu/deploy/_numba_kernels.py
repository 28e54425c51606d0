"""Compiled (numba) packers and XNOR-popcount convolutions. Internal: use :mod:`recu.deploy.kernels`.

Importing this module imports numba and creates lazy dispatchers; nothing is compiled until a
function is first called (and then it is loaded from numba's on-disk cache when possible).

Three convolution kernels share one contract (see :func:`conv_fast` for the arguments):

- ``conv_fast``: weights blocked as ``(ceil(C_out / 8), KH, KW, CW, 8)`` so that one 512-bit load
  holds one word of 8 output channels. The loop nest over kernel rows and words is emitted as LLVM
  vector IR (:func:`_make_xnor_rows`): a register block of 4 output pixels x 16 output channels, each
  step XOR of a weight vector with a broadcast activation word, ``vpopcntq``, ``vpaddq`` - 512
  binary multiply-accumulates per popcount - and the results written from the registers.
- ``conv_avx2``: the same structure in 256-bit vectors for CPUs with AVX2 and no AVX-512: weights
  blocked 4 output channels per vector (:func:`block_weights_avx2`), 4 output pixels x 8 output
  channels per step, popcount by nibble lookup (``vpshufb``) with the byte counts widened by one
  ``vpsadbw`` per 31 words (:func:`_make_xnor_rows_avx2`). Same arguments as ``conv_fast``.
- ``conv_portable``: canonical weights ``(C_out, KH, KW, CW)``, one output channel at a time and a
  bit-trick (SWAR) popcount, so it relies on no popcount instruction at all.

All skip the taps that fall into the zero padding and count only the valid ones, which is exact
zero padding: dot = C_in * taps_valid - 2 * popcount(a XOR w) summed over the valid taps.

fastmath is deliberately off: the kernels are integer code (it would buy nothing) and the packers
compare floats, where ``nnan`` could change the sign given to NaN.
"""

from __future__ import annotations

import functools
import os
import sys
import threading
import warnings
from typing import TYPE_CHECKING

import numba
import numpy as np
from numba import njit, prange, types
from numba.extending import intrinsic

if TYPE_CHECKING:  # torch only where a function takes a tensor: the runtime imports without it
    import torch

# Threading layer: OpenMP first. PyTorch ships its own libgomp under the same soname, so numba's
# OpenMP pool *is* PyTorch's: one set of workers, which spin briefly between parallel regions, so a
# parallel kernel starts in microseconds. numba's own workqueue pool sleeps between launches, and
# waking it cost 100-200 us per launch on this VM (a 2-thread 64@56 layer took 0.30 ms against
# 0.12 ms on one thread). Starting numba's OpenMP pool resets the shared runtime's thread count to
# numba's, under PyTorch's feet: :func:`start_pool` puts PyTorch's count back. An explicit
# NUMBA_THREADING_LAYER is always respected.
if "NUMBA_THREADING_LAYER" not in os.environ and numba.config.THREADING_LAYER == "default":
    numba.config.THREADING_LAYER_PRIORITY = ["omp", "workqueue", "tbb"]

__all__ = ["pack_nhwc", "pack_nchw", "pack_nchw_tensor", "conv_fast", "conv_portable", "block_weights",
           "conv_avx2", "block_weights_avx2"]

LANES = 8  # 8 x 64-bit lanes = one 512-bit register


def _jit(**options):  # type: ignore[no-untyped-def]
    """``njit(cache=True, **options)``, or without the cache when no cache directory is writable."""

    def wrap(fn):  # type: ignore[no-untyped-def]
        try:
            return njit(cache=True, **options)(fn)
        except RuntimeError as e:  # numba: "cannot cache function ...: no locator available"
            warnings.warn(f"recu.deploy: numba cache unavailable ({e}); kernels compile on every run",
                          RuntimeWarning, stacklevel=2)
            return njit(cache=False, **options)(fn)

    return wrap


_WIDE_VECTOR_ATTRS = ('"prefer-vector-width"="512"', '"min-legal-vector-width"="512"')


def _prefer_512_bit(fn) -> None:  # type: ignore[no-untyped-def]
    """Let LLVM use 512-bit vectors in ``fn`` (the function a kernel loop is lowered into).

    LLVM tunes Ice Lake-class CPUs to prefer 256-bit vectors, which halves the bits per
    ``vpopcntq``; these per-function attributes lift that for the kernels alone, leaving the rest
    of the process's numba code as it was. llvmlite only lists enum attributes, hence ``set.add``.
    """
    try:
        for attr in _WIDE_VECTOR_ATTRS:
            set.add(fn.attributes, attr)
    except (AttributeError, TypeError):  # another llvmlite: only speed is lost, results are the same
        pass


def _make_xnor_rows(pixels: int, blocks: int, store: bool = False, addressing: str = "words",  # type: ignore[no-untyped-def]
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
        _prefer_512_bit(builder.function)
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
    """The loop nest of :func:`_make_xnor_rows`: kernel rows k < ``rows_v`` (outer), words t < ``n_v``
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
    """The ``store`` form of :func:`_make_xnor_rows`: dots (int32) or their float epilogue to the output."""
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
    """The ``fused`` form of :func:`_make_xnor_rows` (2 blocks = 16 output channels ``o0 ...``, as one
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

        _prefer_512_bit(builder.function)
        arr = context.make_array(signature.args[0])(context, builder, args[0])
        vty = ir.VectorType(ir.FloatType(), 64)
        v = builder.load(builder.bitcast(builder.gep(arr.data, [args[1]]), vty.as_pointer()), align=4)
        mask = builder.fcmp_ordered(">=", v, ir.Constant(vty, [0.0] * 64))
        return builder.bitcast(mask, ir.IntType(64))

    return sig, codegen


@intrinsic
def fma32(typingctx, x, y, z):  # type: ignore[no-untyped-def]
    """float32 fused multiply-add ``x * y + z`` with one rounding (``llvm.fma.f32``)."""
    if not (x == y == z == types.float32):
        return None

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        return builder.fma(*args)

    return types.float32(types.float32, types.float32, types.float32), codegen


@_jit(inline="always")
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


# Register block: 4 output pixels x 2 blocks of 8 output channels = 8 zmm accumulators, so each
# step issues 8 vpopcntq against 2 weight loads and 4 broadcasts, and the loop overhead of short
# rows (3 words when C_in = 64) is spread over 8 popcounts instead of 4.
XNOR_PIXELS = 4
xnor_rows_4x2 = _make_xnor_rows(XNOR_PIXELS, 2)
xnor_rows_1x2 = _make_xnor_rows(1, 2)
xnor_rows_4x1 = _make_xnor_rows(XNOR_PIXELS, 1)
xnor_rows_1x1 = _make_xnor_rows(1, 1)
xnor_store_4x2 = _make_xnor_rows(XNOR_PIXELS, 2, store=True)
xnor_store_1x2 = _make_xnor_rows(1, 2, store=True)


_M1 = np.uint64(0x5555555555555555)
_M2 = np.uint64(0x3333333333333333)
_M4 = np.uint64(0x0F0F0F0F0F0F0F0F)
_H01 = np.uint64(0x0101010101010101)
_S1 = np.uint64(1)
_S2 = np.uint64(2)
_S4 = np.uint64(4)
_S56 = np.uint64(56)


@_jit(inline="always")
def popcount_swar(x):  # type: ignore[no-untyped-def]
    """Population count with shifts and masks only (no popcount instruction needed)."""
    x = x - ((x >> _S1) & _M1)
    x = (x & _M2) + ((x >> _S2) & _M2)
    x = (x + (x >> _S4)) & _M4
    return np.int64((x * _H01) >> _S56)


@_jit()
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


@_jit(parallel=True)
def pack_nhwc(x, c_, out):  # type: ignore[no-untyped-def]
    """x: float32 (N*H*W*C,) flat NHWC -> out: uint64 (N*H*W, CW), bit 1 where x >= 0."""
    for q in prange(out.shape[0]):
        _pack_nhwc_pixel(q, x, c_, out)


@_jit()
def pack_nhwc_serial(x, c_, out):  # type: ignore[no-untyped-def]
    """:func:`pack_nhwc` on the calling thread (no hand-off to worker threads for small inputs)."""
    for q in range(out.shape[0]):
        _pack_nhwc_pixel(q, x, c_, out)


@_jit()
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


@_jit(parallel=True)
def pack_nchw(x, out):  # type: ignore[no-untyped-def]
    """x: float32 (N, C, H, W) C-contiguous -> out: uint64 (N, H, W, CW), bit 1 where x >= 0."""
    for r in prange(x.shape[0] * x.shape[2]):
        _pack_nchw_row(r, x, out)


@_jit()
def pack_nchw_serial(x, out):  # type: ignore[no-untyped-def]
    """:func:`pack_nchw` on the calling thread."""
    for r in range(x.shape[0] * x.shape[2]):
        _pack_nchw_row(r, x, out)


def pack_nchw_tensor(x: torch.Tensor) -> np.ndarray:
    """Pack a float NCHW tensor (contiguous or channels_last) without materialising its signs."""
    import torch  # the input is a tensor, so torch is already imported: a dict lookup

    if x.dtype != torch.float32:
        x = x.float()
    n, c, h, w = x.shape
    out = np.empty((n, h, w, (c + 63) // 64), dtype=np.uint64)
    parallel = use_threads(x.numel() // 16)
    nhwc = x.permute(0, 2, 3, 1)
    if nhwc.is_contiguous():  # channels_last: the layout the packed model keeps between layers
        launch(pack_nhwc if parallel else pack_nhwc_serial, nhwc.numpy().reshape(-1), c, out.reshape(-1, out.shape[3]))
    else:
        launch(pack_nchw if parallel else pack_nchw_serial, x.contiguous().numpy(), out)
    return out


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
    from ._plan_kernels import ensure_fresh_cache  # before any kernel loads from numba's cache

    ensure_fresh_cache()
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


@_jit(inline="always")
def _write_block(acc, pixels, valid, n, oh, ow, o0, c_out, out_i, epi, out_f, affine):  # type: ignore[no-untyped-def]
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


@_jit()
def _conv_fast_row(r, a, wb, h_, w_, cw_, kh_, kw_, c_in, c_out, sh, sw, ph, pw, out_i, epi, out_f, affine):  # type: ignore[no-untyped-def]
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
                    _write_block(acc, blk, valid, n, oh, ow, o0, c_out, out_i, epi, out_f, affine)
                    _write_block(acc[8 * blk:], blk, valid, n, oh, ow, o0 + 8, c_out, out_i, epi, out_f,
                                 affine)
                else:
                    xnor_rows_4x1(a, abase, sw * cw_, w_ * cw_, wb, wofs, row * 8, wblk, rows, row, acc)
                    _write_block(acc, blk, valid, n, oh, ow, o0, c_out, out_i, epi, out_f, affine)
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
                _write_block(acc, 1, valid, n, oh, ow, o0, c_out, out_i, epi, out_f, affine)
                if two:
                    _write_block(acc[8:], 1, valid, n, oh, ow, o0 + 8, c_out, out_i, epi, out_f, affine)
                ow += 1


@_jit(parallel=True)
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
        _conv_fast_row(r, a, wb, h_, w_, cw_, kh_, kw_, c_in, c_out, sh, sw, ph, pw, out_i, epi, out_f, affine)


@_jit()
def conv_fast_serial(a, wb, h_, w_, cw_, kh_, kw_, c_in, c_out, sh, sw, ph, pw, out_i, epi, out_f, affine):  # type: ignore[no-untyped-def]
    """:func:`conv_fast` on the calling thread."""
    rows = out_f.shape[0] * out_f.shape[1] if affine else out_i.shape[0] * out_i.shape[1]
    for r in range(rows):
        _conv_fast_row(r, a, wb, h_, w_, cw_, kh_, kw_, c_in, c_out, sh, sw, ph, pw, out_i, epi, out_f, affine)


@_jit()
def _conv_portable_row(r, a, w, c_in, sh, sw, ph, pw, out_i, epi, out_f, affine):  # type: ignore[no-untyped-def]
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


@_jit(parallel=True)
def conv_portable(a, w, c_in, sh, sw, ph, pw, out_i, epi, out_f, affine):  # type: ignore[no-untyped-def]
    """Binary conv2d, one output channel at a time, SWAR popcount. w: uint64 (C_out, KH, KW, CW)."""
    rows = out_f.shape[0] * out_f.shape[1] if affine else out_i.shape[0] * out_i.shape[1]
    for r in prange(rows):
        _conv_portable_row(r, a, w, c_in, sh, sw, ph, pw, out_i, epi, out_f, affine)


@_jit()
def conv_portable_serial(a, w, c_in, sh, sw, ph, pw, out_i, epi, out_f, affine):  # type: ignore[no-untyped-def]
    """:func:`conv_portable` on the calling thread."""
    rows = out_f.shape[0] * out_f.shape[1] if affine else out_i.shape[0] * out_i.shape[1]
    for r in range(rows):
        _conv_portable_row(r, a, w, c_in, sh, sw, ph, pw, out_i, epi, out_f, affine)


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

AVX2_LANES = 4  # 4 x 64-bit lanes = one 256-bit register
# Per-byte counts stay in 8-bit lanes for at most this many words: 31 x 8 bits = 248 <= 255.
AVX2_BYTE_WORDS = 31

_AVX2_VECTOR_ATTRS = ('"prefer-vector-width"="256"', '"min-legal-vector-width"="256"')

# A 256-bit integer add: one ymm vpaddd exactly when the target has AVX2 (AVX alone splits it).
_AVX2_PROBE_IR = """
define <8 x i32> @probe(<8 x i32> %a, <8 x i32> %b) {
  %c = add <8 x i32> %a, %b
  ret <8 x i32> %c
}
"""


def _prefer_256_bit(fn) -> None:  # type: ignore[no-untyped-def]
    """Pin ``fn``'s preferred vector width to 256 bits (the avx2 kernel's width, whatever the CPU)."""
    try:
        for attr in _AVX2_VECTOR_ATTRS:
            set.add(fn.attributes, attr)
    except (AttributeError, TypeError):  # another llvmlite: only speed is lost, results are the same
        pass


@functools.lru_cache(maxsize=None)
def target_has_avx2() -> bool:
    """Whether numba compiles for a CPU with AVX2: its target, which ``NUMBA_CPU_NAME`` and
    ``NUMBA_CPU_FEATURES`` may make differ from the host.

    Decides whether the avx2 kernel widens its byte counts with the x86 ``vpsadbw`` intrinsic
    (which LLVM cannot compile for another target: it would abort the process, and numba compiles
    every function a caller may reach, taken branch or not) or with portable shifts and adds.
    Answered by LLVM itself, from numba's CPU name and features, on a one-line probe.
    """
    import llvmlite.binding as ll
    from numba.core import config
    from numba.core.codegen import get_host_cpu_features

    cpu = config.CPU_NAME or ll.get_host_cpu_name()
    features = config.CPU_FEATURES if config.CPU_FEATURES is not None else get_host_cpu_features()
    try:
        target = ll.Target.from_default_triple()
        machine = target.create_target_machine(cpu=cpu, features=features, opt=1)
        module = ll.parse_assembly(_AVX2_PROBE_IR)
        module.triple = machine.triple
        asm = machine.emit_assembly(module)
    except RuntimeError:
        return False
    return any("vpaddd" in line and "ymm" in line for line in asm.splitlines())


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
        _prefer_256_bit(builder.function)
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


@_jit(inline="always")
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


@_jit()
def _conv_avx2_row(r, a, wb, h_, w_, cw_, kh_, kw_, c_in, c_out, sh, sw, ph, pw, out_i, epi, out_f, affine):  # type: ignore[no-untyped-def]
    """Output row ``r`` (= n * OH + oh) of :func:`conv_avx2`: :func:`_conv_fast_row` with 4-lane blocks."""
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


@_jit(parallel=True)
def conv_avx2(a, wb, h_, w_, cw_, kh_, kw_, c_in, c_out, sh, sw, ph, pw, out_i, epi, out_f, affine):  # type: ignore[no-untyped-def]
    """:func:`conv_fast` for AVX2 CPUs: the same arguments, except ``wb`` from :func:`block_weights_avx2`.

    8 output channels x 4 output pixels per step in 256-bit vectors, popcount by nibble lookup,
    output rows across threads. Exact on any CPU (LLVM lowers the popcount to what the target has).
    """
    rows = out_f.shape[0] * out_f.shape[1] if affine else out_i.shape[0] * out_i.shape[1]
    for r in prange(rows):
        _conv_avx2_row(r, a, wb, h_, w_, cw_, kh_, kw_, c_in, c_out, sh, sw, ph, pw, out_i, epi, out_f, affine)


@_jit()
def conv_avx2_serial(a, wb, h_, w_, cw_, kh_, kw_, c_in, c_out, sh, sw, ph, pw, out_i, epi, out_f, affine):  # type: ignore[no-untyped-def]
    """:func:`conv_avx2` on the calling thread."""
    rows = out_f.shape[0] * out_f.shape[1] if affine else out_i.shape[0] * out_i.shape[1]
    for r in range(rows):
        _conv_avx2_row(r, a, wb, h_, w_, cw_, kh_, kw_, c_in, c_out, sh, sw, ph, pw, out_i, epi, out_f, affine)
