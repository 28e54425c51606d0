"""Analysis of ReCU models: closed forms, a training monitor and run reports.

``theory`` (closed forms of the clamped Laplace and the same quantities measured on
weights), ``stats`` (distribution statistics of weight tensors), ``monitor``
(:class:`DeadWeightMonitor`, a training callback), ``figures`` (the paper's Figures 3
and 4), ``report`` (``recu analyze``), ``ablate`` (``recu ablate``), ``paired`` (paired t and exact
Wilcoxon tests in numpy) and ``claims`` (``recu claims``). Importing this package needs neither
matplotlib nor scipy; the plotting functions import matplotlib when called.
"""

from .figures import make_figures
from .monitor import DeadWeightMonitor
from .report import analyze
from .theory import (
    clamped_share,
    entropy,
    laplace_alpha,
    laplace_quantile,
    measured_alpha,
    measured_b_hat,
    measured_clamped_share,
    measured_quantile,
    measured_quantization_error,
    measured_standardized,
    quantization_error,
)

__all__ = [
    "DeadWeightMonitor",
    "analyze",
    "make_figures",
    "laplace_quantile",
    "laplace_alpha",
    "quantization_error",
    "entropy",
    "clamped_share",
    "measured_standardized",
    "measured_b_hat",
    "measured_quantile",
    "measured_clamped_share",
    "measured_alpha",
    "measured_quantization_error",
]
