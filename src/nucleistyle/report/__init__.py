"""Report figures and tables (matplotlib, Agg backend; nothing here needs a display)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from nucleistyle.outputs import atomic_path
from nucleistyle.paths import PathLike

__all__ = ["DPI", "save_figure"]

DPI = 90  # small PNGs keep the self-contained HTML report light


def save_figure(fig: plt.Figure, out_png: PathLike, dpi: int = DPI) -> None:
    """Write ``fig`` as PNG atomically and close it."""
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    plt.close(fig)
