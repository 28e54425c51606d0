"""Bit packing of {-1, +1} tensors along the channel axis.

Conventions (shared by every kernel and by the file format):

- A value ``x`` becomes bit 1 when ``x >= 0`` (the paper's sign, +1 at 0, exactly
  :func:`recu.functional.sign`) and bit 0 otherwise (including NaN, as ``torch.where(x >= 0, ...)``).
- Channels are packed into little-endian 64-bit words: channel ``c`` is bit ``c % 64`` of
  word ``c // 64``. Channels past ``C`` (when ``C`` is not a multiple of 64) are pad bits and
  are always 0 in activations *and* weights, so ``a XOR w`` is 0 there and a popcount never
  counts them.
- Activations are packed NHWC: ``(N, H, W, ceil(C / 64))``; weights ``(C_out, KH, KW, ceil(C_in / 64))``.
  Spatial padding is never materialised: the kernels skip the taps that fall outside the input.

This module holds the NumPy reference path and imports nothing else of recu; the compiled packers live
in :mod:`recu.deploy.runtime.kernels.packing` and are reached through
:func:`recu.deploy.runtime.kernels.conv.pack_activations`.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch only where a function takes a tensor: the runtime imports without it
    from torch import Tensor

__all__ = [
    "WORD_BITS",
    "num_words",
    "pack_signs_numpy",
    "unpack_signs_numpy",
    "pack_weights",
    "packbits_bytes",
    "unpackbits_bytes",
]

WORD_BITS = 64


def num_words(channels: int) -> int:
    """Number of 64-bit words that hold ``channels`` bits."""
    if channels < 1:
        raise ValueError(f"channels must be >= 1, got {channels}")
    return (channels + WORD_BITS - 1) // WORD_BITS


def _to_numpy(x: np.ndarray | Tensor) -> np.ndarray:
    torch = sys.modules.get("torch")  # without torch imported, x cannot be a tensor
    if torch is not None and isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def pack_signs_numpy(x: np.ndarray | Tensor) -> np.ndarray:
    """Pack the signs of ``x`` along its LAST axis into uint64 words (reference path).

    Returns an array of shape ``x.shape[:-1] + (ceil(C / 64),)``, dtype uint64.
    """
    bits = _to_numpy(x) >= 0
    c = bits.shape[-1]
    cw = num_words(c)
    pad = cw * WORD_BITS - c
    if pad:
        bits = np.concatenate([bits, np.zeros(bits.shape[:-1] + (pad,), dtype=bool)], axis=-1)
    packed = np.packbits(bits, axis=-1, bitorder="little")  # (..., cw * 8) bytes
    return np.ascontiguousarray(packed).view("<u8").astype(np.uint64, copy=False)


def unpack_signs_numpy(words: np.ndarray, channels: int) -> np.ndarray:
    """Inverse of :func:`pack_signs_numpy`: int8 array of +-1 with last axis ``channels``.

    Pad bits are dropped; a set pad bit is an error (it would corrupt the popcount).
    """
    words = np.ascontiguousarray(words, dtype=np.uint64)
    if words.shape[-1] != num_words(channels):
        raise ValueError(
            f"last axis has {words.shape[-1]} words, but {channels} channels need {num_words(channels)}"
        )
    bits = np.unpackbits(words.view(np.uint8), axis=-1, bitorder="little").astype(bool)
    if bits[..., channels:].any():
        raise ValueError("pad bits past the channel count are set; packed data is corrupt")
    return np.where(bits[..., :channels], np.int8(1), np.int8(-1))


def packbits_bytes(x: np.ndarray | Tensor) -> np.ndarray:
    """Signs of ``x`` packed along the last axis into bytes (the file format's 1-bit storage).

    Shape ``x.shape[:-1] + (ceil(C / 8),)``, dtype uint8, bit ``c % 8`` of byte ``c // 8``.
    """
    return np.packbits(_to_numpy(x) >= 0, axis=-1, bitorder="little")


def unpackbits_bytes(data: np.ndarray, channels: int) -> np.ndarray:
    """Bytes from :func:`packbits_bytes` -> uint64 words (pad bits 0), ready for the kernels."""
    data = np.asarray(data, dtype=np.uint8)
    nbytes = (channels + 7) // 8
    if data.shape[-1] != nbytes:
        raise ValueError(f"last axis has {data.shape[-1]} bytes, but {channels} channels need {nbytes}")
    bits = np.unpackbits(data, axis=-1, bitorder="little", count=channels)
    return pack_signs_numpy(np.where(bits.astype(bool), np.int8(1), np.int8(-1)))


def pack_weights(w_sign: np.ndarray | Tensor) -> np.ndarray:
    """Pack a conv weight ``(C_out, C_in, KH, KW)`` by sign -> ``(C_out, KH, KW, ceil(C_in / 64))`` uint64."""
    w = _to_numpy(w_sign)
    if w.ndim != 4:
        raise ValueError(f"conv weight must be 4-D (C_out, C_in, KH, KW), got shape {w.shape}")
    return pack_signs_numpy(np.transpose(w, (0, 2, 3, 1)))
