"""recu: binary neural networks with ReCU (Xu et al., ICCV 2021) in PyTorch.

Layers (:mod:`recu.nn`), the method's maths (:mod:`recu.functional`), tau schedules,
model conversion and a model summary are importable from here; training, analysis
and deployment live in their own subpackages.
"""

from .convert import binarize, binary_layers
from .nn import BinaryConfig, PRESETS, ReCUConv1d, ReCUConv2d, ReCULinear, preset
from .schedule import (
    ConstantTau,
    CosineTau,
    ExponentialTau,
    LinearTau,
    SwitchOffTau,
    TauSchedule,
    create_schedule,
    get_tau,
    set_tau,
)
from .summary import ModelSummary, summary

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
