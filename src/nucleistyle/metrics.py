"""The official 2018 Data Science Bowl metric, exact and fast, plus COCO mask AP.

Per image, at each IoU threshold t in 0.50, 0.55, …, 0.95 a predicted object *hits* a ground-truth
(GT) object iff IoU > t **strictly**, evaluated exactly in integers: ``20·|A∩B| > k·|A∪B|`` for
t = k/20. TP(t) = GT objects with a hit, FP(t) = predictions without one, FN(t) = GT objects
without one, score(t) = TP / (TP + FP + FN). The image score is the mean over the 10 thresholds;
a data set's score is the unweighted mean over images (README, "The metric").

Because label images cannot overlap and every t >= 0.5 is strict, a GT object can hit at most one
prediction and vice versa (two disjoint objects cannot both cover more than half of a third), so
TP is simply the number of hitting (GT, prediction) pairs; no assignment step is needed.

Conventions for degenerate images (the official stage-2 set has none): no GT and no prediction
scores 1.0 at every threshold; no GT but some prediction scores 0.0; GT but no prediction 0.0.

The contingency table is built in O(pixels) with one ``np.bincount`` over a combined
``gt * (n_pred + 1) + pred`` key; labels need not be sequential (gaps and huge ids are compacted
first, only when they would make the table larger than the image) and images need no background.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from nucleistyle.data.csvio import (
    CompressedLabels,
    Submission,
    read_rows,
    read_solution,
    read_submission,
    select_usage,
)
from nucleistyle.data.rle import rle_decode_labels
from nucleistyle.errors import NucleistyleError
from nucleistyle.outputs import published_together
from nucleistyle.paths import PathLike

__all__ = [
    "THRESHOLDS",
    "ImageMatch",
    "coco_ap",
    "image_score",
    "match_image",
    "rank_confidences",
    "score_files",
    "score_images",
    "score_to_files",
    "summarize",
]

log = logging.getLogger(__name__)

_K = np.arange(10, 20, dtype=np.int64)  # threshold t = k / 20
THRESHOLDS: np.ndarray = _K / 20.0
"""The 10 IoU thresholds 0.50, 0.55, …, 0.95 (float64); a hit needs IoU strictly above."""
_SUFFIXES = [f"{k * 5}" for k in _K.tolist()]  # "50", "55", …, "95" for column names


@dataclass(frozen=True)
class ImageMatch:
    """Per-threshold counts for one image.

    Attributes:
        tp, fp, fn: int64 arrays of length 10, one entry per threshold in :data:`THRESHOLDS`.
        n_gt, n_pred: number of GT / predicted objects (distinct nonzero labels).
    """

    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray
    n_gt: int
    n_pred: int

    @property
    def scores(self) -> np.ndarray:
        """TP / (TP + FP + FN) per threshold (float64, length 10); 1.0 where the image has
        neither GT nor predictions."""
        denom = self.tp + self.fp + self.fn
        return np.where(denom > 0, self.tp / np.maximum(denom, 1), 1.0)

    @property
    def score(self) -> float:
        """The image score: mean of :attr:`scores` over the 10 thresholds."""
        return float(self.scores.mean())


def _as_labels(x: np.ndarray, name: str) -> tuple[np.ndarray, int]:
    """Flat unsigned view of a label image (bool is labels 0/1) and its largest label.

    Viewing signed labels as unsigned turns a negative label into a huge one, so a single
    ``max`` pass both sizes the contingency table and validates the input.
    """
    x = np.asarray(x)
    if x.dtype == bool:
        x = x.view(np.uint8)
    if x.ndim != 2 or x.dtype.kind not in "iu":
        raise ValueError(f"{name} must be a 2-D integer label image, got {x.dtype} {x.shape}")
    if not x.dtype.isnative:
        x = x.astype(x.dtype.newbyteorder("="))
    signed = x.dtype.kind == "i"
    x = x.ravel().view(f"u{x.dtype.itemsize}")
    top = int(x.max()) if x.size else 0
    if top >= 2 ** (8 * x.dtype.itemsize - 1):
        raise ValueError(f"{name} has negative labels" if signed else f"{name} has labels >= 2**63")
    if x.dtype.itemsize == 8:  # np.bincount casts uint64 to intp only unsafely
        x = x.view(np.int64)
    return x, top


def _compact(x: np.ndarray, top: int) -> tuple[np.ndarray, int]:
    """Relabel to 0 (background) and 1…n in ascending label order; returns (labels, n + 1)."""
    if top <= x.size:  # a lookup table is cheaper than sorting
        present = np.bincount(x, minlength=top + 1).astype(bool)
        present[0] = True
        lut = np.cumsum(present) - 1
        return lut[x], int(lut[-1]) + 1
    ids, inverse = np.unique(x, return_inverse=True)
    if ids[0] != 0:
        inverse += 1
    return inverse.astype(np.int64), int(inverse.max()) + 1


def _contingency(
    g: np.ndarray, p: np.ndarray, g_top: int, p_top: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Sparse (GT, prediction) overlap table of two flat label arrays.

    Returns:
        ``(area_g, area_p, gl, pl, inter)``: pixel count per label (index = label, possibly
        compacted), and for every overlapping pair of objects (both labels > 0) its labels and
        the size of its intersection.
    """
    limit = max(g.size, 1 << 12)  # a table no larger than the image costs less than the pixels
    ng, w = g_top + 1, p_top + 1
    if ng * w > limit:  # sparse or huge labels: compact them (rare, costs a sort or a table)
        if ng > 2:
            g, ng = _compact(g, g_top)
        if w > 2:
            p, w = _compact(p, p_top)
    if ng * w <= limit:
        # one key per pixel; background/background pixels (key 0, usually most of the image)
        # are dropped before counting, which beats counting them
        key = np.multiply(g, w, dtype=np.uint32, casting="unsafe")
        np.add(key, p, out=key, casting="unsafe")
        table = np.bincount(key[key != 0], minlength=ng * w).reshape(ng, w)
        area_g, area_p = table.sum(axis=1), table.sum(axis=0)
        gl, pl = np.nonzero(table[1:, 1:])
        gl += 1
        pl += 1
        return area_g, area_p, gl, pl, table[gl, pl]
    # very many objects: count only the pixels where both images have an object
    area_g, area_p = np.bincount(g), np.bincount(p)
    both = (g > 0) & (p > 0)
    keys, inter = np.unique(g[both].astype(np.int64) * w + p[both], return_counts=True)
    gl, pl = np.divmod(keys, w)
    return area_g, area_p, gl, pl, inter


def match_image(gt: np.ndarray, pred: np.ndarray) -> ImageMatch:
    """Match the objects of one image at the 10 DSB thresholds.

    Args:
        gt: (H, W) integer label image of the ground truth; 0 = background, every other value
            one object. Labels need not be sequential; the image need not contain background.
        pred: (H, W) integer label image of the prediction, same conventions.

    Returns:
        :class:`ImageMatch` with TP/FP/FN per threshold.

    Raises:
        ValueError: shapes differ, an input is not a 2-D integer (or bool) array, or a label
            is negative.

    Example:
        >>> gt = np.array([[1, 1, 0], [1, 1, 0]])
        >>> pred = np.array([[1, 1, 0], [0, 0, 0]])  # 2 of 4 px: IoU = 0.5 is a miss
        >>> match_image(gt, pred).score
        0.0
    """
    gt, pred = np.asarray(gt), np.asarray(pred)
    if gt.shape != pred.shape:
        raise ValueError(f"gt {gt.shape} and pred {pred.shape} differ in shape")
    (g, g_top), (p, p_top) = _as_labels(gt, "gt"), _as_labels(pred, "pred")
    area_g, area_p, gl, pl, inter = _contingency(g, p, g_top, p_top)
    union = area_g[gl] + area_p[pl] - inter
    tp = np.count_nonzero(20 * inter > _K[:, None] * union, axis=1).astype(np.int64)
    n_gt = int(np.count_nonzero(area_g[1:]))
    n_pred = int(np.count_nonzero(area_p[1:]))
    return ImageMatch(tp, n_pred - tp, n_gt - tp, n_gt, n_pred)


def image_score(gt: np.ndarray, pred: np.ndarray) -> float:
    """The DSB score of one image (mean over the 10 thresholds); see :func:`match_image`."""
    return match_image(gt, pred).score


def _row(image_id: str, m: ImageMatch) -> dict[str, object]:
    row: dict[str, object] = {
        "ImageId": image_id,
        "n_gt": m.n_gt,
        "n_pred": m.n_pred,
        "score": m.score,
    }
    for name, values in (("tp", m.tp), ("fp", m.fp), ("fn", m.fn)):
        row.update({f"{name}_{s}": int(v) for s, v in zip(_SUFFIXES, values.tolist(), strict=True)})
    return row


def score_images(items: Iterable[tuple[str, np.ndarray, np.ndarray]]) -> pd.DataFrame:
    """Score images one by one.

    Args:
        items: ``(image_id, gt_labels, pred_labels)`` triples (see :func:`match_image`).

    Returns:
        One row per image, in input order: ``ImageId``, ``n_gt``, ``n_pred``, ``score`` and
        ``tp_50 … tp_95``, ``fp_50 … fp_95``, ``fn_50 … fn_95`` (int64 counts).
    """
    rows = [_row(image_id, match_image(gt, pred)) for image_id, gt, pred in items]
    columns = ["ImageId", "n_gt", "n_pred", "score"] + [
        f"{name}_{s}" for name in ("tp", "fp", "fn") for s in _SUFFIXES
    ]
    return pd.DataFrame(rows, columns=columns)


def _threshold_scores(per_image: pd.DataFrame) -> np.ndarray:
    """(n_images, 10) TP/(TP+FP+FN), 1.0 where an image has neither GT nor predictions."""
    tp, fp, fn = (per_image[[f"{n}_{s}" for s in _SUFFIXES]].to_numpy() for n in ("tp", "fp", "fn"))
    denom = tp + fp + fn
    return np.where(denom > 0, tp / np.maximum(denom, 1), 1.0)


def summarize(
    per_image: pd.DataFrame, groups: Mapping[str, str] | None = None
) -> dict[str, object]:
    """Data-set summary of :func:`score_images` output.

    Args:
        per_image: the per-image table.
        groups: optional ``{ImageId: group}`` (e.g. the image modality); images without an
            entry go to group ``"unknown"``.

    Returns:
        ``{"score": mean image score, "n_images": int, "score_by_threshold": {"0.50": …},
        "groups": {group: {"score": …, "n_images": …}}}``; ``"groups"`` only when ``groups`` is
        given, sorted by group name.

    Raises:
        NucleistyleError: ``per_image`` has no rows.
    """
    if len(per_image) == 0:
        raise NucleistyleError("no images to summarise")
    by_t = _threshold_scores(per_image).mean(axis=0)
    summary: dict[str, object] = {
        "score": float(per_image["score"].mean()),
        "n_images": len(per_image),
        "score_by_threshold": {f"{t:.2f}": float(s) for t, s in zip(THRESHOLDS, by_t, strict=True)},
    }
    if groups is not None:
        names = per_image["ImageId"].map(lambda i: groups.get(i, "unknown"))
        summary["groups"] = {
            str(name): {"score": float(part["score"].mean()), "n_images": len(part)}
            for name, part in per_image.groupby(names, sort=True)
        }
    return summary


def rank_confidences(n_rows: int) -> dict[int, float]:
    """Confidences of an image's submission rows derived from their order.

    Kaggle submissions carry no confidence, but our predictors write each image's objects by
    descending confidence (:func:`nucleistyle.segment.postprocess` labels 1..k in score order),
    so row k (0-based) of n gets ``1 - k / n``: the first row 1.0, the last ``1 / n``. COCO AP
    only uses the order of the confidences, within an image and across images (where this puts
    each image's most confident objects first). For submissions without a meaningful order
    (the classical segmenter) AP is then a property of an arbitrary ranking; the DSB score is
    unaffected either way.

    Args:
        n_rows: number of RLE rows of the image (row k decodes to label k + 1).

    Returns:
        ``{label: confidence}`` for labels 1..n_rows.

    Example:
        >>> rank_confidences(4)
        {1: 1.0, 2: 0.75, 3: 0.5, 4: 0.25}
    """
    return {k + 1: 1.0 - k / n_rows for k in range(n_rows)}


def _finite_or_none(value: float) -> float | None:
    """JSON has no NaN: an undefined AP (no GT object at all) is stored as null."""
    return float(value) if np.isfinite(value) else None


def score_files(
    solution_csv: PathLike,
    submission_csv: PathLike,
    groups: Mapping[str, str] | None = None,
    ap: bool = False,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Score a Kaggle submission CSV against a solution CSV.

    The scored images are the solution's ``Private`` images when it has any (stage 2), else
    all of them (see :func:`nucleistyle.data.csvio.read_solution`). Submission rows of other
    solution images (e.g. stage-2 ``Ignored`` decoys) are accepted and not scored.

    Args:
        solution_csv: ``ImageId,EncodedPixels,Height,Width,Usage``.
        submission_csv: ``ImageId,EncodedPixels``.
        groups: optional ``{ImageId: group}`` for the per-group summary.
        ap: also compute COCO mask AP over the scored images (:func:`coco_ap`), with each
            object's confidence derived from its row order (:func:`rank_confidences`).

    Returns:
        ``(per_image, summary)``: :func:`score_images`'s table and :func:`summarize`'s dict with
        ``"missing"`` (scored ImageIds absent from the submission; they score as an empty
        prediction, i.e. 0) and ``"gt_contested_pixels"`` (GT pixels claimed by two rows,
        resolved first-row-wins); with ``ap``, also ``"ap"``, ``"ap50"``, ``"ap75"`` (None when
        no scored image has a GT object).

    Raises:
        NucleistyleError: a malformed file, or a submission ImageId absent from the solution.
        RLEError: a malformed or overlapping predicted row (names file, line and ImageId).
    """
    everything = read_solution(solution_csv, usage=None)
    solution = select_usage(everything, "auto", solution_csv)
    submission = read_submission(submission_csv)
    unknown = [image_id for image_id in submission if image_id not in everything]
    if unknown:
        more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
        raise NucleistyleError(
            f"{submission_csv}: ImageId {unknown[0]} is not in the solution {solution_csv}{more}"
        )
    missing = [image_id for image_id in solution if image_id not in submission]
    contested_total = 0
    # label images kept (compressed) for the COCO pass, so that nothing is decoded twice
    kept_gt, kept_pred = CompressedLabels(), CompressedLabels()

    def items() -> Iterable[tuple[str, np.ndarray, np.ndarray]]:
        nonlocal contested_total
        for image_id, gt in solution.items():
            gt_labels, contested = gt.label_image()
            contested_total += contested
            if image_id in submission:
                pred, _ = rle_decode_labels(
                    submission[image_id], gt.shape, where=submission.where(image_id)
                )
            else:
                pred = np.zeros(gt.shape, np.int32)
            if ap:
                kept_gt.add(image_id, gt_labels)
                kept_pred.add(image_id, pred)
            yield image_id, gt_labels, pred

    per_image = score_images(items())
    summary = summarize(per_image, groups)
    summary["missing"] = missing
    summary["gt_contested_pixels"] = contested_total
    if ap:
        summary.update(_ap_summary(kept_gt, kept_pred, submission))
    if missing:
        log.warning("%s: %d scored images missing (scored 0)", submission_csv, len(missing))
    log.info("%s: score %.6f over %d images", submission_csv, summary["score"], len(per_image))
    return per_image, summary


def read_groups(path: PathLike, column: str = "modality") -> dict[str, str]:
    """ImageId -> group (modality, cluster) from a CSV with columns ``ImageId`` and ``column``.

    Other columns are ignored; an ImageId may repeat with the same group.

    Raises:
        NucleistyleError: an unreadable, empty or non-CSV file, a missing column, a row without
            those cells, or an ImageId given two different groups (naming it and both lines).
    """
    rows = read_rows(path)
    first = next(rows, None)
    header = [] if first is None else first[1]
    if "ImageId" not in header or column not in header:
        raise NucleistyleError(f"{path}: expected columns ImageId and {column}, found {header}")
    key, value = header.index("ImageId"), header.index(column)
    groups: dict[str, str] = {}
    where: dict[str, int] = {}
    for line, row in rows:
        if len(row) != len(header):
            raise NucleistyleError(
                f"{path} line {line}: expected {len(header)} columns, found {len(row)}"
            )
        image_id, group = row[key], row[value]
        if image_id in groups and groups[image_id] != group:
            raise NucleistyleError(
                f"{path}: ImageId {image_id} has group {groups[image_id]!r} on line "
                f"{where[image_id]} and {group!r} on line {line}"
            )
        groups[image_id] = group
        where.setdefault(image_id, line)
    return groups


def score_to_files(
    solution_csv: PathLike,
    submission_csv: PathLike,
    per_image_csv: PathLike,
    summary_json: PathLike,
    groups_csv: PathLike | None = None,
    group_column: str = "modality",
) -> dict[str, object]:
    """:func:`score_files` with COCO AP, writing the per-image table (CSV) and the summary (JSON)
    together (both appear, or neither).

    Args:
        solution_csv, submission_csv: as in :func:`score_files`.
        per_image_csv: output, one row per scored image (:func:`score_images`' columns, then
            ``group`` when ``groups_csv`` is given; ``unknown`` for images it does not list).
        summary_json: output, the summary dict (sorted keys) including ``ap``, ``ap50`` and
            ``ap75`` (COCO mask AP with confidences from row order, see
            :func:`rank_confidences`; null when no scored image has a GT object).
        groups_csv: optional CSV with columns ``ImageId`` and ``group_column`` for the
            per-group summary (e.g. the synthetic data's ``modalities.csv``).
        group_column: the group column of ``groups_csv``.

    Returns:
        The summary dict.

    Raises:
        NucleistyleError: as :func:`score_files`, or a groups file without the two columns.
    """
    groups = None if groups_csv is None else read_groups(groups_csv, group_column)
    per_image, summary = score_files(solution_csv, submission_csv, groups, ap=True)
    if groups is not None:
        per_image["group"] = [groups.get(i, "unknown") for i in per_image["ImageId"]]
    with published_together() as outputs:  # both files or neither
        per_image.to_csv(outputs.file(per_image_csv), index=False, lineterminator="\n")
        outputs.file(summary_json).write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return summary


def _coco_rles(labels: np.ndarray, ids: np.ndarray) -> list[dict[str, Any]]:
    """pycocotools RLEs of the objects ``ids`` (chunks keep the H×W×n stack under ~64 MB)."""
    from pycocotools import mask as mask_utils

    chunk = max(1, (64 << 20) // max(labels.size, 1))
    rles: list[dict[str, Any]] = []
    for start in range(0, ids.size, chunk):
        part = ids[start : start + chunk]
        stack = np.asfortranarray((labels[:, :, None] == part[None, None, :]).astype(np.uint8))
        rles.extend(mask_utils.encode(stack))
    return rles


def _pred_scores(
    scores: Mapping[int, float] | Sequence[float] | None, ids: np.ndarray, image_id: str
) -> np.ndarray:
    """One confidence per predicted object ``ids`` (ascending labels)."""
    if scores is None:
        return np.ones(ids.size)
    if isinstance(scores, Mapping):
        missing = [int(i) for i in ids if int(i) not in scores]
        if missing:
            raise ValueError(f"ImageId {image_id}: no score for predicted label {missing[0]}")
        return np.array([float(scores[int(i)]) for i in ids])
    values = np.asarray(scores, dtype=float)
    if values.shape != ids.shape:
        raise ValueError(
            f"ImageId {image_id}: {values.size} scores for {ids.size} predicted objects"
        )
    return values


def _ap_summary(
    gts: CompressedLabels, preds: CompressedLabels, submission: Submission
) -> dict[str, float | None]:
    """:func:`coco_ap` of the kept label images, confidences from the submission's row order,
    as ``ap``, ``ap50``, ``ap75`` (None for NaN)."""
    result = coco_ap(
        (
            image_id,
            gts[image_id],
            preds[image_id],
            rank_confidences(len(submission.get(image_id, []))),
        )
        for image_id in gts
    )
    return {name.lower(): _finite_or_none(result[name]) for name in ("AP", "AP50", "AP75")}


def coco_ap(
    items: Iterable[
        tuple[str, np.ndarray, np.ndarray, Mapping[int, float] | Sequence[float] | None]
    ],
) -> dict[str, float]:
    """COCO mask AP (secondary metric) via pycocotools, one category.

    COCO's rules, not the DSB's: IoU >= t (inclusive), greedy matching by descending score,
    AP averaged over recall and over t = 0.50:0.05:0.95. ``maxDets`` is raised to the largest
    number of predictions in an image so that crowded images are not truncated at 100.

    Args:
        items: ``(image_id, gt_labels, pred_labels, pred_scores)``; scores either a mapping
            ``{label: score}``, a sequence aligned with the sorted nonzero labels of
            ``pred_labels``, or None (every prediction 1.0).

    Returns:
        ``{"AP": …, "AP50": …, "AP75": …}``; NaN when no image has a GT object.

    Raises:
        ValueError: shapes differ, or the scores do not fit the predicted objects.
    """
    from pycocotools import mask as mask_utils

    images: list[dict[str, Any]] = []
    gts: list[dict[str, Any]] = []
    dts: list[dict[str, Any]] = []
    max_dets = 100
    for n, (image_id, gt, pred, scores) in enumerate(items, start=1):
        gt, pred = np.asarray(gt), np.asarray(pred)
        if gt.shape != pred.shape or gt.ndim != 2:
            raise ValueError(f"ImageId {image_id}: gt {gt.shape} and pred {pred.shape} differ")
        images.append({"id": n, "height": gt.shape[0], "width": gt.shape[1]})
        gt_ids, gt_areas = np.unique(gt[gt != 0], return_counts=True)
        pred_ids = np.unique(pred[pred != 0])
        for rle, area in zip(_coco_rles(gt, gt_ids), gt_areas, strict=True):
            gts.append(
                {
                    "id": len(gts) + 1,
                    "image_id": n,
                    "category_id": 1,
                    "segmentation": rle,
                    "area": float(area),
                    "bbox": mask_utils.toBbox(rle).tolist(),
                    "iscrowd": 0,
                }
            )
        pred_scores = _pred_scores(scores, pred_ids, image_id)
        for rle, score in zip(_coco_rles(pred, pred_ids), pred_scores, strict=True):
            dts.append(
                {"image_id": n, "category_id": 1, "segmentation": rle, "score": float(score)}
            )
        max_dets = max(max_dets, pred_ids.size)
    if not gts:
        return {"AP": float("nan"), "AP50": float("nan"), "AP75": float("nan")}
    return _coco_evaluate(images, gts, dts, max_dets)


def _coco_evaluate(
    images: list[dict[str, Any]],
    gts: list[dict[str, Any]],
    dts: list[dict[str, Any]],
    max_dets: int,
) -> dict[str, float]:
    """pycocotools' segmentation evaluation of :func:`coco_ap`'s records: AP, AP50, AP75."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco_gt = COCO()
        coco_gt.dataset = {"images": images, "annotations": gts, "categories": [{"id": 1}]}
        coco_gt.createIndex()
        if not dts:
            return {"AP": 0.0, "AP50": 0.0, "AP75": 0.0}
        coco_dt = coco_gt.loadRes(dts)
        ev = COCOeval(coco_gt, coco_dt, iouType="segm")
        ev.params.maxDets = [1, 10, max_dets]
        ev.evaluate()
        ev.accumulate()
    # precision: [T thresholds, R recall points, K categories, A area ranges, M maxDets]
    precision = ev.eval["precision"][:, :, 0, 0, -1]

    def ap(rows: np.ndarray) -> float:
        values = rows[rows > -1]
        return float(values.mean()) if values.size else float("nan")

    iou = ev.params.iouThrs
    return {
        "AP": ap(precision),
        "AP50": ap(precision[np.isclose(iou, 0.5)]),
        "AP75": ap(precision[np.isclose(iou, 0.75)]),
    }
