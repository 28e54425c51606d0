"""Matplotlib, imported only when a plot is made (``import recu.analysis`` must work without it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def new_figure(nrows: int = 1, ncols: int = 1, size: tuple[float, float] = (6.4, 4.2), **kw: Any) -> tuple[Any, Any]:
    """A (figure, axes) pair drawn by the Agg canvas.

    Uses ``matplotlib.figure.Figure`` directly rather than pyplot, so no global backend is
    selected and nothing leaks between figures or into a user's interactive session.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:  # pragma: no cover - depends on the installation
        raise RuntimeError("plots need matplotlib: pip install 'recu-bnn[analysis]'") from e
    fig = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
    return fig, axes


def save(fig: Any, path: Path, dpi: int = 130) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path
