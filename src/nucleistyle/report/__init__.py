"""Report figures and tables (matplotlib, Agg backend; nothing here needs a display)."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from nucleistyle.utils import atomic_path

__all__ = ["DPI", "save_figure"]

DPI = 90  # small PNGs keep the self-contained HTML report light


def save_figure(fig: plt.Figure, out_png: str | os.PathLike[str], dpi: int = DPI) -> None:
    """Write ``fig`` as PNG atomically and close it."""
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    plt.close(fig)
