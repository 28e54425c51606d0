"""Bit packing: round trips, sign(0) = +1, pad bits, compiled packers == NumPy reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recu import functional as RF
from recu.deploy.runtime import kernels as K
from recu.deploy.runtime import pack as P
from recu.deploy.runtime.kernels import numba_available

CHANNELS = [1, 3, 63, 64, 65, 130]
COMPILED = ["portable"] if numba_available() else []


@pytest.mark.parametrize("c", CHANNELS)
def test_round_trip_and_pad_bits(c: int) -> None:
    x = torch.randn(2, 3, c)
    x[0, 0, 0] = 0.0  # sign(0) = +1
    words = P.pack_signs_numpy(x)
    assert words.dtype == np.uint64 and words.shape == (2, 3, P.num_words(c))
    back = P.unpack_signs_numpy(words, c)
    assert np.array_equal(back, RF.sign(x).to(torch.int8).numpy())
    assert back[0, 0, 0] == 1
    rest = c % 64
    if rest:  # pad bits of the last word are zero
        assert not np.any(words[..., -1] >> np.uint64(rest))


@pytest.mark.parametrize("c", CHANNELS)
def test_bytes_round_trip(c: int) -> None:
    x = torch.randn(4, 2, 2, c)
    data = P.packbits_bytes(x)
    assert data.shape == (4, 2, 2, (c + 7) // 8)
    assert np.array_equal(P.unpackbits_bytes(data, c), P.pack_signs_numpy(x))


def test_unpack_rejects_set_pad_bits() -> None:
    with pytest.raises(ValueError, match="pad bits"):
        P.unpack_signs_numpy(np.array([np.uint64(1) << np.uint64(5)]), 3)


def test_weight_layout() -> None:
    w = torch.randn(5, 70, 3, 2)
    bits = P.pack_weights(w)
    assert bits.shape == (5, 3, 2, 2)
    assert np.array_equal(P.unpack_signs_numpy(bits, 70), RF.sign(w).permute(0, 2, 3, 1).to(torch.int8).numpy())


@pytest.mark.parametrize("impl", COMPILED + ["numpy"])
@pytest.mark.parametrize("c", CHANNELS)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("min_work", [0, None])
def test_pack_activations_matches_reference(impl: str, c: int, channels_last: bool, min_work,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    if min_work is not None and impl != "numpy":  # force numba's worker threads on a small input
        from recu.deploy.runtime.kernels import threads as nk

        monkeypatch.setattr(nk, "PARALLEL_MIN_WORK", min_work)
    x = torch.randn(2, c, 5, 4)
    x[0, :, 0, 0] = 0.0
    x[1, 0, 1, 1] = -0.0  # -0.0 >= 0: +1, as RF.sign
    x[1, -1, 2, 2] = float("nan")  # NaN: -1, as RF.sign
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    got = K.pack_activations(x, impl)
    want = P.pack_signs_numpy(RF.sign(x).permute(0, 2, 3, 1))
    assert np.array_equal(got, want)


@pytest.mark.skipif(not COMPILED, reason="needs numba")
@pytest.mark.parametrize("c", CHANNELS + [16, 32])
@pytest.mark.parametrize("parallel", [False, True])
def test_plan_packer_of_flat_nhwc_matches_reference(c: int, parallel: bool) -> None:
    # The compiled plan packs each binary conv's float NHWC input with pack_nhwc: full words and the
    # partial last word by vector compares, the tensor's last pixels (no 64 floats left) scalar.
    from recu.deploy.runtime.kernels import packing as nk

    x = torch.randn(2, 5, 4, c)
    x[0, 0, 0] = 0.0
    x[1, 1, 1, 0] = -0.0  # -0.0 >= 0: +1, as RF.sign
    x[1, 2, 2, -1] = float("nan")  # NaN: -1, as RF.sign
    x[1, -1, -1] = -x[1, -1, -1].abs()  # the very last pixel (the scalar tail) all -1 ...
    x[1, -1, -1, 0] = 1.0  # ... but its first channel
    flat = x.numpy().reshape(-1)
    words = np.full((2 * 5 * 4, P.num_words(c)), np.uint64(0xFFFFFFFFFFFFFFFF))  # stale bits must go
    (nk.pack_nhwc if parallel else nk.pack_nhwc_serial)(flat, c, words)
    assert np.array_equal(words.reshape(2, 5, 4, -1), P.pack_signs_numpy(RF.sign(x)))
