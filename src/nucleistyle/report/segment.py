"""Training curves of the Mask R-CNN segmenters (report figure).

Reads the history TSVs written by :func:`nucleistyle.segment.engine.train_segmenter` (columns
iteration, loss, loss_classifier, loss_box_reg, loss_mask, loss_objectness, loss_rpn_box_reg,
lr, sec_per_it, and val_* on validation rows) and draws one line per model.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import matplotlib.pyplot as plt
import pandas as pd

from nucleistyle.report import save_figure
from nucleistyle.utils import NucleistyleError

__all__ = ["plot_training"]

PathLike = str | os.PathLike[str]
PANELS = (
    ("loss", "training loss (total)"),
    ("loss_mask", "mask loss"),
    ("loss_classifier", "box classification loss"),
    ("val_loss", "validation loss"),
)


def _read_history(path: PathLike) -> pd.DataFrame:
    try:
        table = pd.read_csv(path, sep="\t")
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise NucleistyleError(f"cannot read training history {path}: {exc}") from exc
    if "iteration" not in table.columns or "loss" not in table.columns:
        raise NucleistyleError(
            f"{path}: not a training history (needs columns iteration and loss, found "
            f"{list(table.columns)})"
        )
    return table


def plot_training(history_tsvs: Mapping[str, PathLike], out_png: PathLike) -> None:
    """Loss curves of several models, one colour per model, one panel per loss.

    Panels: total training loss, mask loss, box classification loss, and the validation loss
    when any model has one (Mirzaev's split). Smoothed values as logged (window mean).

    Args:
        history_tsvs: ``{model name: history TSV}`` in legend order.
        out_png: Output PNG (written atomically).

    Raises:
        NucleistyleError: no history given, or an unreadable / foreign TSV (named).
    """
    if not history_tsvs:
        raise NucleistyleError("plot_training: no training histories given")
    tables = {name: _read_history(path) for name, path in history_tsvs.items()}
    panels = [
        (col, title)
        for col, title in PANELS
        if any(col in t.columns and t[col].notna().any() for t in tables.values())
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2), squeeze=False)
    for ax, (column, title) in zip(axes[0], panels, strict=True):
        for i, (name, table) in enumerate(tables.items()):
            if column not in table.columns:
                continue
            rows = table[["iteration", column]].dropna()
            ax.plot(
                rows["iteration"],
                rows[column],
                label=name,
                color=f"C{i % 10}",
                marker="o" if column.startswith("val_") else None,
                markersize=3,
            )
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("iteration")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, out_png)
