"""Lazy package attributes (PEP 562), so that ``import recu`` and ``import recu.deploy`` import no PyTorch.

A deployment machine runs the 1-bit runtime without PyTorch (``pip install recu-bnn[runtime]``), so the
packages only import a submodule when one of its names is first used. Torch-free, and importing it
runs nothing.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any, Callable, Iterable

__all__ = ["TORCH_HINT", "attach", "missing_torch"]

TORCH_HINT = "pip install recu-bnn[torch] (or torch itself)"


def missing_torch(what: str) -> ModuleNotFoundError:
    """The error for ``what`` (a module or name) used where PyTorch is not installed."""
    return ModuleNotFoundError(f"{what} needs PyTorch: {TORCH_HINT}; the deployment runtime "
                               "(recu.deploy.load) runs without it", name="torch")


class _ShadowingPackage(types.ModuleType):
    """A package module in which some names are both a submodule and a function of that submodule.

    ``recu.summary`` (the function of ``recu/summary.py``) and ``recu.deploy.exporter.export`` (the function
    of ``recu/deploy/exporter/export.py``) are the functions. The import system binds a submodule to its
    package's attribute after running it, whoever imports it and whenever; this keeps the function.
    """

    def __setattr__(self, name: str, value: Any) -> None:
        shadowed = self.__dict__.get("_shadowed_submodules", ())
        if name in shadowed and isinstance(value, types.ModuleType) and value.__name__ == f"{self.__name__}.{name}":
            value = getattr(value, name)
        super().__setattr__(name, value)


def attach(package: str, names: dict[str, str], submodules: Iterable[str] = ()
           ) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package`` (PEP 562).

    Args:
        package: the package's ``__name__``; call this from its ``__init__``.
        names: public attribute -> the relative submodule that defines it (``{"summary": ".summary"}``);
            imported on first access, then cached in the package.
        submodules: submodule names that ``package.<name>`` imports on access (what an eager package
            offered as a side effect of importing its names, e.g. ``recu.functional``).

    A name spelled like its own submodule (``summary`` from ``.summary``) stays bound to the name, not to
    the submodule, however the submodule gets imported. A name whose submodule needs PyTorch, where
    PyTorch is missing, raises :func:`missing_torch`'s error.
    """
    module = sys.modules[package]
    submodules = tuple(submodules)
    shadowed = tuple(n for n, sub in names.items() if sub == f".{n}")
    if shadowed:
        module.__class__ = _ShadowingPackage
        module.__dict__["_shadowed_submodules"] = shadowed

    def __getattr__(name: str) -> Any:
        if name in names:
            try:
                value = getattr(importlib.import_module(names[name], package), name)
            except ModuleNotFoundError as e:
                if e.name != "torch":
                    raise
                raise missing_torch(f"{package}.{name}") from None
        elif name in submodules:
            value = importlib.import_module(f".{name}", package)
        else:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module.__dict__[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(module.__dict__) | set(names) | set(submodules))

    return __getattr__, __dir__
