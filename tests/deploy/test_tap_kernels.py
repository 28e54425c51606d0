"""Tap-row packed binary convs of narrow layers (recu.deploy.runtime.kernels.taps): the integer dot products
of a float64 reference conv of the signs, every padding pattern, and the same bits as the
one-word-per-tap kernel inside a whole plan."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from recu.deploy.runtime.kernels import has_vpopcntdq, numba_available

pytestmark = pytest.mark.skipif(not (numba_available() and has_vpopcntdq()),
                                reason="the tap-packed kernels run on the avx512 path (AVX-512 VPOPCNTDQ)")


def _reference_dots(x: np.ndarray, signs_w: np.ndarray, s: int, p: int) -> np.ndarray:
    """float64 conv of sign(x) (+1 where x >= 0) with +-1 weights, zero padding: NHWC int dots."""
    n, h, w, c = x.shape
    o, kh, kw, _ = signs_w.shape
    xs = np.pad(np.where(x >= 0, 1.0, -1.0), ((0, 0), (p, p), (p, p), (0, 0)))
    oh, ow = (h + 2 * p - kh) // s + 1, (w + 2 * p - kw) // s + 1
    out = np.zeros((n, oh, ow, o))
    for i in range(oh):
        for j in range(ow):
            patch = xs[:, i * s:i * s + kh, j * s:j * s + kw, :]
            out[:, i, j, :] = np.einsum("nabc,oabc->no", patch, signs_w)
    return out.astype(np.int64)


def _weights(rng: np.random.Generator, c_out: int, kh: int, kw: int, c_in: int) -> tuple[np.ndarray, np.ndarray]:
    """Random +-1 weights and their canonical (C_out, KH, KW, CW) words (channel c = bit c % 64 of word
    c // 64, 1 = +1)."""
    signs = rng.choice([-1.0, 1.0], size=(c_out, kh, kw, c_in))
    bits = np.zeros((c_out, kh, kw, (c_in + 63) // 64), np.uint64)
    for c in range(c_in):
        bits[..., c // 64] |= (signs[..., c] > 0).astype(np.uint64) << np.uint64(c % 64)
    return signs, bits


def _run_taps(x: np.ndarray, bits: np.ndarray, c_out: int, kh: int, kw: int, s: int, p: int, epi: np.ndarray,
              res: np.ndarray | None = None, parallel: bool = False,
              next_pw: int | None = None) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """The tap-packed conv of NHWC ``x``; with ``next_pw``, also the row buffers it writes for a next
    layer with that padding (returned second)."""
    from recu.deploy.runtime.kernels import taps as tk

    n, h, w, c = x.shape
    oh, ow = (h + 2 * p - kh) // s + 1, (w + 2 * p - kw) // s + 1
    nw = tk.tap_words(c, kw)
    variant, taps, ranges = tk.column_variants(w, kw, s, p, ow)
    rowvar, row_pairs = tk.row_variants(h, kh, s, p, oh)
    starts = tk.padding_starts(bits, c, w, s, p, ow, row_pairs)
    wb = tk.block_tap_weights(bits, c, ranges).ravel()
    rowbytes = tk.row_bytes(w, c, p)
    a = np.full(n * h * rowbytes, 0xAB, np.uint8)  # junk: the packer writes every byte
    (tk.pack_signs if parallel else tk.pack_signs_serial)(x.ravel(), n * h, w, c, p, rowbytes, a)
    ow_lo, ow_hi = tk.interior_columns(variant)
    out = np.full((n, oh, ow, c_out), np.nan, np.float32)
    r = res if res is not None else np.zeros((0, 0, 0, 0), np.float32)
    lo, hi = np.float32(-1.0), np.float32(1.0)
    srow = tk.row_bytes(ow, c_out, next_pw) if next_pw is not None else 0
    signs = np.zeros(n * oh * srow, np.uint8)
    args = (a, rowbytes, wb, h, nw, np.uint64(tk.tail_mask_of(c, kw, nw)), kh, kw, c, c_out, s, s, p, ow_lo, ow_hi,
            variant.astype(np.uint64), taps.astype(np.uint64), rowvar.astype(np.uint64), starts, epi, out, r, lo, hi,
            signs, srow,
            (next_pw or 0) * c_out // 8)
    if parallel:
        tk.conv_taps(*args)
    else:
        tk.conv_taps_rows(0, n * oh, *args)
    return (out, signs) if next_pw is not None else out


# (N, H, W, C_in, C_out, KH, KW, stride, pad): ResNet-20's narrow layers, odd sizes, a 5x5 kernel with
# two padding columns, no padding, an input narrower than the kernel, C_out not a multiple of 16,
# 64 channels (one word per tap: row buffers without shared words). With C_out a multiple of 16 and
# 4+ output columns the edge columns run in register blocks with padding starts: 5x5 kernels with two
# padding columns and rows, stride 2 with an odd width, 5 and 13 columns (a 4-pixel block and the last
# block overlapping), 4 columns, padding wider than half the kernel (columns with no tap inside).
# Wide layers: 2 and 3 words per tap (128, 192 channels), 96 channels (taps across word boundaries),
# weight variants over several words a tap (C_out 24). Rows of 7, 14 and 21 columns: 7-pixel blocks.
SHAPES = [(1, 32, 32, 16, 16, 3, 3, 1, 1), (2, 7, 9, 16, 24, 3, 3, 1, 1), (1, 32, 32, 16, 32, 3, 3, 2, 1),
          (1, 16, 16, 32, 32, 3, 3, 1, 1), (1, 5, 6, 32, 8, 3, 3, 2, 1), (1, 9, 9, 16, 40, 5, 5, 1, 2),
          (1, 4, 4, 48, 16, 3, 3, 1, 1), (1, 6, 6, 16, 16, 3, 3, 1, 0), (1, 3, 2, 16, 16, 3, 3, 1, 1),
          (1, 8, 8, 32, 16, 1, 3, 1, 1), (1, 8, 8, 64, 64, 3, 3, 1, 1), (1, 9, 7, 64, 24, 3, 3, 2, 1),
          (2, 9, 11, 16, 32, 5, 5, 1, 2), (1, 9, 11, 32, 16, 3, 3, 2, 1), (1, 5, 5, 16, 16, 3, 3, 1, 1),
          (1, 6, 13, 64, 16, 3, 3, 1, 1), (1, 4, 4, 16, 48, 3, 3, 1, 1), (1, 3, 3, 16, 16, 3, 3, 1, 3),
          (1, 7, 7, 128, 32, 3, 3, 1, 1), (1, 9, 9, 96, 16, 3, 3, 2, 1), (1, 6, 5, 128, 24, 3, 3, 1, 1),
          (2, 5, 9, 192, 16, 3, 3, 1, 1), (1, 4, 14, 16, 16, 3, 3, 1, 1), (1, 3, 21, 32, 16, 3, 3, 1, 1)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("parallel", [False, True])
def test_dot_products_equal_float64_reference(shape: tuple, parallel: bool) -> None:
    n, h, w, c, c_out, kh, kw, s, p = shape
    rng = np.random.default_rng(sum(shape))
    x = rng.standard_normal((n, h, w, c)).astype(np.float32)
    x[0, 0, 0, :3] = [0.0, -0.0, -1e-30]  # signs of zeros: +1, +1 (-0.0 >= 0), -1
    signs, bits = _weights(rng, c_out, kh, kw, c)
    identity = np.concatenate([np.ones(c_out), np.zeros(c_out), np.ones(c_out), np.zeros(c_out)]).astype(np.float32)
    got = _run_taps(x, bits, c_out, kh, kw, s, p, identity, parallel=parallel)
    np.testing.assert_array_equal(got.astype(np.int64), _reference_dots(x, signs, s, p))


@pytest.mark.parametrize("shape", SHAPES[:4] + SHAPES[18:19])
def test_epilogue_and_residual_bits_equal_one_word_per_tap_kernel(shape: tuple) -> None:
    """With a random epilogue (alpha, bias, BatchNorm) and a fused residual + hardtanh: the same float32
    bits as the avx512 kernel with one word per tap followed by clamp(out + res)."""
    from recu.deploy.runtime.kernels import packing
    from recu.deploy.runtime.kernels import popcount_avx512 as pa

    n, h, w, c, c_out, kh, kw, s, p = shape
    rng = np.random.default_rng(7)
    x = rng.standard_normal((n, h, w, c)).astype(np.float32)
    _, bits = _weights(rng, c_out, kh, kw, c)
    epi = rng.standard_normal(4 * c_out).astype(np.float32)
    cw = bits.shape[3]
    a = np.zeros((n * h * w, cw), np.uint64)
    packing.pack_nhwc_serial(x.ravel(), c, a)
    oh, ow = (h + 2 * p - kh) // s + 1, (w + 2 * p - kw) // s + 1
    ref = np.zeros((n, oh, ow, c_out), np.float32)
    pa.conv_fast_serial(a.ravel(), pa.block_weights(bits).ravel(), h, w, cw, kh, kw, c, c_out, s, s, p, p,
                        np.empty((1, 1, 1, 1), np.int32), epi, ref, True)
    res = rng.standard_normal(ref.shape).astype(np.float32)
    for parallel in (False, True):
        got = _run_taps(x, bits, c_out, kh, kw, s, p, epi, res=res, parallel=parallel)
        np.testing.assert_array_equal(got.view(np.int32), np.clip(ref + res, -1, 1).view(np.int32))


@pytest.mark.parametrize("shape", [SHAPES[0], SHAPES[2], SHAPES[3], (2, 7, 9, 16, 32, 3, 3, 1, 1), SHAPES[10]])
@pytest.mark.parametrize("next_pw", [1, 2])
def test_signs_written_for_the_next_layer_equal_its_own_packing(shape: tuple, next_pw: int) -> None:
    """A layer with 16k output channels writes the signs of its final values (after the skip connection)
    as the next layer's row buffers: byte for byte what packing its float output gives, padding 0."""
    from recu.deploy.runtime.kernels import taps as tk

    n, h, w, c, c_out, kh, kw, s, p = shape
    rng = np.random.default_rng(11)
    x = rng.standard_normal((n, h, w, c)).astype(np.float32)
    _, bits = _weights(rng, c_out, kh, kw, c)
    epi = rng.standard_normal(4 * c_out).astype(np.float32)
    for res in (None, rng.standard_normal(_run_taps(x, bits, c_out, kh, kw, s, p, epi).shape).astype(np.float32)):
        for parallel in (False, True):
            out, signs = _run_taps(x, bits, c_out, kh, kw, s, p, epi, res=res, parallel=parallel, next_pw=next_pw)
            oh, ow = out.shape[1:3]
            packed = np.full(n * oh * tk.row_bytes(ow, c_out, next_pw), 0xAB, np.uint8)
            tk.pack_signs_serial(out.ravel(), n * oh, ow, c_out, next_pw, tk.row_bytes(ow, c_out, next_pw), packed)
            np.testing.assert_array_equal(signs, packed)
            rows = packed.reshape(n * oh, -1)
            pixels = rows[:, next_pw * c_out // 8:(next_pw + ow) * c_out // 8].reshape(n, oh, ow, c_out // 8)
            expect = np.packbits(out >= 0, axis=-1, bitorder="little")  # channel c = bit c % 8 of byte c // 8
            np.testing.assert_array_equal(pixels, expect)
            assert not rows[:, :next_pw * c_out // 8].any() and not rows[:, (next_pw + ow) * c_out // 8:].any()


def test_weight_layout_and_variants() -> None:
    """Tap t's channel c is bit t * C_in + c of its kernel row; a variant zeroes the padded taps."""
    from recu.deploy.runtime.kernels import taps as tk

    c_in, kw = 16, 3
    bits = np.zeros((1, 1, kw, 1), np.uint64)
    bits[0, 0, :, 0] = [0x0001, 0x8000, 0x00F0]
    variant, taps, ranges = tk.column_variants(w=4, kw=kw, sw=1, pw=1, ow=4)
    assert ranges == [(0, 3), (1, 3), (0, 2)]  # all taps, left tap padded, right tap padded
    assert variant.tolist() == [1, 0, 0, 2] and taps.tolist() == [2, 3, 3, 2]
    assert tk.interior_columns(variant) == (1, 3)
    assert tk.interior_columns(tk.column_variants(w=2, kw=3, sw=1, pw=1, ow=2)[0]) == (0, 0)  # none inside
    wb = tk.block_tap_weights(bits, c_in, ranges)  # (V, OB, KH, NW, 8)
    assert wb.shape == (3, 1, 1, 1, 8)
    assert int(wb[0, 0, 0, 0, 0]) == 0x0001 | 0x8000 << 16 | 0x00F0 << 32
    assert int(wb[1, 0, 0, 0, 0]) == 0x8000 << 16 | 0x00F0 << 32
    assert int(wb[2, 0, 0, 0, 0]) == 0x0001 | 0x8000 << 16
    assert not wb[..., 1:].any()  # output channels past C_out: zero
    assert tk.use_taps(16, 3) and tk.use_taps(32, 3) and tk.use_taps(64, 3) and not tk.use_taps(16, 1)
    assert not tk.use_taps(8, 3) and tk.use_taps(128, 3) and tk.use_taps(96, 3)
    wide = np.zeros((1, 1, 2, 2), np.uint64)  # 96 channels: tap 1's words start at bit 96
    wide[0, 0, 0] = [1, 1 << 31]
    wide[0, 0, 1] = [1 << 63, 1]
    wb = tk.block_tap_weights(wide, 96, [(0, 2)])  # 192 bits: 3 words
    assert [int(v) for v in wb[0, 0, 0, :, 0]] == [1, 1 << 31, 1 << 31 | 1 << 32]


def test_padding_starts_count_the_padded_taps() -> None:
    """A padded tap starts the count at C_in / 2 minus its weight's ones, summed over the kernel rows
    used; interior columns and rows start at 0; the table leads with a block's worth of zeros."""
    from recu.deploy.runtime.kernels import popcount_avx512 as nk
    from recu.deploy.runtime.kernels import taps as tk

    c_in, c_out, kh, kw = 16, 16, 3, 3
    bits = np.zeros((c_out, kh, kw, 1), np.uint64)
    bits[0, :, 0, 0] = [0x0001, 0x0003, 0xFFFF]  # channel 0's left taps: 1, 2, 16 ones
    bits[1, :, 2, 0] = 0x00FF                    # channel 1's right taps: 8 ones each
    rowvar, pairs = tk.row_variants(h=4, kh=kh, sh=1, ph=1, oh=4)
    assert pairs == [(1, 2), (0, 3), (0, 2)] and rowvar.tolist() == [0, 1, 1, 2]  # top, inside, bottom
    starts = tk.padding_starts(bits, c_in, w=4, sw=1, pw=1, ow=4, row_pairs=pairs)
    zeros = 2 * nk.XNOR_PIXELS * c_out
    assert not starts[:zeros].any()
    table = starts[zeros:].reshape(3, 4, c_out)
    assert table[1, 0, 0] == (8 - 1) + (8 - 2) + (8 - 16)  # left column, all rows: channel 0's left taps
    assert table[0, 0, 0] == (8 - 2) + (8 - 16) and table[2, 0, 0] == (8 - 1) + (8 - 2)
    assert table[1, 0, 1] == 3 * 8 and table[1, 3, 1] == 3 * 0  # channel 1: no ones left, 8 ones right
    assert table[1, 3, 0] == 3 * 8 and not table[:, 1:3].any()


def test_plan_uses_taps_for_narrow_layers_with_same_logits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ResNet-20 on the avx512 path: its 16- and 32-channel convs become tap-packed rows, and the logits
    are bit-identical to the plan without tap packing (RECU_DEPLOY_TAPS=0), on 1 and 2 threads."""
    from recu import models
    from recu.deploy.runtime.kernels import threads as nk
    from recu.deploy.runtime.kernels import plan_exec as pk
    from recu.deploy import export, load
    from recu.deploy.runtime.fileio import read_metadata, read_tensors
    from recu.deploy.runtime.plan import build_plan

    from ._helpers import randomize

    path = tmp_path / "r20.recu"
    export(randomize(models.create("resnet20_1w1a")), path)
    meta, tensors = read_metadata(path), read_tensors(path)
    table = build_plan(meta, tensors, (2, 3, 32, 32), impl="avx512").ops
    ops = table[:, pk.F_OP]
    assert int((ops == pk.OP_BCONV_TAPS).sum()) == 18  # 7 with 16 input channels, 6 with 32, 5 with 64
    assert int((ops == pk.OP_BCONV_AVX512).sum()) == 0
    taps = table[ops == pk.OP_BCONV_TAPS, pk.F_P:]
    # every tap-packed layer but the first (fed by the float stem) gets its signs from its producer,
    # and each of the 17 producers writes them; the last (feeding the pooling) writes none
    assert taps[:, pk.P_TAP_READY].tolist() == [0] + [1] * 17
    assert (taps[:-1, pk.P_TAP_OUT] >= 0).all() and taps[-1, pk.P_TAP_OUT] == -1
    x = np.random.default_rng(3).standard_normal((2, 3, 32, 32)).astype(np.float32)
    got = load(path, impl="avx512", num_threads=1)(x)
    monkeypatch.setattr(nk, "PARALLEL_MIN_WORK", 0)
    np.testing.assert_array_equal(got, load(path, impl="avx512", num_threads=2)(x))
    monkeypatch.setenv("RECU_DEPLOY_TAPS", "0")
    untapped = build_plan(meta, tensors, (2, 3, 32, 32), impl="avx512").ops[:, pk.F_OP]
    assert int((untapped == pk.OP_BCONV_TAPS).sum()) == 0
    np.testing.assert_array_equal(got, load(path, impl="avx512", num_threads=1)(x))


def test_bench_names_the_tap_packed_layers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`recu bench`'s kernel line says how many layers the plan tap-packs (none in the per-layer engine)."""
    from recu import models
    from recu.deploy import export, load
    from recu.cli.bench import kernel_summary

    path = tmp_path / "r20.recu"
    export(models.create("resnet20_1w1a").eval(), path)
    assert kernel_summary(load(path, impl="avx512")) == "avx512 (18 layers, 18 tap-packed)"
    assert kernel_summary(load(path, impl="avx512", engine="layers")) == "avx512 (18 layers)"
    from recu.deploy.runtime import kernels as K
    from recu.deploy.runtime import plan as P

    with monkeypatch.context() as m:  # auto on an AMX CPU: the plan's 64-channel layers stay tap-packed too
        for module, name in ((K, "has_amx"), (K, "has_vpopcntdq"), (P, "has_vpopcntdq"), (K, "numba_available")):
            m.setattr(module, name, lambda: True)
        m.delenv(K.ENV_VAR, raising=False)
        assert kernel_summary(load(path)) == "avx512 (18 layers, 18 tap-packed)"
    monkeypatch.setenv("RECU_DEPLOY_TAPS", "0")
    assert kernel_summary(load(path, impl="avx512")) == "avx512 (18 layers)"
