"""The deployment runtime: read, check and run a 1-bit deployment file, without PyTorch.

Needs numpy, safetensors and (for the compiled kernels) numba only - ``pip install recu-bnn[runtime]`` -
and imports neither PyTorch nor the exporter (:mod:`recu.deploy.exporter`); a test proves it with torch
blocked. A torch tensor given to a model comes back as a tensor, read through its NumPy view.

- :mod:`.fileio`: :func:`read_metadata`, :func:`read_tensors` of a file; :mod:`.validate`: the checks every
  engine runs first (:func:`check_file`, :class:`DeployFileError`).
- :mod:`.plan`: :func:`load_plan`, the whole network as one compiled call (:class:`CompiledModel`).
- :mod:`.graph_numpy`: :func:`run_graph`, the NumPy reference executor of a file's graph, step for step
  what the plan's kernels compute; :mod:`.fma_numpy`: float32 fused multiply-adds emulated exactly.
- :mod:`.pack`: the bit-packing conventions shared by the kernels and the file format.
- :mod:`.kernels`: the kernels, one module per family and instruction set (see its docstring).

Importing this package imports nothing; the names below are imported from their module on first use.
"""

from __future__ import annotations

from ..._lazy import attach

_NAMES = {
    **dict.fromkeys(("read_metadata", "read_tensors"), ".fileio"),
    **dict.fromkeys(("check_file", "DeployFileError"), ".validate"),
    **dict.fromkeys(("load_plan", "CompiledModel", "PlanError"), ".plan"),
    "run_graph": ".graph_numpy",
}
__all__ = list(_NAMES)

__getattr__, __dir__ = attach(__name__, _NAMES)
