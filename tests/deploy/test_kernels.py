"""XNOR-popcount conv2d: every kernel path == NumPy reference == F.conv2d on +-1 tensors, in integers."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recu import functional as RF
from recu.deploy.runtime import kernels as K
from recu.deploy.runtime import pack as P

COMPILED = []
if K.numba_available():
    COMPILED.append("portable")
    if K.has_vpopcntdq():
        COMPILED.append("avx512")
    if K.has_avx2():
        COMPILED.append("avx2")
    if K.has_amx():
        COMPILED.append("amx")
PATHS = COMPILED + ["numpy"]


def torch_dot(x: torch.Tensor, w: torch.Tensor, stride: int, padding: int) -> np.ndarray:
    """The training-time simulation: conv of the signs with zero padding (exact in float32 here)."""
    y = F.conv2d(RF.sign(x), RF.sign(w), stride=stride, padding=padding)
    return y.round().to(torch.int32).permute(0, 2, 3, 1).numpy()


def run(x: torch.Tensor, w: torch.Tensor, stride: int, padding: int, impl: str) -> np.ndarray:
    """The packed layers' path: from the float input (packed bits, or int8 signs on ``amx``)."""
    weights = K.PackedConvWeights(P.pack_weights(RF.sign(w)), w.shape[1])
    return K.binary_conv2d_float(x, weights, stride, padding, impl=impl)


def run_packed(x: torch.Tensor, w: torch.Tensor, stride: int, padding: int, impl: str) -> np.ndarray:
    """From already packed activations (``amx`` unpacks them to int8 first)."""
    weights = K.PackedConvWeights(P.pack_weights(RF.sign(w)), w.shape[1])
    return K.binary_conv2d(K.pack_activations(x, impl), weights, stride, padding, impl=impl)


CASES = [  # (C_in, C_out, k, stride, padding, H, W)
    (1, 3, 3, 1, 1, 5, 6),
    (3, 8, 3, 2, 1, 9, 7),
    (63, 9, 1, 1, 0, 4, 4),
    (64, 16, 3, 1, 1, 8, 8),
    (65, 17, 5, 2, 2, 11, 9),
    (130, 8, 3, 1, 2, 6, 5),
    (16, 12, 5, 1, 2, 3, 3),   # kernel larger than the input: padding-only taps everywhere
    (32, 24, 3, 2, 0, 10, 13),
    (70, 40, 3, 1, 1, 9, 11),  # two 16-channel blocks + a last block of 8
    (64, 64, 3, 2, 1, 12, 12),
]


@pytest.fixture(params=["serial", "threads"])
def threading_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a compiled kernel on the calling thread or on numba's workers (small inputs included)."""
    if request.param == "threads":
        if not K.numba_available():
            pytest.skip("numba not installed")
        from recu.deploy.runtime.kernels import threads as nk

        monkeypatch.setattr(nk, "PARALLEL_MIN_WORK", 0)
        K.set_num_threads(2)
    else:
        K.set_num_threads(1)
    return request.param


@pytest.mark.parametrize("impl", PATHS)
@pytest.mark.parametrize("case", CASES)
def test_kernel_exact(impl: str, case: tuple, threading_mode: str) -> None:
    c, o, k, s, p, h, w_ = case
    x = torch.randn(2, c, h, w_)
    x[:, :, 0, :] = 0.0  # zeros (+1) on a padded border row
    w = torch.randn(o, c, k, k)
    got = run(x, w, s, p, impl)
    assert got.dtype == np.int32
    want = torch_dot(x, w, s, p)
    assert np.array_equal(got, want)
    assert np.array_equal(run_packed(x, w, s, p, impl), want)


@pytest.mark.skipif("amx" not in COMPILED, reason="CPU or OS without AMX-INT8")
@pytest.mark.parametrize("case", CASES)
def test_amx_bit_tiles_exact(case: tuple, monkeypatch: pytest.MonkeyPatch) -> None:
    # Layers past INT8_WEIGHT_BYTES keep 1 bit per weight and expand each B tile in the kernel;
    # the tests' layers are small, so force that path.
    from recu.deploy.runtime.kernels import amx as ak

    monkeypatch.setattr(ak, "INT8_WEIGHT_BYTES", 0)
    c, o, k, s, p, h, w_ = case
    x, w = torch.randn(2, c, h, w_), torch.randn(o, c, k, k)
    weights = K.PackedConvWeights(P.pack_weights(RF.sign(w)), c)
    assert weights.amx_tiles().dtype == np.uint64
    assert np.array_equal(K.binary_conv2d_float(x, weights, s, p, impl="amx"), torch_dot(x, w, s, p))


@pytest.mark.parametrize("impl", PATHS)
def test_channels_last_input_and_border_values(impl: str, threading_mode: str) -> None:
    # All +1 input and all +1 weights: each output counts its valid taps times C, so the border
    # values show directly that padded taps add 0 (not +1 or -1).
    x = torch.ones(1, 70, 4, 5).contiguous(memory_format=torch.channels_last)
    w = torch.ones(9, 70, 3, 3)
    got = run(x, w, 1, 1, impl)[0, :, :, 0]
    taps = np.array([[4, 6, 6, 6, 4], [6, 9, 9, 9, 6], [6, 9, 9, 9, 6], [4, 6, 6, 6, 4]]) * 70
    assert np.array_equal(got, taps)


@pytest.mark.parametrize("impl", PATHS)
@pytest.mark.parametrize("o", [10, 32, 40])  # partial block of 8; whole blocks of 16; 16 + 16 + 8
def test_affine_output(impl: str, o: int) -> None:
    x, w = torch.randn(2, 40, 9, 10), torch.randn(o, 40, 3, 3)
    weights = K.PackedConvWeights(P.pack_weights(w), 40)
    a = K.pack_activations(x, impl)
    scale = np.random.default_rng(0).normal(size=o).astype(np.float32)
    bias = np.random.default_rng(1).normal(size=o).astype(np.float32)
    dot = K.binary_conv2d(a, weights, 2, 1, impl=impl)
    y = K.binary_conv2d(a, weights, 2, 1, impl=impl, scale=scale, bias=bias)
    assert y.dtype == np.float32
    # float32 multiply then add, no FMA contraction: bit-identical to NumPy's float32 arithmetic
    assert np.array_equal(y, dot.astype(np.float32) * scale + bias)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    c=st.sampled_from([1, 3, 17, 63, 64, 65, 130]),
    o=st.integers(1, 20),
    k=st.sampled_from([1, 3, 5]),
    s=st.sampled_from([1, 2]),
    p=st.sampled_from([0, 1, 2]),
    h=st.integers(1, 9),
    w_=st.integers(1, 9),
    n=st.integers(1, 2),
    impl=st.sampled_from(PATHS),
    seed=st.integers(0, 2**31 - 1),
)
def test_kernel_property(c: int, o: int, k: int, s: int, p: int, h: int, w_: int, n: int, impl: str,
                         seed: int) -> None:
    if h + 2 * p < k or w_ + 2 * p < k:
        return  # no output position
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w_, generator=g)
    x[x.abs() < 0.1] = 0.0  # exercise sign(0) = +1
    w = torch.randn(o, c, k, k, generator=g)
    want = torch_dot(x, w, s, p)
    assert np.array_equal(run(x, w, s, p, impl), want)
    if impl != "numpy":
        assert np.array_equal(run(x, w, s, p, "numpy"), want)


def test_resolve_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(K.ENV_VAR, "numpy")
    assert K.resolve_kernel() == "numpy"
    assert K.resolve_kernel("auto") in ("amx", "avx512", "avx2", "portable", "numpy")
    monkeypatch.delenv(K.ENV_VAR)
    assert K.resolve_kernel() == ("amx" if "amx" in COMPILED else "avx512" if "avx512" in COMPILED
                                  else "avx2" if "avx2" in COMPILED else "portable" if COMPILED else "numpy")
    monkeypatch.setenv(K.ENV_VAR, "fastest")
    with pytest.raises(ValueError, match=K.ENV_VAR):
        K.resolve_kernel()
    with pytest.raises(ValueError, match="impl"):
        K.resolve_kernel("gpu")


def test_shape_errors() -> None:
    weights = K.PackedConvWeights(np.zeros((4, 3, 3, 1), np.uint64), 10)
    with pytest.raises(ValueError, match="packed input"):
        K.binary_conv2d(np.zeros((1, 5, 5, 2), np.uint64), weights)
    with pytest.raises(ValueError, match="no output"):
        K.binary_conv2d(np.zeros((1, 2, 2, 1), np.uint64), weights)
    with pytest.raises(ValueError, match="shape"):
        K.PackedConvWeights(np.zeros((4, 3, 3, 2), np.uint64), 10)


@pytest.mark.parametrize("impl", PATHS)
def test_float_epilogue_path(impl: str) -> None:
    # binary_conv2d_float with an epilogue table == the integer path through the float32 epilogue,
    # C_out 40 = two full 16-channel tiles + a partial one (the amx kernel's scalar tail).
    x, w = torch.randn(2, 40, 9, 10), torch.randn(40, 40, 3, 3)
    weights = K.PackedConvWeights(P.pack_weights(w), 40)
    rng = np.random.default_rng(0)
    epi = K.epilogue_table(40, *(rng.normal(size=40).astype(np.float32) for _ in range(4)))
    dot = K.binary_conv2d_float(x, weights, 1, 1, impl=impl)
    y = K.binary_conv2d_float(x, weights, 1, 1, impl=impl, epilogue=epi)
    ref = K.binary_conv2d_float(x, weights, 1, 1, impl=COMPILED[0] if COMPILED else "numpy", epilogue=epi)
    assert np.array_equal(dot, torch_dot(x, w, 1, 1))
    assert np.array_equal(y, ref)  # the same fma steps in every compiled path
    assert np.abs(y - K.epilogue_numpy(dot, epi)).max() <= 1e-5 * np.abs(y).max()


@pytest.mark.parametrize("impl", PATHS)
def test_float_path_bad_input(impl: str) -> None:
    weights = K.PackedConvWeights(P.pack_weights(torch.randn(16, 8, 3, 3)), 8)
    with pytest.raises(ValueError, match="expected input"):
        K.binary_conv2d_float(torch.randn(1, 7, 5, 5), weights, 1, 1, impl=impl)
    with pytest.raises(ValueError, match="expected input"):
        K.binary_conv2d_float(torch.randn(8, 5, 5), weights, 1, 1, impl=impl)
    with pytest.raises(ValueError, match="out must be"):
        K.binary_conv2d_float(torch.randn(1, 8, 5, 5), weights, 1, 1, impl=impl, out=np.empty((1, 5, 5, 15), np.int32))
    # A good call after the bad ones (nothing wrong was cached), then a new input size.
    x = torch.randn(1, 8, 5, 5)
    assert np.array_equal(K.binary_conv2d_float(x, weights, 1, 1, impl=impl), torch_dot(x, _signs_of(weights), 1, 1))
    x = torch.randn(2, 8, 7, 4)
    assert np.array_equal(K.binary_conv2d_float(x, weights, 2, 0, impl=impl), torch_dot(x, _signs_of(weights), 2, 0))
    assert np.array_equal(K.binary_conv2d_float(x, weights, [2, 2], [0, 0], impl=impl),  # lists work too
                          torch_dot(x, _signs_of(weights), 2, 0))


@pytest.mark.parametrize("impl", PATHS)
@pytest.mark.parametrize("stride,padding", [((1, 2), (2, 1)), ((2, 1), (0, 2)), ((3, 3), (1, 1))])
def test_asymmetric_stride_and_padding(impl: str, stride: tuple, padding: tuple) -> None:
    x, w = torch.randn(2, 70, 9, 11), torch.randn(20, 70, 3, 5)
    weights = K.PackedConvWeights(P.pack_weights(w), 70)
    want = F.conv2d(RF.sign(x), RF.sign(w), stride=stride, padding=padding).round().int().permute(0, 2, 3, 1).numpy()
    assert np.array_equal(K.binary_conv2d_float(x, weights, stride, padding, impl=impl), want)


@pytest.mark.parametrize("impl", PATHS)
def test_float_path_input_kinds(impl: str) -> None:
    # NCHW or channels_last, float64, requiring grad: the same integers.
    weights = K.PackedConvWeights(P.pack_weights(torch.randn(16, 64, 3, 3)), 64)
    x = torch.randn(1, 64, 6, 7)
    want = torch_dot(x, _signs_of(weights), 1, 1)
    for v in (x, x.contiguous(memory_format=torch.channels_last), x.double(), x.clone().requires_grad_()):
        assert np.array_equal(K.binary_conv2d_float(v, weights, 1, 1, impl=impl), want)


def _signs_of(weights: K.PackedConvWeights) -> torch.Tensor:
    """The +-1 weight tensor (C_out, C_in, KH, KW) stored in ``weights``."""
    signs = P.unpack_signs_numpy(weights.bits, weights.in_channels)  # (C_out, KH, KW, C_in)
    return torch.from_numpy(signs.transpose(0, 3, 1, 2).astype(np.float32))


@pytest.mark.skipif(not COMPILED, reason="numba not installed")
def test_kernel_threads_leave_torch_thread_count_alone() -> None:
    # numba's OpenMP pool shares PyTorch's OpenMP runtime; starting it once set the runtime's
    # thread count to numba's, so a 1-thread PyTorch ran 2 threads. Needs a fresh process: the
    # pool starts once per process.
    code = (
        "import torch, numpy as np\n"
        "torch.set_num_threads(1)\n"
        "from recu.deploy.runtime import kernels as K, pack as P\n"
        "K.set_num_threads(2)\n"
        "w = K.PackedConvWeights(P.pack_weights(torch.randn(64, 64, 3, 3)), 64)\n"
        "K.binary_conv2d_float(torch.randn(1, 64, 40, 40), w, 1, 1)\n"
        "import numba\n"
        "print(torch.get_num_threads(), numba.get_num_threads(), numba.threading_layer())\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_THREADING_LAYER", "OMP_NUM_THREADS")}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr
    torch_threads, numba_threads, layer = res.stdout.split()
    assert (torch_threads, numba_threads) == ("1", str(min(2, os.cpu_count() or 1)))


@pytest.mark.skipif(not COMPILED or not hasattr(os, "fork"), reason="numba not installed / no fork")
def test_forked_child_on_one_thread_runs_the_kernels() -> None:
    # Under the OpenMP threading layer a forked child must not start a parallel region (GNU OpenMP
    # hangs, PyTorch's own ops included); on one thread, as DataLoader workers run, it must work.
    code = (
        "import os, torch, numpy as np\n"
        "from recu.deploy.runtime import kernels as K, pack as P\n"
        "torch.set_num_threads(2); K.set_num_threads(2)\n"
        "w = K.PackedConvWeights(P.pack_weights(torch.randn(64, 64, 3, 3)), 64)\n"
        "x = torch.randn(1, 64, 40, 40)\n"
        "a = K.binary_conv2d_float(x, w, 1, 1)\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    torch.set_num_threads(1); K.set_num_threads(1)\n"
        "    os._exit(0 if np.array_equal(K.binary_conv2d_float(x, w, 1, 1), a) else 3)\n"
        "print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["0"]


def test_layer_kernel_auto_sends_narrow_layers_to_popcount(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(K.cpu, "has_amx", lambda: True)
    monkeypatch.setattr(K.cpu, "has_vpopcntdq", lambda: True)
    monkeypatch.setattr(K.cpu, "numba_available", lambda: True)
    monkeypatch.delenv(K.ENV_VAR, raising=False)
    assert K.layer_kernel(None, 16) == "avx512"
    assert K.layer_kernel("auto", 63) == "avx512"
    assert K.layer_kernel(None, 64) == "amx"
    assert K.layer_kernel("amx", 16) == "amx"  # an explicit choice is kept
    monkeypatch.setenv(K.ENV_VAR, "amx")
    assert K.layer_kernel(None, 16) == "amx"
    monkeypatch.setattr(K.cpu, "has_vpopcntdq", lambda: False)
    assert K.layer_kernel("auto", 16) == "amx"  # amx beats the portable kernel anywhere


def test_unavailable_kernel_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(K.cpu, "has_amx", lambda: False)
    with pytest.raises(RuntimeError, match="AMX-INT8"):
        K.resolve_kernel("amx")


@pytest.mark.skipif("amx" not in COMPILED, reason="CPU or OS without AMX-INT8")
def test_amx_kernel_emits_tdpbssd() -> None:
    assert "tdpbssd" in K.amx_kernel_asm()


@pytest.mark.skipif("avx512" not in COMPILED, reason="CPU without AVX-512 VPOPCNTDQ")
def test_fast_kernel_emits_vpopcntq_zmm() -> None:
    assert K.fast_kernel_asm_has_vpopcntq()


def test_auto_prefers_amx_then_avx512_then_avx2(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(K.cpu, "numba_available", lambda: True)
    monkeypatch.delenv(K.ENV_VAR, raising=False)
    for amx, vpopcntdq, avx2, want in [
        (True, True, True, "amx"),
        (False, True, True, "avx512"),
        (False, False, True, "avx2"),   # AMD before Zen 4, most laptops
        (False, False, False, "portable"),
    ]:
        monkeypatch.setattr(K.cpu, "has_amx", lambda v=amx: v)
        monkeypatch.setattr(K.cpu, "has_vpopcntdq", lambda v=vpopcntdq: v)
        monkeypatch.setattr(K.cpu, "has_avx2", lambda v=avx2: v)
        assert K.resolve_kernel() == want
        assert K.resolve_kernel("auto") == want
    monkeypatch.setattr(K.cpu, "has_avx2", lambda: True)
    assert K.resolve_kernel("avx2") == "avx2"  # explicit, on a CPU with AVX2
    monkeypatch.setenv(K.ENV_VAR, "AVX2")
    assert K.resolve_kernel() == "avx2"


def test_avx2_refused_without_avx2(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(K.cpu, "numba_available", lambda: True)
    monkeypatch.setattr(K.cpu, "has_avx2", lambda: False)
    with pytest.raises(RuntimeError, match="AVX2"):
        K.resolve_kernel("avx2")
    monkeypatch.setattr(K.cpu, "numba_available", lambda: False)
    with pytest.raises(RuntimeError, match="numba"):
        K.resolve_kernel("avx2")


def test_avx2_weight_layout() -> None:
    # Block j, position (kh, kw, word), lane l holds output channel 4j + l; past C_out zeros.
    if not K.numba_available():
        pytest.skip("numba not installed")
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 2**63, size=(6, 3, 2, 2), dtype=np.uint64)
    w = K.PackedConvWeights(bits, 100)
    wb = w.blocked_avx2()
    assert wb.shape == (2, 3, 2, 2, 4)
    for o in range(8):
        want = bits[o] if o < 6 else np.zeros((3, 2, 2), np.uint64)
        assert np.array_equal(wb[o // 4, :, :, :, o % 4], want)
    assert w.blocked_avx2() is wb  # built once


@pytest.mark.parametrize("impl", PATHS)
@pytest.mark.parametrize("words", [30, 31, 32, 33, 62, 63, 64])
def test_popcount_sums_past_byte_range(impl: str, words: int) -> None:
    # Every input bit differs from its weight bit (input -1, weights +1): each 64-bit word counts
    # 64, 8 per byte. The avx2 kernel sums per-byte counts in 8-bit lanes and must widen them
    # after 31 words (248); one word later a byte would wrap at 256 and the dot come out wrong.
    # A 1x1 conv of 64 * words channels and a second output pixel with mixed signs.
    c = 64 * words
    x = -torch.ones(1, c, 1, 5)
    x[0, ::3, 0, 4] = 1.0
    w = torch.ones(12, c, 1, 1)
    w[5, ::2] = -1.0
    got = run(x, w, 1, 0, impl)
    assert got[0, 0, 0, 0] == -c  # all taps disagree
    assert np.array_equal(got, torch_dot(x, w, 1, 0))


@pytest.mark.skipif("avx2" not in COMPILED, reason="numba not installed or CPU without AVX2")
def test_avx2_portable_widening_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    # Compiled for a target without AVX2 the kernel widens its byte counts with shifts and adds
    # instead of vpsadbw (an x86 AVX2 intrinsic LLVM could not compile there). Force that branch
    # in an uncached twin of the row function and check it against F.conv2d: 600 channels, 3x3,
    # 90 words per output, so byte lanes are widened mid-row as well as at the end.
    from numba import njit

    from recu.deploy.runtime.kernels import popcount_avx2 as nk

    monkeypatch.setattr(nk, "target_has_avx2", lambda: False)
    twin = njit(cache=False)(nk.conv_avx2_row.py_func)
    c, o, h, w_ = 600, 12, 5, 9
    x, w = torch.randn(2, c, h, w_), torch.randn(o, c, 3, 3)
    weights = K.PackedConvWeights(P.pack_weights(RF.sign(w)), c)
    a = K.pack_activations(x, "numpy")
    out = np.zeros((2, h, w_, o), np.int32)
    for r in range(2 * h):
        twin(r, a.reshape(-1), weights.blocked_avx2().reshape(-1), h, w_, a.shape[3], 3, 3, c, o, 1, 1, 1, 1,
             out, np.empty(0, np.float32), np.zeros((1, 1, 1, 1), np.float32), False)
    assert np.array_equal(out, torch_dot(x, w, 1, 1))
    asm = "\n".join(twin.inspect_asm().values())
    assert "psadbw" not in asm  # the portable branch was the one compiled


@pytest.mark.skipif("avx2" not in COMPILED, reason="numba not installed or CPU without AVX2")
def test_avx2_kernel_emits_nibble_lookup_for_haswell(tmp_path: "os.PathLike[str]") -> None:
    # numba reads its target CPU at import, so compile in a fresh process for Haswell (AVX2, no
    # AVX-512). NUMBA_CPU_FEATURES must be set too (empty: the CPU's own features): with the name
    # alone numba keeps the host's feature list, AVX-512 included.
    code = (
        "from recu.deploy.runtime import kernels as K\n"
        "lines = K.avx2_kernel_asm().splitlines()\n"
        "count = lambda *words: sum(all(w in l for w in words) for l in lines)\n"
        "print(count('vpshufb', 'ymm'), count('vpsadbw', 'ymm'), count('zmm'), count('vpopcnt'))\n"
    )
    env = dict(os.environ, NUMBA_CPU_NAME="haswell", NUMBA_CPU_FEATURES="", NUMBA_CACHE_DIR=str(tmp_path))
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=900)
    assert res.returncode == 0, res.stderr
    pshufb_ymm, psadbw_ymm, zmm, popcnt = (int(v) for v in res.stdout.split())
    assert pshufb_ymm >= 2 and psadbw_ymm >= 1  # the nibble lookup and the widening, 256 bits wide
    assert zmm == 0 and popcnt == 0  # nothing from AVX-512
