"""The binary conv2d driver: one layer on the kernel path this machine runs (the per-layer engine's path).

:func:`binary_conv2d` takes packed NHWC activations, :func:`binary_conv2d_float` a float NCHW tensor
(packed here, or signed to int8 for AMX in the same compiled call); both give the reference's integers
(:func:`~.reference.binary_conv2d_numpy`), or its float32 epilogue, on every path. The kernels return
NHWC arrays (``(N, OH, OW, C_out)``): the packed model hands them to PyTorch as channels_last NCHW
tensors without a copy.

numba is imported on the first compiled call, not with this module: the ``numpy`` path runs without it.
A tensor argument is read through its NumPy view, so this module never imports PyTorch.
"""

from __future__ import annotations

import functools
import sys
import types
from typing import TYPE_CHECKING, NamedTuple, Optional

import numpy as np

from ..pack import pack_signs_numpy
from .cpu import layer_kernel, request_amx, resolve_kernel
from .jit import LANES
from .reference import IntPair, binary_conv2d_numpy, epilogue_numpy, epilogue_table, output_size, pair
from .weights import PackedConvWeights

if TYPE_CHECKING:  # torch only where a function takes a tensor: the runtime imports without it
    import torch

__all__ = ["binary_conv2d", "binary_conv2d_float", "pack_activations"]


def _output_geometry(n: int, h: int, w: int, weights: PackedConvWeights, stride: IntPair,
                     padding: IntPair) -> tuple[int, int, int, int, tuple[int, int, int, int]]:
    """(sh, sw, ph, pw, NHWC output shape) of a conv of ``weights`` over an (N, H, W) input; checks the values."""
    sh, sw = pair(stride, "stride")
    ph, pw = pair(padding, "padding")
    if min(sh, sw) < 1 or min(ph, pw) < 0:
        raise ValueError(f"stride must be >= 1 and padding >= 0, got stride {stride}, padding {padding}")
    kh_, kw_ = weights.kernel_size
    shape = (n, output_size(h, kh_, sh, ph), output_size(w, kw_, sw, pw), weights.out_channels)
    return sh, sw, ph, pw, shape


def _check_epilogue(epi: np.ndarray, c_out: int) -> None:
    if epi.dtype != np.float32 or epi.shape != (4 * c_out,) or not epi.flags.c_contiguous:
        raise ValueError(f"epilogue must be a contiguous float32 array of shape ({4 * c_out},)")


def _output_array(out: Optional[np.ndarray], shape: tuple, affine: bool) -> np.ndarray:
    """``out`` after checking it fits (float32 with an epilogue, else int32), or a new array."""
    dtype = np.float32 if affine else np.int32
    if out is None:
        return np.empty(shape, dtype=dtype)
    if out.shape != shape or out.dtype != dtype or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous {np.dtype(dtype).name} array of shape {shape}")
    return out


def binary_conv2d(
    a: np.ndarray,
    weights: PackedConvWeights,
    stride: IntPair = 1,
    padding: IntPair = 0,
    *,
    impl: Optional[str] = None,
    scale: Optional[np.ndarray] = None,
    bias: Optional[np.ndarray] = None,
    bn_scale: Optional[np.ndarray] = None,
    bn_shift: Optional[np.ndarray] = None,
    epilogue: Optional[np.ndarray] = None,
    out: Optional[np.ndarray] = None,
) -> np.ndarray:
    """Binary conv2d of packed NHWC activations ``a`` (uint64 ``(N, H, W, ceil(C_in / 64))``).

    Returns int32 dot products ``(N, OH, OW, C_out)``. With ``scale`` (alpha) it returns float32
    computed in the kernel, with the eval forward's rounding steps::

        y = fma(float32(dot) * scale + bias, bn_scale, bn_shift)

    (``bias`` the conv bias, default 0; ``bn_scale``/``bn_shift`` a following BatchNorm as
    PyTorch evaluates it, ``gamma * rsqrt(var + eps)`` and ``fma(-mean, bn_scale, beta)``, default
    1 and 0). All per-channel arrays are float32 of shape ``(C_out,)``. ``epilogue`` may give the
    four at once as built by :func:`epilogue_table` (a layer builds it once). ``out`` may supply the
    output array (right shape and dtype, C-contiguous).
    """
    a = np.ascontiguousarray(a, dtype=np.uint64)
    if a.ndim != 4 or a.shape[3] != weights.bits.shape[3]:
        raise ValueError(
            f"packed input must be (N, H, W, {weights.bits.shape[3]}) to match the weights, got {a.shape}"
        )
    affine = scale is not None or epilogue is not None
    if epilogue is not None and scale is not None:
        raise ValueError("give either epilogue or scale/bias/bn_scale/bn_shift, not both")
    if scale is None and not (bias is None and bn_scale is None and bn_shift is None):
        raise ValueError("bias, bn_scale and bn_shift need scale (alpha; pass ones for none)")
    n, h, w, _ = a.shape
    sh, sw, ph, pw, shape = _output_geometry(n, h, w, weights, stride, padding)
    kind = layer_kernel(impl, weights.in_channels)
    kh_, kw_ = weights.kernel_size
    if epilogue is not None:
        _check_epilogue(epilogue, weights.out_channels)
        epi = epilogue
    elif affine:
        epi = epilogue_table(weights.out_channels, scale, bias, bn_scale, bn_shift)
    else:
        epi = np.empty(0, np.float32)
    out = _output_array(out, shape, affine)
    if kind == "numpy":
        dot = binary_conv2d_numpy(a, weights, (sh, sw), (ph, pw))
        out[...] = epilogue_numpy(dot, epi) if affine else dot
        return out
    k = _compiled()
    if kind == "amx":
        geometry = k.amx.plan(n, h, w, a.shape[3], kh_, kw_, sh, sw, ph, pw)
        x8 = k.amx.input_buffer(geometry[4])
        k.amx.bits_to_int8_padded(a, weights.in_channels, ph, pw, 64 * a.shape[3], x8)
        _run_amx(x8, geometry, weights, out, epi, affine)
        return out
    out_i = out if not affine else np.empty((1, 1, 1, 1), dtype=np.int32)
    out_f = out if affine else np.empty((1, 1, 1, 1), dtype=np.float32)
    parallel = k.threads.use_threads(shape[0] * shape[1] * shape[2] * weights.bits.size // LANES)
    fn = k.popcount[kind][0 if parallel else 1]
    if kind == "portable":
        k.threads.launch(fn, a, weights.bits, weights.in_channels, sh, sw, ph, pw, out_i, epi, out_f, affine)
    else:  # avx512, avx2: the same arguments, weights in each kernel's blocked layout
        wb = weights.blocked() if kind == "avx512" else weights.blocked_avx2()
        k.threads.launch(fn, a.reshape(-1), wb.reshape(-1), h, w, a.shape[3], kh_, kw_, weights.in_channels,
                         weights.out_channels, sh, sw, ph, pw, out_i, epi, out_f, affine)
    return out


def _amx_outputs(out: np.ndarray, c_out: int, affine: bool) -> tuple[np.ndarray, np.ndarray]:
    flat = out.reshape(-1, c_out)
    if affine:
        return np.empty((1, 1), dtype=np.int32), flat
    return flat, np.empty((1, 1), dtype=np.float32)


class _Compiled(NamedTuple):
    amx: types.ModuleType
    threads: types.ModuleType
    popcount: dict  # path -> (parallel kernel, serial kernel)


@functools.lru_cache(maxsize=None)
def _compiled() -> _Compiled:
    """The compiled-kernel modules, imported once (an import statement per call cost ~1 us each), the
    worker pool started (which checks numba's on-disk cache first)."""
    from . import amx, threads
    from .popcount_avx2 import conv_avx2, conv_avx2_serial
    from .popcount_avx512 import conv_fast, conv_fast_serial
    from .popcount_portable import conv_portable, conv_portable_serial

    threads.start_pool()
    popcount = {"avx512": (conv_fast, conv_fast_serial), "avx2": (conv_avx2, conv_avx2_serial),
                "portable": (conv_portable, conv_portable_serial)}
    return _Compiled(amx, threads, popcount)


def _amx_work(pix: np.ndarray, toff: np.ndarray, c_out: int) -> int:
    """Work units of an amx launch, in the popcount kernels' unit (64-bit words x pixels x channels / 8)."""
    return pix.shape[0] * c_out * toff.shape[0] // LANES


def _amx_threads(work: int) -> tuple[bool, int]:
    """(parallel, chunks) for an amx launch of ``work`` units (64-bit words x pixels x channels / 8)."""
    if not request_amx():  # cached; without the OS's permission an AMX instruction is SIGILL
        raise RuntimeError("this process has no AMX tile state; use kernel 'avx512' or 'portable'")
    k = _compiled()
    threads = k.threads.pool_threads()
    parallel = work >= k.threads.PARALLEL_MIN_WORK and threads > 1
    return parallel, (4 * threads if parallel else 1)


def _run_amx(x8: np.ndarray, geometry: tuple, weights: PackedConvWeights, out: np.ndarray, epi: np.ndarray,
             affine: bool) -> None:
    k = _compiled()
    ak, launch = k.amx, k.threads.launch
    toff, abase, astride, pix, _ = geometry
    c_out = weights.out_channels
    out_i, out_f = _amx_outputs(out, c_out, affine)
    parallel, chunks = _amx_threads(_amx_work(pix, toff, c_out))
    launch(ak.conv_amx if parallel else ak.conv_amx_serial, x8, weights.amx_tiles(), toff, abase, astride,
              pix, c_out, out_i, epi, out_f, affine, ak.TILE_CONFIG, chunks)


_NO_EPILOGUE = np.empty(0, np.float32)


def binary_conv2d_float(
    x: torch.Tensor,
    weights: PackedConvWeights,
    stride: IntPair = 1,
    padding: IntPair = 0,
    *,
    impl: Optional[str] = None,
    epilogue: Optional[np.ndarray] = None,
    out: Optional[np.ndarray] = None,
) -> np.ndarray:
    """:func:`binary_conv2d` of ``sign(x)`` for a float NCHW tensor ``x`` (the packed layers' path).

    The popcount paths pack ``x`` (:func:`pack_activations`); ``amx`` writes the
    int8 signs with their zero padding and runs the convolution in one compiled call. Same results
    on every path. ``epilogue``: the layer's :func:`epilogue_table` (float32 output), else int32.
    """
    kind = layer_kernel(impl, weights.in_channels)
    if kind != "amx":
        if x.dim() != 4 or x.shape[1] != weights.in_channels:
            raise ValueError(f"expected input (N, {weights.in_channels}, H, W), got {tuple(x.shape)}")
        return binary_conv2d(pack_activations(x, kind), weights, stride, padding, impl=kind, epilogue=epilogue,
                             out=out)
    k = _compiled()
    ak, launch = k.amx, k.threads.launch
    affine = epilogue is not None
    # Everything that depends only on the input shape is prepared once per layer and shape: at
    # batch 1 a 64@56 layer runs in ~0.1 ms, and the Python around it had cost 10-15% of that.
    key = (tuple(x.shape), pair(stride, "stride"), pair(padding, "padding"), affine)
    prep = weights._amx_prepared.get(key)
    if prep is None:
        prep = _prepare_amx(tuple(x.shape), weights, stride, padding, affine)
        if len(weights._amx_prepared) >= 64:  # many input sizes: keep the memory bounded
            weights._amx_prepared.clear()
        weights._amx_prepared[key] = prep
    shape, args, work = prep
    c_out = shape[3]
    if affine:
        _check_epilogue(epilogue, c_out)
    out = _output_array(out, shape, affine)
    torch = sys.modules["torch"]  # the input is a tensor, so PyTorch is imported

    # NumPy views cost a fraction of torch ops, and a ~0.1 ms layer notices.
    nhwc = (x.detach() if x.requires_grad else x).numpy().transpose(0, 2, 3, 1) if x.dtype == torch.float32 else None
    if nhwc is None or not nhwc.flags.c_contiguous:
        nhwc = x.detach().float().permute(0, 2, 3, 1).contiguous().numpy()
    out_i, out_f = _amx_outputs(out, c_out, affine)
    parallel, chunks = _amx_threads(work)
    n_, h_, w_, c_, ph, pw, cp, nbytes, toff, abase, astride, pix = args
    launch(ak.sign_conv_amx if parallel else ak.sign_conv_amx_serial, nhwc.reshape(-1), n_, h_, w_,
              c_, ph, pw, cp, ak.input_buffer(nbytes), weights.amx_tiles(), toff, abase, astride, pix, c_out,
              out_i, epilogue if affine else _NO_EPILOGUE, out_f, affine, ak.TILE_CONFIG, chunks, out_f[:0],
              np.float32(0), np.float32(0))
    return out


def _prepare_amx(xshape: tuple, weights: PackedConvWeights, stride: IntPair, padding: IntPair,
                 affine: bool) -> tuple:
    """Output shape, the static kernel arguments and the work count of one amx layer call."""
    ak = _compiled().amx
    if len(xshape) != 4 or xshape[1] != weights.in_channels:
        raise ValueError(f"expected input (N, {weights.in_channels}, H, W), got {xshape}")
    n, c, h, w = (int(v) for v in xshape)
    sh, sw, ph, pw, shape = _output_geometry(n, h, w, weights, stride, padding)
    kh_, kw_ = weights.kernel_size
    cw = weights.bits.shape[3]
    toff, abase, astride, pix, nbytes = ak.plan(n, h, w, cw, kh_, kw_, sh, sw, ph, pw)
    args = (n, h, w, c, ph, pw, 64 * cw, nbytes, toff, abase, astride, pix)
    return shape, args, _amx_work(pix, toff, shape[3])


def pack_activations(x: "torch.Tensor", impl: Optional[str] = None) -> np.ndarray:
    """Pack a float NCHW tensor (any memory format) by sign -> ``(N, H, W, ceil(C / 64))`` uint64.

    ``impl`` selects the path as in :func:`~.cpu.resolve_kernel`; the compiled packers read the float
    tensor's memory directly (no float sign tensor is materialised).
    """
    if x.dim() != 4:
        raise ValueError(f"expected an NCHW activation tensor, got shape {tuple(x.shape)}")
    x = x.detach()
    if resolve_kernel(impl) == "numpy":
        return pack_signs_numpy(x.permute(0, 2, 3, 1))
    from . import packing

    threads = _compiled().threads
    if x.dtype != sys.modules["torch"].float32:  # a tensor was given, so PyTorch is imported
        x = x.float()
    n, c, h, w = x.shape
    out = np.empty((n, h, w, (c + 63) // 64), dtype=np.uint64)
    parallel = threads.use_threads(x.numel() // 16)
    nhwc = x.permute(0, 2, 3, 1)
    if nhwc.is_contiguous():  # channels_last: the layout the packed model keeps between layers
        threads.launch(packing.pack_nhwc if parallel else packing.pack_nhwc_serial, nhwc.numpy().reshape(-1), c,
                       out.reshape(-1, out.shape[3]))
    else:
        threads.launch(packing.pack_nchw if parallel else packing.pack_nchw_serial, x.contiguous().numpy(), out)
    return out
