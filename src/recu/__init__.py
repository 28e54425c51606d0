"""recu: binary neural networks with ReCU (Xu et al., ICCV 2021) in PyTorch.

Layers (:mod:`recu.nn`), the method's maths (:mod:`recu.functional`), tau schedules,
model conversion and a model summary are importable from here; training, analysis
and deployment live in their own subpackages.

The names are imported on first use (PEP 562), so ``import recu`` imports no PyTorch: a deployment
machine runs :mod:`recu.deploy` without it (``pip install recu-bnn[runtime]``).
"""

from ._lazy import attach

__version__ = "0.1.0"

__all__ = [
    "BinaryConfig",
    "PRESETS",
    "preset",
    "ReCUConv1d",
    "ReCUConv2d",
    "ReCULinear",
    "binarize",
    "binary_layers",
    "set_tau",
    "get_tau",
    "TauSchedule",
    "ConstantTau",
    "ExponentialTau",
    "LinearTau",
    "CosineTau",
    "SwitchOffTau",
    "create_schedule",
    "summary",
    "ModelSummary",
]

# Where each name lives; imported from there on first access.
_NAMES = {
    **dict.fromkeys(("binarize", "binary_layers"), ".convert"),
    **dict.fromkeys(("BinaryConfig", "PRESETS", "ReCUConv1d", "ReCUConv2d", "ReCULinear", "preset"), ".nn"),
    **dict.fromkeys(("ConstantTau", "CosineTau", "ExponentialTau", "LinearTau", "SwitchOffTau", "TauSchedule",
                     "create_schedule", "get_tau", "set_tau"), ".schedule"),
    **dict.fromkeys(("ModelSummary", "summary"), ".summary"),
}
# Subpackages reachable as attributes after a bare ``import recu`` (the eager imports made
# ``recu.functional`` and ``recu.nn`` so; the rest come along for the same spelling).
_SUBMODULES = ("functional", "nn", "convert", "schedule", "models", "data", "train", "analysis", "deploy",
               "pretrained", "cli")

__getattr__, __dir__ = attach(__name__, _NAMES, _SUBMODULES)
