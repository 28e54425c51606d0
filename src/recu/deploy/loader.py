""":func:`load`: a deployment file as an inference model, choosing the engine; importable without PyTorch.

Above both sub-packages: the ``plan`` engine is the runtime's, ``layers`` the exporter's (imported only
when asked for, so a runtime-only install never reaches it).

Two engines run a file written by :func:`recu.deploy.export`:

- ``plan`` (:func:`recu.deploy.runtime.plan.load_plan`): the whole network as one compiled numba call, numpy in
  and numpy out, no PyTorch needed. It needs the network graph that ``export`` stores in the file.
- ``layers`` (:func:`recu.deploy.exporter.layers.load_layers`): the PyTorch model with each binary layer
  replaced by a packed one - the bit-identical reference; needs PyTorch, takes a model skeleton and
  ``fuse_float``.

``auto`` takes ``plan`` when the file has a graph and neither ``model`` nor ``fuse_float`` asks for the
PyTorch model, else ``layers``.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Optional, Union

from .._lazy import TORCH_HINT
from .runtime.fileio import read_metadata

if TYPE_CHECKING:
    from torch import nn

    from .exporter.layers import PackedModel
    from .runtime.plan import CompiledModel

__all__ = ["ENGINES", "load", "resolve_engine"]

ENGINES = ("auto", "plan", "layers")


def resolve_engine(meta: dict, engine: str = "auto", model: object = None, fuse_float: bool = False) -> str:
    """The engine (``plan`` or ``layers``) that :func:`load` uses for a file with metadata ``meta``.

    Raises ValueError for an unknown engine, or for ``plan`` asked together with what only ``layers``
    offers (a model skeleton, ``fuse_float``).
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}; got {engine!r}")
    if engine == "plan" and (model is not None or fuse_float):
        raise ValueError("engine='plan' takes neither model= nor fuse_float= (they belong to engine='layers')")
    if engine != "auto":
        return engine
    return "plan" if meta.get("graph") and model is None and not fuse_float else "layers"


def _layers_reason(meta: dict, engine: str, model: object, fuse_float: bool) -> str:
    """Why a load runs the PyTorch ``layers`` engine, for the error when PyTorch is missing."""
    if engine == "layers":
        return "engine='layers'"
    if model is not None:
        return "a model skeleton (model=)"
    if fuse_float:
        return "fuse_float=True"
    return f"this file (no network graph: {meta.get('graph_unsupported') or 'written by an older recu'})"


def load(path: Union[str, os.PathLike], model: Optional["nn.Module"] = None, *, impl: Optional[str] = None,
         num_threads: Optional[int] = None, fuse_float: bool = False,
         engine: str = "auto") -> Union["CompiledModel", "PackedModel"]:
    """Load a deployment file for CPU inference.

    Args:
        path: a file written by :func:`recu.deploy.export`.
        model: ``layers`` only: the model skeleton (architecture; its weights are replaced) for models
            without a ``recu.models`` spec. It is copied, not modified.
        impl: kernel path (``auto``, ``amx``, ``avx512``, ``portable``, ``numpy``, ...); None reads
            ``RECU_DEPLOY_KERNEL``.
        num_threads: kernel threads; None: the engine's default (``layers``: PyTorch's count at each call).
        fuse_float: ``layers`` only: also fold BatchNorms into the full-precision convs that feed them
            (faster; float results then differ from PyTorch's by rounding), see
            :func:`recu.deploy.exporter.layers.load_layers`.
        engine: ``plan`` (a :class:`~recu.deploy.runtime.plan.CompiledModel`: numpy or torch in, the same kind
            out; no PyTorch needed), ``layers`` (the PyTorch :class:`~recu.deploy.exporter.layers.PackedModel`)
            or ``auto`` (``plan`` when the file has a graph and neither ``model`` nor ``fuse_float`` is
            given, else ``layers``).

    Raises:
        DeployFileError: (a ValueError) not a deployment file, or one that fails the checks both engines
            run before anything else (:func:`recu.deploy.runtime.validate.check_file`, ``docs/file-format.md``).
        ValueError: an unknown engine, or ``plan`` with ``model``/``fuse_float``.
        ModuleNotFoundError: the ``layers`` engine is needed and PyTorch is not installed.
    """
    meta = read_metadata(path)
    chosen = resolve_engine(meta, engine, model, fuse_float)
    if chosen == "plan":
        from .runtime.plan import load_plan

        return load_plan(path, impl=impl, num_threads=num_threads)
    try:
        from .exporter.layers import load_layers
    except ModuleNotFoundError as e:
        if e.name != "torch":
            raise
        raise ModuleNotFoundError(f"{path}: {_layers_reason(meta, engine, model, fuse_float)} needs PyTorch: "
                                  f"{TORCH_HINT}", name="torch") from None
    return load_layers(path, model, impl=impl, num_threads=num_threads, fuse_float=fuse_float)
