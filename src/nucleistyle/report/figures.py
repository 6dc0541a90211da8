"""Figures and tables for the Snakemake report.

Every function reads pipeline outputs and writes one file atomically. Figures are small PNGs
(fixed samples, modest dpi) so that the self-contained HTML report stays light.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from skimage.segmentation import find_boundaries

from nucleistyle.data.bbbc038 import list_images, load_sample
from nucleistyle.metrics import read_groups
from nucleistyle.report import save_figure
from nucleistyle.utils import atomic_path

__all__ = [
    "plot_examples",
    "plot_scores_by_group",
    "summarize_dataset",
    "tabulate_scores",
]

log = logging.getLogger(__name__)
PathLike = str | os.PathLike[str]
ALL = "all"


def summarize_dataset(
    train_dir: PathLike, groups_csv: PathLike | None, out_csv: PathLike
) -> pd.DataFrame:
    """Count training images and nuclei per group (modality) and write the table.

    Args:
        train_dir: training set in BBBC038 layout.
        groups_csv: optional ImageId -> ``modality`` table (without it, one group ``all``).
        out_csv: destination; columns group, n_images, share, n_nuclei, median_height,
            median_width.

    Returns:
        The table, one row per group, largest first.
    """
    groups = {} if groups_csv is None else read_groups(groups_csv)
    rows = []
    for record in list_images(train_dir):
        sample = load_sample(record)
        n = (
            0
            if sample.labels is None
            else int(len(np.unique(sample.labels)) - (sample.labels == 0).any())
        )
        rows.append(
            {
                "ImageId": record.image_id,
                "group": groups.get(record.image_id, ALL if not groups else "unknown"),
                "n_nuclei": n,
                "height": sample.image.shape[0],
                "width": sample.image.shape[1],
            }
        )
    images = pd.DataFrame(rows)
    table = (
        images.groupby("group")
        .agg(
            n_images=("ImageId", "size"),
            n_nuclei=("n_nuclei", "sum"),
            median_height=("height", "median"),
            median_width=("width", "median"),
        )
        .reset_index()
        .sort_values(["n_images", "group"], ascending=[False, True])
    )
    table.insert(2, "share", (table["n_images"] / table["n_images"].sum()).round(4))
    with atomic_path(out_csv) as tmp:
        table.to_csv(tmp, index=False)
    log.info("%d training images in %d groups", len(images), len(table))
    return table


def plot_examples(
    train_dir: PathLike,
    summary: pd.DataFrame,
    out_png: PathLike,
    groups_csv: PathLike | None = None,
    per_group: int = 4,
) -> None:
    """A grid of example training images, one row per group, with ground-truth contours in yellow.

    The examples are the first ``per_group`` images of each group in ImageId order (a fixed sample).
    """
    groups = {} if groups_csv is None else read_groups(groups_csv)
    records = list_images(train_dir)
    names = list(summary["group"])
    chosen: dict[str, list] = {name: [] for name in names}
    for record in records:
        name = groups.get(record.image_id, ALL if not groups else "unknown")
        if name in chosen and len(chosen[name]) < per_group:
            chosen[name].append(record)
    fig, axes = plt.subplots(
        len(names), per_group, figsize=(2.2 * per_group, 2.3 * len(names)), squeeze=False
    )
    for row, name in enumerate(names):
        for col in range(per_group):
            ax = axes[row, col]
            ax.set_axis_off()
            if col >= len(chosen[name]):
                continue
            sample = load_sample(chosen[name][col])
            ax.imshow(_with_contours(sample.image, sample.labels))
            if col == 0:
                ax.set_title(
                    f"{name} (n={int(summary.loc[summary.group == name, 'n_images'].iloc[0])})",
                    fontsize=9,
                    loc="left",
                )
    fig.tight_layout()
    save_figure(fig, out_png)


def _with_contours(
    image: np.ndarray, labels: np.ndarray | None, colour: Sequence[int] = (255, 220, 0)
) -> np.ndarray:
    if labels is None:
        return image
    out = image.copy()
    out[find_boundaries(labels, mode="inner")] = colour
    return out


def tabulate_scores(summaries: Sequence[PathLike], out_csv: PathLike) -> pd.DataFrame:
    """Collect ``results/score/{model}/{testset}/summary.json`` files into one long table.

    Returns:
        Columns model, testset, group (``all`` = whole test set), n_images, score.
    """
    rows = []
    for path in summaries:
        path = Path(path)
        model, testset = path.parent.parent.name, path.parent.name
        summary = json.loads(path.read_text())
        rows.append(
            {
                "model": model,
                "testset": testset,
                "group": ALL,
                "n_images": summary["n_images"],
                "score": summary["score"],
            }
        )
        for group, values in sorted(summary.get("groups", {}).items()):
            rows.append(
                {
                    "model": model,
                    "testset": testset,
                    "group": group,
                    "n_images": values["n_images"],
                    "score": values["score"],
                }
            )
    table = pd.DataFrame(rows, columns=["model", "testset", "group", "n_images", "score"])
    table["score"] = table["score"].round(4)
    with atomic_path(out_csv) as tmp:
        table.to_csv(tmp, index=False)
    return table


def plot_scores_by_group(table: pd.DataFrame, out_png: PathLike) -> None:
    """Grouped bars of the DSB score per group (modality) and model, one panel per test set."""
    testsets = list(dict.fromkeys(table["testset"]))
    fig, axes = plt.subplots(1, len(testsets), figsize=(7.5 * len(testsets), 3.6), squeeze=False)
    for ax, testset in zip(axes[0], testsets, strict=True):
        part = table[table.testset == testset]
        pivot = part.pivot_table(index="group", columns="model", values="score", sort=False)
        order = [ALL, *sorted(g for g in pivot.index if g != ALL)]
        pivot = pivot.loc[order]
        width = 0.8 / max(len(pivot.columns), 1)
        x = np.arange(len(pivot.index))
        for i, model in enumerate(pivot.columns):
            bars = ax.bar(x + i * width, pivot[model].to_numpy(), width, label=model)
            ax.bar_label(bars, fmt="%.3f", fontsize=7)
        ax.set_xticks(
            x + width * (len(pivot.columns) - 1) / 2, pivot.index, rotation=20, fontsize=8
        )
        ax.set_ylim(0, 1)
        ax.set_ylabel("DSB score (mean over IoU 0.50:0.95)")
        ax.set_title(testset, fontsize=10)
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, out_png)
