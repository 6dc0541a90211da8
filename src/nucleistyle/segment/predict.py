"""Inference: a trained segmenter on images, folders and (for TTA) batches.

:class:`Segmenter` separates the raw network pass from the post-processing so that a
test-time-augmentation wrapper can transform images, call :meth:`Segmenter.raw` on the batch,
map the returned per-instance masks back, merge them and finally call
:meth:`Segmenter.postprocess`. :meth:`Segmenter.segment` does exactly that with
:func:`nucleistyle.tta.predict_tta`::

    seg = load_segmenter("model.pt")
    single = seg.segment(images)                   # one pass + the baseline's post-processing
    merged = seg.segment(images, TTAConfig())      # 8 dihedral variants, vote, same post-proc.

Single pass and TTA differ only in the merging: both binarise each detection's mask at the
baseline's ``post.mask_threshold`` (probability ``>`` it), clipped to the image, and both end
in :meth:`Segmenter.postprocess`; with the identity as the only transform and one image per
network call, TTA gives the single-pass labels bit for bit.

Sizing follows each baseline: Deep Retina runs at native size, upscaled only when
the short side is below ``prep.size`` and padded to a multiple of 64; Mirzaev resizes the
longest side to ``prep.size`` and pads to a square. Detections are mapped back to the input's
pixel grid, so the label images always have the input's size.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from nucleistyle.cluster import v_median
from nucleistyle.data.bbbc038 import list_images, read_image
from nucleistyle.data.csvio import CompressedLabels, check_image_id, write_submission
from nucleistyle.data.folder import outline, write_label_image
from nucleistyle.enhance import ClaheConfig, enhance_image
from nucleistyle.segment.configs import SegmenterConfig, config_from_fingerprint
from nucleistyle.segment.engine import read_model_file
from nucleistyle.segment.model import build_model
from nucleistyle.segment.postprocess import Instances, postprocess
from nucleistyle.segment.transforms import mask_boxes, resize_image
from nucleistyle.torchutils import autocast, resolve_precision, select_device
from nucleistyle.tta import BASELINE_TTA, PredictFn, TTAConfig, predict_tta
from nucleistyle.tta import Instances as DenseInstances
from nucleistyle.utils import NucleistyleError, Progress, first_line, published_together

__all__ = [
    "CALIBRATION_GRID",
    "Calibration",
    "Detections",
    "Segmenter",
    "calibrate",
    "ceiling_score",
    "load_segmenter",
    "predict_folder",
]

log = logging.getLogger(__name__)
PathLike = str | os.PathLike[str]


@dataclass
class Detections:
    """Raw detections of one image, in that image's pixel coordinates.

    Attributes:
        boxes: float32 (n, 4) x0, y0, x1, y1 (px).
        scores: float32 (n,) detection confidence, descending.
        mask_probs: float32 (n, M, M) mask probabilities inside each box (M = 28).
        image_size: (H, W) of the image.
    """

    boxes: np.ndarray
    scores: np.ndarray
    mask_probs: np.ndarray
    image_size: tuple[int, int]

    def __len__(self) -> int:
        return len(self.scores)

    def above(self, score: float) -> Detections:
        """The detections scoring at least ``score`` (as a higher ``box_score_thresh`` would
        have left them)."""
        keep = self.scores >= score
        return Detections(
            self.boxes[keep], self.scores[keep], self.mask_probs[keep], self.image_size
        )

    def paste(self, index: int) -> tuple[int, int, np.ndarray]:
        """One soft mask as ``(row, col, probabilities)``: the crop's top-left corner (may lie
        outside the image) and its float32 values.

        The box is taken as pixel edges (pixel k covers [k, k + 1)), as in training
        (:func:`~nucleistyle.segment.model.project_masks`): each pixel centre samples the
        M x M mask bilinearly, zero beyond its border cells. torchvision's
        ``paste_masks_in_image`` instead stretches the mask over the box's truncated corners
        taken as inclusive pixels, about a pixel larger: a perfect mask head scored 0.75 with
        it on real images, 1.0 with this.
        """
        m = self.mask_probs.shape[-1]
        x0, y0, x1, y1 = (float(v) for v in self.boxes[index])
        top, row_weights = _pixel_taps(y0, y1, m)
        left, col_weights = _pixel_taps(x0, x1, m)
        crop = row_weights @ self.mask_probs[index].astype(np.float32) @ col_weights.T
        return top, left, crop.astype(np.float32, copy=False)

    def soft_masks(self) -> np.ndarray:
        """All soft masks pasted into the image: float32 (n, H, W) (memory n x H x W)."""
        height, width = self.image_size
        out = np.zeros((len(self), height, width), np.float32)
        for i in range(len(self)):
            y, x, crop = self.paste(i)
            ys, xs = (
                slice(max(y, 0), min(y + crop.shape[0], height)),
                slice(max(x, 0), min(x + crop.shape[1], width)),
            )
            out[i, ys, xs] = crop[ys.start - y : ys.stop - y, xs.start - x : xs.stop - x]
        return out

    def instances(self, threshold: float) -> Instances:
        """Binary masks (probability > ``threshold``) as :class:`Instances` crops.

        Crops are clipped to the image: pixels outside it take no part in the post-processing
        (area filters, hole filling, closing), as in the baselines, whose masks are image-sized.
        """
        height, width = self.image_size
        offsets = np.zeros((len(self), 2), np.int64)
        crops = []
        for i in range(len(self)):
            y, x, crop = self.paste(i)
            y0, x0 = min(max(y, 0), height), min(max(x, 0), width)
            y1, x1 = max(min(y + crop.shape[0], height), y0), max(min(x + crop.shape[1], width), x0)
            offsets[i] = y0, x0
            crops.append(crop[y0 - y : y1 - y, x0 - x : x1 - x] > threshold)
        return Instances(self.image_size, offsets, crops, self.scores.astype(np.float64))

    def binary_masks(self, threshold: float) -> DenseInstances:
        """The masks of :meth:`instances` as a dense stack, for :mod:`nucleistyle.tta`.

        Returns:
            :class:`nucleistyle.tta.Instances` with bool (n, H, W) masks (n x H x W bytes) and
            the float32 scores.
        """
        return DenseInstances(self.instances(threshold).dense(), self.scores.astype(np.float32))


def _pixel_taps(low: float, high: float, m: int) -> tuple[int, np.ndarray]:
    """Bilinear weights of the pixels near the box span ``[low, high)`` (pixel edges) on the
    ``m`` cells a mask spreads over it: ``(first pixel, float32 (pixels, m))``. Pixel centre
    k + 0.5 falls at cell coordinate ``(k + 0.5 - low) / (high - low) * m - 0.5`` (cell j
    centred at j; ``grid_sample``'s ``align_corners=False`` with zero padding)."""
    cell = max(high - low, 1e-3) / m
    first, stop = math.floor(low - cell), math.ceil(high + cell)
    u = (np.arange(first, stop, dtype=np.float64) + 0.5 - low) / cell - 0.5
    j = np.floor(u).astype(np.int64)
    frac = u - j
    weights = np.zeros((len(u), m + 2), np.float32)  # cells -1 .. m: the zero border
    rows = np.arange(len(u))
    for cells, weight in ((j, 1.0 - frac), (j + 1, frac)):
        inside = (cells >= -1) & (cells <= m)
        weights[rows[inside], cells[inside] + 1] = weight[inside]
    return first, weights[:, 1:-1]


class Segmenter:
    """A trained Mask R-CNN with its baseline's preparation and post-processing.

    Args:
        model: The network (moved to ``device``, put in eval mode).
        cfg: Its configuration.
        device: Where it runs.
        dtype: Autocast dtype (None = fp32).
        clahe: The CLAHE the model's training images went through (``segment.inputs:
            enhanced``): :meth:`segment` applies it to every image it selects (by median V)
            first, so a caller passes images as they come. None = images used as they are.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        cfg: SegmenterConfig,
        device: torch.device,
        dtype: torch.dtype | None,
        clahe: ClaheConfig | None = None,
    ) -> None:
        self.model = model.to(device).eval()
        self.cfg = cfg
        self.device = device
        self.dtype = dtype
        self.clahe = clahe

    def enhance(self, image: np.ndarray) -> np.ndarray:
        """The image as the model was trained to see it: CLAHE-enhanced when :attr:`clahe`
        selects it (the training set's rule, :meth:`ClaheConfig.selects`), else unchanged."""
        if self.clahe is None or not self.clahe.selects(v_median(image), -1):
            return image
        return enhance_image(image, self.clahe)

    def scale_for(self, height: int, width: int) -> float:
        """The resize factor the baseline applies to an image of this size."""
        size = self.cfg.prep.size
        if self.cfg.prep.policy == "zoom_crop":  # upscale only (Deep Retina)
            return max(1.0, size / min(height, width))
        return size / max(height, width)  # longest side -> size (Mirzaev)

    def _prepare(self, image: np.ndarray) -> tuple[torch.Tensor, float, float]:
        height, width = image.shape[:2]
        scale = self.scale_for(height, width)
        out_h, out_w = max(1, round(height * scale)), max(1, round(width * scale))
        resized = resize_image(np.ascontiguousarray(image), out_h, out_w)
        tensor = torch.from_numpy(np.ascontiguousarray(resized)).permute(2, 0, 1)
        return tensor.to(self.device).float().div_(255), out_h / height, out_w / width

    @torch.no_grad()
    def raw(self, images: Sequence[np.ndarray]) -> list[Detections]:
        """One network pass over a batch of images (any sizes).

        Args:
            images: uint8 (H, W, 3) RGB images.

        Images of equal prepared size go through the network together, each size in a batch of
        its own: torchvision would pad a mixed batch to its largest image (a TTA batch with a
        2x rescale costs four times its area per variant), and an image's detections would
        depend on what it was batched with.

        Returns:
            One :class:`Detections` per image, in that image's coordinates, with the model's
            score threshold, NMS and detection cap applied.
        """
        prepared = [self._prepare(image) for image in images]
        by_size: dict[tuple[int, ...], list[int]] = {}
        for n, (tensor, _, _) in enumerate(prepared):
            by_size.setdefault(tuple(tensor.shape), []).append(n)
        model: Any = self.model  # torchvision MaskRCNN: its parts are called one by one
        outputs: list[Any] = [None] * len(prepared)
        for members in by_size.values():
            with autocast(self.device, self.dtype):
                batch, _ = model.transform([prepared[n][0] for n in members])
                features = model.backbone(batch.tensors)
                proposals, _ = model.rpn(batch, features)
                found, _ = model.roi_heads(features, proposals, batch.image_sizes)
            for n, out in zip(members, found, strict=True):
                outputs[n] = out
        result = []
        for image, (_, sy, sx), out in zip(images, prepared, outputs, strict=True):
            boxes = out["boxes"].float().cpu().numpy()
            boxes = boxes / np.array([sx, sy, sx, sy], np.float32)
            result.append(
                Detections(
                    boxes.astype(np.float32),
                    out["scores"].float().cpu().numpy(),
                    out["masks"][:, 0].float().cpu().numpy(),
                    (int(image.shape[0]), int(image.shape[1])),
                )
            )
        return result

    def postprocess(self, instances: Instances) -> np.ndarray:
        """The baseline's post-processing (:func:`~.postprocess.postprocess`)."""
        return postprocess(instances, self.cfg.post)

    def predict_fn(self) -> PredictFn:
        """This network as a :data:`nucleistyle.tta.PredictFn`.

        The whole batch (every variant of every image) goes through one :meth:`raw` call; each
        detection's mask is binarised at ``post.mask_threshold`` as in the single pass (bool
        masks: both baselines post-process, vote (Deep Retina) and unite (Mirzaev) binary
        masks, and they take a quarter of the memory of float32 probabilities).
        """
        threshold = self.cfg.post.mask_threshold

        def predict(images: list[np.ndarray]) -> list[DenseInstances]:
            return [det.binary_masks(threshold) for det in self.raw(images)]

        return predict

    def segment(
        self, images: Sequence[np.ndarray], tta: TTAConfig | None = None
    ) -> list[np.ndarray]:
        """Segment a batch of images: single pass or TTA, then the baseline's post-processing.

        Single pass: one :meth:`raw` call for the batch. TTA: :func:`nucleistyle.tta.predict_tta`
        with :meth:`predict_fn` (variants sent ``tta.batch_size`` at a time), the merged masks
        thresholded at ``tta.mask_threshold`` (for binary masks: the voted pixels under
        ``"vote"``, the union under ``"union"``); merged scores are the members' mean score.

        Mirzaev's fallback (Mirzaev, ``post.fallback_canvas`` = k): an image with fewer than 2
        foreground pixels is pasted at the top-left of a k-times larger zero canvas, segmented
        again *the same way* (with TTA when TTA is on, as Mirzaev's ``predict.py`` does) and
        cropped back; objects keep their order. Canvases go one at a time (k² times the area).

        Args:
            images: uint8 (H, W, 3) RGB images (any sizes).
            tta: TTA settings, or None for a single pass.

        Returns:
            One int32 (H, W) label image per input, of its size: 0 = background, objects
            numbered 1..k in descending confidence.

        Raises:
            NucleistyleError: with TTA, an image that is not uint8 (H, W, 3).
        """
        if not images:
            return []
        images = [self.enhance(image) for image in images]
        labels = self._segment(images, tta)
        k = self.cfg.post.fallback_canvas
        if k:
            for n, image in enumerate(images):
                if np.count_nonzero(labels[n]) >= 2:
                    continue
                height, width = image.shape[:2]
                canvas = np.zeros((k * height, k * width, 3), np.uint8)
                canvas[:height, :width] = image
                cropped = self._segment([canvas], tta)[0][:height, :width]
                ids = np.unique(cropped)  # ascending: the descending-confidence order is kept
                lookup = np.zeros(int(ids.max()) + 1, np.int32)
                lookup[ids] = np.arange(len(ids), dtype=np.int32)
                labels[n] = lookup[cropped]
        return labels

    def _segment(self, images: Sequence[np.ndarray], tta: TTAConfig | None) -> list[np.ndarray]:
        """:meth:`segment` without the fallback canvas."""
        if tta is None:
            threshold = self.cfg.post.mask_threshold
            instances = [det.instances(threshold) for det in self.raw(images)]
        else:
            instances = [
                Instances.from_dense(merged.masks >= tta.mask_threshold, merged.scores)
                for merged in predict_tta(self.predict_fn(), images, tta)
            ]
        return [self.postprocess(found) for found in instances]

    def predict(self, image: np.ndarray) -> np.ndarray:
        """Single-pass segmentation of one image (:meth:`segment`, Mirzaev's fallback included).

        Returns:
            int32 (H, W) label image of the input's size, 0 = background.
        """
        return self.segment([image])[0]


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
    from nucleistyle.metrics import image_score
    from nucleistyle.segment.model import project_masks
    from nucleistyle.tta import merge

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
    from nucleistyle.metrics import image_score

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


def load_segmenter(model_path: PathLike, device: str = "auto") -> Segmenter:
    """Load a model file written by :func:`~.engine.train_segmenter` (``weights_only=True``).

    Args:
        model_path: The model file.
        device: ``auto``, ``cpu``, ``cuda``... (precision follows the stored config).

    Raises:
        NucleistyleError: unreadable or foreign file, weights not matching the stored
            configuration.
    """
    state = read_model_file(model_path)
    cfg = config_from_fingerprint(state["config"])
    if state.get("calibration") is not None:
        record = dict(state["calibration"])
        calibration = Calibration(**{**record, "grid": tuple(map(tuple, record["grid"]))})
        cfg = calibration.apply(cfg)
        log.info(
            "calibrated thresholds: box_score_thresh %g, mask_threshold %g",
            calibration.box_score_thresh,
            calibration.mask_threshold,
        )
    model = build_model(cfg, pretrained=False)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise NucleistyleError(
            f"{model_path}: weights do not match the stored configuration: {first_line(exc)}"
        ) from exc
    torch_device = select_device(device)
    dtype = resolve_precision(cfg.precision, torch_device)
    clahe = state.get("input_clahe")
    clahe = None if clahe is None else ClaheConfig.from_config(clahe)
    log.info("loaded %s (%s, %s) on %s", model_path, cfg.baseline, cfg.backbone, torch_device)
    return Segmenter(model, cfg, torch_device, dtype, clahe)


def _check_shard(shard: tuple[int, int]) -> tuple[int, int]:
    """Validate ``shard = (index, n_shards)``."""
    ok = isinstance(shard, Sequence) and len(shard) == 2
    ok = ok and all(isinstance(v, int | np.integer) and not isinstance(v, bool) for v in shard)
    if not ok:
        raise NucleistyleError(f"shard must be (index, n_shards), two integers, got {shard!r}")
    index, n_shards = int(shard[0]), int(shard[1])
    if n_shards < 1:
        raise NucleistyleError(f"shard: n_shards must be >= 1, got {n_shards}")
    if not 0 <= index < n_shards:
        raise NucleistyleError(f"shard: index must be in [0, {n_shards}), got {index}")
    return index, n_shards


def _tta_config(tta: Mapping | TTAConfig | bool | None, baseline: str) -> TTAConfig | None:
    """None/False: single pass; True: the baseline's own TTA; a mapping: the config section
    ``tta`` resolved for ``baseline`` (:meth:`~nucleistyle.tta.TTAConfig.for_baseline`)."""
    if tta is None or tta is False or isinstance(tta, TTAConfig):
        return tta or None
    if tta is True:
        return TTAConfig.for_baseline(baseline)
    if isinstance(tta, Mapping):
        return TTAConfig.for_baseline(baseline, tta)
    raise NucleistyleError(f"tta must be a mapping (config section tta) or None, got {tta!r}")


def predict_folder(
    model_path: PathLike,
    images_dir: PathLike,
    submission_csv: PathLike | None,
    labels_dir: PathLike | None = None,
    device: str = "auto",
    tta: Mapping | TTAConfig | bool | None = None,
    shard: tuple[int, int] = (0, 1),
    label_format: str = "png",
    overlays: bool = False,
) -> int:
    """Segment the images of a folder (or one shard of them), single pass or with TTA.

    Each image goes through :meth:`Segmenter.segment`: one network pass, or (``tta``) every
    variant of the image through :func:`nucleistyle.tta.predict_tta` and the merge, then the
    baseline's post-processing either way (Mirzaev's fallback canvas included, under TTA too).
    With TTA, ``tta.batch_size // n_variants`` images (at least 1; one when ``batch_size`` is
    0) are handled per :func:`~nucleistyle.tta.predict_tta` call, their variants sent to the
    network ``tta.batch_size`` at a time (0: all of them at once). Images of different shapes
    in one call are zero-padded to a common size.

    Objects are numbered, and written to the submission, in descending confidence (detection
    score; under TTA the mean score of the merged detections): COCO AP
    (:func:`nucleistyle.metrics.coco_ap`) can take the confidence order from the row order.

    Outputs appear together, only once every image is done: the submission and the label
    images are staged beside their targets and published in one step (files of ``labels_dir``
    with other names are left alone). On an error nothing is written.

    Args:
        model_path: A model file from :func:`~.engine.train_segmenter`
            (``results/segment/<baseline>-<arm>/model.pt`` in the pipeline).
        images_dir: BBBC038-layout or flat folder of images.
        submission_csv: Kaggle submission (``ImageId,EncodedPixels``); an image without nuclei
            gets one empty row, an empty shard a header only. None: no submission.
        labels_dir: If given, ``<labels_dir>/<ImageId>.png`` (or ``.tif``): label images of
            each input's size (0 = background).
        device: Where to run (``auto``, ``cpu``, ``cuda``, ``cuda:N``).
        tta: None or False for a single pass; True for the baseline's own TTA; the config
            section ``tta`` as a mapping (resolved for the model's baseline), or a
            :class:`~nucleistyle.tta.TTAConfig`.
        shard: ``(index, n_shards)``: the images sorted by ImageId, this call takes every
            ``n_shards``-th one starting at ``index`` (it may get none).
        label_format: ``png`` (16-bit) or ``tif`` label images in ``labels_dir``.
        overlays: Also write ``<labels_dir>/overlays/<ImageId>.png``: the image with each
            nucleus outlined in yellow.

    Returns:
        The number of images segmented (in this shard).

    Raises:
        NucleistyleError: an invalid ``shard`` or ``tta``, no output requested, a missing or
            bad model file, an empty folder or an unreadable image (named).

    Example:
        >>> predict_folder("results/segment/mirzaev-style/model.pt", "stage1_test",
        ...                "shard1.csv", tta=True, shard=(1, 4))  # doctest: +SKIP
    """
    index, n_shards = _check_shard(shard)
    if isinstance(tta, Mapping):  # fail on a bad section before loading the model
        for baseline in BASELINE_TTA:
            TTAConfig.for_baseline(baseline, tta)
    if submission_csv is None and labels_dir is None:
        raise NucleistyleError(
            "predict_folder: nothing to write (no submission_csv, no labels_dir)"
        )
    out_dir = None if labels_dir is None else Path(labels_dir)
    if out_dir is not None and out_dir.exists() and not out_dir.is_dir():
        raise NucleistyleError(f"label folder {out_dir} exists and is not a folder")
    if not Path(model_path).is_file():
        raise NucleistyleError(f"model file not found: {model_path}")
    records = list_images(images_dir)[index::n_shards]
    if submission_csv is not None:  # written last: refuse its ImageIds first
        for record in records:
            check_image_id(record.image_id, f"image {record.image_path}")
    segmenter = load_segmenter(model_path, device)
    cfg = _tta_config(tta, segmenter.cfg.baseline)
    if cfg is None:
        per_call = 1
        log.info("single pass over %d images of %s", len(records), images_dir)
    else:
        n_variants = len(cfg.transforms)
        per_call = max(1, cfg.batch_size // n_variants)
        log.info(
            "TTA over %d images of %s: %d variants each (%s), merge %s, %d images per call",
            len(records),
            images_dir,
            n_variants,
            ", ".join(cfg.transforms),
            cfg.merge,
            per_call,
        )
    if n_shards > 1:
        log.info("shard %d of %d: %d images", index, n_shards, len(records))
    with published_together() as outputs:  # the submission and the labels, or nothing
        names = [f"{r.image_id}.{label_format}" for r in records]
        names += [f"overlays/{r.image_id}.png" for r in records] if overlays else []
        staging = outputs.files_into(out_dir, names) if out_dir is not None else None
        if staging is not None and overlays:
            (staging / "overlays").mkdir()
        predictions = CompressedLabels()
        start = time.perf_counter()
        with Progress(len(records), "predict", log) as bar:
            for first in range(0, len(records), per_call):
                chunk = records[first : first + per_call]
                images = [read_image(record.image_path)[0] for record in chunk]
                results = zip(chunk, images, segmenter.segment(images, cfg), strict=True)
                for record, image, labels in results:
                    predictions.add(record.image_id, labels)
                    if staging is not None:
                        write_label_image(staging, record.image_id, labels, label_format)
                    if staging is not None and overlays:
                        overlay = Image.fromarray(outline(image, labels))
                        overlay.save(staging / "overlays" / f"{record.image_id}.png")
                bar.update(len(chunk))
        elapsed = time.perf_counter() - start
        if submission_csv is not None:
            write_submission(submission_csv, predictions, outputs=outputs)
    log.info(
        "segmented %d images of %s in %.1f s (%.2f images/s)",
        len(records),
        images_dir,
        elapsed,
        len(records) / elapsed if elapsed > 0 else 0.0,
    )
    return len(records)
