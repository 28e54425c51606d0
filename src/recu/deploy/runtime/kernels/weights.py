"""Sign-packed conv weights and the layouts each kernel path reads them in, built once per layer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from ..pack import num_words

__all__ = ["PackedConvWeights"]


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
            from .popcount_avx512 import block_weights

            self._blocked = block_weights(self.bits)
        return self._blocked

    def blocked_avx2(self) -> np.ndarray:
        """The layout of the ``avx2`` kernel (4 output channels per 256-bit vector), built once."""
        if self._blocked_avx2 is None:
            from .popcount_avx2 import block_weights_avx2

            self._blocked_avx2 = block_weights_avx2(self.bits)
        return self._blocked_avx2

    def amx_tiles(self) -> np.ndarray:
        """The B tiles of the ``amx`` kernel (int8, or 1 bit per weight for large layers; 64-byte aligned), built once."""
        if self._amx is None:
            from .amx import amx_weights

            self._amx = amx_weights(self.bits)
        return self._amx
