"""Headless PNG figures: a matplotlib Figure on its own Agg canvas, with no pyplot state.

Library code draws through these so that it never switches the backend of a caller's session
and needs no display.
"""
from __future__ import annotations

import os


def new_figure(width: float, height: float, dpi: int = 100):
    """A Figure of width x height inches drawn by Agg; add axes with `fig.subplots()`."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, path: str) -> str:
    """Lay the figure out tightly and write it to path (folders created); returns path."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    return path
