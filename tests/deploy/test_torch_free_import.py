"""The deploy runtime imports and reads files without PyTorch; the lazy package attributes stay what they were.

The runtime-only environment itself (torch not installed) is tested by ``tests_runtime/`` in ``.ci/run``;
here a subprocess blocks ``import torch`` (``sys.modules["torch"] = None``), which raises the same
ModuleNotFoundError that a missing PyTorch does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import recu
import recu.deploy
from recu.deploy.loader import resolve_engine

BLOCK_TORCH = "import sys\nsys.modules['torch'] = None  # import torch now raises ModuleNotFoundError(name='torch')\n"


def run_python(code: str, block_torch: bool = False) -> dict:
    """Run ``code`` in a fresh interpreter (one thread; ``block_torch``: as if PyTorch were not installed),
    return the JSON object it printed on its last line."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    source = (BLOCK_TORCH if block_torch else "") + textwrap.dedent(code)
    done = subprocess.run([sys.executable, "-c", source], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_runtime_imports_no_torch() -> None:
    out = run_python("""
        import json, sys
        import recu, recu.deploy
        light = {m: m in sys.modules for m in ("torch", "numba", "safetensors")}
        import recu.deploy.runtime.kernels, recu.deploy.runtime.pack, recu.deploy.loader, recu.deploy.runtime.fileio, recu.deploy.runtime.validate, recu.deploy.runtime.fma_numpy
        print(json.dumps({"light": light, "torch": "torch" in sys.modules}))
    """)
    assert out == {"light": {"torch": False, "numba": False, "safetensors": False}, "torch": False}


def test_every_runtime_module_imports_with_torch_blocked() -> None:
    """Each module of recu.deploy.runtime (the kernels included, numba compiling nothing at import) imports
    where PyTorch cannot, and none of them pulls in the exporter, recu.nn or recu.models."""
    runtime = Path(recu.deploy.__file__).parent / "runtime"
    modules = sorted("recu.deploy." + ".".join(p.relative_to(runtime.parent).with_suffix("").parts).removesuffix(".__init__")
                     for p in runtime.rglob("*.py"))
    assert "recu.deploy.runtime.kernels.popcount_avx512" in modules and len(modules) >= 20
    out = run_python(f"""
        import importlib, json, sys
        for name in {modules!r}:
            importlib.import_module(name)
        loaded = sorted(m for m, mod in sys.modules.items()  # the blocked torch is there as None
                        if mod is not None and m.startswith(("recu.deploy.exporter", "recu.nn", "recu.models", "torch")))
        print(json.dumps(loaded))
    """, block_torch=True)
    assert out == []


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small exported network (digits CNN, 2 binary convs)."""
    from recu import models

    path = tmp_path_factory.mktemp("torch_free") / "digits.recu"
    recu.deploy.export(models.create("digits_cnn_1w1a").eval(), path)
    return path


def test_files_read_and_errors_without_torch(tiny_file: Path) -> None:
    out = run_python(f"""
        import json
        import numpy as np
        import recu, recu.deploy
        path = {str(tiny_file)!r}
        meta = recu.deploy.read_metadata(path)
        tensors = recu.deploy.read_tensors(path)
        errors = {{}}
        for what, attempt in [("recu.ReCUConv2d", lambda: recu.ReCUConv2d),
                              ("import recu.nn", lambda: __import__("recu.nn")),
                              ("import recu.functional", lambda: __import__("recu.functional")),
                              ("recu.deploy.export", lambda: recu.deploy.export),
                              ("load layers", lambda: recu.deploy.load(path, engine="layers"))]:
            try:
                attempt()
                errors[what] = None
            except ModuleNotFoundError as e:
                errors[what] = [str(e), e.name]
        bad = {{**tensors, "binary.features.0.bits": tensors["binary.features.0.bits"].astype(np.float64)}}
        try:
            recu.deploy.runtime.validate.check_file(meta, bad, "bad.recu")
        except recu.deploy.DeployFileError as e:
            errors["check_file"] = str(e)
        print(json.dumps({{"layers": [l["name"] for l in meta["binary_layers"]],
                          "bits": {{k: [str(v.dtype), list(v.shape)] for k, v in tensors.items() if k.endswith(".bits")}},
                          "errors": errors, "torch": "torch" in sys.modules and sys.modules["torch"] is not None}}))
    """, block_torch=True)
    assert out["layers"] == ["features.0", "features.4"]
    # DigitsCNN: 32 -> 64 and 64 -> 64 binary 3x3 convs, (C_out, KH, KW, ceil(C_in / 8)) bytes
    assert out["bits"] == {"binary.features.0.bits": ["uint8", [64, 3, 3, 4]],
                           "binary.features.4.bits": ["uint8", [64, 3, 3, 8]]}
    hint = "needs PyTorch: pip install recu-bnn[torch] (or torch itself)"
    errors = out["errors"]
    assert errors["recu.ReCUConv2d"][0].startswith(f"recu.ReCUConv2d {hint}")
    assert errors["import recu.nn"][0].startswith(f"recu.nn {hint}")
    assert errors["import recu.functional"][0].startswith(f"recu.functional {hint}")
    assert errors["recu.deploy.export"][0].startswith(f"recu.deploy.export {hint}")
    assert errors["load layers"][0] == f"{tiny_file}: engine='layers' {hint}"
    assert errors.pop("check_file").startswith("bad.recu: tensor 'binary.features.0.bits': dtype float64")
    assert all(name == "torch" for _, name in errors.values())  # still recognisable as a missing torch
    assert out["torch"] is False


def test_read_tensors_matches_the_torch_reader_and_refuses_other_files(tiny_file: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    arrays = recu.deploy.read_tensors(tiny_file)
    tensors = load_file(str(tiny_file))
    assert sorted(arrays) == sorted(tensors)
    for key, value in tensors.items():
        assert arrays[key].dtype == value.numpy().dtype and (arrays[key] == value.numpy()).all(), key
    garbage = tmp_path / "garbage.recu"
    garbage.write_bytes(b"not a safetensors file")
    for read in (recu.deploy.read_tensors, recu.deploy.read_metadata):
        with pytest.raises(ValueError, match=r"garbage.recu is not a recu deployment file \(not safetensors\)"):
            read(garbage)
        with pytest.raises(FileNotFoundError):
            read(tmp_path / "missing.recu")


def test_export_stays_the_function_whatever_imports_first() -> None:
    out = run_python("""
        import json, types
        import recu.deploy.exporter.export, recu.summary, recu.deploy.exporter.onnx_export, recu.cli.core  # submodules first
        import recu, recu.deploy
        from recu.deploy import export
        from recu import summary
        import recu.deploy.exporter as exporter
        print(json.dumps([type(o).__name__ for o in (recu.deploy.export, export, exporter.export, recu.summary, summary)]))
    """)
    assert out == ["function"] * 5


def test_lazy_names_are_the_submodules_objects() -> None:
    import recu.convert
    import recu.deploy.exporter.export
    import recu.deploy.exporter.layers
    import recu.deploy.loader
    import recu.deploy.runtime.fileio
    import recu.deploy.runtime.kernels.conv
    import recu.deploy.runtime.plan
    import recu.deploy.runtime.validate
    import recu.nn
    import recu.schedule
    import recu.summary

    summary_mod = sys.modules["recu.summary"]  # recu.summary is the function
    homes = {"binarize": recu.convert, "BinaryConfig": recu.nn, "preset": recu.nn, "ExponentialTau": recu.schedule,
             "set_tau": recu.schedule, "summary": summary_mod, "ModelSummary": summary_mod}
    for name, home in homes.items():
        assert getattr(recu, name) is getattr(home, name), name
    assert set(recu.__all__) <= set(dir(recu)) and all(hasattr(recu, n) for n in recu.__all__)
    assert recu.functional.sign is sys.modules["recu.functional"].sign
    deploy_homes = {"export": sys.modules["recu.deploy.exporter.export"], "load": recu.deploy.loader,
                    "read_metadata": recu.deploy.runtime.fileio, "read_tensors": recu.deploy.runtime.fileio,
                    "DeployFileError": recu.deploy.runtime.validate,
                    "PackedModel": recu.deploy.exporter.layers, "binary_conv2d": recu.deploy.runtime.kernels.conv,
                    "CompiledModel": recu.deploy.runtime.plan}
    for name, home in deploy_homes.items():
        assert getattr(recu.deploy, name) is getattr(home, name), name
    assert set(recu.deploy.__all__) <= set(dir(recu.deploy))
    assert recu.deploy.exporter.layers.read_metadata is recu.deploy.runtime.fileio.read_metadata
    assert recu.deploy.exporter.layers.load is recu.deploy.exporter.layers.load_layers
    with pytest.raises(AttributeError, match="has no attribute 'no_such_name'"):
        recu.deploy.no_such_name  # noqa: B018


@pytest.mark.parametrize("meta,model,fuse_float,engine,expected", [
    ({"graph": {"nodes": []}}, None, False, "auto", "plan"),
    ({"graph": None, "graph_unsupported": "x"}, None, False, "auto", "layers"),
    ({}, None, False, "auto", "layers"),  # a file from before the graph
    ({"graph": {"nodes": []}}, object(), False, "auto", "layers"),
    ({"graph": {"nodes": []}}, None, True, "auto", "layers"),
    ({"graph": {"nodes": []}}, None, False, "layers", "layers"),
    ({}, None, False, "plan", "plan"),  # load_plan itself says the file has no graph
])
def test_resolve_engine(meta: dict, model: object, fuse_float: bool, engine: str, expected: str) -> None:
    assert resolve_engine(meta, engine, model, fuse_float) == expected


def test_resolve_engine_rejects_bad_requests() -> None:
    with pytest.raises(ValueError, match="engine must be one of auto, plan, layers; got 'fast'"):
        resolve_engine({}, "fast")
    with pytest.raises(ValueError, match="engine='plan' takes neither model= nor fuse_float="):
        resolve_engine({"graph": {}}, "plan", model=torch.nn.Linear(1, 1))
    with pytest.raises(ValueError, match="engine='plan' takes neither"):
        resolve_engine({"graph": {}}, "plan", fuse_float=True)


def test_load_layers_engine_is_the_packed_model(tiny_file: Path) -> None:
    from recu.deploy.exporter.layers import PackedModel

    packed = recu.deploy.load(tiny_file, engine="layers", impl="numpy")
    assert isinstance(packed, PackedModel)
    assert [n for n, _ in packed.packed_layers()] == ["features.0", "features.4"]
