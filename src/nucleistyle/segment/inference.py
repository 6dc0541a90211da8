"""Inference: a trained segmenter on a batch of images, single pass or (for TTA) variants.

:class:`Segmenter` separates the raw network pass from the post-processing so that a
test-time-augmentation wrapper can transform images, call :meth:`Segmenter.raw` on the batch,
map the returned per-instance masks back, merge them and finally call
:meth:`Segmenter.postprocess`. :meth:`Segmenter.segment` does exactly that with
:func:`nucleistyle.tta.predict_tta`::

    seg = load_segmenter("model.pt")               # nucleistyle.segment.modelfile
    single = seg.segment(images)                   # one pass + the baseline's post-processing
    merged = seg.segment(images, TTAConfig())      # 8 dihedral variants, vote, same post-proc.

Single pass and TTA differ only in the merging: both binarise each detection's mask at the
baseline's ``post.mask_threshold`` (probability ``>`` it), clipped to the image, and both end
in :meth:`Segmenter.postprocess`; with the identity as the only transform and one image per
network call, TTA gives the single-pass labels bit for bit.

Sizing follows each baseline: Deep Retina runs at native size, upscaled only when
the short side is below ``prep.size`` and padded to a multiple of 64; Mirzaev resizes the
longest side to ``prep.size`` and pads to a square. Detections are mapped back to the input's
pixel grid, so the label images always have the input's size. :class:`Detections` pastes each
detection's M x M mask into the image the way training projected it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from nucleistyle.cluster import v_median
from nucleistyle.enhance import ClaheConfig, enhance_image
from nucleistyle.segment.configs import SegmenterConfig
from nucleistyle.segment.postprocess import Instances, postprocess
from nucleistyle.segment.transforms import resize_image
from nucleistyle.torchutils import autocast
from nucleistyle.tta import Instances as DenseInstances
from nucleistyle.tta import PredictFn, TTAConfig, predict_tta

__all__ = ["Detections", "Segmenter"]


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
