"""Figures and tables for the Snakemake report.

Every function reads pipeline outputs and writes one file atomically. Figures are small PNGs
(fixed samples, modest dpi) so that the self-contained HTML report stays light.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from skimage.segmentation import find_boundaries

from nucleistyle.data.bbbc038 import list_images, load_sample
from nucleistyle.metrics import read_groups
from nucleistyle.naming import ModelName
from nucleistyle.outputs import atomic_path
from nucleistyle.paths import PathLike
from nucleistyle.report import save_figure

__all__ = [
    "plot_examples",
    "plot_paired_by_group",
    "plot_scores_by_group",
    "summarize_dataset",
]

log = logging.getLogger(__name__)
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


def plot_scores_by_group(table: pd.DataFrame, out_png: PathLike) -> None:
    """DSB score per group (modality) and model with CI error bars, one panel per test set.

    Args:
        table: long table with columns model, testset, group (``all`` = whole test set), score
            and, optionally, ci_low and ci_high (e.g. 95 % bootstrap intervals over images,
            :func:`nucleistyle.report.table1.score_table`); without them, no error bars.
        out_png: destination PNG (written atomically).

    Raises:
        ValueError: the table has no rows or lacks one of the required columns.
    """
    required = {"model", "testset", "group", "score"}
    if len(table) == 0 or not required <= set(table.columns):
        raise ValueError(
            f"{out_png}: need a non-empty table with columns {sorted(required)}, "
            f"got {len(table)} rows and {list(table.columns)}"
        )
    has_ci = {"ci_low", "ci_high"} <= set(table.columns)
    testsets = list(dict.fromkeys(table["testset"]))
    models = list(dict.fromkeys(table["model"]))
    n_groups = max(table.groupby("testset")["group"].nunique())
    width = max(6.0, 0.45 * n_groups * max(len(models), 2) ** 0.5 + 2.5)
    legend_width = 2.4  # inches at the right for the model legend
    total = width * len(testsets) + legend_width
    fig, axes = plt.subplots(1, len(testsets), figsize=(total, 4.0), squeeze=False)
    # a model and its test-time-augmented variant share a hue: dark circles for
    # the single pass, light squares for TTA
    names = {m: ModelName.parse(m) for m in models}
    stems = list(dict.fromkeys(names[m].trained for m in models))
    palette = plt.get_cmap("tab20")
    span = 0.8  # of the unit spacing between groups, shared by the models
    step = span / max(len(models), 1)
    for ax, testset in zip(axes[0], testsets, strict=True):
        part = table[table.testset == testset]
        groups = [ALL, *sorted(g for g in part["group"].unique() if g != ALL)]
        x = np.arange(len(groups), dtype=float)
        for i, model in enumerate(models):
            rows = part[part.model == model].set_index("group").reindex(groups)
            if rows["score"].isna().all():
                continue
            offset = -span / 2 + step * (i + 0.5)
            score = rows["score"].to_numpy(float)
            yerr = None
            if has_ci:
                yerr = np.vstack(
                    [
                        score - rows["ci_low"].to_numpy(float),
                        rows["ci_high"].to_numpy(float) - score,
                    ]
                )
            ax.errorbar(
                x + offset,
                score,
                yerr=yerr,
                fmt="s" if names[model].tta else "o",
                markersize=4,
                capsize=2,
                elinewidth=1,
                color=palette(2 * (stems.index(names[model].trained) % 10) + names[model].tta),
                label=model,
            )
        ax.set_xticks(x, groups, rotation=20, fontsize=8)
        for boundary in x[:-1] + 0.5:
            ax.axvline(boundary, color="0.85", linewidth=0.8, zorder=0)
        ax.set_xlim(-0.5, len(groups) - 0.5)
        ax.set_ylim(0, 1.02)
        ax.set_ylabel("DSB score (mean over IoU 0.50:0.95)")
        ax.set_title(testset + (" (95% bootstrap CI over images)" if has_ci else ""), fontsize=10)
    legend: dict[str, Any] = {}  # one entry per model, even if a test set lacks it
    for ax in axes[0]:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            legend.setdefault(label, handle)
    fig.legend(list(legend.values()), list(legend), loc="center right", fontsize=7, frameon=False)
    fig.tight_layout(rect=(0.0, 0.0, 1.0 - legend_width / total, 1.0))
    save_figure(fig, out_png)


def plot_paired_by_group(paired: pd.DataFrame, out_png: PathLike) -> None:
    """Each comparison's paired difference per group (modality) with its CI and wins/losses:
    every augmentation arm minus ``none`` and the GAN's ``style`` arm minus the ``jitter``
    control, single-pass predictions, one panel per test set and baseline.

    Args:
        paired: :func:`nucleistyle.report.table1.paired_differences`.
        out_png: destination PNG (written atomically); a note when nothing was compared.
    """
    rows = paired[~paired["tta"].astype(bool)] if len(paired) else paired
    panels = list(dict.fromkeys(zip(rows["testset"], rows["baseline"], strict=True)))
    fig, axes = plt.subplots(
        1, max(1, len(panels)), figsize=(5.2 * max(1, len(panels)), 3.6), squeeze=False
    )
    if not panels:
        axes[0, 0].text(0.5, 0.5, "no augmentation arm to compare", ha="center", va="center")
        axes[0, 0].axis("off")
    palette = plt.get_cmap("tab10")
    for ax, (testset, baseline) in zip(axes[0], panels, strict=False):
        part = rows[(rows.testset == testset) & (rows.baseline == baseline)]
        groups = [ALL, *sorted(g for g in part["group"].unique() if g != ALL)]
        pairs = list(dict.fromkeys(zip(part["model"], part["reference"], strict=True)))
        step = 0.8 / max(len(pairs), 1)
        for i, (model, reference) in enumerate(pairs):
            sub = part[(part.model == model) & (part.reference == reference)]
            sub = sub.set_index("group").reindex(groups)
            x = np.arange(len(groups)) - 0.4 + step * (i + 0.5)
            diff = sub["mean_diff"].to_numpy(float)
            ax.errorbar(
                x, diff,
                yerr=np.vstack([diff - sub["ci_low"].to_numpy(float),
                                sub["ci_high"].to_numpy(float) - diff]),
                fmt="o", ms=4, capsize=2, color=palette(i),
                label=f"{ModelName.parse(model).arm} − {ModelName.parse(reference).arm}",
            )  # fmt: skip
            for xi, row in zip(x, sub.itertuples(), strict=True):
                if np.isfinite(row.mean_diff):
                    ax.annotate(f"{row.wins}/{row.losses}", (xi, row.ci_high), fontsize=5,
                                ha="center", va="bottom", color=palette(i))  # fmt: skip
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xticks(np.arange(len(groups)))
        ax.set_xticklabels(
            [f"{g}\n(n={int(part.loc[part.group == g, 'n_images'].max())})" for g in groups],
            fontsize=7,
            rotation=30,
        )
        ax.set_ylabel("paired difference in DSB score", fontsize=8)
        ax.set_title(f"{baseline} on {testset} (wins/losses above)", fontsize=9)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7, frameon=False)
    fig.tight_layout()
    save_figure(fig, out_png)
