"""The compiled whole-network plan (recu.deploy.runtime.plan): same logits as PyTorch on every kernel path."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import pytest
import torch

from recu import models
from recu.deploy import export, load
from recu.deploy.runtime.kernels import has_amx, has_avx2, has_vpopcntdq, numba_available

from ._helpers import assert_same_logits, fixed_order_logits, randomize

pytestmark = pytest.mark.skipif(not numba_available(), reason="the compiled plan needs numba")

IMPLS = (["amx"] if has_amx() else []) + (["avx512"] if has_vpopcntdq() else []) \
    + (["avx2"] if has_avx2() else []) + ["portable"]

# (registry name, input size, batch); ImageNet models at 64x64 to keep the tests short.
NETS = [("resnet20_1w1a", 32, 3), ("resnet18_1w1a", 32, 2), ("vgg_small_1w1a", 32, 2),
        ("resnet18_1w1a_imagenet", 64, 2), ("reactnet_resnet18", 64, 2)]


def _exported(tmp_path: Path, name: str, size: int) -> tuple[torch.nn.Module, Path]:
    model = randomize(models.create(name, num_classes=10))
    path = tmp_path / f"{name}.recu"
    meta = export(model, path)
    assert meta["graph"] is not None, meta.get("graph_unsupported")
    return model, path


def _images(batch: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, 3, size, size)).astype(np.float32)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name,size,batch", NETS)
def test_plan_matches_pytorch(tmp_path: Path, name: str, size: int, batch: int, impl: str) -> None:
    """Against the PyTorch model with its float convs in the plan's order: the same signs on every CPU."""
    model, path = _exported(tmp_path, name, size)
    x = _images(batch, size)
    ref = fixed_order_logits(model, x)
    plan = load(path, impl=impl, num_threads=1)
    assert type(plan).__name__ == "CompiledModel"
    out = plan(x)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == ref.shape
    assert_same_logits(out, ref)


@pytest.mark.parametrize("name,size,batch", NETS[:2] + NETS[3:4])
def test_plan_equals_numpy_graph_and_every_path(tmp_path: Path, name: str, size: int, batch: int) -> None:
    """The binary layers give the same integers on every path, so the logits agree to float64 rounding."""
    _, path = _exported(tmp_path, name, size)
    x = _images(batch, size, seed=1)
    reference = load(path, impl="numpy")(x)
    for impl in IMPLS:
        out = load(path, impl=impl, num_threads=1)(x)
        np.testing.assert_allclose(out, reference, rtol=1e-6, atol=1e-6 * np.abs(reference).max(), err_msg=impl)


@pytest.mark.parametrize("impl", IMPLS)
def test_plan_threads_and_batches(tmp_path: Path, impl: str) -> None:
    """Two threads (parallel kernels on large work) and several batch sizes give the 1-thread result."""
    _, path = _exported(tmp_path, "resnet20_1w1a", 32)
    x = _images(9, 32, seed=2)
    one = load(path, impl=impl, num_threads=1)(x)
    plan = load(path, impl=impl, num_threads=2)
    np.testing.assert_array_equal(plan(x), one)
    np.testing.assert_array_equal(plan(x[:1]), one[:1])  # a second shape: its own plan
    np.testing.assert_array_equal(plan(x), one)            # the first plan, reused


def test_plan_torch_in_torch_out_and_errors(tmp_path: Path) -> None:
    model, path = _exported(tmp_path, "resnet20_1w1a", 32)
    plan = load(path, num_threads=1)
    x = torch.from_numpy(_images(2, 32, seed=3))
    out = plan(x)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 10)
    np.testing.assert_array_equal(out.numpy(), plan(x.numpy()))
    with pytest.raises(ValueError, match=r"expected images \(N, 3, H, W\)"):
        plan(np.zeros((2, 4, 32, 32), np.float32))
    with pytest.raises(ValueError, match="expected images"):
        plan(np.zeros((3, 32, 32), np.float32))
    assert plan(x.numpy()).shape == (2, 10)  # still usable after bad input


def test_layers_engine_is_the_reference(tmp_path: Path) -> None:
    """engine='layers' keeps the per-layer PyTorch path, bit-identical to PyTorch on channels_last input."""
    model, path = _exported(tmp_path, "resnet20_1w1a", 32)
    layers = load(path, engine="layers")
    x = torch.from_numpy(_images(2, 32, seed=4)).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        torch.testing.assert_close(layers(x), model(x), rtol=0, atol=0)


def test_arena_reuses_buffers(tmp_path: Path) -> None:
    """Buffers of dead values are reused: ResNet-20's arena holds a few activations, not all ~50."""
    from recu.deploy.runtime.fileio import read_metadata, read_tensors
    from recu.deploy.runtime.plan import build_plan

    _, path = _exported(tmp_path, "resnet20_1w1a", 32)
    plan = build_plan(read_metadata(path), read_tensors(path), (1, 3, 32, 32), impl="portable")
    largest = 16 * 32 * 32
    total = sum(int(np.prod(v[1:])) for v in plan.vals)
    assert plan.arena.size <= 4 * largest < total


@pytest.mark.parametrize("name", [n for n in models.available() if models.is_binary(n)])
def test_every_registry_model_runs_as_a_plan(tmp_path: Path, name: str) -> None:
    from .test_export import _input_shape

    model = randomize(models.create(name))
    path = tmp_path / f"{name}.recu"
    meta = export(model, path)
    if meta["graph"] is None:
        pytest.skip(f"{name}: {meta['graph_unsupported']}")
    x = np.random.default_rng(5).standard_normal((2, *_input_shape(name))).astype(np.float32)
    assert_same_logits(load(path, num_threads=1)(x), fixed_order_logits(model, x))


def test_concurrent_calls_from_python_threads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from recu.deploy.runtime.kernels import threads as nk

    monkeypatch.setattr(nk, "PARALLEL_MIN_WORK", 0)  # every kernel on numba's worker threads
    _, path = _exported(tmp_path, "resnet20_1w1a", 32)
    plan = load(path, num_threads=2)
    xs = [_images(2, 32, seed=10 + i) for i in range(6)]
    want = [plan(x) for x in xs]
    with ThreadPoolExecutor(max_workers=3) as pool:
        got = list(pool.map(plan, xs))
    assert all(np.array_equal(g, w) for g, w in zip(got, want, strict=True))


def test_stale_kernel_cache_is_flushed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """numba validates a cached function against its own file only; the kernels' cached functions are dropped
    when any source file of the kernels folder changed (its stamp differs), those of other files kept."""
    from recu.deploy.runtime.kernels import cache
    from recu.deploy.runtime.kernels import float_ops as fk
    from recu.deploy.runtime.kernels import plan_exec as pk

    # One cache directory per source folder: the one ensure_fresh_cache scans holds every kernel's files.
    assert cache.cache_dir() == Path(fk.conv2d_nhwc_serial._cache._cache_path) == Path(pk.run_plan._cache._cache_path)
    kernel_files = ["float_ops.conv2d_nhwc_serial-593.py311.nbi", "float_ops.conv2d_nhwc_serial-593.py311.1.nbc",
                    "plan_exec.run_plan-486.py311.nbi"]
    kept = ["other_module.f-1.py311.nbi", "float_ops_notes.txt"]
    for name in kernel_files + kept:
        (tmp_path / name).write_text("x")
    (tmp_path / cache._STAMP_FILE).write_text("an older source")
    monkeypatch.setattr(cache, "cache_dir", lambda: tmp_path)
    monkeypatch.setattr(cache, "_FRESH", False)
    cache.ensure_fresh_cache()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept + [cache._STAMP_FILE])
    assert (tmp_path / cache._STAMP_FILE).read_text() == cache.source_stamp()
    (tmp_path / kernel_files[0]).write_text("x")
    monkeypatch.setattr(cache, "_FRESH", False)
    cache.ensure_fresh_cache()  # the stamp is current: nothing dropped
    assert (tmp_path / kernel_files[0]).exists()
    (tmp_path / cache._STAMP_FILE).write_text("an older source")
    cache.ensure_fresh_cache()  # once per process
    assert (tmp_path / kernel_files[0]).exists()


def test_kernel_source_stamp_covers_the_whole_folder() -> None:
    """The stamp hashes every source file of the kernels folder (a new kernel module is covered unasked)."""
    import hashlib

    from recu.deploy.runtime.kernels import cache

    files = sorted(Path(cache.__file__).parent.glob("*.py"))
    assert {"plan_exec.py", "float_ops.py", "popcount_avx512.py", "amx.py", "taps.py", "jit.py"} <= {p.name for p in files}
    h = hashlib.sha256()
    for p in files:
        h.update(p.name.encode() + b"\0" + p.read_bytes())
    assert cache.source_stamp() == h.hexdigest()


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name,size", [("resnet20_1w1a", 32), ("resnet18_1w1a_imagenet", 64)])
def test_skip_connections_fused_into_binary_convs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str,
                                                 size: int, impl: str) -> None:
    """Each residual add (+ hardtanh) runs inside the binary conv that feeds it - also where the skip
    is computed after the conv (ResNet-20's pooled shortcut, ResNet-18's downsample) - on every
    kernel path; the logits are bit-identical to the unfused plan, on 1 and 2 threads."""
    from recu.deploy.runtime.kernels import plan_exec as pk
    from recu.deploy.runtime import plan as P
    from recu.deploy.runtime.fileio import read_metadata, read_tensors

    _, path = _exported(tmp_path, name, size)
    meta, tensors = read_metadata(path), read_tensors(path)
    fused = P.build_plan(meta, tensors, (2, 3, size, size), impl=impl)
    binary_ops = [pk.OP_BCONV_AVX512, pk.OP_BCONV_AVX2, pk.OP_BCONV_PORTABLE, pk.OP_BCONV_AMX8, pk.OP_BCONV_AMX1,
                  pk.OP_BCONV_TAPS]
    convs = fused.ops[np.isin(fused.ops[:, pk.F_OP], binary_ops)]
    assert len(convs) == len(meta["binary_layers"])
    assert int((fused.ops[:, pk.F_OP] == pk.OP_ADD_ACT).sum()) == 0  # every add is fused
    assert (convs[:, pk.F_IN1] >= 0).all()
    x = _images(2, size, seed=5)
    got = load(path, impl=impl, num_threads=1)(x)
    from recu.deploy.runtime.kernels import threads as nk

    with monkeypatch.context() as m:
        m.setattr(nk, "PARALLEL_MIN_WORK", 0)  # every row on the worker threads
        np.testing.assert_array_equal(got, load(path, impl=impl, num_threads=2)(x))
    monkeypatch.setattr(P, "fuse_residuals", lambda nodes, output: (nodes, output))
    unfused = P.build_plan(meta, tensors, (2, 3, size, size), impl=impl)
    assert int((unfused.ops[:, pk.F_OP] == pk.OP_ADD_ACT).sum()) == len(convs)
    np.testing.assert_array_equal(got, load(path, impl=impl, num_threads=1)(x))


@pytest.mark.parametrize("name,size,pad", [("resnet20_1w1a", 32, 1), ("resnet18_1w1a_imagenet", 64, 3)])
def test_input_row_pads_the_stem(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, size: int,
                                 pad: int) -> None:
    """The input row writes the stem's zero columns and the stem runs without horizontal padding; the
    logits are bit-identical to the plan whose stem pads itself. A stem weight that is not finite
    (0 * inf is NaN) keeps the stem's own padding."""
    from recu.deploy.runtime.kernels import plan_exec as pk
    from recu.deploy.runtime import plan as P
    from recu.deploy.runtime.fileio import read_metadata, read_tensors

    _, path = _exported(tmp_path, name, size)
    meta, tensors = read_metadata(path), read_tensors(path)
    shape = (2, 3, size, size)
    plan = P.build_plan(meta, tensors, shape)
    stem = plan.ops[1]
    assert plan.ops[0, pk.F_OP] == pk.OP_INPUT and plan.ops[0, pk.F_P] == pad
    assert tuple(plan.vals[plan.ops[0, pk.F_OUT], 1:]) == (2, size, size + 2 * pad, 3)
    assert stem[pk.F_OP] == pk.OP_CONV and stem[pk.F_P + 9] == 0  # its pw
    x = _images(2, size, seed=9)
    got = load(path, num_threads=1)(x)
    monkeypatch.setattr(P, "pad_input_for_conv", lambda nodes, name, tensors: 0)
    unpadded = P.build_plan(meta, tensors, shape)
    assert unpadded.ops[0, pk.F_P] == 0 and unpadded.ops[1, pk.F_P + 9] == pad
    np.testing.assert_array_equal(got, load(path, num_threads=1)(x))
    monkeypatch.undo()
    key = next(nd["tensors"]["weight"] for nd in meta["graph"]["nodes"] if nd["op"] == "conv2d")
    tensors[key] = np.array(tensors[key], np.float32)
    tensors[key].flat[0] = np.inf
    assert P.build_plan(meta, tensors, shape).ops[0, pk.F_P] == 0


def _assert_fusion_is_exact(monkeypatch: pytest.MonkeyPatch, path: Path, x: np.ndarray, fusion: str, op: int,
                            unfused_rows: int, impl: Optional[str] = None) -> None:
    """The plan's logits on one thread equal those with every row on two worker threads, and those of the
    plan built without the ``plan.<fusion>`` pass, which has ``unfused_rows`` rows of ``op``."""
    from recu.deploy.runtime.kernels import threads as nk
    from recu.deploy.runtime.kernels import plan_exec as pk
    from recu.deploy.runtime import plan as P
    from recu.deploy.runtime.fileio import read_metadata, read_tensors

    got = load(path, impl=impl, num_threads=1)(x)
    with monkeypatch.context() as m:
        m.setattr(nk, "PARALLEL_MIN_WORK", 0)  # every row on the worker threads
        np.testing.assert_array_equal(got, load(path, impl=impl, num_threads=2)(x))
    with monkeypatch.context() as m:
        m.setattr(P, fusion, lambda nodes, output: (nodes, output))
        unfused = P.build_plan(read_metadata(path), read_tensors(path), x.shape, impl=impl)
        assert int((unfused.ops[:, pk.F_OP] == op).sum()) == unfused_rows
        np.testing.assert_array_equal(got, load(path, impl=impl, num_threads=1)(x))


def test_channel_pad_fused_into_avg_pool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ResNet-20's two option-A shortcuts (avg pool, then zero channels) are one row each, which writes
    the padded value; the logits are bit-identical to the two-row plan's, with one or two threads."""
    from recu.deploy.runtime.kernels import plan_exec as pk
    from recu.deploy.runtime import plan as P
    from recu.deploy.runtime.fileio import read_metadata, read_tensors

    _, path = _exported(tmp_path, "resnet20_1w1a", 32)
    meta, tensors = read_metadata(path), read_tensors(path)
    shape = (2, 3, 32, 32)
    fused = P.build_plan(meta, tensors, shape)
    pools = fused.ops[fused.ops[:, pk.F_OP] == pk.OP_AVG_POOL]
    assert int((fused.ops[:, pk.F_OP] == pk.OP_PAD_CHANNELS).sum()) == 0
    assert [tuple(fused.vals[r[pk.F_OUT], 1:]) for r in pools] == [(2, 16, 16, 32), (2, 8, 8, 64)]
    assert [tuple(r[pk.F_P + 9:pk.F_P + 11]) for r in pools] == [(8, 8), (16, 16)]
    _assert_fusion_is_exact(monkeypatch, path, _images(2, 32, seed=8), "fuse_pool_channel_pad", pk.OP_PAD_CHANNELS, 2)


def test_nhwc_view_is_the_reshaped_slice_and_keeps_its_buffer_alive() -> None:
    """The executor's cheap view: the same elements as ``flat[ofs:ofs + size].reshape(shape)`` (writes go
    to ``flat``), and the view holds a reference to the buffer, which outlives the caller's name for it."""
    import gc

    import numba

    from recu.deploy.runtime.kernels.plan_exec import nhwc_view

    @numba.njit
    def view(flat, ofs, n, h, w, c):  # noqa: ANN001, ANN202
        return nhwc_view(flat, ofs, n, h, w, c)

    @numba.njit
    def fill(flat):  # noqa: ANN001, ANN202
        v = nhwc_view(flat, 5, 2, 3, 4, 2)
        v[1, 2, 3, 1] = -1.0

    flat = np.arange(60, dtype=np.float32)
    got = view(flat, 7, 2, 2, 3, 2)
    np.testing.assert_array_equal(got, flat[7:31].reshape(2, 2, 3, 2))
    assert got.shape == (2, 2, 3, 2) and got.flags.c_contiguous
    fill(flat)
    assert flat[5 + ((1 * 3 + 2) * 4 + 3) * 2 + 1] == -1.0
    kept = view(np.arange(100, dtype=np.float32), 10, 1, 2, 3, 4)
    gc.collect()
    np.testing.assert_array_equal(kept.reshape(-1), np.arange(10, 34, dtype=np.float32))
    assert view(flat, 0, 0, 0, 0, 0).shape == (0, 0, 0, 0)


def test_max_pool_fused_into_the_stem(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ResNet-18's stem conv (+ BatchNorm + hardtanh) and its max pool are one row, which pools each band
    of conv rows while it is in cache; its conv output is the row's own scratch. The logits of a batch of
    two are bit-identical to the two-row plan's, with one thread (banded) or two (two passes)."""
    from recu.deploy.runtime.kernels import plan_exec as pk
    from recu.deploy.runtime import plan as P
    from recu.deploy.runtime.fileio import read_metadata, read_tensors

    _, path = _exported(tmp_path, "resnet18_1w1a_imagenet", 64)
    meta, tensors = read_metadata(path), read_tensors(path)
    shape = (2, 3, 64, 64)
    fused = P.build_plan(meta, tensors, shape)
    stem = fused.ops[1]
    assert int((fused.ops[:, pk.F_OP] == pk.OP_MAX_POOL).sum()) == 0
    assert stem[pk.F_OP] == pk.OP_CONV and stem[pk.F_P + pk.P_CONV_POOL] == 1
    assert tuple(stem[pk.F_P + pk.P_CONV_POOL + 1:pk.F_P + pk.P_CONV_POOL + 7]) == (3, 3, 2, 2, 1, 1)
    assert tuple(fused.vals[stem[pk.F_IN1], 1:]) == (2, 32, 32, 64)  # the conv's output, the row's scratch
    assert tuple(fused.vals[stem[pk.F_OUT], 1:]) == (2, 16, 16, 64)  # pooled
    _assert_fusion_is_exact(monkeypatch, path, _images(2, 64, seed=5), "fuse_conv_max_pool", pk.OP_MAX_POOL, 1)


@pytest.mark.parametrize("impl", IMPLS[:1] + ["portable"])
@pytest.mark.parametrize("name,size,fused_bns", [("resnet20_1w1a", 32, 1), ("resnet18_1w1a_imagenet", 64, 4)])
def test_batch_norm_fused_into_float_convs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, size: int,
                                           fused_bns: int, impl: str) -> None:
    """The BatchNorm (+ hardtanh) after a float conv - the stem, ResNet-18's three downsample convs -
    runs inside the conv's row; bit-identical to the separate row, with one or two threads."""
    from recu.deploy.runtime.kernels import plan_exec as pk
    from recu.deploy.runtime import plan as P
    from recu.deploy.runtime.fileio import read_metadata, read_tensors

    _, path = _exported(tmp_path, name, size)
    meta, tensors = read_metadata(path), read_tensors(path)
    shape = (2, 3, size, size)
    affine = lambda plan: int((plan.ops[:, pk.F_OP] == pk.OP_AFFINE_ACT).sum())  # noqa: E731
    fused = P.build_plan(meta, tensors, shape, impl=impl)
    assert int((fused.ops[fused.ops[:, pk.F_OP] == pk.OP_CONV][:, pk.F_P + pk.P_CONV_BN] == 1).sum()) == fused_bns
    _assert_fusion_is_exact(monkeypatch, path, _images(2, size, seed=6), "fuse_conv_batch_norm", pk.OP_AFFINE_ACT,
                            affine(fused) + fused_bns, impl)


def test_auto_runs_packable_layers_on_the_tap_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """In a plan, ``auto`` on an AMX CPU keeps AMX from 64 input channels on only for the layers the
    kernel-row packed avx512 path does not take (kernel width 1); an explicit choice is kept."""
    from recu.deploy.runtime import kernels as K
    from recu.deploy.runtime import plan as P

    monkeypatch.setattr(K.cpu, "has_amx", lambda: True)
    monkeypatch.setattr(K.cpu, "has_vpopcntdq", lambda: True)
    monkeypatch.setattr(P, "has_vpopcntdq", lambda: True)
    monkeypatch.setattr(K.cpu, "numba_available", lambda: True)
    monkeypatch.delenv(K.ENV_VAR, raising=False)
    monkeypatch.delenv("RECU_DEPLOY_TAPS", raising=False)
    assert P.plan_layer_kernel(None, 64, 3) == "avx512"
    assert P.plan_layer_kernel("auto", 16, 3) == "avx512"
    assert P.plan_layer_kernel(None, 64, 1) == "amx"  # a 1x1 conv has no kernel row to pack
    assert P.plan_layer_kernel(None, 128, 3) == "avx512" and P.plan_layer_kernel(None, 512, 3) == "avx512"
    assert P.plan_layer_kernel("amx", 64, 3) == "amx" and P.plan_layer_kernel("amx", 128, 3) == "amx"
    monkeypatch.setenv("RECU_DEPLOY_TAPS", "0")
    assert P.plan_layer_kernel(None, 64, 3) == "amx"


def test_flatten_of_a_pooled_value_is_the_same_value(tmp_path: Path) -> None:
    """A flatten of an (N, 1, 1, C) NHWC value (after global pooling) is no row: the next op reads the
    pooled value itself, and the logits are the PyTorch model's."""
    from recu.deploy.runtime.kernels import plan_exec as pk
    from recu.deploy.runtime import plan as P
    from recu.deploy.runtime.fileio import read_metadata, read_tensors

    model, path = _exported(tmp_path, "resnet20_1w1a", 32)
    meta, tensors = read_metadata(path), read_tensors(path)
    plan = P.build_plan(meta, tensors, (2, 3, 32, 32))
    ops = plan.ops[:, pk.F_OP].tolist()
    assert pk.OP_FLATTEN not in ops and ops.count(pk.OP_GLOBAL_AVG_POOL) == 1
    pooled = plan.ops[ops.index(pk.OP_GLOBAL_AVG_POOL), pk.F_OUT]
    assert plan.ops[ops.index(pk.OP_GLOBAL_AVG_POOL) + 1, pk.F_IN0] == pooled  # the BatchNorm1d reads it
    x = _images(2, 32, seed=10)
    assert_same_logits(load(path, num_threads=1)(x), fixed_order_logits(model, x))
