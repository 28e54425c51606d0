"""The compiled executor of a whole-network plan: one numba call runs every layer.

A plan (:mod:`recu.deploy.runtime.plan`) is a table of operations, one int64 row each (``F_*`` columns),
over flat arrays: every activation lives in one float32 arena (NHWC, at an offset), every
float parameter in one float32 array, the binary weights in one uint64 and one int8 array, the
AMX tile geometry in one int64 array. :func:`run_plan` walks the rows and calls the compiled
kernels (binary: :mod:`.amx`, :mod:`.popcount_avx512`, :mod:`.popcount_avx2`, :mod:`.popcount_portable`, :mod:`.taps`; float: :mod:`.float_ops`)
on views of those arrays. One call from Python per forward pass: at batch 1 a ResNet-20 layer
takes ~5-20 us, and a Python-level dispatch of each of its ~50 operations cost as much as the
arithmetic.

Importing this module compiles nothing and needs no torch.
"""

from __future__ import annotations

import numpy as np
from numba import prange, types
from numba.extending import intrinsic

from . import amx as ak
from . import float_ops as fk
from . import popcount_avx2 as p2
from . import popcount_avx512 as pa
from . import popcount_portable as pp
from . import packing as pn
from . import taps as tk
from .jit import jit

# Operation codes.
OP_INPUT = 0          # NCHW input -> NHWC value (zero columns each side: the padding of the conv reading it)
OP_BCONV_AVX512 = 1   # sign + pack, XNOR-popcount (512-bit), float epilogue
OP_BCONV_AVX2 = 2     # sign + pack, XNOR-popcount (256-bit, nibble-lookup popcount)
OP_BCONV_PORTABLE = 3  # sign + pack, scalar SWAR popcount
OP_BCONV_AMX8 = 4     # sign to int8, AMX tiles, int8 weights
OP_BCONV_AMX1 = 5     # sign to int8, AMX tiles, 1-bit weights expanded in the kernel
OP_CONV = 6           # full-precision conv2d
OP_AFFINE_ACT = 7     # BatchNorm (fma) + activation
OP_ADD_ACT = 8        # residual add + activation
OP_BIAS_ACT = 9       # per-channel bias + activation
OP_ACT = 10           # activation alone
OP_PRELU = 11
OP_AVG_POOL = 12      # with zero channels around the pooled ones (a channel pad fused into it)
OP_MAX_POOL = 13
OP_GLOBAL_AVG_POOL = 14
OP_PAD_CHANNELS = 15
OP_FLATTEN = 16
OP_LINEAR = 17
OP_BCONV_TAPS = 18    # packed kernel rows (.taps): any C % 16 == 0 on the avx512 path, XNOR-popcount (512-bit)

# Columns of an operation row.
F_OP, F_IN0, F_IN1, F_OUT, F_PARALLEL = 0, 1, 2, 3, 4
F_P = 5  # first of the operation's own parameters
N_FIELDS = 30

# Columns of a value row: arena offset and NHWC shape.
V_OFS, V_N, V_H, V_W, V_C = 0, 1, 2, 3, 4


@intrinsic
def nhwc_view(typingctx, flat, ofs, n, h, w, c):  # type: ignore[no-untyped-def]
    """``flat[ofs:ofs + n*h*w*c].reshape((n, h, w, c))`` without bounds or contiguity checks: the array
    struct is filled in place (sharing ``flat``'s memory owner). numba's reshape calls a C helper
    (~30 ns); a plan makes 4-8 views per row, ~5% of ResNet-20's 180 us. The caller guarantees the
    range lies inside ``flat`` (the plan's own offsets)."""
    if not (isinstance(flat, types.Array) and flat.ndim == 1 and flat.layout == "C"
            and all(isinstance(v, types.Integer) for v in (ofs, n, h, w, c))):
        return None
    view = types.Array(flat.dtype, 4, "C")
    i = types.intp

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        from numba.core import cgutils

        src = context.make_array(signature.args[0])(context, builder, args[0])
        out = context.make_array(view)(context, builder)
        dims = [context.cast(builder, a, t, i) for a, t in zip(args[2:], signature.args[2:])]
        itemsize = context.get_constant(i, context.get_abi_sizeof(context.get_data_type(flat.dtype)))
        strides, step = [], itemsize
        for d in reversed(dims):
            strides.insert(0, step)
            step = builder.mul(step, d)
        start = context.cast(builder, args[1], signature.args[1], i)
        context.populate_array(out, data=builder.gep(src.data, [start]), shape=cgutils.pack_array(builder, dims),
                               strides=cgutils.pack_array(builder, strides), itemsize=itemsize,
                               meminfo=src.meminfo, parent=None)
        result = out._getvalue()
        context.nrt.incref(builder, view, result)  # a new reference to flat's memory, as reshape returns
        return result

    return view(flat, ofs, n, h, w, c), codegen


@jit()
def _view(arena, vals, v):  # type: ignore[no-untyped-def]
    return nhwc_view(arena, vals[v, V_OFS], vals[v, V_N], vals[v, V_H], vals[v, V_W], vals[v, V_C])


@jit()
def _flat(arena, vals, v):  # type: ignore[no-untyped-def]
    o = vals[v, V_OFS]
    return arena[o:o + vals[v, V_N] * vals[v, V_H] * vals[v, V_W] * vals[v, V_C]]


@jit()
def _binary_conv_amx(op, p, par, x, xf, out, fp, u64, i8, i64, x8, cfg, res):  # type: ignore[no-untyped-def]
    """One AMX binary conv row: sign to int8 with zero padding and the tile products in one call
    (and, when ``res`` has the output's shape, the fused residual add and activation per tile block)."""
    n_, h_, w_, c_ = x.shape
    c_out, ph, pw = p[0], p[5], p[6]
    epi = fp[p[7]:p[7] + 4 * c_out]
    w0, wn = p[8], p[9]
    toff = i64[p[10]:p[10] + p[11]]
    abase = i64[p[12]:p[12] + p[13]]
    pix = i64[p[14]:p[14] + p[15]]
    astride, cp_, chunks = p[16], p[17], p[18]
    out2 = out.reshape((out.shape[0] * out.shape[1] * out.shape[2], c_out))
    res2 = out2[:0]
    rlo, rhi = np.float32(0), np.float32(0)
    if res.shape == out.shape:
        res2 = res.reshape(out2.shape)
        rlo, rhi = _res_bounds(p, fp)
    dummy = np.empty((1, 1), np.int32)
    xb = x8[:p[19]]
    if op == OP_BCONV_AMX8:
        wb8 = i8[w0:w0 + wn]
        if par:
            ak.sign_conv_amx(xf, n_, h_, w_, c_, ph, pw, cp_, xb, wb8, toff, abase, astride, pix, c_out, dummy,
                             epi, out2, True, cfg, chunks, res2, rlo, rhi)
        else:
            ak.sign_conv_amx_serial(xf, n_, h_, w_, c_, ph, pw, cp_, xb, wb8, toff, abase, astride, pix, c_out,
                                    dummy, epi, out2, True, cfg, chunks, res2, rlo, rhi)
    else:
        wb1 = u64[w0:w0 + wn]
        if par:
            ak.sign_conv_amx(xf, n_, h_, w_, c_, ph, pw, cp_, xb, wb1, toff, abase, astride, pix, c_out, dummy,
                             epi, out2, True, cfg, chunks, res2, rlo, rhi)
        else:
            ak.sign_conv_amx_serial(xf, n_, h_, w_, c_, ph, pw, cp_, xb, wb1, toff, abase, astride, pix, c_out,
                                    dummy, epi, out2, True, cfg, chunks, res2, rlo, rhi)


# Parameter columns of a binary conv row fused with the residual add that consumes it (F_IN1 >= 0):
# the add's activation code and the offset of its bounds in ``fp`` (after every kernel's own columns).
P_RES_ACT, P_RES_BOUNDS = 20, 21


@jit(inline="always")
def _res_bounds(p, fp):  # type: ignore[no-untyped-def]
    """The float32 clamp bounds of a fused skip connection's activation (its row's parameter columns)."""
    return fk._act_bounds(p[P_RES_ACT], fp[p[P_RES_BOUNDS]], fp[p[P_RES_BOUNDS] + 1])


@jit()
def _conv_rows_res(kind, r0, r1, a, wb, h_, w_, cw_, kh_, kw_, c_in, c_out, sh, sw, ph, pw, d4, epi, out, res,
                   lo, hi):  # type: ignore[no-untyped-def]
    """Output rows [r0, r1) of a binary conv, each followed at once (still in L1) by ``act(row + res)``:
    the residual add and activation of a skip connection without a pass of their own."""
    for r in range(r0, r1):
        if kind == OP_BCONV_AVX512:
            pa.conv_fast_row(r, a, wb, h_, w_, cw_, kh_, kw_, c_in, c_out, sh, sw, ph, pw, d4, epi, out, True)
        elif kind == OP_BCONV_AVX2:
            p2.conv_avx2_row(r, a, wb, h_, w_, cw_, kh_, kw_, c_in, c_out, sh, sw, ph, pw, d4, epi, out, True)
        else:
            pp.conv_portable_row(r, a.reshape((out.shape[0], h_, w_, cw_)), wb.reshape((c_out, kh_, kw_, cw_)),
                                  c_in, sh, sw, ph, pw, d4, epi, out, True)
        fk._add_act_row(r, out, res, lo, hi, out)


@jit(parallel=True)
def _conv_res_parallel(kind, a, wb, h_, w_, cw_, kh_, kw_, c_in, c_out, sh, sw, ph, pw, d4, epi, out, res,
                       lo, hi):  # type: ignore[no-untyped-def]
    rows = out.shape[0] * out.shape[1]
    for r in prange(rows):
        _conv_rows_res(kind, r, r + 1, a, wb, h_, w_, cw_, kh_, kw_, c_in, c_out, sh, sw, ph, pw, d4, epi, out,
                       res, lo, hi)


@jit()
def _binary_conv_popcount(op, p, par, x, xf, out, fp, u64, pk, res):  # type: ignore[no-untyped-def]
    """One XNOR-popcount binary conv row: pack the signs, then the kernel with its float epilogue
    (and, when ``res`` has the output's shape, the fused residual add and activation)."""
    n_, h_, w_, c_ = x.shape
    c_out, kh_, kw_, sh, sw, ph, pw = p[0], p[1], p[2], p[3], p[4], p[5], p[6]
    epi = fp[p[7]:p[7] + 4 * c_out]
    wb = u64[p[8]:p[8] + p[9]]
    cw_ = (c_ + 63) // 64
    a = pk[:n_ * h_ * w_ * cw_]
    a2 = a.reshape((n_ * h_ * w_, cw_))
    if par:
        pn.pack_nhwc(xf, c_, a2)
    else:
        pn.pack_nhwc_serial(xf, c_, a2)
    dummy4 = np.empty((1, 1, 1, 1), np.int32)
    if res.shape == out.shape:
        lo, hi = _res_bounds(p, fp)
        if par:
            _conv_res_parallel(op, a, wb, h_, w_, cw_, kh_, kw_, c_, c_out, sh, sw, ph, pw, dummy4, epi, out, res,
                               lo, hi)
        else:
            _conv_rows_res(op, 0, out.shape[0] * out.shape[1], a, wb, h_, w_, cw_, kh_, kw_, c_, c_out, sh, sw, ph,
                           pw, dummy4, epi, out, res, lo, hi)
        return
    if op == OP_BCONV_AVX512:
        if par:
            pa.conv_fast(a, wb, h_, w_, cw_, kh_, kw_, c_, c_out, sh, sw, ph, pw, dummy4, epi, out, True)
        else:
            pa.conv_fast_serial(a, wb, h_, w_, cw_, kh_, kw_, c_, c_out, sh, sw, ph, pw, dummy4, epi, out, True)
    elif op == OP_BCONV_AVX2:
        if par:
            p2.conv_avx2(a, wb, h_, w_, cw_, kh_, kw_, c_, c_out, sh, sw, ph, pw, dummy4, epi, out, True)
        else:
            p2.conv_avx2_serial(a, wb, h_, w_, cw_, kh_, kw_, c_, c_out, sh, sw, ph, pw, dummy4, epi, out, True)
    else:
        a4 = a.reshape((n_, h_, w_, cw_))
        w4 = wb.reshape((c_out, kh_, kw_, cw_))
        if par:
            pp.conv_portable(a4, w4, c_, sh, sw, ph, pw, dummy4, epi, out, True)
        else:
            pp.conv_portable_serial(a4, w4, c_, sh, sw, ph, pw, dummy4, epi, out, True)


# Parameter columns of a tap-packed binary conv row after the common ones (c_out, kh, kw, sh, sw, ph, pw,
# epilogue, weights offset, weights size): words per kernel row, offset in ``u64`` of the per-column
# weight variants then taps inside, the interior columns [lo, hi), bytes of an input row buffer, the
# offset (in ``pk`` words) of this row's input row buffers, 1 when the producer of the input writes
# them (else this row packs them), and for the output: the offset of the next tap-packed row's row
# buffers this row writes (-1: none), that row's bytes per row and the byte of its column 0; after the
# skip connection's columns (P_RES_ACT, P_RES_BOUNDS) the offset and size in ``u64`` of the accumulators'
# padding starts (int64, ``_tap_kernels.padding_starts``). The per-column array at P_TAP_COLUMNS is
# followed by the per-output-row variants.
P_TAP_WORDS, P_TAP_COLUMNS, P_TAP_LO, P_TAP_HI, P_TAP_ROWBYTES = 10, 11, 12, 13, 14
P_TAP_SIGNS, P_TAP_READY, P_TAP_OUT, P_TAP_OUT_ROW, P_TAP_OUT_COL0 = 15, 16, 17, 18, 19
P_TAP_STARTS, P_TAP_STARTS_SIZE = 22, 23


@jit()
def _binary_conv_taps(p, par, x, xf, out, fp, u64, pk, res):  # type: ignore[no-untyped-def]
    """One tap-packed binary conv row (:mod:`._tap_kernels`): pack the input's signs unless its producer
    wrote them, then the kernel with its epilogue (the fused residual add and activation when ``res``
    has the output's shape; the next tap-packed layer's signs when this row writes them)."""
    n_, h_, w_, c_ = x.shape
    c_out, kh_, kw_, sh, sw, ph, pw = p[0], p[1], p[2], p[3], p[4], p[5], p[6]
    epi = fp[p[7]:p[7] + 4 * c_out]
    wb = u64[p[8]:p[8] + p[9]]
    nw, col, rowbytes = p[P_TAP_WORDS], p[P_TAP_COLUMNS], p[P_TAP_ROWBYTES]
    ow_ = out.shape[2]
    variant, taps = u64[col:col + ow_], u64[col + ow_:col + 2 * ow_]
    rowvar = u64[col + 2 * ow_:col + 2 * ow_ + out.shape[1]]
    starts = u64[p[P_TAP_STARTS]:p[P_TAP_STARTS] + p[P_TAP_STARTS_SIZE]].view(np.int64)
    a = pk[p[P_TAP_SIGNS]:p[P_TAP_SIGNS] + n_ * h_ * rowbytes // 8].view(np.uint8)
    signs = a[:0]
    if p[P_TAP_OUT] >= 0:
        signs = pk[p[P_TAP_OUT]:p[P_TAP_OUT] + out.shape[0] * out.shape[1] * p[P_TAP_OUT_ROW] // 8].view(np.uint8)
    tail = tk.tail_mask_of(c_, kw_, nw)
    lo, hi = np.float32(0), np.float32(0)
    if res.shape == out.shape:
        lo, hi = _res_bounds(p, fp)
    if par:
        if p[P_TAP_READY] == 0:
            tk.pack_signs(xf, n_ * h_, w_, c_, pw, rowbytes, a)
        tk.conv_taps(a, rowbytes, wb, h_, nw, tail, kh_, kw_, c_, c_out, sh, sw, ph, p[P_TAP_LO], p[P_TAP_HI], variant,
                     taps, rowvar, starts, epi, out, res, lo, hi, signs, p[P_TAP_OUT_ROW], p[P_TAP_OUT_COL0])
    else:
        if p[P_TAP_READY] == 0:
            tk.pack_signs_serial(xf, n_ * h_, w_, c_, pw, rowbytes, a)
        tk.conv_taps_rows(0, out.shape[0] * out.shape[1], a, rowbytes, wb, h_, nw, tail, kh_, kw_, c_, c_out, sh, sw,
                          ph, p[P_TAP_LO], p[P_TAP_HI], variant, taps, rowvar, starts, epi, out, res, lo, hi, signs,
                          p[P_TAP_OUT_ROW], p[P_TAP_OUT_COL0])


# Parameter columns of a float conv row with the BatchNorm (+ activation) that consumes it fused:
# 1 when fused, then the offsets of the BatchNorm's scale and shift in ``fp``. P_CONV_WIDE: 1 for
# 512-bit vector blocks (the numba target has AVX-512; same bits as the 256-bit ones). P_CONV_POOL: 1
# when the max pool reading the conv (+ BatchNorm) is fused (the row's output is then the pooled value
# and F_IN1 the conv's full output, the row's scratch), followed by the pool's kh, kw, sh, sw, ph, pw.
P_CONV_BN, P_BN_SCALE, P_BN_SHIFT, P_CONV_WIDE, P_CONV_POOL = 10, 11, 12, 13, 14


@jit(parallel=True)
def _conv_bn_parallel(x, w, bias, sh, sw, ph, pw, scale, shift, lo, hi, out, wide):  # type: ignore[no-untyped-def]
    """A float conv's output rows across threads, each followed at once (still in cache) by its
    BatchNorm and activation: the same float32 steps as two rows, without a pass over the output."""
    rows = out.shape[0] * out.shape[1]
    blocks = min(rows, fk.ROW_BLOCKS)  # whole rows per thread: per-call set-up, see fk.ROW_BLOCKS
    for b in prange(blocks):
        fk._conv2d_rows(b * rows // blocks, (b + 1) * rows // blocks, x, w, bias, sh, sw, ph, pw, out, wide, scale,
                        shift, lo, hi)


@jit()
def _conv_bn_max_pool(x, w, bias, sh, sw, ph, pw, scale, shift, lo, hi, conv, wide, q, out):  # type: ignore[no-untyped-def]
    """Conv + BatchNorm + activation into ``conv``, then the max pool ``q`` = (kh, kw, sh, sw, ph, pw) of it
    into ``out``, on the calling thread: each pooled row right after the conv rows it needs, which are
    still in cache (the ImageNet stem's output is 3.2 MB; pooled in one pass it came back from memory).
    The same values as the two passes: the conv rows are the same, the pool reads finished rows only."""
    fk._check_pool(conv, q[0], q[1], q[2], q[3], q[4], q[5], out, conv.shape[3])
    ch, oh_ = conv.shape[1], out.shape[1]
    for n in range(out.shape[0]):
        done = 0
        for i in range(oh_):
            need = max(0, min(ch, i * q[2] - q[4] + q[0]))
            if need > done:
                fk._conv2d_rows(n * ch + done, n * ch + need, x, w, bias, sh, sw, ph, pw, conv, wide, scale, shift,
                                lo, hi)
                done = need
            fk._max_pool2d_row(n * oh_ + i, conv, q[0], q[1], q[2], q[3], q[4], q[5], out)
        if done < ch:  # rows no window reads (a stride larger than the kernel): computed all the same
            fk._conv2d_rows(n * ch + done, n * ch + ch, x, w, bias, sh, sw, ph, pw, conv, wide, scale, shift, lo, hi)


@jit()
def _float_op(op, p, par, x, y, out, fp):  # type: ignore[no-untyped-def]
    """One full-precision row; p: its parameter columns (see ``plan``'s row builders)."""
    act, lo, hi = p[0], fp[p[1]], fp[p[1] + 1]
    if op == OP_CONV:
        kh_, kw_, c_in, c_out = p[2], p[3], x.shape[3], out.shape[3]
        w = nhwc_view(fp, p[4], kh_, kw_, c_in, c_out)  # (KH, KW, C, O)
        bias = fp[p[5]:p[5] + c_out]
        wide = p[P_CONV_WIDE] != 0
        if p[P_CONV_BN] != 0:
            pooled = p[P_CONV_POOL] != 0
            conv = y if pooled else out  # with a fused max pool: y, the row's scratch (F_IN1); out is pooled
            fk._check_conv2d(x, w, bias, p[6], p[7], p[8], p[9], conv)
            scale, shift = fp[p[P_BN_SCALE]:p[P_BN_SCALE] + c_out], fp[p[P_BN_SHIFT]:p[P_BN_SHIFT] + c_out]
            lo32, hi32 = fk._act_bounds(act, lo, hi)
            q = p[P_CONV_POOL + 1:P_CONV_POOL + 7]
            if pooled and not par:
                _conv_bn_max_pool(x, w, bias, p[6], p[7], p[8], p[9], scale, shift, lo32, hi32, conv, wide, q, out)
            else:
                if par:
                    _conv_bn_parallel(x, w, bias, p[6], p[7], p[8], p[9], scale, shift, lo32, hi32, conv, wide)
                else:
                    fk._conv2d_rows(0, conv.shape[0] * conv.shape[1], x, w, bias, p[6], p[7], p[8], p[9], conv,
                                    wide, scale, shift, lo32, hi32)
                if pooled:
                    fk.max_pool2d_nhwc(conv, q[0], q[1], q[2], q[3], q[4], q[5], out)
        elif par:
            fk.conv2d_nhwc(x, w, bias, p[6], p[7], p[8], p[9], out, wide)
        else:
            fk.conv2d_nhwc_serial(x, w, bias, p[6], p[7], p[8], p[9], out, wide)
    elif op == OP_AFFINE_ACT:
        c = x.shape[3]
        scale, shift = fp[p[2]:p[2] + c], fp[p[3]:p[3] + c]
        if par:
            fk.affine_act(x, scale, shift, act, lo, hi, out)
        else:
            fk.affine_act_serial(x, scale, shift, act, lo, hi, out)
    elif op == OP_ADD_ACT:
        if par:
            fk.add_act(x, y, act, lo, hi, out)
        else:
            fk.add_act_serial(x, y, act, lo, hi, out)
    elif op == OP_BIAS_ACT:
        bias = fp[p[2]:p[2] + x.shape[3]]
        if par:
            fk.bias_act(x, bias, act, lo, hi, out)
        else:
            fk.bias_act_serial(x, bias, act, lo, hi, out)
    elif op == OP_ACT:
        if par:
            fk.act_only(x, act, lo, hi, out)
        else:
            fk.act_only_serial(x, act, lo, hi, out)
    elif op == OP_PRELU:
        weight = fp[p[2]:p[2] + p[3]]
        if par:
            fk.prelu(x, weight, out)
        else:
            fk.prelu_serial(x, weight, out)
    elif op == OP_AVG_POOL:
        if par:
            fk.avg_pool2d_nhwc(x, p[2], p[3], p[4], p[5], p[6], p[7], p[8] != 0, out, p[9], p[10])
        else:
            fk.avg_pool2d_nhwc_serial(x, p[2], p[3], p[4], p[5], p[6], p[7], p[8] != 0, out, p[9], p[10])
    elif op == OP_MAX_POOL:
        if par:
            fk.max_pool2d_nhwc(x, p[2], p[3], p[4], p[5], p[6], p[7], out)
        else:
            fk.max_pool2d_nhwc_serial(x, p[2], p[3], p[4], p[5], p[6], p[7], out)
    elif op == OP_GLOBAL_AVG_POOL:
        if par:
            fk.global_avg_pool_nhwc(x, out)
        else:
            fk.global_avg_pool_nhwc_serial(x, out)
    elif op == OP_PAD_CHANNELS:
        if par:
            fk.pad_channels_nhwc(x, p[2], p[3], out)
        else:
            fk.pad_channels_nhwc_serial(x, p[2], p[3], out)
    elif op == OP_FLATTEN:
        if par:
            fk.flatten_nchw(x, out)
        else:
            fk.flatten_nchw_serial(x, out)
    elif op == OP_LINEAR:
        c_in, c_out = x.shape[3], out.shape[3]
        w = fp[p[2]:p[2] + c_out * c_in].reshape((c_out, c_in))
        bias = fp[p[3]:p[3] + c_out]
        if par:
            fk.linear_nhwc(x, w, bias, out)
        else:
            fk.linear_nhwc_serial(x, w, bias, out)


@jit()
def _row(r, ops, vals, arena, fp, u64, pk, x_in):  # type: ignore[no-untyped-def]
    """Row ``r`` unless it is an AMX convolution (returns False then: the caller runs it)."""
    op = ops[r, F_OP]
    par = ops[r, F_PARALLEL] != 0
    p = ops[r, F_P:]
    out = _view(arena, vals, ops[r, F_OUT])
    if op == OP_INPUT:
        if par:
            fk.nchw_to_nhwc(x_in, out, p[0])
        else:
            fk.nchw_to_nhwc_serial(x_in, out, p[0])
        return True
    if op == OP_BCONV_AMX8 or op == OP_BCONV_AMX1:
        return False
    v0 = ops[r, F_IN0]
    x = _view(arena, vals, v0)
    v1 = ops[r, F_IN1]
    if op <= OP_BCONV_PORTABLE:
        # F_IN1: the residual of a fused skip connection; else a 0-size view (no fusion)
        res = _view(arena, vals, v1) if v1 >= 0 else nhwc_view(arena, 0, 0, 0, 0, 0)
        _binary_conv_popcount(op, p, par, x, _flat(arena, vals, v0), out, fp, u64, pk, res)
        return True
    if op == OP_BCONV_TAPS:
        res = _view(arena, vals, v1) if v1 >= 0 else nhwc_view(arena, 0, 0, 0, 0, 0)
        _binary_conv_taps(p, par, x, _flat(arena, vals, v0), out, fp, u64, pk, res)
        return True
    _float_op(op, p, par, x, _view(arena, vals, v1 if v1 >= 0 else v0), out, fp)
    return True


@jit()
def run_plan(ops, vals, arena, fp, u64, pk, x_in):  # type: ignore[no-untyped-def]
    """Execute every row of ``ops`` in order (see the module doc); no AMX rows. ``x_in``: float32 NCHW."""
    for r in range(ops.shape[0]):
        _row(r, ops, vals, arena, fp, u64, pk, x_in)


@jit()
def run_plan_amx(ops, vals, arena, fp, u64, i8, i64, pk, x8, cfg, x_in):  # type: ignore[no-untyped-def]
    """:func:`run_plan` with AMX rows (compiled only where the CPU has AMX: the tile instructions)."""
    for r in range(ops.shape[0]):
        if not _row(r, ops, vals, arena, fp, u64, pk, x_in):
            v0, v1 = ops[r, F_IN0], ops[r, F_IN1]
            res = _view(arena, vals, v1) if v1 >= 0 else nhwc_view(arena, 0, 0, 0, 0, 0)
            _binary_conv_amx(ops[r, F_OP], ops[r, F_P:], ops[r, F_PARALLEL] != 0, _view(arena, vals, v0),
                             _flat(arena, vals, v0), _view(arena, vals, ops[r, F_OUT]), fp, u64, i8, i64, x8, cfg,
                             res)
