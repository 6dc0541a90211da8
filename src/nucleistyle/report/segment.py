"""Report figures of the Mask R-CNN segmenters: training curves and paper Figure 4.

:func:`plot_training` reads the history TSVs written by
:func:`nucleistyle.segment.engine.train_segmenter` (columns iteration, loss, loss_classifier,
loss_box_reg, loss_mask, loss_objectness, loss_rpn_box_reg, lr, sec_per_it, and val_* on validation
rows) and draws one line per model.

:func:`plot_figure4` draws, for a few test images, the contours predicted without and with style
augmentation beside the ground truth, and highlights the nuclei found only with augmentation.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.patches import Patch
from scipy.ndimage import binary_dilation
from skimage.segmentation import find_boundaries

from nucleistyle.data.bbbc038 import list_images, read_image
from nucleistyle.data.csvio import GroundTruth, Submission, read_solution, read_submission
from nucleistyle.data.rle import rle_decode_labels
from nucleistyle.errors import NucleistyleError
from nucleistyle.metrics import image_score, read_groups
from nucleistyle.paths import PathLike
from nucleistyle.report import save_figure

__all__ = [
    "ARMS",
    "gained_objects",
    "group_predictions",
    "matched_pairs",
    "plot_figure4",
    "plot_training",
    "score_figure4_images",
    "select_figure4_images",
]

log = logging.getLogger(__name__)
PANELS = (
    ("loss", "training loss (total)"),
    ("loss_mask", "mask loss"),
    ("loss_classifier", "box classification loss"),
    ("val_loss", "validation loss"),
)
SCORES = ("val_score", "train_score")  # the learning curve: validation, else monitored training


def _rgb(colour: tuple[int, int, int]) -> tuple[float, float, float]:
    """A 0-255 colour as matplotlib's 0-1 RGB."""
    r, g, b = colour
    return r / 255, g / 255, b / 255


def _score_column(table: pd.DataFrame) -> str | None:
    return next((c for c in SCORES if c in table.columns and table[c].notna().any()), None)


def _plot_scores(ax_iter, ax_cpu, tables: Mapping[str, pd.DataFrame]) -> None:
    """DSB score against iteration and against CPU minutes, each model's post-processing
    ceiling as a dashed line in its colour."""
    kinds, calibrated = set(), False
    for i, (name, table) in enumerate(tables.items()):
        column = _score_column(table)
        if column is None:
            continue
        kinds.add("validation" if column == "val_score" else "training (no validation split)")
        rows = table.dropna(subset=[column])
        colour = f"C{i % 10}"
        ax_iter.plot(rows["iteration"], rows[column], color=colour, marker="o", ms=3, label=name)
        if "cpu_s" in rows:
            ax_cpu.plot(rows["cpu_s"] / 60, rows[column], color=colour, marker="o", ms=3)
        if "score_ceiling" in rows:
            for ax in (ax_iter, ax_cpu):
                ax.axhline(rows["score_ceiling"].iloc[-1], color=colour, ls="--", lw=0.8)
        if "val_score_calibrated" in table:  # the selected weights after threshold calibration
            for _, row in table.dropna(subset=["val_score_calibrated"]).iterrows():
                at = rows[rows["iteration"] == row["iteration"]]
                ax_iter.plot(row["iteration"], row["val_score_calibrated"], "*", color=colour, ms=9)
                if "cpu_s" in at and len(at):
                    ax_cpu.plot(at["cpu_s"].iloc[-1] / 60, row["val_score_calibrated"], "*",
                                color=colour, ms=9)  # fmt: skip
                calibrated = True
    what = " / ".join(sorted(kinds)) or "no scores logged"
    star = "; star: after threshold calibration" if calibrated else ""
    ax_iter.set_title(f"DSB score ({what} images{star})", fontsize=9)
    ax_cpu.set_title("DSB score against CPU time (dashed: post-processing ceiling)", fontsize=9)
    ax_iter.set_xlabel("iteration")
    ax_cpu.set_xlabel("CPU minutes of training")
    for ax in (ax_iter, ax_cpu):
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    if ax_iter.get_legend_handles_labels()[0]:
        ax_iter.legend(fontsize=7)


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
    """Learning and loss curves of several models, one colour per model.

    Top row: the DSB score of the validation images (the first training images when a model
    has no validation split) against iteration and against CPU minutes, with each model's
    post-processing ceiling and, for a calibrated model (``segment.calibrate``), a star at its
    selected iteration: the validation score with the calibrated thresholds. Bottom row: total
    training loss, mask loss, box classification loss, and the validation loss when any model
    has one. Smoothed values as logged.

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
    width = max(len(panels), 2)
    fig, axes = plt.subplots(2, width, figsize=(4 * width, 6.4), squeeze=False)
    _plot_scores(axes[0][0], axes[0][1], tables)
    for ax in axes[0][2:]:
        ax.axis("off")
    for ax in axes[1][len(panels) :]:
        ax.axis("off")
    for ax, (column, title) in zip(axes[1], panels, strict=False):
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
    fig.tight_layout()
    save_figure(fig, out_png)


# Figure 4 -----------------------------------------------------------------------------------------

ARMS = ("none", "style")
"""The training arms Figure 4 compares: without and with style augmentation."""
PREDICTED = (255, 220, 0)  # yellow: predicted nuclei
GAINED = (0, 255, 255)  # cyan: nuclei found only with augmentation
TRUTH = (60, 255, 60)  # green: ground truth
PANEL_INCHES = 2.4


def group_predictions(named: Mapping[str, PathLike]) -> dict[str, dict[str, str]]:
    """Sort the named inputs of rule ``plot_figure4`` into ``{baseline: {arm: submission}}``.

    Inputs are named ``<baseline>_<arm>`` with arm in :data:`ARMS` (``deep_retina_none``,
    ``deep_retina_style``); names that do not end in one of the arms (``images``, ``solution``,
    ``groups``, ``code``) are ignored. Baselines keep the order of their first input.

    Raises:
        NucleistyleError: no prediction is named, or a baseline lacks one of the two arms.

    Example:
        >>> group_predictions({"images": "x", "mirzaev_none": "a.csv", "mirzaev_style": "b.csv"})
        {'mirzaev': {'none': 'a.csv', 'style': 'b.csv'}}
    """
    grouped: dict[str, dict[str, str]] = {}
    for name, path in named.items():
        baseline, _, arm = name.rpartition("_")
        if baseline and arm in ARMS:
            grouped.setdefault(baseline, {})[arm] = str(path)
    if not grouped:
        raise NucleistyleError(
            "Figure 4: no predictions given (inputs named <baseline>_none and <baseline>_style)"
        )
    for baseline, arms in grouped.items():
        missing = [arm for arm in ARMS if arm not in arms]
        if missing:
            raise NucleistyleError(
                f"Figure 4: baseline {baseline} has no {missing[0]!r} predictions (segment.arms "
                "must include both 'none' and 'style')"
            )
    return {b: {arm: arms[arm] for arm in ARMS} for b, arms in grouped.items()}


def matched_pairs(gt: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The (ground-truth, prediction) object pairs whose IoU is strictly above 0.5.

    At IoU > 0.5 an object matches at most one object of the other image (two disjoint objects
    cannot both cover more than half of a third), so the pairs are one-to-one. The test is exact
    in integers: ``2 |A ∩ B| > |A ∪ B|``, the 0.50 threshold of :mod:`nucleistyle.metrics`.

    Args:
        gt: (H, W) integer label image of the ground truth, 0 = background.
        pred: (H, W) integer label image of the prediction, 0 = background.

    Returns:
        ``(gt_ids, pred_ids)``: int64 arrays of equal length, sorted by ground-truth label.

    Raises:
        ValueError: shapes differ, an input is not a 2-D integer array, or a label is negative.

    Example:
        >>> gt = np.array([[1, 1, 0, 2], [1, 1, 0, 2]])
        >>> pred = np.array([[5, 5, 0, 0], [5, 0, 0, 7]])  # 5 covers 3/4 of 1; 7 half of 2
        >>> matched_pairs(gt, pred)
        (array([1]), array([5]))
    """
    gt, pred = np.asarray(gt), np.asarray(pred)
    if gt.shape != pred.shape or gt.ndim != 2:
        raise ValueError(f"gt {gt.shape} and pred {pred.shape} must be 2-D of the same shape")
    for name, labels in (("gt", gt), ("pred", pred)):
        if labels.dtype.kind not in "iu":
            raise ValueError(f"{name} must be an integer label image, got {labels.dtype}")
        if labels.size and labels.min() < 0:
            raise ValueError(f"{name} has negative labels")
    g, p = gt.ravel().astype(np.int64), pred.ravel().astype(np.int64)
    g_ids, g_area = np.unique(g[g > 0], return_counts=True)
    p_ids, p_area = np.unique(p[p > 0], return_counts=True)
    both = (g > 0) & (p > 0)
    if not both.any():
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    pairs, inter = np.unique(np.stack([g[both], p[both]]), axis=1, return_counts=True)
    union = (
        g_area[np.searchsorted(g_ids, pairs[0])] + p_area[np.searchsorted(p_ids, pairs[1])] - inter
    )
    hit = 2 * inter > union
    return pairs[0, hit], pairs[1, hit]


def gained_objects(
    gt: np.ndarray, without: np.ndarray, with_aug: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Ground-truth nuclei found (IoU > 0.5) with augmentation but not without.

    Args:
        gt: (H, W) ground-truth label image.
        without: (H, W) label image predicted by the model trained without augmentation.
        with_aug: (H, W) label image predicted by the model trained with style augmentation.

    Returns:
        ``(gt_ids, pred_ids)``: the gained ground-truth labels and the labels of the
        ``with_aug`` objects that found them (int64, sorted by ground-truth label).

    Raises:
        ValueError: see :func:`matched_pairs`.
    """
    gt_with, pred_with = matched_pairs(gt, with_aug)
    gt_without, _ = matched_pairs(gt, without)
    keep = ~np.isin(gt_with, gt_without)
    return gt_with[keep], pred_with[keep]


def _decode(submission: Submission, gt: GroundTruth) -> np.ndarray:
    """The predicted label image of one solution image (empty when the submission lacks it)."""
    if gt.image_id not in submission:
        return np.zeros(gt.shape, np.int32)
    labels, _ = rle_decode_labels(
        submission[gt.image_id], gt.shape, where=submission.where(gt.image_id)
    )
    return labels


def score_figure4_images(
    solution: Mapping[str, GroundTruth],
    submissions: Mapping[str, Mapping[str, Submission]],
    groups: Mapping[str, str],
) -> pd.DataFrame:
    """DSB score of every solution image for every baseline and arm, and the gain from style.

    Args:
        solution: ``{ImageId: GroundTruth}`` (the scored images).
        submissions: ``{baseline: {"none": Submission, "style": Submission}}``; an image missing
            from a submission is an empty prediction (score 0), as in the official scoring.
        groups: ``{ImageId: group}``; images without an entry go to group ``"unknown"``.

    Returns:
        One row per image in solution order: ``ImageId``, ``group``, ``<baseline>/<arm>`` (the
        image's DSB score) for every baseline and arm, and ``gain``: the mean over baselines of
        score(style) - score(none).
    """
    rows = []
    for image_id, gt in solution.items():
        gt_labels, _ = gt.label_image()
        row: dict[str, object] = {"ImageId": image_id, "group": groups.get(image_id, "unknown")}
        for baseline, arms in submissions.items():
            for arm in ARMS:
                row[f"{baseline}/{arm}"] = image_score(gt_labels, _decode(arms[arm], gt))
        rows.append(row)
    table = pd.DataFrame(rows)
    gains = [table[f"{b}/style"] - table[f"{b}/none"] for b in submissions]
    table["gain"] = np.mean(gains, axis=0) if len(table) else []
    return table


def select_figure4_images(scores: pd.DataFrame, per_group: int = 1) -> pd.DataFrame:
    """The images of Figure 4: per group, the ``per_group`` images with the largest gain.

    Groups are taken in name order; within a group, images by decreasing ``gain`` with ties
    broken by ImageId, so the sample is fixed for given predictions.

    Args:
        scores: :func:`score_figure4_images`'s table.
        per_group: Images per group (>= 1); a smaller group contributes all its images.

    Returns:
        The chosen rows, group by group, best first (a fresh index).

    Raises:
        ValueError: ``per_group`` < 1.
    """
    if per_group < 1:
        raise ValueError(f"per_group must be >= 1, got {per_group}")
    ordered = scores.sort_values(
        ["group", "gain", "ImageId"], ascending=[True, False, True], kind="mergesort"
    )
    return ordered.groupby("group", sort=False).head(per_group).reset_index(drop=True)


def _line_width(shape: tuple[int, ...]) -> int:
    """Contour width in image pixels: about one screen pixel in a figure panel."""
    return max(1, round(max(shape[:2]) / 256))


def _edges(labels: np.ndarray, width: int) -> np.ndarray:
    edges = find_boundaries(labels, mode="inner")
    if width > 1:
        edges = binary_dilation(edges, iterations=width - 1, mask=labels > 0)
    return edges


def _overlay(
    image: np.ndarray,
    labels: np.ndarray,
    colour: Sequence[int],
    width: int,
    highlight: np.ndarray | None = None,
) -> np.ndarray:
    """``image`` (uint8 RGB) with the object contours of ``labels`` drawn in ``colour``, and the
    contours of the objects listed in ``highlight`` drawn over them, wider, in :data:`GAINED`."""
    out = image.copy()
    out[_edges(labels, width)] = colour
    if highlight is not None and highlight.size:
        chosen = np.where(np.isin(labels, highlight), labels, 0)
        out[_edges(chosen, width + 1)] = GAINED
    return out


def plot_figure4(
    images_dir: PathLike,
    solution_csv: PathLike,
    groups_csv: PathLike,
    group_column: str,
    predictions: Mapping[str, Mapping[str, PathLike]],
    out_png: PathLike,
    per_group: int = 1,
) -> pd.DataFrame:
    """Figure 4: test-image contours predicted without and with style augmentation, and the truth.

    One row per chosen image (see :func:`select_figure4_images`: per group, the images whose DSB
    score gained most from style augmentation, averaged over baselines), one pair of columns per
    baseline (without / with augmentation, predicted contours in yellow) and a last column with
    the ground-truth contours in green. In the "with augmentation" panels, the predicted nuclei
    that match (IoU > 0.5) a ground-truth nucleus the model without augmentation missed are drawn
    in cyan. Titles give each image's DSB score; row labels the group, ImageId and gain.

    Args:
        images_dir: The test images (BBBC038 layout or a flat folder).
        solution_csv: Its solution CSV; the scored images (``Private`` ones of stage 2, all of
            stage 1, see :func:`nucleistyle.data.csvio.read_solution`) are the candidates.
        groups_csv: ImageId -> group table (true modality, or the nearest training cluster).
        group_column: The group column of ``groups_csv`` (``modality`` or ``name``).
        predictions: ``{baseline: {"none": submission CSV, "style": submission CSV}}``.
        out_png: Output PNG (written atomically).
        per_group: Images per group.

    Returns:
        The chosen images with their scores (see :func:`score_figure4_images`).

    Raises:
        NucleistyleError: no prediction given, a baseline lacks an arm, a malformed CSV (named),
            a chosen image missing from ``images_dir`` or of another size than its solution.
        ValueError: ``per_group`` < 1.
    """
    if per_group < 1:
        raise ValueError(f"per_group must be >= 1, got {per_group}")
    _check_arms(predictions)
    solution = read_solution(solution_csv)
    groups = read_groups(groups_csv, group_column)
    submissions = {
        b: {arm: read_submission(arms[arm]) for arm in ARMS} for b, arms in predictions.items()
    }
    chosen = select_figure4_images(score_figure4_images(solution, submissions, groups), per_group)
    if chosen.empty:
        raise NucleistyleError(f"Figure 4: {solution_csv} has no scored image")
    paths = {r.image_id: r.image_path for r in list_images(images_dir)}
    n_rows, n_cols = len(chosen), 2 * len(predictions) + 1
    legend_inches = 0.35
    fig, axes = plt.subplots(
        n_rows,
        n_cols,
        squeeze=False,
        figsize=(PANEL_INCHES * n_cols, PANEL_INCHES * 1.1 * n_rows + legend_inches),
    )
    for r, row in enumerate(chosen.to_dict("records")):
        image_id = str(row["ImageId"])
        gt = solution[image_id]
        if image_id not in paths:
            raise NucleistyleError(f"Figure 4: test image {image_id} not found in {images_dir}")
        image, _ = read_image(paths[image_id])
        if image.shape[:2] != gt.shape:
            raise NucleistyleError(
                f"Figure 4: {paths[image_id]} is {image.shape[0]}x{image.shape[1]} but "
                f"{solution_csv} gives {gt.height}x{gt.width} for ImageId {image_id}"
            )
        _figure4_row(axes[r], image, gt, row, submissions)
    _figure4_legend(fig)
    fig.tight_layout(rect=(0, legend_inches / fig.get_figheight(), 1, 1))
    save_figure(fig, out_png)
    log.info(
        "Figure 4: %d images (%s)",
        len(chosen),
        ", ".join(f"{g} {i}" for g, i in zip(chosen["group"], chosen["ImageId"], strict=True)),
    )
    return chosen


def _check_arms(predictions: Mapping[str, Mapping[str, PathLike]]) -> None:
    if not predictions:
        raise NucleistyleError("Figure 4: no predictions given")
    for baseline, arms in predictions.items():
        if set(arms) != set(ARMS):
            raise NucleistyleError(
                f"Figure 4: baseline {baseline} needs predictions for arms {ARMS}, got "
                f"{sorted(arms)}"
            )


def _figure4_row(
    axes: Sequence[plt.Axes],
    image: np.ndarray,
    gt: GroundTruth,
    row: Mapping[str, object],
    submissions: Mapping[str, Mapping[str, Submission]],
) -> None:
    """One image's panels: each baseline without and with augmentation, then the truth."""
    truth, _ = gt.label_image()
    width = _line_width(gt.shape)
    for j, baseline in enumerate(submissions):
        without = _decode(submissions[baseline]["none"], gt)
        with_aug = _decode(submissions[baseline]["style"], gt)
        gained_gt, gained_pred = gained_objects(truth, without, with_aug)
        left, right = axes[2 * j], axes[2 * j + 1]
        left.imshow(_overlay(image, without, PREDICTED, width))
        left.set_title(f"{baseline}, without aug.\nDSB {row[f'{baseline}/none']:.3f}", fontsize=8)
        right.imshow(_overlay(image, with_aug, PREDICTED, width, highlight=gained_pred))
        right.set_title(
            f"{baseline}, with style aug.\nDSB {row[f'{baseline}/style']:.3f}, "
            f"{len(gained_gt)} found only with aug.",
            fontsize=8,
        )
    axes[-1].imshow(_overlay(image, truth, TRUTH, width))
    axes[-1].set_title(f"ground truth\n{len(gt.rles)} nuclei", fontsize=8)
    image_id = str(row["ImageId"])
    axes[0].set_ylabel(f"{row['group']}\n{image_id[:16]}\nmean gain {row['gain']:+.3f}", fontsize=8)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])


def _figure4_legend(fig: plt.Figure) -> None:
    fig.legend(
        handles=[
            Patch(color=_rgb(PREDICTED), label="predicted nucleus"),
            Patch(
                color=_rgb(GAINED),
                label="found only with augmentation (IoU > 0.5 with a nucleus missed without)",
            ),
            Patch(color=_rgb(TRUTH), label="ground truth"),
        ],
        loc="lower center",
        ncol=3,
        fontsize=8,
        frameon=False,
    )
