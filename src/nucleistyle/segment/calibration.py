"""Thresholds and ceilings: what training learns about the post-processing, not the network.

:func:`ceiling_score` is the score a perfect network would get through the baseline's pasting,
thresholds, merge and clean-up (training logs it beside the learning curve: no model can score
above it); :func:`calibrate` chooses the detection and mask thresholds of the trained weights on
the validation images (``segment.calibrate``), recorded in the model file as a
:class:`Calibration`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from nucleistyle.errors import NucleistyleError
from nucleistyle.metrics import image_score
from nucleistyle.segment.configs import SegmenterConfig
from nucleistyle.segment.inference import Detections, Segmenter
from nucleistyle.segment.model import project_masks
from nucleistyle.segment.postprocess import Instances, postprocess
from nucleistyle.segment.transforms import mask_boxes
from nucleistyle.tta import TTAConfig, merge

__all__ = ["CALIBRATION_GRID", "Calibration", "calibrate", "ceiling_score"]


def ceiling_score(
    truths: Sequence[np.ndarray], cfg: SegmenterConfig, tta: TTAConfig | None = None
) -> float:
    """Mean DSB score of a perfect network's output after the baseline's post-processing.

    Each true nucleus becomes a detection (scores in label order) with its bounding box and
    the M x M mask the mask head is trained to output
    (:func:`~nucleistyle.segment.model.project_masks`, M = 28). The masks are pasted and
    binarised at ``post.mask_threshold`` as a prediction's would be, optionally merged through
    the TTA of ``tta`` with every variant identical, then post-processed. Whatever cannot
    reproduce a perfect prediction here (paste geometry, thresholds, merge, clean-up) caps
    every model below this score: it must be (close to) 1.0.

    Args:
        truths: Ground-truth label images (0 = background).
        cfg: The segmenter configuration (``cfg.post`` is used).
        tta: A TTA configuration to pass the detections through its merge, or None.

    Returns:
        The mean score over ``truths`` (NaN for none).
    """
    scores = []
    for truth in truths:
        truth = np.asarray(truth)
        ids = np.unique(truth[truth > 0])
        masks = truth[None] == ids[:, None, None]
        boxes = mask_boxes(masks)
        ideal = project_masks(
            torch.from_numpy(masks), torch.from_numpy(boxes), torch.arange(len(ids)), 28
        )
        ranks = np.linspace(1.0, 0.5, len(ids)).astype(np.float32)
        detections = Detections(boxes, ranks, ideal.numpy(), truth.shape[:2])
        if tta is None:
            found = detections.instances(cfg.post.mask_threshold)
        else:
            variant = detections.binary_masks(cfg.post.mask_threshold)
            merged = merge([variant] * len(tta.transforms), tta)
            found = Instances.from_dense(merged.masks >= tta.mask_threshold, merged.scores)
        scores.append(image_score(truth.astype(np.int32), postprocess(found, cfg.post)))
    return float(np.mean(scores)) if scores else math.nan


# The thresholds :func:`calibrate` tries (with the configured pair).
CALIBRATION_GRID = {
    "box_score_thresh": (0.3, 0.5, 0.7, 0.8, 0.9),
    "mask_threshold": (0.4, 0.5, 0.55, 0.6, 0.7),
}


@dataclass(frozen=True)
class Calibration:
    """Detection and mask thresholds chosen on validation images (:func:`calibrate`).

    Attributes:
        box_score_thresh: The chosen minimum detection score.
        mask_threshold: The chosen mask probability threshold.
        score: Mean DSB score of the validation images with the chosen pair.
        configured_score: The same with the configured pair.
        n_images: Validation images.
        grid: ``(box_score_thresh, mask_threshold, score)`` for every pair tried.
    """

    box_score_thresh: float
    mask_threshold: float
    score: float
    configured_score: float
    n_images: int
    grid: tuple[tuple[float, float, float], ...]

    def apply(self, cfg: SegmenterConfig) -> SegmenterConfig:
        """``cfg`` with the chosen thresholds."""
        return replace(
            cfg,
            model=replace(cfg.model, box_score_thresh=self.box_score_thresh),
            post=replace(cfg.post, mask_threshold=self.mask_threshold),
        )


@torch.no_grad()
def calibrate(
    segmenter: Segmenter, images: Sequence[np.ndarray], truths: Sequence[np.ndarray]
) -> Calibration:
    """Choose ``box_score_thresh`` and ``mask_threshold`` by the DSB score on labelled images.

    Every pair of :data:`CALIBRATION_GRID` and the configured pair is scored: one network
    pass per image at the lowest detection threshold, then, per pair, the detections above the
    score threshold binarised at the mask threshold and post-processed as in
    :meth:`Segmenter.segment` (single pass; without Mirzaev's fallback canvas, which only
    concerns images where nothing is found). The best mean score wins; ties, and any pair no
    better than the configured one, keep the configured pair.

    Args:
        segmenter: The trained segmenter (its configured thresholds are the reference).
        images: uint8 (H, W, 3) validation images, as the model sees them (already enhanced
            when the model was trained on enhanced images).
        truths: Their ground-truth label images.

    Returns:
        The :class:`Calibration`.

    Raises:
        NucleistyleError: no images.
    """
    if not images:
        raise NucleistyleError("segment.calibrate: no validation images to calibrate on")
    configured = (segmenter.cfg.model.box_score_thresh, segmenter.cfg.post.mask_threshold)
    scores_grid = sorted({*CALIBRATION_GRID["box_score_thresh"], configured[0]})
    masks_grid = sorted({*CALIBRATION_GRID["mask_threshold"], configured[1]})
    heads: Any = segmenter.model.roi_heads
    saved = heads.score_thresh
    heads.score_thresh = scores_grid[0]
    try:
        detections = [segmenter.raw([image])[0] for image in images]
    finally:
        heads.score_thresh = saved
    grid = []
    for score_thresh in scores_grid:
        kept = [det.above(score_thresh) for det in detections]
        for mask_thresh in masks_grid:
            mean = np.mean(
                [
                    image_score(
                        np.asarray(truth, np.int32),
                        segmenter.postprocess(det.instances(mask_thresh)),
                    )
                    for det, truth in zip(kept, truths, strict=True)
                ]
            )
            grid.append((float(score_thresh), float(mask_thresh), float(mean)))
    reference = next(g[2] for g in grid if (g[0], g[1]) == configured)
    best = max(grid, key=lambda g: g[2])
    chosen = best if best[2] > reference else (*configured, reference)
    return Calibration(chosen[0], chosen[1], chosen[2], reference, len(images), tuple(grid))
