"""1-bit export and exact XNOR-popcount inference on the CPU.

- :mod:`recu.deploy.pack`: bit packing (sign, +1 at 0) along channels into uint64 words.
- :mod:`recu.deploy.kernels`: binary conv2d on packed data (numba, AVX-512 VPOPCNTDQ or portable;
  NumPy reference), exact zero padding.
- :mod:`recu.deploy.export`: :func:`export` a model to a safetensors + JSON file, 1 bit per binary weight.
- :mod:`recu.deploy.runtime`: :func:`load` that file into a packed CPU inference model.

Nothing here compiles at import time: numba kernels compile (or load from numba's cache) on first call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["export", "load", "PackedConv2d", "pack", "kernels"]

if TYPE_CHECKING:  # pragma: no cover
    from .export import export
    from .runtime import PackedConv2d, load


def __getattr__(name: str) -> Any:
    # Lazy: importing recu.deploy must not import numba, safetensors or torch.fx.
    if name == "export":
        from .export import export

        return export
    if name in ("load", "PackedConv2d"):
        from . import runtime

        return getattr(runtime, name)
    if name in ("pack", "kernels"):
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
