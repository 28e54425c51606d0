"""The NumPy reference of the binary conv and its float32 epilogue: what every compiled path must equal.

For output position p and output channel o, with the input packed by sign (bit 1 = +1) and the
weights likewise::

    dot[p, o] = sum over VALID taps t of (C_in - 2 * popcount(a[p + t] XOR w[o, t]))
              = C_in * taps_valid(p) - 2 * sum_t popcount(a[p + t] XOR w[o, t])

Taps that fall into the zero padding are skipped: in training they multiply a 0, so they add 0,
never +1 or -1. This equals ``F.conv2d(sign(A), sign(W), padding=p)`` exactly, in integers.

NumPy only (no numba): the ``numpy`` kernel path and the NumPy graph executor run on it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Sequence, Union

import numpy as np

from ..fma_numpy import fma32

if TYPE_CHECKING:
    from .weights import PackedConvWeights

__all__ = ["IntPair", "pair", "output_size", "binary_conv2d_numpy", "epilogue_table", "epilogue_numpy"]

IntPair = Union[int, Sequence[int]]


def pair(v: IntPair, name: str) -> tuple[int, int]:
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


def binary_conv2d_numpy(a: np.ndarray, weights: "PackedConvWeights", stride: IntPair = 1,
                        padding: IntPair = 0) -> np.ndarray:
    """Reference XNOR-popcount conv: int32 ``(N, OH, OW, C_out)``. Loops over taps, vectorised over the rest."""
    sh, sw = pair(stride, "stride")
    ph, pw = pair(padding, "padding")
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

    NumPy has no fused multiply-add; :func:`recu.deploy.runtime.fma_numpy.fma32` rounds it once, as the kernels.
    """
    alpha, bias, a, b = epi.reshape(4, -1)
    t = (dot.astype(np.float32) * alpha).astype(np.float32) + bias
    return fma32(t, a, b)
