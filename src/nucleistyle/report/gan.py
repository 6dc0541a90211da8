"""GAN figures: Figure 3 (transfer matrix), loss curves, augmented-sample gallery."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.patches import Rectangle
from PIL import Image
from skimage.segmentation import find_boundaries

from nucleistyle.data.bbbc038 import list_images, load_sample, read_image
from nucleistyle.errors import NucleistyleError
from nucleistyle.gan.augment import MANIFEST_COLUMNS
from nucleistyle.gan.data import read_assignments
from nucleistyle.gan.quality import copy_quality, record_looks, visibility
from nucleistyle.gan.stylize import load_stylizer
from nucleistyle.paths import PathLike
from nucleistyle.report import save_figure

__all__ = ["LOSS_PANELS", "plot_augmented_gallery", "plot_figure3", "plot_losses"]

LOSS_PANELS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("discriminators", ("d1_adv", "d2_adv", "d1_cls", "d2_cls", "d_content")),
    ("generator: adversarial", ("g_adv1", "g_adv2", "g_cls1", "g_cls2", "g_content")),
    ("reconstruction (L1)", ("cross_cycle", "self_recon", "latent")),
    ("regularisers", ("kl", "kl_content")),
)


def _square(image: np.ndarray, side: int = 0) -> np.ndarray:
    """Centre square crop, resized to ``side`` x ``side`` (bicubic; nearest for a label image)
    unless ``side`` is 0."""
    h, w = image.shape[:2]
    s = min(h, w)
    y, x = (h - s) // 2, (w - s) // 2
    crop = image[y : y + s, x : x + s]
    if not side or side == s:
        return crop
    if crop.ndim == 2:
        resized = Image.fromarray(crop.astype(np.int32)).resize(
            (side, side), Image.Resampling.NEAREST
        )
        return np.asarray(resized).astype(crop.dtype)
    return np.asarray(Image.fromarray(crop).resize((side, side), Image.Resampling.BICUBIC))


def _quality_label(styled: np.ndarray, labels: np.ndarray | None, look, before: float) -> str:
    """A panel's annotation: visibility against the target domain and phantoms per 100 nuclei
    (the diagonal: the share of the original's visibility kept)."""
    if labels is None or look is None or not labels.any():
        return ""
    quality = copy_quality(styled, labels, look)
    if np.isfinite(before):
        return f"kept {quality['visibility'] / before:.2f}"
    return f"vis {quality['visibility_ratio']:.2f} · ph {quality['phantoms_per_100']:.0f}"


def _off(ax: plt.Axes) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def plot_figure3(
    images_dir: PathLike,
    assignments_csv: PathLike,
    model_path: PathLike,
    out_png: PathLike,
    seed: int = 0,
    device: str = "auto",
) -> None:
    """Figure 3: one original per domain (rows) rendered in every domain (columns).

    Each original is a centre square at the scale the GAN was trained on (resized to
    ``gan.resize`` px, or native when that is 0: nuclei as large as in training). Off-diagonal
    panels use a random attribute of the target domain (the model's attribute source); the
    diagonal (framed in red) is the self-reconstruction G(E_c(x), E_a(x, c), c). Where the
    original has masks, each panel is annotated with the copy's quality
    (:func:`nucleistyle.gan.quality.copy_quality`): ``vis`` the inherited nuclei's visibility
    as a share of the target domain's, ``ph`` phantoms per 100 nuclei; on the diagonal ``kept``,
    the share of the original's visibility.

    Args:
        images_dir: Training images.
        assignments_csv: Their clusters.
        model_path: GAN model.
        out_png: Output PNG.
        seed: Seeds the choice of images and attributes.
        device: Where the GAN runs.

    Raises:
        NucleistyleError: Unreadable inputs (named).
    """
    stylizer = load_stylizer(model_path, device)
    table = read_assignments(assignments_csv, stylizer.n_domains)
    by_id = {r.image_id: r for r in list_images(images_dir)}
    table = table[table["ImageId"].isin(list(by_id))]
    domain_of = dict(zip(table["ImageId"], table["cluster"], strict=True))
    looks = record_looks(
        [r for i, r in sorted(by_id.items()) if i in domain_of], domain_of, stylizer.n_domains
    )
    rng = np.random.default_rng(seed)
    c = stylizer.n_domains
    side = int(stylizer.config.get("resize", 0))  # the training scale: native when 0
    fig, axes = plt.subplots(c, c + 1, figsize=(1.55 * (c + 1), 1.6 * c), squeeze=False)
    for d in range(c):
        ids = sorted(table.loc[table["cluster"] == d, "ImageId"])
        for ax in axes[d]:
            _off(ax)
        axes[d, 0].set_ylabel(stylizer.domain_names[d], fontsize=8)
        if not ids:
            continue
        sample = load_sample(by_id[ids[int(rng.integers(len(ids)))]])
        image = _square(sample.image, side)
        labels = None if sample.labels is None else _square(sample.labels, side)
        axes[d, 0].imshow(image)
        for t in range(c):
            attribute = stylizer.encode_attribute(image, d) if t == d else None
            seed = int(rng.integers(2**31))
            styled = stylizer.stylize([image], t, attribute, seed=seed, source_domain=d)[0]
            ax = axes[d, t + 1]
            ax.imshow(styled)
            before, own = np.nan, looks[d]
            if t == d and labels is not None and own is not None and labels.any():
                before = visibility(image, labels, own)
            ax.set_xlabel(_quality_label(styled, labels, looks[t], before), fontsize=6, labelpad=1)
            if t == d:
                ax.add_patch(
                    Rectangle((0, 0), 1, 1, transform=ax.transAxes, fill=False, lw=3, ec="red")
                )
    axes[0, 0].set_title("original", fontsize=8)
    for t in range(c):
        axes[0, t + 1].set_title(f"→ {stylizer.domain_names[t]}", fontsize=8)
    fig.suptitle(
        "Style transfer: rows = source domain, columns = target (red: self-reconstruction);\n"
        "vis = nuclei as visible as in the target domain (1), ph = phantoms per 100 nuclei",
        fontsize=8,
    )
    fig.tight_layout()
    save_figure(fig, out_png)


def _plot_monitor(ax, rows: pd.DataFrame, reference: Mapping[str, float] | None) -> None:
    """The learning curve: style reached (style_hit against chance), the inherited nuclei's
    visibility against the target domain's and phantoms per nucleus (off-diagonal), the share
    of visibility the self-reconstruction keeps, and the foreground IoU, beside what a perfect
    transfer scores (``reference``, dotted) and, for the foreground IoU, what an unrelated image
    scores (``fg_iou_unrelated``, dash-dot) and the unstyled originals
    (``eval_fg_iou_original``, solid thin)."""
    reference = reference or {}
    rows = rows.copy()
    if "eval_phantoms_per_100" in rows:
        rows["eval_phantoms_per_nucleus"] = rows["eval_phantoms_per_100"] / 100
    for column, label in (
        ("eval_style_hit", "style_hit"),
        ("eval_visibility_ratio", "visibility vs target domain"),
        ("eval_phantoms_per_nucleus", "phantoms per nucleus"),
        ("eval_self_visibility_kept", "self-reconstruction: visibility kept"),
        ("eval_fg_iou", "foreground IoU"),
    ):
        if column not in rows:
            continue
        (line,) = ax.plot(rows["iteration"], rows[column], marker="o", ms=3, label=label)
        name = column.removeprefix("eval_")
        if name in reference:
            ax.axhline(reference[name], color=line.get_color(), ls=":", lw=1.0)
        if name == "fg_iou" and "fg_iou_unrelated" in reference:
            ax.axhline(reference["fg_iou_unrelated"], color=line.get_color(), ls="-.", lw=0.8)
        if name == "fg_iou" and "eval_fg_iou_original" in rows:
            ax.axhline(rows["eval_fg_iou_original"].iloc[-1], color=line.get_color(), lw=0.6)
    if reference:
        ax.plot([], [], color="grey", ls=":", lw=1.0, label="perfect transfer")
    if "fg_iou_unrelated" in reference:
        ax.plot([], [], color="grey", ls="-.", lw=0.8, label="unrelated image")
    if "eval_style_hit_chance" in rows:
        ax.axhline(rows["eval_style_hit_chance"].iloc[-1], color="grey", ls="--", lw=0.8)
        ax.text(rows["iteration"].iloc[0], rows["eval_style_hit_chance"].iloc[-1], " chance",
                fontsize=7, va="bottom", color="grey")  # fmt: skip
    ax.set_ylim(0, 1.02)
    ax.set_title("transfer to other domains (training images)", fontsize=9)
    ax.set_xlabel("iteration", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=6, frameon=False)


def plot_losses(
    history_tsv: PathLike, out_png: PathLike, reference: Mapping[str, float] | None = None
) -> None:
    """Loss curves from the training history TSV, one panel per group of terms, and the
    monitor's learning curve (style_hit, foreground IoU, edge correlation) when logged, with
    ``reference`` (``fg_iou``, ``edge_corr``: what a perfect transfer scores;
    ``fg_iou_unrelated``: what an unrelated image scores; from
    :func:`nucleistyle.gan.evaluate.perfect_transfer`) as reference lines.

    Raises:
        NucleistyleError: The file is missing, unreadable or has no rows.
    """
    try:
        history = pd.read_csv(history_tsv, sep="\t")
    except (OSError, ValueError) as exc:
        raise NucleistyleError(f"cannot read loss history {history_tsv}: {exc}") from exc
    if history.empty or "iteration" not in history:
        raise NucleistyleError(f"loss history {history_tsv} has no rows")
    monitored = "eval_style_hit" in history and history["eval_style_hit"].notna().any()
    panels = len(LOSS_PANELS) + monitored
    fig, axes = plt.subplots(1, panels, figsize=(3.3 * panels, 2.8))
    if monitored:
        _plot_monitor(axes[-1], history.dropna(subset=["eval_style_hit"]), reference)
    losses = history.dropna(subset=["g_total"]) if "g_total" in history else history
    window = max(1, len(losses) // 50)
    for ax, (title, names) in zip(axes, LOSS_PANELS, strict=False):
        for name in names:
            if name not in losses:
                continue
            (line,) = ax.plot(losses["iteration"], losses[name], alpha=0.25, lw=0.8)
            smooth = losses[name].rolling(window, min_periods=1).mean()
            ax.plot(losses["iteration"], smooth, color=line.get_color(), lw=1.3, label=name)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("iteration", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7, frameon=False)
    fig.tight_layout()
    save_figure(fig, out_png)


def _contours(image: np.ndarray, labels: np.ndarray | None) -> np.ndarray:
    if labels is None:
        return image
    out = image.copy()
    out[find_boundaries(labels, mode="inner")] = (255, 220, 0)
    return out


def plot_augmented_gallery(
    augmented_dir: PathLike, manifest_csv: PathLike, out_png: PathLike, n: int = 8
) -> None:
    """Source images (top) and their stylised copies (bottom) with the inherited mask contours.

    Shows the first ``n`` manifest rows (the manifest's order is random by construction), each
    copy titled with its target domain and quality (visibility against the target domain,
    phantoms per 100 nuclei). A manifest without rows (the quality gate kept no copy) gives a
    figure that says so.

    Raises:
        NucleistyleError: Unreadable manifest or folder.
    """
    try:
        manifest = pd.read_csv(manifest_csv, dtype={"ImageId": str, "source_ImageId": str})
    except (OSError, ValueError) as exc:
        raise NucleistyleError(f"cannot read manifest {manifest_csv}: {exc}") from exc
    missing = [c for c in MANIFEST_COLUMNS if c not in manifest]
    if missing:
        raise NucleistyleError(f"manifest {manifest_csv}: no column {missing[0]!r}")
    if manifest.empty:
        fig, ax = plt.subplots(figsize=(5, 1.5))
        ax.text(0.5, 0.5, "no restyled copy (the quality gate kept none)", ha="center")
        ax.axis("off")
        save_figure(fig, out_png)
        return
    records = {r.image_id: r for r in list_images(augmented_dir)}
    rows = manifest.head(n)
    fig, axes = plt.subplots(2, len(rows), figsize=(2.0 * len(rows), 4.3), squeeze=False)
    for j, row in enumerate(rows.itertuples(index=False)):
        record = records.get(row.ImageId)
        if record is None:
            raise NucleistyleError(f"{augmented_dir}: no image {row.ImageId} (from {manifest_csv})")
        sample = load_sample(record)
        source_path = Path(row.source_image)
        panels: Sequence[tuple[np.ndarray | None, str]] = (
            (
                read_image(source_path)[0] if source_path.is_file() else None,
                f"{row.source_ImageId[:8]} (cluster {row.source_cluster})",
            ),
            (
                sample.image,
                f"→ {row.target_name}\nvis {row.visibility_ratio:.2f} · ph "
                f"{row.phantoms_per_100:.0f}",
            ),
        )
        for i, (image, title) in enumerate(panels):
            ax = axes[i, j]
            _off(ax)
            if image is not None:
                ax.imshow(_contours(image, sample.labels))
            ax.set_title(title, fontsize=7)
    fig.suptitle("Style-augmented samples with inherited masks", fontsize=9)
    fig.tight_layout()
    save_figure(fig, out_png)
