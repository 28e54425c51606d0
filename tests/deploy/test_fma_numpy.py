"""recu.deploy.runtime.fma_numpy: a correctly rounded float32 fma from float64 steps, checked with exact rationals."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from recu.deploy.runtime.fma_numpy import conv2d_fma_chain, fma32


def round_to_float32(value: Fraction) -> np.float32:
    """The float32 nearest to an exact rational, ties to even (by comparing exact distances)."""
    guess = np.float32(float(value))
    candidates = [np.nextafter(guess, np.float32(-np.inf)), guess, np.nextafter(guess, np.float32(np.inf))]

    def key(v: np.float32) -> tuple[Fraction, int]:
        return abs(Fraction(float(v)) - value), int(np.array(v, np.float32).view(np.uint32)) & 1

    return min(candidates, key=key)


def exact_fma(a: np.float32, b: np.float32, c: np.float32) -> np.float32:
    return round_to_float32(Fraction(float(a)) * Fraction(float(b)) + Fraction(float(c)))


def test_double_rounding_cases_round_once() -> None:
    # a * b + c = (1 + 2^-23 + 2^-24) - 2^-54: float64 rounds it onto the float32 midpoint 1 + 2^-23 + 2^-24,
    # whose tie goes to even (1 + 2^-22); the exact value lies below the midpoint: 1 + 2^-23.
    c = np.float32(1 + 2 ** -23)
    a, b = np.float32(2 ** -24 * (1 + 2 ** -15)), np.float32(1 - 2 ** -15)
    naive = np.float32(np.float64(a) * np.float64(b) + np.float64(c))
    assert naive == np.float32(1 + 2 ** -22)  # the double rounding this module corrects
    assert fma32(a, b, c) == exact_fma(a, b, c) == np.float32(1 + 2 ** -23)
    # mirrored: (2^12 + 1)(2^24 - 2^12 + 1) = 2^36 + 1, so a * b = 2^-24 + 2^-60 and 1 + a * b lies just
    # above the midpoint 1 + 2^-24, which float64 gives exactly and whose tie goes down to 1
    c2 = np.float32(1.0)
    a2, b2 = np.float32((2 ** 12 + 1) * 2.0 ** -12), np.float32((2 ** 24 - 2 ** 12 + 1) * 2.0 ** -48)
    assert np.float32(np.float64(a2) * np.float64(b2) + np.float64(c2)) == 1
    assert fma32(a2, b2, c2) == exact_fma(a2, b2, c2) == np.float32(1 + 2 ** -23)
    # negative side and an exact midpoint (err = 0: ties to even, as a hardware fma)
    assert fma32(-a, b, -c) == exact_fma(-a, b, -c)
    half = np.float32(2 ** -24)
    assert fma32(half, np.float32(1), np.float32(1)) == exact_fma(half, np.float32(1), np.float32(1)) == 1


@pytest.mark.parametrize("scale", [1.0, 1e-20, 1e20])
def test_random_values_match_exact_rounding(scale: float) -> None:
    rng = np.random.default_rng(int(np.log10(scale)) + 40)
    a = (rng.standard_normal(3000) * scale).astype(np.float32)
    b = rng.standard_normal(3000).astype(np.float32)
    # c near -a*b: cancellation, where fma and mul+add differ most
    c = (-(a.astype(np.float64) * b) * (1 + rng.standard_normal(3000) * 1e-6)).astype(np.float32)
    got = fma32(a, b, c)
    want = np.array([exact_fma(*v) for v in zip(a, b, c)], np.float32)
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))


def test_conv_chain_is_a_convolution_in_the_stated_order() -> None:
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 4, 5, 2)).astype(np.float32)  # NHWC
    w = rng.standard_normal((3, 2, 3, 3)).astype(np.float32)  # OIHW
    got = conv2d_fma_chain(x, w, (2, 1), (1, 1))
    assert got.shape == (1, 2, 5, 3)
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    for oh in range(2):
        for ow in range(5):
            for o in range(3):
                acc = np.float32(0)
                for i in range(3):
                    for j in range(3):
                        for c in range(2):
                            acc = exact_fma(xp[0, 2 * oh + i, ow + j, c], w[o, c, i, j], acc)
                assert got[0, oh, ow, o] == acc
    with pytest.raises(ValueError, match="input channels"):
        conv2d_fma_chain(x, w[:, :1], (1, 1), (0, 0))
