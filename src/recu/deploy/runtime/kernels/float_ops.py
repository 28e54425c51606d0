"""Compiled (numba) full-precision kernels of the compiled plan. Internal: the plan calls them.

These are the float layers between the binary convolutions (stem conv, 1x1 downsample convs,
BatchNorm, hardtanh / ReLU / PReLU, residual adds, pooling, classifier), written to be called from
inside another numba function: every kernel takes only arrays and scalars, writes into the
caller's ``out`` and allocates nothing but a small accumulator row where it needs one.

Layout: every activation is a C-contiguous float32 NHWC array ``(N, H, W, C)``; a ``(N, C)``
tensor is ``(N, 1, 1, C)``. Each kernel comes twice with the same signature: ``name`` (numba
``parallel=True``, output rows split across threads) and ``name_serial`` (the calling thread). Both
call one row function, so they give the same bits.

Exactness (each pinned by ``tests/deploy/test_float_kernels.py``):

- :func:`affine_act` is PyTorch's CPU eval BatchNorm bit for bit: it computes ``fma(x, a, b)`` in
  float32 with ``a`` and ``b`` as :func:`recu.deploy.export._epilogue` builds them.
- :func:`avg_pool2d_nhwc` is ``F.avg_pool2d`` bit for bit: PyTorch's CPU kernels (NCHW and
  channels_last alike) sum the taps row-major in float32 from 0.0 and divide once by the count.
- Max pooling, the activations, adds and biases are exact; NaN propagates and -0.0 is kept as
  PyTorch does (``relu(-0.0) = -0.0``, ``hardtanh(-0.0) = -0.0``).
- :func:`conv2d_nhwc` is PyTorch's float32 convolution bit for bit on this PyTorch and CPU family:
  each output is one float32 fma chain over (kernel row, kernel column, input channel) from 0, the
  order oneDNN's AVX-512 kernels use (measured for the stems 3->16 3x3, 3->64 7x7/2, 3->128 3x3 and
  1x1 convs of 16-256 channels). That matters: a stem output that rounds to the other side of 0
  flips an input sign of the first binary layer.
- Linear and global average pooling accumulate in float64 and round once to float32 (within an ulp
  of the exact result; they come after the last binary layer, so no sign depends on them).

Speed: the innermost loops run over contiguous channels with plain range indices (numba's
negative-index wrap-around is then provably dead and LLVM vectorises them), and no kernel uses
``fastmath``: float sums keep their written order. The convolution's and the linear layer's
inner loops are LLVM vector IR (:func:`_make_conv_block`, :func:`_make_dot_lanes`) so that their
accumulators stay in registers. :func:`conv2d_nhwc` and :func:`linear_nhwc` view their
arrays flat, so they take C-contiguous arrays only (numba type layout ``"C"``).

Activations: ``act`` 0 none, 1 clamp to ``[lo, hi]`` (hardtanh), 2 ReLU. All three are the same
branch-free clamp (none = [-inf, inf], ReLU = [0, inf]): ``v < lo -> lo``, ``v > hi -> hi``, which
leaves NaN and -0.0 alone exactly as PyTorch's clamp does.
"""

from __future__ import annotations

import numpy as np
from numba import prange, types
from numba.extending import intrinsic

from .jit import jit, prefer_512_bit, fma32

__all__ = [
    "ACT_NONE",
    "ACT_CLAMP",
    "ACT_RELU",
    "conv2d_nhwc",
    "conv2d_nhwc_serial",
    "affine_act",
    "affine_act_serial",
    "add_act",
    "add_act_serial",
    "bias_act",
    "bias_act_serial",
    "act_only",
    "act_only_serial",
    "prelu",
    "prelu_serial",
    "avg_pool2d_nhwc",
    "avg_pool2d_nhwc_serial",
    "max_pool2d_nhwc",
    "max_pool2d_nhwc_serial",
    "global_avg_pool_nhwc",
    "global_avg_pool_nhwc_serial",
    "pad_channels_nhwc",
    "pad_channels_nhwc_serial",
    "flatten_nchw",
    "flatten_nchw_serial",
    "linear_nhwc",
    "linear_nhwc_serial",
    "nchw_to_nhwc",
    "nchw_to_nhwc_serial",
]

ACT_NONE = 0
ACT_CLAMP = 1  # hardtanh(lo, hi)
ACT_RELU = 2

# Output features per parallel work item of :func:`linear_nhwc`: a batch-1 classifier has one
# output row, so its rows are split into blocks of features to give the threads work.
LINEAR_BLOCK = 64


@intrinsic
def fma64(typingctx, x, y, z):  # type: ignore[no-untyped-def]
    """float64 fused multiply-add ``x * y + z`` (``llvm.fma.f64``, vectorisable).

    With ``x`` and ``y`` float32 values widened to float64 their product (48 significant bits) is
    exact, so this equals ``z + x * y`` bit for bit: one instruction instead of two, same sum.
    """
    if not (x == y == z == types.float64):
        return None

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        return builder.fma(*args)

    return types.float64(types.float64, types.float64, types.float64), codegen


_F32_FLAT = types.Array(types.float32, 1, "C")


def _splat(builder, value, ty):  # type: ignore[no-untyped-def]
    """The scalar ``value`` in every lane of the vector type ``ty``."""
    from llvmlite import ir

    undef = ir.Constant(ty, ir.Undefined)
    zeros = ir.Constant(ir.VectorType(ir.IntType(32), ty.count), [0] * ty.count)
    return builder.shuffle_vector(builder.insert_element(undef, value, ir.Constant(ir.IntType(32), 0)), undef, zeros)


def _make_conv_block(pixels: int, blocks: int, lanes: int = 8):  # type: ignore[no-untyped-def]
    """An intrinsic ``conv_block(x, xoff, xstep, xrow, w, woff, wrow, rows, taps, wtap, out, dst, ostride, bias, o0)``.

    For ``pixels`` output pixels p and ``blocks`` blocks b of ``lanes`` (8 or 16: 256- or 512-bit
    vectors) output channels, all on flat float32 arrays (L = lanes)::

        acc[p, b, lane] = fma(x[xoff + k * xrow + p * xstep + t], w[woff + k * wrow + t * wtap + Lb + lane], acc)
            for k < rows, t < taps (in this order, float32 fma, from 0)
        out[dst + p * ostride + Lb + lane] = acc[p, b, lane] + bias[o0 + Lb + lane]

    In :func:`_conv2d_row` k runs over the kernel rows inside the input and t over the contiguous
    (kw, c) taps of one kernel row, which are contiguous in NHWC x and in (KH, KW, C, O) w alike.
    Written as LLVM vector IR so that the ``pixels * blocks`` <8 x float> accumulators stay in
    registers for the whole loop nest: each weight vector is loaded once for all pixels and each
    input value broadcast once for all blocks. numba's lowering of the same loops (:func:`_conv2d_pixel`)
    keeps its accumulators in memory, at a third of the speed. The fma chain is the same, so both
    give the same bits - and the same bits as PyTorch's oneDNN convolution, which (measured on
    this PyTorch, AVX-512: stems 3->16 3x3, 3->64 7x7/2, 1x1 convs of 16-256 channels) accumulates
    each output as one float32 fma chain over (kernel row, kernel column, input channel).
    """
    from llvmlite import ir
    from numba.core import cgutils

    count = pixels * blocks
    i = types.int64

    @intrinsic
    def conv_block(typingctx, x, xoff, xstep, xrow, w, woff, wrow, rows, taps, wtap,  # type: ignore[no-untyped-def]
                   out, dst, ostride, bias, o0):
        ints = (xoff, xstep, xrow, woff, wrow, rows, taps, wtap, dst, ostride, o0)
        if not (x == w == out == bias == _F32_FLAT and all(isinstance(v, types.Integer) for v in ints)):
            return None
        return types.void(x, i, i, i, w, i, i, i, i, i, out, i, i, bias, i), codegen

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        prefer_512_bit(builder.function)
        x_arr = context.make_array(signature.args[0])(context, builder, args[0])
        w_arr = context.make_array(signature.args[4])(context, builder, args[4])
        o_arr = context.make_array(signature.args[10])(context, builder, args[10])
        b_arr = context.make_array(signature.args[13])(context, builder, args[13])
        xoff, xstep, xrow = args[1], args[2], args[3]
        woff, wrow, rows, taps, wtap = args[5], args[6], args[7], args[8], args[9]
        dst, ostride, o0 = args[11], args[12], args[14]
        i64 = ir.IntType(64)
        v8f = ir.VectorType(ir.FloatType(), lanes)
        v8d = v8f  # the accumulators: float32, as PyTorch's fma chain
        zero = ir.Constant(i64, 0)
        one = ir.Constant(i64, 1)
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(v8d, [v8d] * 3),
                                             f"llvm.fma.v{lanes}f32")
        init = [ir.Constant(v8d, [0.0] * lanes) for _ in range(count)]
        entry = builder.block
        row_head = builder.append_basic_block("fconv.row")
        loop = builder.append_basic_block("fconv.loop")
        row_end = builder.append_basic_block("fconv.rowend")
        done = builder.append_basic_block("fconv.done")
        go = builder.and_(builder.icmp_signed(">", taps, zero), builder.icmp_signed(">", rows, zero))
        builder.cbranch(go, row_head, done)

        # Outer loop over kernel rows, inner loop over the contiguous taps of a row.
        builder.position_at_end(row_head)
        k = builder.phi(i64)
        racc = [builder.phi(v8d) for _ in range(count)]
        x_row = builder.gep(x_arr.data, [builder.add(xoff, builder.mul(k, xrow))])
        x_px = [builder.gep(x_row, [builder.mul(xstep, ir.Constant(i64, p))]) for p in range(pixels)]
        w_row = builder.gep(w_arr.data, [builder.add(woff, builder.mul(k, wrow))])
        builder.branch(loop)

        builder.position_at_end(loop)
        t = builder.phi(i64)
        accs = [builder.phi(v8d) for _ in range(count)]
        w_tap = builder.gep(w_row, [builder.mul(t, wtap)])
        wvs = [builder.load(builder.bitcast(builder.gep(w_tap, [ir.Constant(i64, lanes * b)]), v8f.as_pointer()),
                            align=4)
               for b in range(blocks)]
        new_accs = [None] * count
        for p in range(pixels):
            xs = _splat(builder, builder.load(builder.gep(x_px[p], [t])), v8d)
            for b in range(blocks):
                q = p * blocks + b
                new_accs[q] = builder.call(fma, [xs, wvs[b], accs[q]])
        t_next = builder.add(t, one)
        builder.cbranch(builder.icmp_signed("<", t_next, taps), loop, row_end)
        t.add_incoming(zero, row_head)
        t.add_incoming(t_next, loop)
        for q in range(count):
            accs[q].add_incoming(racc[q], row_head)
            accs[q].add_incoming(new_accs[q], loop)

        builder.position_at_end(row_end)
        k_next = builder.add(k, one)
        builder.cbranch(builder.icmp_signed("<", k_next, rows), row_head, done)
        k.add_incoming(zero, entry)
        k.add_incoming(k_next, row_end)
        for q in range(count):
            racc[q].add_incoming(init[q], entry)
            racc[q].add_incoming(new_accs[q], row_end)

        builder.position_at_end(done)
        results = [builder.phi(v8d) for _ in range(count)]  # LLVM wants all phis first
        for q in range(count):
            results[q].add_incoming(init[q], entry)
            results[q].add_incoming(new_accs[q], row_end)
        for b in range(blocks):
            at = builder.add(o0, ir.Constant(i64, lanes * b))
            bias_v = builder.load(builder.bitcast(builder.gep(b_arr.data, [at]), v8f.as_pointer()), align=4)
            for p in range(pixels):
                y = builder.fadd(results[p * blocks + b], bias_v)
                at_out = builder.add(dst, builder.add(builder.mul(ostride, ir.Constant(i64, p)),
                                                      ir.Constant(i64, lanes * b)))
                builder.store(y, builder.bitcast(builder.gep(o_arr.data, [at_out]), v8f.as_pointer()), align=4)
        return context.get_dummy_value()

    return conv_block


def _make_dot_lanes(outputs: int):  # type: ignore[no-untyped-def]
    """An intrinsic ``dot_lanes(x, xoff, w, woff, wstride, n8)`` -> ``outputs * 8`` float64 partial sums.

    Element ``8j + k`` is ``sum_{i < n8, i = k mod 8} x[xoff + i] * w[woff + j * wstride + i]`` in
    float64 (i ascending): the 8 lane sums of the dot products of ``outputs`` weight rows with one
    input row, as :func:`_linear_block` combines them. ``outputs`` accumulators of <8 x double>
    are independent fma chains, so the loop runs at throughput, not at fma latency.
    """
    from llvmlite import ir
    from numba.core import cgutils

    result = types.UniTuple(types.float64, 8 * outputs)
    i = types.int64

    @intrinsic
    def dot_lanes(typingctx, x, xoff, w, woff, wstride, n8):  # type: ignore[no-untyped-def]
        if not (x == w == _F32_FLAT and all(isinstance(v, types.Integer) for v in (xoff, woff, wstride, n8))):
            return None
        return result(x, i, w, i, i, i), codegen

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        prefer_512_bit(builder.function)
        x_arr = context.make_array(signature.args[0])(context, builder, args[0])
        w_arr = context.make_array(signature.args[2])(context, builder, args[2])
        xoff, woff, wstride, n8 = args[1], args[3], args[4], args[5]
        i64 = ir.IntType(64)
        v8f = ir.VectorType(ir.FloatType(), 8)
        v8d = ir.VectorType(ir.DoubleType(), 8)
        zero = ir.Constant(i64, 0)
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(v8d, [v8d] * 3), "llvm.fma.v8f64")
        init = ir.Constant(v8d, [0.0] * 8)
        x_base = builder.gep(x_arr.data, [xoff])
        w_rows = [builder.gep(w_arr.data, [builder.add(woff, builder.mul(wstride, ir.Constant(i64, j)))])
                  for j in range(outputs)]
        entry = builder.block
        loop = builder.append_basic_block("dot.loop")
        done = builder.append_basic_block("dot.done")
        builder.cbranch(builder.icmp_signed(">", n8, zero), loop, done)

        builder.position_at_end(loop)
        t = builder.phi(i64)
        accs = [builder.phi(v8d) for _ in range(outputs)]

        def widened(base):  # type: ignore[no-untyped-def]
            return builder.fpext(builder.load(builder.bitcast(builder.gep(base, [t]), v8f.as_pointer()), align=4), v8d)

        xv = widened(x_base)
        new_accs = [builder.call(fma, [xv, widened(w_rows[j]), accs[j]]) for j in range(outputs)]
        t_next = builder.add(t, ir.Constant(i64, 8))
        builder.cbranch(builder.icmp_signed("<", t_next, n8), loop, done)
        t.add_incoming(zero, entry)
        t.add_incoming(t_next, loop)
        for j in range(outputs):
            accs[j].add_incoming(init, entry)
            accs[j].add_incoming(new_accs[j], loop)

        builder.position_at_end(done)
        results = [builder.phi(v8d) for _ in range(outputs)]
        for j in range(outputs):
            results[j].add_incoming(init, entry)
            results[j].add_incoming(new_accs[j], loop)
        lanes = [builder.extract_element(results[j], ir.Constant(ir.IntType(32), k))
                 for j in range(outputs) for k in range(8)]
        return context.make_tuple(builder, signature.return_type, lanes)

    return dot_lanes


# Register blocks: 4 output pixels x 32 (or 16) output channels = 16 (8) zmm accumulators, and
# one pixel (those near the left and right padding, and the last of a row) x 32 (16) channels.
CONV_PIXELS = 4
_conv_block_4x4 = _make_conv_block(CONV_PIXELS, 4)
_conv_block_4x2 = _make_conv_block(CONV_PIXELS, 2)
_conv_block_1x4 = _make_conv_block(1, 4)
_conv_block_1x2 = _make_conv_block(1, 2)
# 512-bit versions (16 channels per vector): half the instructions per multiply-add where the CPU
# has AVX-512 (the 7x7 stem of ResNet-18 ran at half of its float32 peak on the 256-bit blocks).
_conv_block_4x4w = _make_conv_block(CONV_PIXELS, 4, 16)
_conv_block_4x2w = _make_conv_block(CONV_PIXELS, 2, 16)
_conv_block_4x1w = _make_conv_block(CONV_PIXELS, 1, 16)
_conv_block_8x1w = _make_conv_block(2 * CONV_PIXELS, 1, 16)
_conv_block_1x4w = _make_conv_block(1, 4, 16)
_conv_block_1x2w = _make_conv_block(1, 2, 16)
_conv_block_1x1w = _make_conv_block(1, 1, 16)
LINEAR_ROWS = 4
_dot_lanes_4 = _make_dot_lanes(LINEAR_ROWS)
_dot_lanes_1 = _make_dot_lanes(1)


# ---------------------------------------------------------------------------------------------
# Shared helpers


@jit(inline="always")
def _clamp(v, lo, hi):  # type: ignore[no-untyped-def]
    """``v`` clamped to ``[lo, hi]`` as PyTorch's clamp: NaN and -0.0 pass through unchanged."""
    if v < lo:
        v = lo
    if v > hi:
        v = hi
    return v


@jit(inline="always")
def _act_bounds(act, lo, hi):  # type: ignore[no-untyped-def]
    """float32 ``(lo, hi)`` that make :func:`_clamp` the activation ``act`` (0 none, 1 clamp, 2 ReLU).

    The bounds are rounded to float32 first, as PyTorch converts hardtanh's bounds to the tensor's dtype.
    """
    if act == ACT_CLAMP:
        return np.float32(lo), np.float32(hi)
    if act == ACT_RELU:
        return np.float32(0.0), np.float32(np.inf)
    if act == ACT_NONE:
        return np.float32(-np.inf), np.float32(np.inf)
    raise ValueError("activation code must be 0 (none), 1 (hardtanh) or 2 (relu)")


@jit(inline="always")
def _check_same_shape(x, out):  # type: ignore[no-untyped-def]
    if x.shape != out.shape:
        raise ValueError("elementwise kernel: out must have the input's shape")


@jit(inline="always")
def _check_channels(x, vec):  # type: ignore[no-untyped-def]
    if vec.shape[0] != x.shape[3]:
        raise ValueError("per-channel vector length must equal the number of channels")


@jit(inline="always")
def _check_pool(x, kh, kw, sh, sw, ph, pw, out, channels):  # type: ignore[no-untyped-def]
    if kh < 1 or kw < 1 or sh < 1 or sw < 1 or ph < 0 or pw < 0:
        raise ValueError("pooling: kernel and stride must be >= 1 and padding >= 0")
    if out.shape[0] != x.shape[0] or out.shape[3] != channels:
        raise ValueError("pooling: out must have the input's batch size and channels")
    if out.shape[1] != (x.shape[1] + 2 * ph - kh) // sh + 1 or out.shape[2] != (x.shape[2] + 2 * pw - kw) // sw + 1:
        raise ValueError("pooling: out has the wrong spatial size for this kernel, stride and padding")
    return out.shape[0] * out.shape[1]


# ---------------------------------------------------------------------------------------------
# conv2d


@jit(inline="always")
def _check_conv2d(x, w, bias, sh, sw, ph, pw, out):  # type: ignore[no-untyped-def]
    if sh < 1 or sw < 1 or ph < 0 or pw < 0:
        raise ValueError("conv2d_nhwc: stride must be >= 1 and padding >= 0")
    if w.shape[2] != x.shape[3]:
        raise ValueError("conv2d_nhwc: weight (KH, KW, C, O) does not match the input channels")
    if bias.shape[0] != w.shape[3] or out.shape[3] != w.shape[3] or out.shape[0] != x.shape[0]:
        raise ValueError("conv2d_nhwc: bias and out must have O channels and out the input's batch size")
    if (out.shape[1] != (x.shape[1] + 2 * ph - w.shape[0]) // sh + 1
            or out.shape[2] != (x.shape[2] + 2 * pw - w.shape[1]) // sw + 1):
        raise ValueError("conv2d_nhwc: out has the wrong spatial size for this kernel, stride and padding")
    return out.shape[0] * out.shape[1]


@jit(inline="always")
def _conv2d_pixel(n, oh, ow, x, w, bias, sh, sw, ph, pw, o_lo, o_hi, acc, out):  # type: ignore[no-untyped-def]
    """Output channels ``[o_lo, o_hi)`` of output pixel (n, oh, ow), for any padding.

    A float32 accumulator over those channels (one fma chain per output, PyTorch's); every tap
    broadcasts one input value against a contiguous run of weights, so the inner loop is vector fma. Taps in the zero padding are
    skipped (they add exactly 0). The same tap order as :func:`_make_conv_block`.
    """
    h_, w_ = x.shape[1], x.shape[2]
    kh_, kw_, c_ = w.shape[0], w.shape[1], w.shape[2]
    ih0 = oh * sh - ph
    iw0 = ow * sw - pw
    kh0 = max(0, -ih0)
    kh1 = min(kh_, h_ - ih0)
    kw0 = max(0, -iw0)
    kw1 = min(kw_, w_ - iw0)
    for o in range(o_lo, o_hi):
        acc[o] = 0.0
    for kh in range(kh0, kh1):
        ih = ih0 + kh
        for kw in range(kw0, kw1):
            iw = iw0 + kw
            for c in range(c_):
                xv = x[n, ih, iw, c]
                for o in range(o_lo, o_hi):
                    acc[o] = fma32(xv, w[kh, kw, c, o], acc[o])
    for o in range(o_lo, o_hi):
        out[n, oh, ow, o] = acc[o] + bias[o]


@jit(inline="always")
def _wide_blocks(xf, xoff, xstep, xrow, wf, woff, wrow, rows, taps, o_, of, dst, bias, o16, px):  # type: ignore[no-untyped-def]
    """Output channels [0, o16) of ``px`` pixels (8: o16 = 16 only, 4 or 1) in 512-bit blocks of 64, 32, 16."""
    if px == 8:  # one block of 16 channels: 8 pixels give the 8 independent fma chains 2 FMA units need
        _conv_block_8x1w(xf, xoff, xstep, xrow, wf, woff, wrow, rows, taps, o_, of, dst, o_, bias, 0)
        return
    o0 = 0
    while o0 < o16:
        left = o16 - o0
        if px == 4:
            if left >= 64:
                _conv_block_4x4w(xf, xoff, xstep, xrow, wf, woff + o0, wrow, rows, taps, o_, of, dst + o0, o_, bias, o0)
            elif left >= 32:
                _conv_block_4x2w(xf, xoff, xstep, xrow, wf, woff + o0, wrow, rows, taps, o_, of, dst + o0, o_, bias, o0)
            else:
                _conv_block_4x1w(xf, xoff, xstep, xrow, wf, woff + o0, wrow, rows, taps, o_, of, dst + o0, o_, bias, o0)
        elif left >= 64:
            _conv_block_1x4w(xf, xoff, xstep, xrow, wf, woff + o0, wrow, rows, taps, o_, of, dst + o0, o_, bias, o0)
        elif left >= 32:
            _conv_block_1x2w(xf, xoff, xstep, xrow, wf, woff + o0, wrow, rows, taps, o_, of, dst + o0, o_, bias, o0)
        else:
            _conv_block_1x1w(xf, xoff, xstep, xrow, wf, woff + o0, wrow, rows, taps, o_, of, dst + o0, o_, bias, o0)
        o0 += 64 if left >= 64 else (32 if left >= 32 else 16)


@jit(inline="always")
def _kernel_rows(r, oh_, sh, ph, kh_, h_):  # type: ignore[no-untyped-def]
    """Output row ``r`` (= n * OH + oh): (n, first input row ih0, first kernel row inside the input kh0,
    kernel rows inside the input)."""
    n = r // oh_
    ih0 = (r - n * oh_) * sh - ph
    kh0 = max(0, -ih0)
    return n, ih0, kh0, max(0, min(kh_, h_ - ih0) - kh0)


@jit(inline="always")
def _block_pixels(wide, o16):  # type: ignore[no-untyped-def]
    """Output pixels per register block: 8 for a single 512-bit block of 16 channels (8 independent
    fma chains keep both FMA units busy), else 4."""
    return 2 * CONV_PIXELS if wide and o16 == 16 else CONV_PIXELS


@jit()
def _conv2d_rows(r0, r1, x, w, bias, sh, sw, ph, pw, out, wide, scale, shift, lo, hi):  # type: ignore[no-untyped-def]
    """Output rows [r0, r1) (row = n * OH + oh) of :func:`conv2d_nhwc`; when ``scale`` has O entries,
    each row is followed at once (still in cache) by ``clamp(fma(row, scale, shift), lo, hi)`` (a
    BatchNorm and activation; :func:`_affine_act_row`). The flat views and the scratch are made once
    per call: per row, numba's reshape helper and an allocation cost as much as a stem row's maths.
    """
    xf = x.reshape(x.size)
    wf = w.reshape(w.size)
    of = out.reshape(out.size)
    bn = scale.shape[0] == w.shape[3]
    px = _block_pixels(wide, w.shape[3])
    if wide and pw == 0 and w.shape[3] % 16 == 0 and out.shape[2] >= px:
        _conv2d_rows_unpadded(r0, r1, x, xf, w, wf, bias, sh, sw, ph, out, of, px, bn, scale, shift, lo, hi)
        return
    acc = np.empty(w.shape[3], dtype=np.float32)  # the per-pixel scratch of the last O % 16 channels
    for r in range(r0, r1):
        _conv2d_row(r, x, xf, w, wf, bias, sh, sw, ph, pw, out, of, acc, wide)
        if bn:
            _affine_act_row(r, out, scale, shift, lo, hi, out)


@jit()
def _conv2d_rows_unpadded(r0, r1, x, xf, w, wf, bias, sh, sw, ph, out, of, px, bn, scale, shift, lo,
                          hi):  # type: ignore[no-untyped-def]
    """:func:`_conv2d_rows` without horizontal padding (an input padded by its producer, a 1x1 conv),
    512-bit, 16k output channels: every pixel in register blocks of ``px``, a row's last block
    overlapping its neighbour (same values rewritten). The general row loop, with its edge pixels,
    made ResNet-20's 3->16 stem 1.7x slower on a pre-padded input."""
    h_, w_, c_ = x.shape[1], x.shape[2], x.shape[3]
    kh_, kw_, o_ = w.shape[0], w.shape[1], w.shape[3]
    oh_, ow_ = out.shape[1], out.shape[2]
    taps = kw_ * c_
    for r in range(r0, r1):
        n, ih0, kh0, rows = _kernel_rows(r, oh_, sh, ph, kh_, h_)
        xoff = (n * h_ + ih0 + kh0) * w_ * c_
        ow = 0
        while ow < ow_:
            ow = min(ow, ow_ - px)
            _wide_blocks(xf, xoff + ow * sw * c_, sw * c_, w_ * c_, wf, kh0 * taps * o_, taps * o_, rows, taps, o_,
                         of, (r * ow_ + ow) * o_, bias, o_, px)
            ow += px
        if bn:
            _affine_act_row(r, out, scale, shift, lo, hi, out)


@jit(inline="always")
def _conv2d_row(r, x, xf, w, wf, bias, sh, sw, ph, pw, out, of, acc, wide):  # type: ignore[no-untyped-def]
    """Output row ``r`` (= n * OH + oh) of :func:`conv2d_nhwc` (``xf``, ``wf``, ``of``: flat views).

    The first ``O - O % 16`` output channels go through the register-blocked
    :func:`_make_conv_block` in blocks of 32 and 16 channels (``wide``: 512-bit vectors, blocks of
    64, 32 and 16): runs of 4 output pixels whose kernel windows lie horizontally inside the input
    together, other pixels one by one with their kernel rows clipped to the input. The last
    ``O % 16`` channels go through :func:`_conv2d_pixel`. All give the same bits.
    """
    h_, w_, c_ = x.shape[1], x.shape[2], x.shape[3]
    kh_, kw_, o_ = w.shape[0], w.shape[1], w.shape[3]
    oh_, ow_ = out.shape[1], out.shape[2]
    n, ih0, kh0, rows = _kernel_rows(r, oh_, sh, ph, kh_, h_)
    oh = r - n * oh_
    # Output columns whose whole kernel row lies inside the input.
    ow_lo = min(ow_, (pw + sw - 1) // sw)
    ow_hi = max(ow_lo, min(ow_, (w_ + pw - kw_) // sw + 1))
    o32 = o_ - o_ % 32
    o16 = o_ - o_ % 16
    taps = kw_ * c_  # one kernel row: contiguous in x and in w
    px = _block_pixels(wide, o16)
    ow = 0
    while ow < ow_:
        # the last interior run: one block overlapping the previous one (same values rewritten)
        if o16 > 0 and ow_lo <= ow < ow_hi < ow + px and ow_hi - ow_lo >= px:
            ow = ow_hi - px
        if o16 > 0 and ow >= ow_lo and ow + px <= ow_hi:
            xoff = ((n * h_ + ih0 + kh0) * w_ + ow * sw - pw) * c_
            woff = kh0 * taps * o_
            dst = (r * ow_ + ow) * o_
            if wide:
                _wide_blocks(xf, xoff, sw * c_, w_ * c_, wf, woff, taps * o_, rows, taps, o_, of, dst, bias, o16, px)
            else:
                for o0 in range(0, o32, 32):
                    _conv_block_4x4(xf, xoff, sw * c_, w_ * c_, wf, woff + o0, taps * o_, rows, taps, o_,
                                    of, dst + o0, o_, bias, o0)
                if o16 > o32:
                    _conv_block_4x2(xf, xoff, sw * c_, w_ * c_, wf, woff + o32, taps * o_, rows, taps, o_,
                                    of, dst + o32, o_, bias, o32)
            if o16 < o_:
                for p in range(px):
                    _conv2d_pixel(n, oh, ow + p, x, w, bias, sh, sw, ph, pw, o16, o_, acc, out)
            ow += px
            continue
        if o16 > 0:  # one pixel, its kernel row clipped to the input
            iw0 = ow * sw - pw
            kw0 = max(0, -iw0)
            taps1 = max(0, min(kw_, w_ - iw0) - kw0) * c_
            xoff = ((n * h_ + ih0 + kh0) * w_ + iw0 + kw0) * c_
            woff = (kh0 * kw_ + kw0) * c_ * o_
            dst = (r * ow_ + ow) * o_
            if wide:
                _wide_blocks(xf, xoff, 0, w_ * c_, wf, woff, taps * o_, rows, taps1, o_, of, dst, bias, o16, 1)
            else:
                for o0 in range(0, o32, 32):
                    _conv_block_1x4(xf, xoff, 0, w_ * c_, wf, woff + o0, taps * o_, rows, taps1, o_,
                                    of, dst + o0, o_, bias, o0)
                if o16 > o32:
                    _conv_block_1x2(xf, xoff, 0, w_ * c_, wf, woff + o32, taps * o_, rows, taps1, o_,
                                    of, dst + o32, o_, bias, o32)
        if o16 < o_:
            _conv2d_pixel(n, oh, ow, x, w, bias, sh, sw, ph, pw, o16, o_, acc, out)
        ow += 1


# A parallel float conv hands each thread blocks of whole rows, at most this many blocks: per call
# _conv2d_rows makes three flat views and a scratch array, which per row (one call each) cost as much
# as a stem row's maths: ResNet-20's stem at batch 64 took 710 us on two threads against 467 on one.
ROW_BLOCKS = 64


@jit(parallel=True)
def conv2d_nhwc(x, w, bias, sh, sw, ph, pw, out, wide=False):  # type: ignore[no-untyped-def]
    """Float conv2d (groups 1, dilation 1, zero padding), output rows across threads.

    x float32 (N, H, W, C); w float32 (KH, KW, C, O); bias float32 (O,) (zeros for a conv without
    one); (sh, sw) stride, (ph, pw) padding; out float32 (N, OH, OW, O). Each output is a float32 fma
    chain over (kh, kw, c) from 0 (taps in the padding skipped), then ``+ bias`` in float32.
    ``wide``: 512-bit vectors (a CPU with AVX-512; same bits).
    """
    rows = _check_conv2d(x, w, bias, sh, sw, ph, pw, out)
    lo = np.float32(0)
    blocks = min(rows, ROW_BLOCKS)
    for b in prange(blocks):
        _conv2d_rows(b * rows // blocks, (b + 1) * rows // blocks, x, w, bias, sh, sw, ph, pw, out, wide, bias[:0],
                     bias[:0], lo, lo)


@jit()
def conv2d_nhwc_serial(x, w, bias, sh, sw, ph, pw, out, wide=False):  # type: ignore[no-untyped-def]
    """:func:`conv2d_nhwc` on the calling thread."""
    rows = _check_conv2d(x, w, bias, sh, sw, ph, pw, out)
    lo = np.float32(0)
    _conv2d_rows(0, rows, x, w, bias, sh, sw, ph, pw, out, wide, bias[:0], bias[:0], lo, lo)


# ---------------------------------------------------------------------------------------------
# Elementwise: BatchNorm (affine), add, channel bias, activation, PReLU. Rows are (n, h).


def _vec16_codegen(op: str):  # type: ignore[no-untyped-def]
    """LLVM for 16 contiguous float32 elements at flat offset ``off``: ``add`` - ``clamp(x + y)``;
    ``fma`` - ``clamp(fma(x, a[coff:], b[coff:]))``. The clamp is :func:`_clamp`'s (NaN, -0.0 kept).

    Why vector IR: the row loops below run in place (``out`` is ``x``), and LLVM's runtime overlap
    check then sends numba's loop to its scalar version (an in-place 16-channel add + hardtanh of
    32x32 took 8.9 us, 2.6 us as these vectors).
    """
    from llvmlite import ir
    from numba.core import cgutils

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        prefer_512_bit(builder.function)
        v16 = ir.VectorType(ir.FloatType(), 16)
        arrays = [context.make_array(t)(context, builder, a)
                  for t, a in zip(signature.args, args) if isinstance(t, types.Array)]

        def at(arr, ofs):  # type: ignore[no-untyped-def]
            return builder.bitcast(builder.gep(arr.data, [ofs]), v16.as_pointer())

        if op == "add":
            x_arr, y_arr, o_arr = arrays
            off, lo, hi = args[3], args[4], args[5]
            v = builder.fadd(builder.load(at(x_arr, off), align=4), builder.load(at(y_arr, off), align=4))
        else:
            x_arr, a_arr, b_arr, o_arr = arrays
            off, coff, lo, hi = args[4], args[5], args[6], args[7]
            fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(v16, [v16] * 3), "llvm.fma.v16f32")
            v = builder.call(fma, [builder.load(at(x_arr, off), align=4), builder.load(at(a_arr, coff), align=4),
                                   builder.load(at(b_arr, coff), align=4)])
        lo_v, hi_v = _splat(builder, lo, v16), _splat(builder, hi, v16)
        v = builder.select(builder.fcmp_ordered("<", v, lo_v), lo_v, v)
        v = builder.select(builder.fcmp_ordered(">", v, hi_v), hi_v, v)
        builder.store(v, at(o_arr, off), align=4)
        return context.get_dummy_value()

    return codegen


def _f32_c(*arrays) -> bool:  # type: ignore[no-untyped-def]
    return all(isinstance(a, types.Array) and a.dtype == types.float32 and a.layout == "C" for a in arrays)


@intrinsic
def add_clamp16(typingctx, x, y, out, off, lo, hi):  # type: ignore[no-untyped-def]
    """``out[off + i] = clamp(x[off + i] + y[off + i], lo, hi)`` for i < 16 (flat offsets into
    C-contiguous float32 arrays of any rank; ``out`` may be ``x`` or ``y``)."""
    if not (_f32_c(x, y, out) and isinstance(off, types.Integer) and lo == hi == types.float32):
        return None
    return types.void(x, y, out, types.int64, types.float32, types.float32), _vec16_codegen("add")


@intrinsic
def fma_clamp16(typingctx, x, a, b, out, off, coff, lo, hi):  # type: ignore[no-untyped-def]
    """``out[off + i] = clamp(fma(x[off + i], a[coff + i], b[coff + i]), lo, hi)`` for i < 16."""
    if not (_f32_c(x, a, b, out) and isinstance(off, types.Integer) and isinstance(coff, types.Integer)
            and lo == hi == types.float32):
        return None
    sig = types.void(x, a, b, out, types.int64, types.int64, types.float32, types.float32)
    return sig, _vec16_codegen("fma")


def _make_window16(kind: str, vectors: int = 1):  # type: ignore[no-untyped-def]
    """A pooling intrinsic over ``16 * vectors`` channels of one output pixel, the window's <16 x float>
    vectors at ``x[base + 16 v + k * rowstride + j * colstride]`` (v < vectors, k < rows, j < cols)
    taken row-major in registers and stored once at ``out[ooff + 16 v]``. Each of the ``vectors``
    accumulators is its own dependency chain: one chain waits ~5 cycles per tap on its compare and
    blend, four keep the core busy (ResNet-18's 3x3 max pool of 64 channels ~2x faster):

    - ``"mean"``: ``window_mean16(x, base, rows, cols, rowstride, colstride, out, ooff, divisor)``,
      the sum from 0.0 in float32 (PyTorch's order) divided by ``divisor``;
    - ``"max"``: ``window_max16(x, base, rows, cols, rowstride, colstride, out, ooff)``, from -inf
      each tap taken when ``v > max or isnan(v)`` (PyTorch's rule: NaN propagates, of equal values
      the first is kept, so -0.0 and 0.0 keep their order).
    """
    mean = kind == "mean"

    def ok(x, ints, out):  # type: ignore[no-untyped-def]
        return _f32_c(x, out) and all(isinstance(v, types.Integer) for v in ints)

    i = types.int64
    if mean:
        @intrinsic
        def window16(typingctx, x, base, rows, cols, rowstride, colstride, out, ooff, divisor):  # type: ignore[no-untyped-def]
            if not (ok(x, (base, rows, cols, rowstride, colstride, ooff), out) and divisor == types.float32):
                return None
            return types.void(x, i, i, i, i, i, out, i, types.float32), codegen
    else:
        @intrinsic
        def window16(typingctx, x, base, rows, cols, rowstride, colstride, out, ooff):  # type: ignore[no-untyped-def]
            if not ok(x, (base, rows, cols, rowstride, colstride, ooff), out):
                return None
            return types.void(x, i, i, i, i, i, out, i), codegen

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        from llvmlite import ir

        prefer_512_bit(builder.function)
        x_arr = context.make_array(signature.args[0])(context, builder, args[0])
        o_arr = context.make_array(signature.args[6])(context, builder, args[6])
        base, rows, cols, rowstride, colstride, ooff = args[1:6] + (args[7],)
        i64 = ir.IntType(64)
        v16 = ir.VectorType(ir.FloatType(), 16)
        zero, one = ir.Constant(i64, 0), ir.Constant(i64, 1)
        init = ir.Constant(v16, [0.0 if mean else float("-inf")] * 16)
        entry = builder.block
        row_head = builder.append_basic_block("pool.row")
        loop = builder.append_basic_block("pool.loop")
        row_end = builder.append_basic_block("pool.rowend")
        done = builder.append_basic_block("pool.done")
        go = builder.and_(builder.icmp_signed(">", rows, zero), builder.icmp_signed(">", cols, zero))
        builder.cbranch(go, row_head, done)
        builder.position_at_end(row_head)
        k = builder.phi(i64)
        racc = [builder.phi(v16) for _ in range(vectors)]
        row_ofs = builder.add(base, builder.mul(k, rowstride))
        builder.branch(loop)
        builder.position_at_end(loop)
        j = builder.phi(i64)
        acc = [builder.phi(v16) for _ in range(vectors)]
        tap = builder.add(row_ofs, builder.mul(j, colstride))
        new_acc = []
        for a, accv in enumerate(acc):
            ptr = builder.gep(x_arr.data, [builder.add(tap, ir.Constant(i64, 16 * a))])
            v = builder.load(builder.bitcast(ptr, v16.as_pointer()), align=4)
            if mean:
                new_acc.append(builder.fadd(accv, v))
            else:
                take = builder.or_(builder.fcmp_ordered(">", v, accv), builder.fcmp_unordered("uno", v, v))
                new_acc.append(builder.select(take, v, accv))
        j_next = builder.add(j, one)
        builder.cbranch(builder.icmp_signed("<", j_next, cols), loop, row_end)
        j.add_incoming(zero, row_head)
        j.add_incoming(j_next, loop)
        for a in range(vectors):
            acc[a].add_incoming(racc[a], row_head)
            acc[a].add_incoming(new_acc[a], loop)
        builder.position_at_end(row_end)
        k_next = builder.add(k, one)
        builder.cbranch(builder.icmp_signed("<", k_next, rows), row_head, done)
        k.add_incoming(zero, entry)
        k.add_incoming(k_next, row_end)
        for a in range(vectors):
            racc[a].add_incoming(init, entry)
            racc[a].add_incoming(new_acc[a], row_end)
        builder.position_at_end(done)
        totals = [builder.phi(v16) for _ in range(vectors)]  # LLVM wants a block's phis first
        for a, total in enumerate(totals):
            total.add_incoming(init, entry)
            total.add_incoming(new_acc[a], row_end)
        for a, total in enumerate(totals):
            result = _divided(builder, total, args[8]) if mean else total
            dst = builder.gep(o_arr.data, [builder.add(ooff, ir.Constant(i64, 16 * a))])
            builder.store(result, builder.bitcast(dst, v16.as_pointer()), align=4)
        return context.get_dummy_value()

    return window16


def _divided(builder, total, divisor):  # type: ignore[no-untyped-def]
    """``total / divisor`` (a <16 x float> by a float32), as a product with the exact inverse when the
    divisor is 2**k: the same real number, so the same rounded float32 (denormals included), and a
    multiply is ~10x cheaper than a 16-lane divide."""
    from llvmlite import ir

    i32 = ir.IntType(32)
    v16 = total.type
    dbits = builder.bitcast(divisor, i32)
    power_of_two = builder.icmp_unsigned("==", builder.and_(dbits, ir.Constant(i32, 0x7FFFFF)), ir.Constant(i32, 0))
    normal = builder.icmp_unsigned("<", builder.sub(builder.lshr(dbits, ir.Constant(i32, 23)), ir.Constant(i32, 1)),
                                   ir.Constant(i32, 253))  # 2**-k normal too (k in -126..126)
    by_product = builder.append_basic_block("pool.mul")
    by_quotient = builder.append_basic_block("pool.div")
    store = builder.append_basic_block("pool.store")
    builder.cbranch(builder.and_(power_of_two, normal), by_product, by_quotient)
    builder.position_at_end(by_product)
    inverse = builder.fdiv(ir.Constant(ir.FloatType(), 1.0), divisor)  # scalar, exact here
    product = builder.fmul(total, _splat(builder, inverse, v16))
    builder.branch(store)
    builder.position_at_end(by_quotient)
    quotient = builder.fdiv(total, _splat(builder, divisor, v16))
    builder.branch(store)
    builder.position_at_end(store)
    mean = builder.phi(v16)
    mean.add_incoming(product, by_product)
    mean.add_incoming(quotient, by_quotient)
    return mean


window_mean16 = _make_window16("mean")
window_max16 = _make_window16("max")
window_max64 = _make_window16("max", 4)


@intrinsic
def zero16(typingctx, out, ooff):  # type: ignore[no-untyped-def]
    """``out[ooff + i] = 0.0`` for i < 16 (one vector store)."""
    if not (_f32_c(out) and isinstance(ooff, types.Integer)):
        return None

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        from llvmlite import ir

        v16 = ir.VectorType(ir.FloatType(), 16)
        o_arr = context.make_array(signature.args[0])(context, builder, args[0])
        builder.store(ir.Constant(v16, [0.0] * 16), builder.bitcast(builder.gep(o_arr.data, [args[1]]),
                                                                    v16.as_pointer()), align=4)
        return context.get_dummy_value()

    return types.void(out, types.int64), codegen


@intrinsic
def interleave3x16(typingctx, x, xoff, plane, out, ooff):  # type: ignore[no-untyped-def]
    """``out[ooff + 3 i + c] = x[xoff + c * plane + i]`` for i < 16, c < 3: 16 pixels of three channel
    planes (NCHW) to 16 NHWC pixels, three vector loads, register shuffles and three stores (a scalar
    strided loop stored one float per cycle: 80 us for a 224x224 image)."""
    ints = (xoff, plane, ooff)
    if not (_f32_c(x, out) and all(isinstance(v, types.Integer) for v in ints)):
        return None

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        from llvmlite import ir

        prefer_512_bit(builder.function)
        i64 = ir.IntType(64)
        v16 = ir.VectorType(ir.FloatType(), 16)
        x_arr = context.make_array(signature.args[0])(context, builder, args[0])
        o_arr = context.make_array(signature.args[3])(context, builder, args[3])
        xoff, plane, ooff = args[1], args[2], args[4]

        def load(c: int):  # type: ignore[no-untyped-def]
            at = builder.add(xoff, builder.mul(plane, ir.Constant(i64, c)))
            return builder.load(builder.bitcast(builder.gep(x_arr.data, [at]), v16.as_pointer()), align=4)

        i32 = ir.IntType(32)
        ab = builder.shuffle_vector(load(0), load(1), ir.Constant(ir.VectorType(i32, 32), list(range(32))))
        cc = load(2)
        c32 = builder.shuffle_vector(cc, cc, ir.Constant(ir.VectorType(i32, 32), list(range(32))))
        # lanes: a_i = i, b_i = 16 + i, c_i = 32 + i of the 64-lane concatenation
        for part in range(3):
            mask = [(k % 3) * 16 + k // 3 for k in range(16 * part, 16 * part + 16)]
            v = builder.shuffle_vector(ab, c32, ir.Constant(ir.VectorType(i32, 16), mask))
            dst = builder.gep(o_arr.data, [builder.add(ooff, ir.Constant(i64, 16 * part))])
            builder.store(v, builder.bitcast(dst, v16.as_pointer()), align=4)
        return context.get_dummy_value()

    return types.void(x, types.int64, types.int64, out, types.int64), codegen


@intrinsic
def copy16(typingctx, x, xoff, out, ooff):  # type: ignore[no-untyped-def]
    """``out[ooff + i] = x[xoff + i]`` for i < 16 (one vector load and store)."""
    if not (_f32_c(x, out) and isinstance(xoff, types.Integer) and isinstance(ooff, types.Integer)):
        return None

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        from llvmlite import ir

        v16 = ir.VectorType(ir.FloatType(), 16)
        x_arr = context.make_array(signature.args[0])(context, builder, args[0])
        o_arr = context.make_array(signature.args[2])(context, builder, args[2])
        v = builder.load(builder.bitcast(builder.gep(x_arr.data, [args[1]]), v16.as_pointer()), align=4)
        builder.store(v, builder.bitcast(builder.gep(o_arr.data, [args[3]]), v16.as_pointer()), align=4)
        return context.get_dummy_value()

    return types.void(x, types.int64, out, types.int64), codegen


@jit()
def _affine_act_row(r, x, scale, shift, lo, hi, out):  # type: ignore[no-untyped-def]
    h_, w_, c_ = x.shape[1], x.shape[2], x.shape[3]
    n = r // h_
    h = r - n * h_
    if c_ % 16 == 0:
        base = r * w_ * c_
        for w in range(w_):
            for c in range(0, c_, 16):
                fma_clamp16(x, scale, shift, out, base + w * c_ + c, c, lo, hi)
        return
    for w in range(w_):
        for c in range(c_):
            out[n, h, w, c] = _clamp(fma32(x[n, h, w, c], scale[c], shift[c]), lo, hi)


@jit(parallel=True)
def affine_act(x, scale, shift, act, lo, hi, out):  # type: ignore[no-untyped-def]
    """Eval BatchNorm then activation: ``out = act(fma(x, scale[c], shift[c]))`` in float32.

    scale, shift float32 (C,): ``a = gamma * rsqrt(var + eps)``, ``b = fma(-mean, a, beta)``.
    """
    _check_same_shape(x, out)
    _check_channels(x, scale)
    _check_channels(x, shift)
    lo32, hi32 = _act_bounds(act, lo, hi)
    for r in prange(x.shape[0] * x.shape[1]):
        _affine_act_row(r, x, scale, shift, lo32, hi32, out)


@jit()
def affine_act_serial(x, scale, shift, act, lo, hi, out):  # type: ignore[no-untyped-def]
    """:func:`affine_act` on the calling thread."""
    _check_same_shape(x, out)
    _check_channels(x, scale)
    _check_channels(x, shift)
    lo32, hi32 = _act_bounds(act, lo, hi)
    for r in range(x.shape[0] * x.shape[1]):
        _affine_act_row(r, x, scale, shift, lo32, hi32, out)


@jit()
def _add_act_row(r, x, y, lo, hi, out):  # type: ignore[no-untyped-def]
    h_, w_, c_ = x.shape[1], x.shape[2], x.shape[3]
    n = r // h_
    h = r - n * h_
    base = r * w_ * c_
    vec = (w_ * c_) // 16 * 16
    for i in range(0, vec, 16):
        add_clamp16(x, y, out, base + i, lo, hi)
    for i in range(vec, w_ * c_):  # the row's last < 16 elements
        w, c = i // c_, i % c_
        out[n, h, w, c] = _clamp(x[n, h, w, c] + y[n, h, w, c], lo, hi)


@jit(parallel=True)
def add_act(x, y, act, lo, hi, out):  # type: ignore[no-untyped-def]
    """Residual add then activation: ``out = act(x + y)`` in float32 (``out`` may be ``x`` or ``y``)."""
    _check_same_shape(x, out)
    _check_same_shape(y, out)
    lo32, hi32 = _act_bounds(act, lo, hi)
    for r in prange(x.shape[0] * x.shape[1]):
        _add_act_row(r, x, y, lo32, hi32, out)


@jit()
def add_act_serial(x, y, act, lo, hi, out):  # type: ignore[no-untyped-def]
    """:func:`add_act` on the calling thread."""
    _check_same_shape(x, out)
    _check_same_shape(y, out)
    lo32, hi32 = _act_bounds(act, lo, hi)
    for r in range(x.shape[0] * x.shape[1]):
        _add_act_row(r, x, y, lo32, hi32, out)


@jit()
def _bias_act_row(r, x, bias, lo, hi, out):  # type: ignore[no-untyped-def]
    h_ = x.shape[1]
    n = r // h_
    h = r - n * h_
    for w in range(x.shape[2]):
        for c in range(x.shape[3]):
            out[n, h, w, c] = _clamp(x[n, h, w, c] + bias[c], lo, hi)


@jit(parallel=True)
def bias_act(x, bias, act, lo, hi, out):  # type: ignore[no-untyped-def]
    """Per-channel bias (ReActNet's LearnableBias) then activation: ``out = act(x + bias[c])``."""
    _check_same_shape(x, out)
    _check_channels(x, bias)
    lo32, hi32 = _act_bounds(act, lo, hi)
    for r in prange(x.shape[0] * x.shape[1]):
        _bias_act_row(r, x, bias, lo32, hi32, out)


@jit()
def bias_act_serial(x, bias, act, lo, hi, out):  # type: ignore[no-untyped-def]
    """:func:`bias_act` on the calling thread."""
    _check_same_shape(x, out)
    _check_channels(x, bias)
    lo32, hi32 = _act_bounds(act, lo, hi)
    for r in range(x.shape[0] * x.shape[1]):
        _bias_act_row(r, x, bias, lo32, hi32, out)


@jit()
def _act_only_row(r, x, lo, hi, out):  # type: ignore[no-untyped-def]
    h_ = x.shape[1]
    n = r // h_
    h = r - n * h_
    for w in range(x.shape[2]):
        for c in range(x.shape[3]):
            out[n, h, w, c] = _clamp(x[n, h, w, c], lo, hi)


@jit(parallel=True)
def act_only(x, act, lo, hi, out):  # type: ignore[no-untyped-def]
    """The activation alone (hardtanh or ReLU; ``out`` may be ``x``)."""
    _check_same_shape(x, out)
    lo32, hi32 = _act_bounds(act, lo, hi)
    for r in prange(x.shape[0] * x.shape[1]):
        _act_only_row(r, x, lo32, hi32, out)


@jit()
def act_only_serial(x, act, lo, hi, out):  # type: ignore[no-untyped-def]
    """:func:`act_only` on the calling thread."""
    _check_same_shape(x, out)
    lo32, hi32 = _act_bounds(act, lo, hi)
    for r in range(x.shape[0] * x.shape[1]):
        _act_only_row(r, x, lo32, hi32, out)


@jit()
def _prelu_row(r, x, weight, out):  # type: ignore[no-untyped-def]
    h_ = x.shape[1]
    n = r // h_
    h = r - n * h_
    if weight.shape[0] == 1:
        a = weight[0]
        for w in range(x.shape[2]):
            for c in range(x.shape[3]):
                v = x[n, h, w, c]
                out[n, h, w, c] = v if v > 0 else a * v
    else:
        for w in range(x.shape[2]):
            for c in range(x.shape[3]):
                v = x[n, h, w, c]
                out[n, h, w, c] = v if v > 0 else weight[c] * v


@jit(inline="always")
def _check_prelu(x, weight, out):  # type: ignore[no-untyped-def]
    _check_same_shape(x, out)
    if weight.shape[0] != 1 and weight.shape[0] != x.shape[3]:
        raise ValueError("prelu: weight must have 1 or C elements")


@jit(parallel=True)
def prelu(x, weight, out):  # type: ignore[no-untyped-def]
    """PReLU as PyTorch: ``x if x > 0 else weight * x`` (weight (C,) or (1,); NaN stays NaN)."""
    _check_prelu(x, weight, out)
    for r in prange(x.shape[0] * x.shape[1]):
        _prelu_row(r, x, weight, out)


@jit()
def prelu_serial(x, weight, out):  # type: ignore[no-untyped-def]
    """:func:`prelu` on the calling thread."""
    _check_prelu(x, weight, out)
    for r in range(x.shape[0] * x.shape[1]):
        _prelu_row(r, x, weight, out)


# ---------------------------------------------------------------------------------------------
# Pooling. Rows are (n, oh).


@jit(inline="always")
def _zero_channels(out, n, h, w, c0, count):  # type: ignore[no-untyped-def]
    """``out[n, h, w, c0:c0 + count] = 0``: 16-lane stores (flat offsets; a reshape here would call
    numba's C reshape helper per pixel), then single ones."""
    vec = count // 16 * 16
    ofs = ((n * out.shape[1] + h) * out.shape[2] + w) * out.shape[3] + c0
    for i in range(0, vec, 16):
        zero16(out, ofs + i)
    for c in range(c0 + vec, c0 + count):
        out[n, h, w, c] = 0.0


@jit()
def _avg_pool2d_row(r, x, kh, kw, sh, sw, ph, pw, count_include_pad, before, out):  # type: ignore[no-untyped-def]
    """Output row ``r`` of :func:`avg_pool2d_nhwc`, in the steps of PyTorch's CPU kernel; the pooled
    channels go to ``out``'s channels ``[before, before + C)``, its others are set to 0."""
    h_, w_, c_ = x.shape[1], x.shape[2], x.shape[3]
    oh_, ow_, co_ = out.shape[1], out.shape[2], out.shape[3]
    n = r // oh_
    oh = r - n * oh_
    ih0 = oh * sh - ph
    ih1 = min(ih0 + kh, h_ + ph)
    ihs = max(ih0, 0)
    ihe = min(ih1, h_)
    for ow in range(ow_):
        iw0 = ow * sw - pw
        iw1 = min(iw0 + kw, w_ + pw)
        iws = max(iw0, 0)
        iwe = min(iw1, w_)
        if co_ % 16 == 0 and co_ > c_:  # whole vectors of zeros (the pooled channels overwrite theirs)
            _zero_channels(out, n, oh, ow, 0, co_)
        else:
            _zero_channels(out, n, oh, ow, 0, before)
            _zero_channels(out, n, oh, ow, before + c_, co_ - before - c_)
        empty = ihs >= ihe or iws >= iwe  # the window lies in the padding only
        if c_ % 16 == 0 and not empty:  # the window's sums in vector registers, stored once
            count = (ih1 - ih0) * (iw1 - iw0) if count_include_pad else (ihe - ihs) * (iwe - iws)
            for c in range(0, c_, 16):
                window_mean16(x, ((n * h_ + ihs) * w_ + iws) * c_ + c, ihe - ihs, iwe - iws, w_ * c_, c_, out,
                              ((n * oh_ + oh) * ow_ + ow) * co_ + before + c, np.float32(count))
            continue
        for c in range(c_):
            out[n, oh, ow, before + c] = 0.0
        if empty:
            continue
        count = (ih1 - ih0) * (iw1 - iw0) if count_include_pad else (ihe - ihs) * (iwe - iws)
        for ih in range(ihs, ihe):
            for iw in range(iws, iwe):
                for c in range(c_):
                    out[n, oh, ow, before + c] += x[n, ih, iw, c]
        divisor = np.float32(count)
        for c in range(c_):
            out[n, oh, ow, before + c] = out[n, oh, ow, before + c] / divisor


@jit(inline="always")
def _check_avg_pool(x, kh, kw, sh, sw, ph, pw, before, after, out):  # type: ignore[no-untyped-def]
    if before < 0 or after < 0:
        raise ValueError("avg pooling: before and after must be >= 0")
    return _check_pool(x, kh, kw, sh, sw, ph, pw, out, before + x.shape[3] + after)


@jit(parallel=True)
def avg_pool2d_nhwc(x, kh, kw, sh, sw, ph, pw, count_include_pad, out, before=0, after=0):  # type: ignore[no-untyped-def]
    """``F.avg_pool2d`` (ceil_mode False) bit for bit: taps summed row-major in float32 from 0.0,
    then divided once by the count (the whole window with ``count_include_pad``, else its valid taps).

    ``before``, ``after``: zero channels around the pooled ones in ``out`` (N, OH, OW, before + C +
    after): the option-A shortcut's pool and channel padding in one pass.
    """
    rows = _check_avg_pool(x, kh, kw, sh, sw, ph, pw, before, after, out)
    for r in prange(rows):
        _avg_pool2d_row(r, x, kh, kw, sh, sw, ph, pw, count_include_pad, before, out)


@jit()
def avg_pool2d_nhwc_serial(x, kh, kw, sh, sw, ph, pw, count_include_pad, out, before=0, after=0):  # type: ignore[no-untyped-def]
    """:func:`avg_pool2d_nhwc` on the calling thread."""
    rows = _check_avg_pool(x, kh, kw, sh, sw, ph, pw, before, after, out)
    for r in range(rows):
        _avg_pool2d_row(r, x, kh, kw, sh, sw, ph, pw, count_include_pad, before, out)


@jit()
def _max_pool2d_row(r, x, kh, kw, sh, sw, ph, pw, out):  # type: ignore[no-untyped-def]
    """Output row ``r`` of :func:`max_pool2d_nhwc`: PyTorch's rule ``v > max or isnan(v)`` per tap."""
    h_, w_, c_ = x.shape[1], x.shape[2], x.shape[3]
    oh_, ow_ = out.shape[1], out.shape[2]
    n = r // oh_
    oh = r - n * oh_
    ih0 = oh * sh - ph
    ihs = max(ih0, 0)
    ihe = min(ih0 + kh, h_)
    for ow in range(ow_):
        iw0 = ow * sw - pw
        iws = max(iw0, 0)
        iwe = min(iw0 + kw, w_)
        if c_ % 16 == 0:  # the window's maxima in vector registers, stored once (8x faster: ResNet-18)
            src = ((n * h_ + ihs) * w_ + iws) * c_
            dst = ((n * oh_ + oh) * ow_ + ow) * c_
            c64 = c_ - c_ % 64
            for c in range(0, c64, 64):  # 4 independent chains
                window_max64(x, src + c, ihe - ihs, iwe - iws, w_ * c_, c_, out, dst + c)
            for c in range(c64, c_, 16):
                window_max16(x, src + c, ihe - ihs, iwe - iws, w_ * c_, c_, out, dst + c)
            continue
        for c in range(c_):
            out[n, oh, ow, c] = -np.inf
        for ih in range(ihs, ihe):
            for iw in range(iws, iwe):
                for c in range(c_):
                    v = x[n, ih, iw, c]
                    m = out[n, oh, ow, c]
                    out[n, oh, ow, c] = v if (v > m or v != v) else m


@jit(parallel=True)
def max_pool2d_nhwc(x, kh, kw, sh, sw, ph, pw, out):  # type: ignore[no-untyped-def]
    """``F.max_pool2d`` (dilation 1, ceil_mode False): padding never wins, NaN propagates, and of
    equal values (0.0 and -0.0) the first tap in row-major order is kept, as PyTorch does."""
    rows = _check_pool(x, kh, kw, sh, sw, ph, pw, out, x.shape[3])
    for r in prange(rows):
        _max_pool2d_row(r, x, kh, kw, sh, sw, ph, pw, out)


@jit()
def max_pool2d_nhwc_serial(x, kh, kw, sh, sw, ph, pw, out):  # type: ignore[no-untyped-def]
    """:func:`max_pool2d_nhwc` on the calling thread."""
    rows = _check_pool(x, kh, kw, sh, sw, ph, pw, out, x.shape[3])
    for r in range(rows):
        _max_pool2d_row(r, x, kh, kw, sh, sw, ph, pw, out)


@jit()
def _global_avg_pool_row(n, x, out):  # type: ignore[no-untyped-def]
    h_, w_, c_ = x.shape[1], x.shape[2], x.shape[3]
    acc = np.empty(c_, dtype=np.float64)  # the one per-row scratch: C float64
    for c in range(c_):
        acc[c] = 0.0
    for h in range(h_):
        for w in range(w_):
            for c in range(c_):
                acc[c] += np.float64(x[n, h, w, c])
    count = np.float64(h_ * w_)
    for c in range(c_):
        out[n, 0, 0, c] = np.float32(acc[c] / count)


@jit(inline="always")
def _check_global_avg_pool(x, out):  # type: ignore[no-untyped-def]
    if out.shape[0] != x.shape[0] or out.shape[1] != 1 or out.shape[2] != 1 or out.shape[3] != x.shape[3]:
        raise ValueError("global_avg_pool_nhwc: out must be (N, 1, 1, C)")


@jit(parallel=True)
def global_avg_pool_nhwc(x, out):  # type: ignore[no-untyped-def]
    """Mean over H and W: float64 sum, divided by H*W, rounded once. out float32 (N, 1, 1, C)."""
    _check_global_avg_pool(x, out)
    for n in prange(x.shape[0]):
        _global_avg_pool_row(n, x, out)


@jit()
def global_avg_pool_nhwc_serial(x, out):  # type: ignore[no-untyped-def]
    """:func:`global_avg_pool_nhwc` on the calling thread."""
    _check_global_avg_pool(x, out)
    for n in range(x.shape[0]):
        _global_avg_pool_row(n, x, out)


# ---------------------------------------------------------------------------------------------
# Layout: channel padding, flatten, NCHW input. Rows are (n, h) of the input.


@jit()
def _pad_channels_row(r, x, before, out):  # type: ignore[no-untyped-def]
    h_ = x.shape[1]
    n = r // h_
    h = r - n * h_
    c_ = x.shape[3]
    co_ = out.shape[3]
    w_ = x.shape[2]
    for w in range(w_):
        _zero_channels(out, n, h, w, 0, before)
        if c_ % 16 == 0:  # vector copies (numba's loop below is scalar here)
            q = r * w_ + w
            for c in range(0, c_, 16):
                copy16(x, q * c_ + c, out, q * co_ + before + c)
        else:
            for c in range(c_):
                out[n, h, w, before + c] = x[n, h, w, c]
        _zero_channels(out, n, h, w, before + c_, co_ - before - c_)


@jit(inline="always")
def _check_pad_channels(x, before, after, out):  # type: ignore[no-untyped-def]
    if before < 0 or after < 0:
        raise ValueError("pad_channels_nhwc: before and after must be >= 0")
    if (out.shape[0] != x.shape[0] or out.shape[1] != x.shape[1] or out.shape[2] != x.shape[2]
            or out.shape[3] != before + x.shape[3] + after):
        raise ValueError("pad_channels_nhwc: out must be (N, H, W, before + C + after)")


@jit(parallel=True)
def pad_channels_nhwc(x, before, after, out):  # type: ignore[no-untyped-def]
    """Zero channels around the input's: out (N, H, W, before + C + after) (the option-A shortcut)."""
    _check_pad_channels(x, before, after, out)
    for r in prange(x.shape[0] * x.shape[1]):
        _pad_channels_row(r, x, before, out)


@jit()
def pad_channels_nhwc_serial(x, before, after, out):  # type: ignore[no-untyped-def]
    """:func:`pad_channels_nhwc` on the calling thread."""
    _check_pad_channels(x, before, after, out)
    for r in range(x.shape[0] * x.shape[1]):
        _pad_channels_row(r, x, before, out)


@jit()
def _flatten_nchw_row(r, x, out):  # type: ignore[no-untyped-def]
    h_, w_, c_ = x.shape[1], x.shape[2], x.shape[3]
    n = r // h_
    h = r - n * h_
    hw = h_ * w_
    base = h * w_
    for c in range(c_):
        for w in range(w_):
            out[n, 0, 0, c * hw + base + w] = x[n, h, w, c]


@jit(inline="always")
def _check_flatten(x, out):  # type: ignore[no-untyped-def]
    if (out.shape[0] != x.shape[0] or out.shape[1] != 1 or out.shape[2] != 1
            or out.shape[3] != x.shape[1] * x.shape[2] * x.shape[3]):
        raise ValueError("flatten_nchw: out must be (N, 1, 1, C*H*W)")


@jit(parallel=True)
def flatten_nchw(x, out):  # type: ignore[no-untyped-def]
    """``torch.flatten(x, 1)`` of the NCHW tensor: out[n, 0, 0, c*H*W + h*W + w] = x[n, h, w, c].

    Work is split over input rows (n, h), whose outputs are disjoint.
    """
    _check_flatten(x, out)
    for r in prange(x.shape[0] * x.shape[1]):
        _flatten_nchw_row(r, x, out)


@jit()
def flatten_nchw_serial(x, out):  # type: ignore[no-untyped-def]
    """:func:`flatten_nchw` on the calling thread."""
    _check_flatten(x, out)
    for r in range(x.shape[0] * x.shape[1]):
        _flatten_nchw_row(r, x, out)


@jit()
def _nchw_to_nhwc_row(r, x, xf, pw, out, of):  # type: ignore[no-untyped-def]
    """Row ``r`` (= n * H + h); ``xf``, ``of``: flat views of ``x`` and ``out`` (made once per call: numba's
    reshape costs ~70 ns, a third of a 224-pixel row's work)."""
    h_, w_ = x.shape[2], x.shape[3]
    n = r // h_
    h = r - n * h_
    for w in range(pw):
        for c in range(x.shape[1]):
            out[n, h, w, c] = 0.0
            out[n, h, pw + w_ + w, c] = 0.0
    c_ = x.shape[1]
    w0 = 0
    if c_ == 3:  # RGB: 16 pixels per shuffle
        src = (n * c_ * h_ + h) * w_
        dst = ((n * h_ + h) * out.shape[2] + pw) * c_
        w0 = w_ - w_ % 16
        for w in range(0, w0, 16):
            interleave3x16(xf, src + w, h_ * w_, of, dst + 3 * w)
    for c in range(c_):
        for w in range(w0, w_):
            out[n, h, pw + w, c] = x[n, c, h, w]


@jit(inline="always")
def _check_nchw_to_nhwc(x, pw, out):  # type: ignore[no-untyped-def]
    if (pw < 0 or out.shape[0] != x.shape[0] or out.shape[1] != x.shape[2] or out.shape[2] != x.shape[3] + 2 * pw
            or out.shape[3] != x.shape[1]):
        raise ValueError("nchw_to_nhwc: out must be (N, H, W + 2 * pw, C) for x (N, C, H, W)")


@jit(parallel=True)
def nchw_to_nhwc(x, out, pw=0):  # type: ignore[no-untyped-def]
    """The network input: x float32 (N, C, H, W) -> out (N, H, W + 2 * pw, C), ``pw`` zero columns
    each side (the padding of the conv that reads it, which can then run without edge pixels)."""
    _check_nchw_to_nhwc(x, pw, out)
    xf, of = x.reshape(x.size), out.reshape(out.size)
    for r in prange(x.shape[0] * x.shape[2]):
        _nchw_to_nhwc_row(r, x, xf, pw, out, of)


@jit()
def nchw_to_nhwc_serial(x, out, pw=0):  # type: ignore[no-untyped-def]
    """:func:`nchw_to_nhwc` on the calling thread."""
    _check_nchw_to_nhwc(x, pw, out)
    xf, of = x.reshape(x.size), out.reshape(out.size)
    for r in range(x.shape[0] * x.shape[2]):
        _nchw_to_nhwc_row(r, x, xf, pw, out, of)


# ---------------------------------------------------------------------------------------------
# linear. Work items are (n, block of LINEAR_BLOCK output features).


@jit(inline="always")
def _linear_finish(lanes, j, x, w, n, o, i8, bias, out):  # type: ignore[no-untyped-def]
    """Output ``o``: lanes ``8j .. 8j + 7`` of ``lanes`` plus the tail ``i >= i8``, summed in a fixed tree."""
    s0 = lanes[8 * j]
    for i in range(i8, w.shape[1]):  # the tail joins lane 0, in order
        s0 = fma64(np.float64(x[n, 0, 0, i]), np.float64(w[o, i]), s0)
    s = ((s0 + lanes[8 * j + 1]) + (lanes[8 * j + 2] + lanes[8 * j + 3])) + (
        (lanes[8 * j + 4] + lanes[8 * j + 5]) + (lanes[8 * j + 6] + lanes[8 * j + 7]))
    out[n, 0, 0, o] = np.float32(s) + bias[o]


@jit()
def _linear_block(r, x, w, bias, out):  # type: ignore[no-untyped-def]
    """Outputs ``[o0, o0 + LINEAR_BLOCK)`` of sample ``n`` (r = n * blocks + o0 / LINEAR_BLOCK).

    Each dot product is 8 float64 lane sums (inputs i = k mod 8, from :func:`_make_dot_lanes`),
    the tail i >= I - I % 8 added to lane 0, then a fixed tree: a fixed order, and vector fma in
    the loop (without fastmath LLVM never reorders a float reduction itself).
    """
    i_ = w.shape[1]
    o_ = w.shape[0]
    blocks = (o_ + LINEAR_BLOCK - 1) // LINEAR_BLOCK
    n = r // blocks
    o0 = (r - n * blocks) * LINEAR_BLOCK
    o1 = min(o0 + LINEAR_BLOCK, o_)
    i8 = i_ - i_ % 8
    xf = x.reshape(x.size)
    wf = w.reshape(w.size)
    o = o0
    while o + LINEAR_ROWS <= o1:
        lanes = _dot_lanes_4(xf, n * i_, wf, o * i_, i_, i8)
        for j in range(LINEAR_ROWS):
            _linear_finish(lanes, j, x, w, n, o + j, i8, bias, out)
        o += LINEAR_ROWS
    while o < o1:
        lanes1 = _dot_lanes_1(xf, n * i_, wf, o * i_, i_, i8)
        _linear_finish(lanes1, 0, x, w, n, o, i8, bias, out)
        o += 1


@jit(inline="always")
def _check_linear(x, w, bias, out):  # type: ignore[no-untyped-def]
    if x.shape[1] != 1 or x.shape[2] != 1 or x.shape[3] != w.shape[1]:
        raise ValueError("linear_nhwc: x must be (N, 1, 1, I) with I = weight.shape[1]")
    if (bias.shape[0] != w.shape[0] or out.shape[0] != x.shape[0] or out.shape[1] != 1 or out.shape[2] != 1
            or out.shape[3] != w.shape[0]):
        raise ValueError("linear_nhwc: bias must be (O,) and out (N, 1, 1, O)")
    return x.shape[0] * ((w.shape[0] + LINEAR_BLOCK - 1) // LINEAR_BLOCK)


@jit(parallel=True)
def linear_nhwc(x, w, bias, out):  # type: ignore[no-untyped-def]
    """Float linear layer: x (N, 1, 1, I), w float32 (O, I), bias (O,), out (N, 1, 1, O).

    float64 dot products rounded once to float32, then ``+ bias`` in float32. Threads take blocks
    of output features, so a batch of one is split too.
    """
    items = _check_linear(x, w, bias, out)
    for r in prange(items):
        _linear_block(r, x, w, bias, out)


@jit()
def linear_nhwc_serial(x, w, bias, out):  # type: ignore[no-untyped-def]
    """:func:`linear_nhwc` on the calling thread."""
    items = _check_linear(x, w, bias, out)
    for r in range(items):
        _linear_block(r, x, w, bias, out)
