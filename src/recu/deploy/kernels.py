"""Binary conv2d on packed activations and weights (XNOR-popcount), exact zero padding.

For output position p and output channel o, with the input packed by sign (bit 1 = +1) and the
weights likewise::

    dot[p, o] = sum over VALID taps t of (C_in - 2 * popcount(a[p + t] XOR w[o, t]))
              = C_in * taps_valid(p) - 2 * sum_t popcount(a[p + t] XOR w[o, t])

Taps that fall into the zero padding are skipped: in training they multiply a 0, so they add 0,
never +1 or -1. This equals ``F.conv2d(sign(A), sign(W), padding=p)`` exactly, in integers.

Kernel paths (argument ``impl`` or the environment variable ``RECU_DEPLOY_KERNEL``):

- ``auto`` (default): ``amx`` when numba is installed, the CPU has AMX-INT8 and Linux grants the
  process the tile state; else ``avx512`` when the CPU has AVX-512 VPOPCNTDQ; else ``avx2`` when it
  has AVX2; else ``portable`` when numba is installed; else ``numpy``. Per layer
  (:func:`layer_kernel`), ``auto`` keeps layers with fewer than 64 input channels on ``avx512``,
  which is faster there.
- ``amx``: the signs as int8 +-1 on Intel AMX tiles (:mod:`recu.deploy._amx_kernels`): 16,384
  multiply-accumulates per ``tdpbssd``, three times the popcount kernel's ceiling on this kind of
  core. The padding is materialised as int8 zeros, which add 0 exactly as in training. The file
  keeps 1 bit per weight; at run time small layers hold int8 weights (8x the packed size), large
  ones keep 1 bit per weight and expand each tile in the kernel.
- ``avx512``: the compiled kernel blocked 4 output pixels x 16 output channels in 512-bit registers;
  LLVM emits ``vpopcntq zmm`` for it on a CPU with AVX-512 VPOPCNTDQ (checked by
  :func:`fast_kernel_asm_has_vpopcntq`). It is correct on any
  CPU (LLVM lowers ``ctpop`` to what the CPU has), but selecting it explicitly on a CPU without
  VPOPCNTDQ is refused so a benchmark never silently measures the wrong thing.
- ``avx2``: the same kernel structure in 256-bit registers (4 output pixels x 8 output channels),
  popcount by nibble lookup (``vpshufb``) and one ``vpsadbw`` per 31 words (checked by
  :func:`avx2_kernel_asm`), for x86 CPUs with AVX2 and without AVX-512. Refused on a CPU without
  AVX2. Compiled for an AVX2 target on any machine with ``NUMBA_CPU_NAME=haswell NUMBA_CPU_FEATURES=``
  (both: the CPU name alone keeps the host's features, AVX-512 included).
- ``portable``: compiled, one output channel at a time, popcount by shifts and masks.
- ``numpy``: :func:`binary_conv2d_numpy`, the reference (no numba needed; slow).

All paths return the same integers. The kernels return NHWC arrays (``(N, OH, OW, C_out)``): the packed model hands them to
PyTorch as channels_last NCHW tensors without a copy.
"""

from __future__ import annotations

import functools
import os
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional, Sequence, Union

import numpy as np

from .fma_numpy import fma32
from .pack import num_words

if TYPE_CHECKING:  # torch only where a function takes a tensor: the runtime imports without it
    import torch

__all__ = [
    "KERNELS",
    "ENV_VAR",
    "resolve_kernel",
    "layer_kernel",
    "AMX_MIN_CHANNELS",
    "has_vpopcntdq",
    "has_avx2",
    "has_amx",
    "target_has_avx512f",
    "numba_available",
    "output_size",
    "PackedConvWeights",
    "binary_conv2d",
    "binary_conv2d_float",
    "binary_conv2d_numpy",
    "epilogue_table",
    "epilogue_numpy",
    "fast_kernel_asm",
    "amx_kernel_asm",
    "avx2_kernel_asm",
    "fast_kernel_asm_has_vpopcntq",
    "set_num_threads",
]

KERNELS = ("auto", "amx", "avx512", "avx2", "portable", "numpy")
ENV_VAR = "RECU_DEPLOY_KERNEL"

IntPair = Union[int, Sequence[int]]


@functools.lru_cache(maxsize=None)
def numba_available() -> bool:
    """True when numba can be imported."""
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


@functools.lru_cache(maxsize=None)
def has_vpopcntdq() -> bool:
    """True when LLVM (through numba's llvmlite) reports AVX-512 VPOPCNTDQ on this CPU."""
    if not numba_available():
        return False
    import llvmlite.binding as llvm

    try:
        return bool(llvm.get_host_cpu_features().get("avx512vpopcntdq", False))
    except RuntimeError:
        return False


@functools.lru_cache(maxsize=None)
def has_avx2() -> bool:
    """True when LLVM (through numba's llvmlite) reports AVX2 on this CPU."""
    if not numba_available():
        return False
    import llvmlite.binding as llvm

    try:
        return bool(llvm.get_host_cpu_features().get("avx2", False))
    except RuntimeError:
        return False


@functools.lru_cache(maxsize=None)
def target_has_avx512f() -> bool:
    """Whether numba compiles for a CPU with AVX-512F: its target features, which ``NUMBA_CPU_FEATURES``
    may make differ from the host's (as for the AVX2 benchmark on an AVX-512 machine)."""
    if not numba_available():
        return False
    from numba.core import config
    from numba.core.codegen import get_host_cpu_features

    try:
        features = config.CPU_FEATURES if config.CPU_FEATURES is not None else get_host_cpu_features()
    except RuntimeError:
        return False
    return "+avx512f" in features.split(",")


@functools.lru_cache(maxsize=None)
def has_amx() -> bool:
    """True when the CPU has AMX-INT8 (as LLVM reports it) and Linux grants this process the tile state.

    The first call asks the kernel for the state (``arch_prctl(ARCH_REQ_XCOMP_PERM)``), once per process.
    """
    if not numba_available():
        return False
    import llvmlite.binding as llvm

    try:
        features = llvm.get_host_cpu_features()
    except RuntimeError:
        return False
    if not (features.get("amx-int8", False) and features.get("amx-tile", False)):
        return False
    from ._amx_kernels import request_amx

    return request_amx()


def resolve_kernel(impl: Optional[str] = None) -> str:
    """The concrete kernel path (``amx``, ``avx512``, ``avx2``, ``portable`` or ``numpy``) for ``impl``.

    ``impl`` None reads ``RECU_DEPLOY_KERNEL`` (default ``auto``: amx > avx512 > avx2 > portable >
    numpy, the first this machine runs). The CPU checks are on the host CPU, whatever target
    ``NUMBA_CPU_NAME`` makes numba compile for.
    """
    choice = (impl if impl is not None else os.environ.get(ENV_VAR, "auto")).strip().lower()
    if choice not in KERNELS:
        source = "impl" if impl is not None else ENV_VAR
        raise ValueError(f"{source} must be one of {KERNELS}, got {choice!r}")
    if choice == "auto":
        if not numba_available():
            return "numpy"
        if has_amx():
            return "amx"
        if has_vpopcntdq():
            return "avx512"
        return "avx2" if has_avx2() else "portable"
    if choice in ("amx", "avx512", "avx2", "portable") and not numba_available():
        raise RuntimeError(f"kernel {choice!r} needs numba; install recu-bnn[deploy] or use 'numpy'")
    if choice == "avx512" and not has_vpopcntdq():
        raise RuntimeError("kernel 'avx512' needs a CPU with AVX-512 VPOPCNTDQ; use 'portable' or 'auto'")
    if choice == "avx2" and not has_avx2():
        raise RuntimeError("kernel 'avx2' needs a CPU with AVX2; use 'portable' or 'auto'")
    if choice == "amx" and not has_amx():
        raise RuntimeError("kernel 'amx' needs a CPU with AMX-INT8 and a Linux kernel that grants the tile "
                           "state (5.16 or later); use 'avx512', 'portable' or 'auto'")
    return choice


# Below one full 64-channel group the amx path multiplies mostly zero padding: measured on layers of
# 16-48 input channels the popcount kernel was 1.0-1.8x faster, from 64 channels on amx 1.3-2.2x.
AMX_MIN_CHANNELS = 64


def layer_kernel(impl: Optional[str], in_channels: int) -> str:
    """The path for one layer with ``in_channels`` inputs: :func:`resolve_kernel`, except that an
    ``auto`` choice of ``amx`` goes to ``avx512`` below :data:`AMX_MIN_CHANNELS` input channels
    (when the CPU has VPOPCNTDQ). An explicit choice is always kept."""
    kind = resolve_kernel(impl)
    if kind == "amx" and in_channels < AMX_MIN_CHANNELS and has_vpopcntdq():
        choice = impl if impl is not None else os.environ.get(ENV_VAR, "auto")
        if choice.strip().lower() == "auto":
            return "avx512"
    return kind


_THREAD_COUNT = threading.local()  # the numba thread count last set from each Python thread


def set_num_threads(n: int) -> int:
    """Threads used by the compiled kernels (numba) on the calling Python thread, clipped to numba's
    pool; returns the count. PyTorch's count is set separately.

    numba's count is per calling thread, and setting (or reading) it costs a few us - 1% of a batch-1
    ResNet-20 - so a count already set from this thread is not set again. (Someone else's
    ``numba.set_num_threads`` in between changes only the speed: every kernel gives the same bits on
    any thread count.)"""
    if not numba_available():
        return 1
    import numba

    from . import _numba_kernels as nk  # chooses numba's threading layer before the pool starts

    nk.start_pool()
    n = max(1, min(int(n), numba.config.NUMBA_NUM_THREADS))
    if getattr(_THREAD_COUNT, "n", None) != n:
        numba.set_num_threads(n)
        _THREAD_COUNT.n = n
    return n


def _pair(v: IntPair, name: str) -> tuple[int, int]:
    t = (int(v), int(v)) if isinstance(v, (int, np.integer)) else tuple(int(i) for i in v)
    if len(t) != 2:
        raise ValueError(f"{name} must be an int or a pair, got {v!r}")
    return t  # type: ignore[return-value]


def output_size(size: int, kernel: int, stride: int, padding: int) -> int:
    """Output length of a convolution (dilation 1)."""
    out = (size + 2 * padding - kernel) // stride + 1
    if out < 1:
        raise ValueError(f"input size {size} with kernel {kernel}, padding {padding} gives no output")
    return out


@dataclass
class PackedConvWeights:
    """Sign-packed conv weights: ``bits`` uint64 ``(C_out, KH, KW, ceil(C_in / 64))``, pad bits 0."""

    bits: np.ndarray
    in_channels: int
    _blocked: Optional[np.ndarray] = field(default=None, repr=False)
    _blocked_avx2: Optional[np.ndarray] = field(default=None, repr=False)
    _amx: Optional[np.ndarray] = field(default=None, repr=False)
    _amx_prepared: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.bits = np.ascontiguousarray(self.bits, dtype=np.uint64)
        if self.bits.ndim != 4 or self.bits.shape[3] != num_words(self.in_channels):
            raise ValueError(
                f"bits must have shape (C_out, KH, KW, {num_words(self.in_channels)}) for "
                f"{self.in_channels} input channels, got {self.bits.shape}"
            )

    @property
    def out_channels(self) -> int:
        return int(self.bits.shape[0])

    @property
    def kernel_size(self) -> tuple[int, int]:
        return int(self.bits.shape[1]), int(self.bits.shape[2])

    def blocked(self) -> np.ndarray:
        """The layout of the ``avx512`` kernel, built once."""
        if self._blocked is None:
            from ._numba_kernels import block_weights

            self._blocked = block_weights(self.bits)
        return self._blocked

    def blocked_avx2(self) -> np.ndarray:
        """The layout of the ``avx2`` kernel (4 output channels per 256-bit vector), built once."""
        if self._blocked_avx2 is None:
            from ._numba_kernels import block_weights_avx2

            self._blocked_avx2 = block_weights_avx2(self.bits)
        return self._blocked_avx2

    def amx_tiles(self) -> np.ndarray:
        """The B tiles of the ``amx`` kernel (int8, or 1 bit per weight for large layers; 64-byte aligned), built once."""
        if self._amx is None:
            from ._amx_kernels import amx_weights

            self._amx = amx_weights(self.bits)
        return self._amx


def binary_conv2d_numpy(a: np.ndarray, weights: PackedConvWeights, stride: IntPair = 1,
                        padding: IntPair = 0) -> np.ndarray:
    """Reference XNOR-popcount conv: int32 ``(N, OH, OW, C_out)``. Loops over taps, vectorised over the rest."""
    sh, sw = _pair(stride, "stride")
    ph, pw = _pair(padding, "padding")
    n, h, w, cw = a.shape
    kh_, kw_ = weights.kernel_size
    oh, ow = output_size(h, kh_, sh, ph), output_size(w, kw_, sw, pw)
    # Zero words + a validity mask stand in for the padding; the mask makes padded taps add 0.
    ap = np.zeros((n, h + 2 * ph + sh, w + 2 * pw + sw, cw), dtype=np.uint64)
    ap[:, ph:ph + h, pw:pw + w] = a
    valid = np.zeros(ap.shape[1:3], dtype=np.int64)
    valid[ph:ph + h, pw:pw + w] = 1
    dot = np.zeros((n, oh, ow, weights.out_channels), dtype=np.int64)
    for i in range(kh_):
        for j in range(kw_):
            patch = ap[:, i:i + sh * oh:sh, j:j + sw * ow:sw]                      # (N, OH, OW, CW)
            m = valid[i:i + sh * oh:sh, j:j + sw * ow:sw][None, :, :, None]        # (1, OH, OW, 1)
            x = np.bitwise_xor(patch[:, :, :, None, :], weights.bits[None, None, None, :, i, j, :])
            pc = np.bitwise_count(x).sum(axis=-1, dtype=np.int64)                 # (N, OH, OW, C_out)
            dot += m * (weights.in_channels - 2 * pc)
    return dot.astype(np.int32)


def epilogue_table(out_channels: int, scale: Optional[np.ndarray] = None, bias: Optional[np.ndarray] = None,
                   bn_scale: Optional[np.ndarray] = None, bn_shift: Optional[np.ndarray] = None) -> np.ndarray:
    """The flat float32 (4, C_out) table alpha, conv bias, BatchNorm scale, BatchNorm shift (defaults 1, 0, 1, 0)."""
    rows = []
    for name, v, default in (("scale", scale, 1.0), ("bias", bias, 0.0), ("bn_scale", bn_scale, 1.0),
                             ("bn_shift", bn_shift, 0.0)):
        if v is None:
            rows.append(np.full(out_channels, default, dtype=np.float32))
            continue
        v = np.asarray(v, dtype=np.float32)
        if v.shape != (out_channels,):
            raise ValueError(f"{name} must have shape ({out_channels},), got {v.shape}")
        rows.append(v)
    return np.ascontiguousarray(np.stack(rows)).reshape(-1)


def epilogue_numpy(dot: np.ndarray, epi: np.ndarray) -> np.ndarray:
    """NumPy version of the kernels' float32 epilogue ``fma(float32(dot) * alpha + bias, a, b)``.

    NumPy has no fused multiply-add; :func:`recu.deploy.fma_numpy.fma32` rounds it once, as the kernels.
    """
    alpha, bias, a, b = epi.reshape(4, -1)
    t = (dot.astype(np.float32) * alpha).astype(np.float32) + bias
    return fma32(t, a, b)


def _output_geometry(n: int, h: int, w: int, weights: PackedConvWeights, stride: IntPair,
                     padding: IntPair) -> tuple[int, int, int, int, tuple[int, int, int, int]]:
    """(sh, sw, ph, pw, NHWC output shape) of a conv of ``weights`` over an (N, H, W) input; checks the values."""
    sh, sw = _pair(stride, "stride")
    ph, pw = _pair(padding, "padding")
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
    from . import _numba_kernels as nk

    if kind == "amx":
        from . import _amx_kernels as ak

        geometry = ak.plan(n, h, w, a.shape[3], kh_, kw_, sh, sw, ph, pw)
        x8 = ak.input_buffer(geometry[4])
        ak.bits_to_int8_padded(a, weights.in_channels, ph, pw, 64 * a.shape[3], x8)
        _run_amx(x8, geometry, weights, out, epi, affine)
        return out
    out_i = out if not affine else np.empty((1, 1, 1, 1), dtype=np.int32)
    out_f = out if affine else np.empty((1, 1, 1, 1), dtype=np.float32)
    parallel = nk.use_threads(shape[0] * shape[1] * shape[2] * weights.bits.size // nk.LANES)
    if kind == "avx512":
        wb = weights.blocked()
        fn = nk.conv_fast if parallel else nk.conv_fast_serial
        nk.launch(fn, a.reshape(-1), wb.reshape(-1), h, w, a.shape[3], kh_, kw_, weights.in_channels,
                  weights.out_channels, sh, sw, ph, pw, out_i, epi, out_f, affine)
    elif kind == "avx2":
        wb = weights.blocked_avx2()
        fn = nk.conv_avx2 if parallel else nk.conv_avx2_serial
        nk.launch(fn, a.reshape(-1), wb.reshape(-1), h, w, a.shape[3], kh_, kw_, weights.in_channels,
                  weights.out_channels, sh, sw, ph, pw, out_i, epi, out_f, affine)
    else:
        fn = nk.conv_portable if parallel else nk.conv_portable_serial
        nk.launch(fn, a, weights.bits, weights.in_channels, sh, sw, ph, pw, out_i, epi, out_f, affine)
    return out


def _amx_outputs(out: np.ndarray, c_out: int, affine: bool) -> tuple[np.ndarray, np.ndarray]:
    flat = out.reshape(-1, c_out)
    if affine:
        return np.empty((1, 1), dtype=np.int32), flat
    return flat, np.empty((1, 1), dtype=np.float32)


@functools.lru_cache(maxsize=None)
def _compiled():  # type: ignore[no-untyped-def]
    """The compiled-kernel modules, imported once (an import statement per call cost ~1 us each)."""
    from . import _amx_kernels as ak
    from . import _numba_kernels as nk
    from ._plan_kernels import ensure_fresh_cache

    ensure_fresh_cache()

    return ak, nk


def _amx_work(pix: np.ndarray, toff: np.ndarray, c_out: int) -> int:
    """Work units of an amx launch, in the popcount kernels' unit (64-bit words x pixels x channels / 8)."""
    return pix.shape[0] * c_out * toff.shape[0] // _compiled()[1].LANES


def _amx_threads(work: int) -> tuple[bool, int]:
    """(parallel, chunks) for an amx launch of ``work`` units (64-bit words x pixels x channels / 8)."""
    ak, nk = _compiled()
    if not ak.request_amx():  # cached; without the OS's permission an AMX instruction is SIGILL
        raise RuntimeError("this process has no AMX tile state; use kernel 'avx512' or 'portable'")
    threads = nk.pool_threads()
    parallel = work >= nk.PARALLEL_MIN_WORK and threads > 1
    return parallel, (4 * threads if parallel else 1)


def _run_amx(x8: np.ndarray, geometry: tuple, weights: PackedConvWeights, out: np.ndarray, epi: np.ndarray,
             affine: bool) -> None:
    ak, nk = _compiled()
    toff, abase, astride, pix, _ = geometry
    c_out = weights.out_channels
    out_i, out_f = _amx_outputs(out, c_out, affine)
    parallel, chunks = _amx_threads(_amx_work(pix, toff, c_out))
    nk.launch(ak.conv_amx if parallel else ak.conv_amx_serial, x8, weights.amx_tiles(), toff, abase, astride,
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

    The popcount paths pack ``x`` (:func:`recu.deploy.pack.pack_activations`); ``amx`` writes the
    int8 signs with their zero padding and runs the convolution in one compiled call. Same results
    on every path. ``epilogue``: the layer's :func:`epilogue_table` (float32 output), else int32.
    """
    kind = layer_kernel(impl, weights.in_channels)
    if kind != "amx":
        if x.dim() != 4 or x.shape[1] != weights.in_channels:
            raise ValueError(f"expected input (N, {weights.in_channels}, H, W), got {tuple(x.shape)}")
        from .pack import pack_activations

        return binary_conv2d(pack_activations(x, kind), weights, stride, padding, impl=kind, epilogue=epilogue,
                             out=out)
    ak, nk = _compiled()
    affine = epilogue is not None
    # Everything that depends only on the input shape is prepared once per layer and shape: at
    # batch 1 a 64@56 layer runs in ~0.1 ms, and the Python around it had cost 10-15% of that.
    key = (tuple(x.shape), _pair(stride, "stride"), _pair(padding, "padding"), affine)
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
    import torch  # the input is a tensor, so torch is already imported: a dict lookup

    # NumPy views cost a fraction of torch ops, and a ~0.1 ms layer notices.
    nhwc = (x.detach() if x.requires_grad else x).numpy().transpose(0, 2, 3, 1) if x.dtype == torch.float32 else None
    if nhwc is None or not nhwc.flags.c_contiguous:
        nhwc = x.detach().float().permute(0, 2, 3, 1).contiguous().numpy()
    out_i, out_f = _amx_outputs(out, c_out, affine)
    parallel, chunks = _amx_threads(work)
    n_, h_, w_, c_, ph, pw, cp, nbytes, toff, abase, astride, pix = args
    nk.launch(ak.sign_conv_amx if parallel else ak.sign_conv_amx_serial, nhwc.reshape(-1), n_, h_, w_,
              c_, ph, pw, cp, ak.input_buffer(nbytes), weights.amx_tiles(), toff, abase, astride, pix, c_out,
              out_i, epilogue if affine else _NO_EPILOGUE, out_f, affine, ak.TILE_CONFIG, chunks, out_f[:0],
              np.float32(0), np.float32(0))
    return out


def _prepare_amx(xshape: tuple, weights: PackedConvWeights, stride: IntPair, padding: IntPair,
                 affine: bool) -> tuple:
    """Output shape, the static kernel arguments and the work count of one amx layer call."""
    ak, _ = _compiled()
    if len(xshape) != 4 or xshape[1] != weights.in_channels:
        raise ValueError(f"expected input (N, {weights.in_channels}, H, W), got {xshape}")
    n, c, h, w = (int(v) for v in xshape)
    sh, sw, ph, pw, shape = _output_geometry(n, h, w, weights, stride, padding)
    kh_, kw_ = weights.kernel_size
    cw = weights.bits.shape[3]
    toff, abase, astride, pix, nbytes = ak.plan(n, h, w, cw, kh_, kw_, sh, sw, ph, pw)
    args = (n, h, w, c, ph, pw, 64 * cw, nbytes, toff, abase, astride, pix)
    return shape, args, _amx_work(pix, toff, shape[3])


def fast_kernel_asm() -> str:
    """Assembly of the ``avx512`` kernel as compiled on this CPU, for inspection.

    numba does not keep assembly for kernels loaded from its cache, so this compiles an uncached
    twin of the same Python function with the same options (a few seconds).
    """
    from numba import njit

    from . import _numba_kernels as nk

    twin = njit(cache=False)(nk._conv_fast_row.py_func)  # the row function holds the whole loop nest
    w = PackedConvWeights(np.zeros((8, 1, 1, 1), dtype=np.uint64), 64)
    twin(0, np.zeros(1, np.uint64), w.blocked().reshape(-1), 1, 1, 1, 1, 1, 64, 8, 1, 1, 0, 0,
         np.zeros((1, 1, 1, 8), np.int32), np.empty(0, np.float32), np.zeros((1, 1, 1, 1), np.float32), False)
    return "\n".join(twin.inspect_asm().values())


def amx_kernel_asm() -> str:
    """Assembly of the ``amx`` kernel's inner block function as compiled here (uncached twin, a few seconds)."""
    from numba import njit

    from . import _amx_kernels as ak

    twin = njit(cache=False)(ak._blocks.py_func)
    w = PackedConvWeights(np.zeros((16, 1, 1, 1), dtype=np.uint64), 64)
    toff, abase, astride, pix, nbytes = ak.plan(1, 1, 1, 1, 1, 1, 1, 1, 0, 0)
    twin(0, 1, ak.aligned_empty(nbytes), w.amx_tiles(), toff, abase, astride, pix, 16,
         np.zeros((1, 16), np.int32), np.empty(0, np.float32), np.zeros((1, 1), np.float32), False, ak.TILE_CONFIG,
         np.zeros((0, 1), np.float32), np.float32(0), np.float32(0))
    return "\n".join(twin.inspect_asm().values())


def avx2_kernel_asm() -> str:
    """Assembly of the ``avx2`` kernel's row function as numba compiles it here (uncached twin, a few seconds).

    numba compiles for the host CPU unless ``NUMBA_CPU_NAME`` / ``NUMBA_CPU_FEATURES`` name
    another target; for an AVX2 target (``haswell`` with empty features) it holds the nibble
    lookup, ``vpshufb`` on ymm registers, and ``vpsadbw``. On a CPU with AVX-512 BITALG, LLVM uses
    ``vpopcntb`` for the byte counts instead.
    """
    from numba import njit

    from . import _numba_kernels as nk

    twin = njit(cache=False)(nk._conv_avx2_row.py_func)  # the row function holds the whole loop nest
    w = PackedConvWeights(np.zeros((8, 1, 1, 1), dtype=np.uint64), 64)
    twin(0, np.zeros(1, np.uint64), w.blocked_avx2().reshape(-1), 1, 1, 1, 1, 1, 64, 8, 1, 1, 0, 0,
         np.zeros((1, 1, 1, 8), np.int32), np.empty(0, np.float32), np.zeros((1, 1, 1, 1), np.float32), False)
    return "\n".join(twin.inspect_asm().values())


def fast_kernel_asm_has_vpopcntq() -> bool:
    """True when the compiled fast kernel contains a 512-bit ``vpopcntq`` (on a VPOPCNTDQ CPU)."""
    asm = fast_kernel_asm()
    return any("vpopcntq" in line and "zmm" in line for line in asm.splitlines())
