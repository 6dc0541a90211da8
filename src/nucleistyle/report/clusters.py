"""Figures of the modality discovery step (paper Figure 2) and of the CLAHE enhancement.

Every function writes one small PNG (90 dpi) atomically. Example images are a fixed sample: the
first images in ImageId order.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.lines import Line2D

from nucleistyle.cluster import cluster_quality
from nucleistyle.data.bbbc038 import list_images, read_image
from nucleistyle.outputs import atomic_path
from nucleistyle.paths import PathLike
from nucleistyle.report import save_figure

__all__ = [
    "cluster_tables",
    "plot_clahe_examples",
    "plot_cluster_examples",
    "plot_pca",
    "plot_silhouette",
]

log = logging.getLogger(__name__)
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "h", "<", ">")


def _colour(cluster: int) -> tuple[float, ...]:
    return plt.get_cmap("tab10")(int(cluster) % 10)


def _cluster_labels(assignments: pd.DataFrame) -> dict[int, str]:
    """Cluster id -> "id name" (or just the id when the table has no name column)."""
    ids = sorted(int(c) for c in assignments["cluster"].unique())
    if "name" not in assignments.columns:
        return {c: str(c) for c in ids}
    names = assignments.groupby("cluster")["name"].first()
    return {c: f"{c} {names.loc[c]}" for c in ids}


def plot_pca(
    assignments: pd.DataFrame, out_png: PathLike, truth: Mapping[str, str] | None = None
) -> None:
    """Figure 2a: the PCA of the HSV features coloured by cluster, and the cluster sizes.

    Args:
        assignments: Table with ImageId, cluster, pc1, pc2 (and optionally name), as written by
            :func:`nucleistyle.cluster.cluster_dataset`.
        out_png: Destination PNG.
        truth: Optional ImageId -> true group; the marker shape then shows the group (images
            without a group are drawn as "?").
    """
    labels = _cluster_labels(assignments)
    fig, (ax, bars) = plt.subplots(1, 2, figsize=(10, 4), width_ratios=(3, 2))
    groups = None
    if truth is not None:
        groups = assignments["ImageId"].astype(str).map(lambda i: truth.get(i, "?"))
        shape = {g: MARKERS[i % len(MARKERS)] for i, g in enumerate(sorted(set(groups)))}
    for cluster, label in labels.items():
        part = assignments["cluster"] == cluster
        if groups is None:
            ax.scatter(
                *assignments.loc[part, ["pc1", "pc2"]].T.to_numpy(),
                s=14,
                color=_colour(cluster),
                label=label,
                alpha=0.8,
            )
            continue
        for group, marker in shape.items():
            sel = part & (groups == group)
            ax.scatter(
                *assignments.loc[sel, ["pc1", "pc2"]].T.to_numpy(),
                s=16,
                color=_colour(cluster),
                marker=marker,
                alpha=0.8,
            )
    handles = [
        Line2D([], [], color=tuple(_colour(c)), marker="o", ls="", label=t)  # type: ignore[arg-type]
        for c, t in labels.items()
    ]
    if groups is not None:
        handles += [Line2D([], [], color="0.4", marker=m, ls="", label=g) for g, m in shape.items()]
    ax.legend(
        handles=handles,
        fontsize=7,
        loc="best",
        title="cluster / group" if groups is not None else "cluster",
        title_fontsize=7,
    )
    ax.set(xlabel="PC1", ylabel="PC2", title="PCA of the HSV features")
    sizes = assignments["cluster"].value_counts().reindex(list(labels), fill_value=0)
    y = np.arange(len(sizes))
    bar = bars.barh(y, sizes.to_numpy(), color=[_colour(c) for c in sizes.index])
    bars.bar_label(bar, [f"{n} ({100 * n / sizes.sum():.1f} %)" for n in sizes], fontsize=7)
    bars.set_yticks(y, [labels[c] for c in sizes.index], fontsize=8)
    bars.invert_yaxis()
    bars.set_xlim(0, sizes.max() * 1.35)
    bars.set(xlabel="images", title=f"class distribution (n = {sizes.sum()})")
    fig.tight_layout()
    save_figure(fig, out_png)


def plot_cluster_examples(
    images_dir: PathLike, assignments: pd.DataFrame, out_png: PathLike, per_cluster: int = 6
) -> None:
    """Figure 2b: example images, one row per cluster (its first images in ImageId order).

    Args:
        images_dir: The clustered images (BBBC038 layout or flat folder).
        assignments: Table with ImageId and cluster (and optionally name).
        out_png: Destination PNG.
        per_cluster: Images per row.
    """
    paths = {r.image_id: r.image_path for r in list_images(images_dir)}
    labels = _cluster_labels(assignments)
    ordered = assignments.sort_values("ImageId")
    fig, axes = plt.subplots(
        len(labels), per_cluster, squeeze=False, figsize=(1.6 * per_cluster, 1.7 * len(labels))
    )
    for row, (cluster, label) in enumerate(labels.items()):
        members = ordered.loc[ordered["cluster"] == cluster, "ImageId"]
        for col, ax in enumerate(axes[row]):
            ax.set_xticks([])
            ax.set_yticks([])
            if col >= len(members):
                ax.set_axis_off()
                continue
            ax.imshow(read_image(paths[members.iloc[col]])[0])
        axes[row, 0].set_ylabel(f"{label}\nn = {len(members)}", fontsize=8)
    fig.tight_layout()
    save_figure(fig, out_png)


def plot_silhouette(table: pd.DataFrame, out_png: PathLike, k: int | None = None) -> None:
    """Silhouette score and K-means inertia against k, with the configured k marked.

    Args:
        table: Columns k, silhouette, inertia (from :func:`nucleistyle.cluster.silhouette_by_k`).
        out_png: Destination PNG.
        k: The configured number of clusters (a dashed line), optional.
    """
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(table["k"], table["silhouette"], "o-", color="tab:blue", label="silhouette")
    ax.set(xlabel="k (clusters)", ylabel="silhouette")
    ax.yaxis.label.set_color("tab:blue")
    other = ax.twinx()
    other.plot(table["k"], table["inertia"], "s--", color="tab:orange", label="inertia")
    other.set_ylabel("inertia", color="tab:orange")
    if k is not None:
        ax.axvline(k, color="0.3", ls=":", lw=1.5)
        ax.set_title(f"K-means model selection (configured k = {k})", fontsize=10)
    fig.tight_layout()
    save_figure(fig, out_png)


def plot_clahe_examples(
    images_dir: PathLike,
    enhanced_dir: PathLike,
    table: pd.DataFrame,
    out_png: PathLike,
    n: int = 4,
) -> None:
    """Before / after pairs of CLAHE: the first ``n`` enhanced images in ImageId order.

    Args:
        images_dir: The original images.
        enhanced_dir: The enhanced copy (from :func:`nucleistyle.enhance.enhance_dataset`).
        table: Its table (ImageId, cluster, enhanced, v_median_before, v_median_after).
        out_png: Destination PNG.
        n: Number of pairs (columns).
    """
    before = {r.image_id: r.image_path for r in list_images(images_dir)}
    after = {r.image_id: r.image_path for r in list_images(enhanced_dir)}
    chosen = table[table["enhanced"].astype(bool)].sort_values("ImageId").head(n)
    fig, axes = plt.subplots(
        2, max(len(chosen), 1), figsize=(2.4 * max(len(chosen), 1), 5), squeeze=False
    )
    for ax in axes.ravel():
        ax.set_axis_off()
    if chosen.empty:
        axes[0, 0].text(0.5, 0.5, "no image enhanced", ha="center", va="center")
    for col, row in enumerate(chosen.itertuples(index=False)):
        for line, (path, v) in enumerate(
            ((before[row.ImageId], row.v_median_before), (after[row.ImageId], row.v_median_after))
        ):
            axes[line, col].imshow(read_image(path)[0])
            stage = "before" if line == 0 else "after"
            axes[line, col].set_title(
                f"{stage}: cluster {row.cluster}, median V {v:.2f}", fontsize=7
            )
    fig.tight_layout()
    save_figure(fig, out_png)


def cluster_tables(
    assignments: pd.DataFrame,
    silhouette: pd.DataFrame,
    clahe: pd.DataFrame,
    k: int,
    truth: Mapping[str, str] | None,
    sizes_csv: PathLike,
    quality_csv: PathLike,
) -> pd.DataFrame:
    """The cluster-size table and the cluster-quality metrics, written as CSV.

    ``sizes_csv``: cluster, name, n_images, share, n_enhanced (CLAHE). ``quality_csv``: metric,
    value — the silhouette at the configured k, the share of the largest cluster and, when the true
    groups are known (synthetic data), ARI and NMI against them.

    Returns:
        The quality table.
    """
    enhanced = clahe.groupby("cluster")["enhanced"].sum()
    sizes = (
        assignments.groupby(["cluster", "name"]).size().rename("n_images").reset_index()
        .assign(share=lambda t: (t.n_images / t.n_images.sum()).round(4))
    )  # fmt: skip
    sizes["n_enhanced"] = sizes["cluster"].map(enhanced).fillna(0).astype(int)
    rows = [("k", k), ("largest_cluster_share", float(sizes["share"].max()))]
    at_k = silhouette.loc[silhouette["k"] == k, "silhouette"]
    if len(at_k):
        rows.append(("silhouette", round(float(at_k.iloc[0]), 4)))
    if truth:
        quality = cluster_quality(assignments, truth)
        rows += [("ari_vs_true_modality", round(quality["ari"], 4)),
                 ("nmi_vs_true_modality", round(quality["nmi"], 4))]  # fmt: skip
    table = pd.DataFrame(rows, columns=["metric", "value"])
    with atomic_path(sizes_csv) as tmp:
        sizes.to_csv(tmp, index=False)
    with atomic_path(quality_csv) as tmp:
        table.to_csv(tmp, index=False)
    return table
