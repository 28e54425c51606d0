"""The float32 fma chain of the plan's float convolutions, in NumPy, bit for bit on every CPU.

The compiled plan sums each output of a full-precision convolution as one float32 fused multiply-add
chain over (kernel row, kernel column, input channel), from 0, then adds the bias. That order is the
plan's own, fixed in its kernels (``llvm.fma``: one rounding per step, the same on every x86 CPU). It
is not always PyTorch's: oneDNN picks a summation order per CPU and shape (docs/deploy.md,
"Exactness"). This module computes the plan's order with IEEE float64 arithmetic only, so it is a
CPU-independent reference of the plan's bits and the float convolution of
:func:`recu.deploy.graph_numpy.run_graph`. NumPy only.
"""

from __future__ import annotations

import numpy as np

__all__ = ["fma32", "conv2d_fma_chain"]

_CHUNK = 1 << 16  # output values per pass: the float64 temporaries stay in cache


def fma32(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """``a * b + c`` rounded once to float32 (a correctly rounded float32 fma), elementwise.

    The float64 product of two float32 values is exact (48 significant bits). Its float64 sum with
    ``c`` rounds once and float32 rounds again; the two roundings differ from one only where the
    float64 sum lands exactly on a float32 midpoint while the exact sum does not. Those (rare) elements
    are found by their bits and corrected with the exact error of the float64 sum (Knuth's TwoSum).
    """
    p = np.asarray(a, dtype=np.float32).astype(np.float64) * np.asarray(b, dtype=np.float32).astype(np.float64)
    p, c64 = np.broadcast_arrays(p, np.asarray(c, dtype=np.float32).astype(np.float64))
    s = p + c64
    with np.errstate(over="ignore"):
        r = np.asarray(s.astype(np.float32))
    # a normal float32 midpoint has its 29 float64-only mantissa bits 1000...0; below 2^-125 the float32
    # grid is coarser (subnormals), so every such element takes the exact check
    bits = np.asarray(s).view(np.uint64)
    suspect = ((bits & np.uint64(0x1FFFFFFF)) == np.uint64(0x10000000)) | (np.abs(s) < 2.0 ** -125)
    if suspect.any():
        r = r.copy()
        r[suspect] = _round_once(p[suspect], c64[suspect], s[suspect], r[suspect])
    return r


def _round_once(p: np.ndarray, c: np.ndarray, s: np.ndarray, r: np.ndarray) -> np.ndarray:
    """float32 of the exact ``p + c`` where ``s`` is its float64 rounding and ``r`` float32 of ``s``."""
    bb = s - p
    err = (p - (s - bb)) + (c - bb)  # p + c == s + err exactly
    r64 = r.astype(np.float64)
    d = s - r64  # exact (Sterbenz): how far float32 rounding moved s
    toward = np.nextafter(r, np.where(d > 0, np.float32(np.inf), np.float32(-np.inf))).astype(np.float32)
    tie = (d != 0) & (2 * d == toward.astype(np.float64) - r64) & (err != 0) & np.isfinite(s)
    # at a midpoint, the exact value lies beyond it (toward the neighbour) iff err has d's sign
    return np.where(tie & ((err > 0) == (d > 0)), toward, r)


def conv2d_fma_chain(x: np.ndarray, weight: np.ndarray, stride: tuple[int, int] = (1, 1),
                     padding: tuple[int, int] = (0, 0)) -> np.ndarray:
    """A float32 convolution summed as the plan sums it, without bias; NHWC in, NHWC out.

    Args:
        x: float32 ``(N, H, W, C)``.
        weight: float32 ``(O, C, KH, KW)`` (PyTorch's layout).
        stride, padding: per axis (height, width); zero padding.

    Returns:
        float32 ``(N, OH, OW, O)``: per output, ``acc = fma(x, w, acc)`` over (kh, kw, c) in that order
        from ``acc = 0`` (taps in the padding add an exact 0, as the plan's skipped ones).
    """
    n, h, w, c = x.shape
    o, wc, kh, kw = weight.shape
    if wc != c:
        raise ValueError(f"conv2d_fma_chain: weight takes {wc} input channels, input has {c}")
    (sh, sw), (ph, pw) = stride, padding
    oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    xp = np.zeros((n, h + 2 * ph, w + 2 * pw, c), dtype=np.float32)
    xp[:, ph:ph + h, pw:pw + w] = x
    w_hwio = np.ascontiguousarray(np.asarray(weight, dtype=np.float32).transpose(2, 3, 1, 0))
    out = np.empty((n, oh, ow, o), dtype=np.float32)
    step = max(1, _CHUNK // max(1, oh * ow * o))
    for i0 in range(0, n, step):
        acc = np.zeros((min(step, n - i0), oh, ow, o), dtype=np.float32)
        for i in range(kh):
            for j in range(kw):
                taps = xp[i0:i0 + step, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw, :]
                for ch in range(c):
                    acc = fma32(taps[..., ch:ch + 1], w_hwio[i, j, ch], acc)
        out[i0:i0 + step] = acc
    return out
