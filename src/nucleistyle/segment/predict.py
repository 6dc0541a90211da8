"""Inference: a trained segmenter on images, folders and (for TTA) batches.

:class:`Segmenter` separates the raw network pass from the post-processing so that a
test-time-augmentation wrapper can transform images, call :meth:`Segmenter.raw` on the batch,
map the returned per-instance soft masks back, merge them and finally call
:meth:`Segmenter.postprocess`::

    seg = load_segmenter("model.pt")
    flipped = [np.fliplr(image), image]
    det_flip, det = seg.raw(flipped)             # Detections in each input's own coordinates
    soft = det_flip.soft_masks()[:, :, ::-1]      # (n, H, W) float32 probabilities, unflipped
    labels = seg.postprocess(Instances.from_dense(soft > seg.cfg.post.mask_threshold,
                                                  det_flip.scores))

Sizing follows each baseline (§1.2 / §2.2): Deep Retina runs at native size, upscaled only when
the short side is below ``prep.size`` and padded to a multiple of 64; Mirzaev resizes the
longest side to ``prep.size`` and pads to a square. Detections are mapped back to the input's
pixel grid, so the label images always have the input's size.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from nucleistyle.data.bbbc038 import list_images, read_image, write_label_png
from nucleistyle.data.csvio import CompressedLabels, write_submission
from nucleistyle.segment.configs import SegmenterConfig, config_from_fingerprint
from nucleistyle.segment.engine import read_model_file
from nucleistyle.segment.model import build_model
from nucleistyle.segment.postprocess import Instances, postprocess
from nucleistyle.segment.transforms import resize_image
from nucleistyle.torchutils import autocast, resolve_precision, select_device
from nucleistyle.utils import NucleistyleError

__all__ = ["Detections", "Segmenter", "load_segmenter", "predict_folder"]

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

    def paste(self, index: int) -> tuple[int, int, np.ndarray]:
        """One soft mask as ``(row, col, probabilities)``: the crop's top-left corner (may lie
        outside the image) and its float32 values. Same geometry as torchvision's
        ``paste_masks_in_image`` (1-px padded mask, box expanded accordingly)."""
        m = self.mask_probs.shape[-1]
        scale = (m + 2) / m
        x0, y0, x1, y1 = (float(v) for v in self.boxes[index])
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        half_w, half_h = (x1 - x0) / 2 * scale, (y1 - y0) / 2 * scale
        bx0, by0 = int(cx - half_w), int(cy - half_h)  # truncation, as .to(torch.int64)
        bx1, by1 = int(cx + half_w), int(cy + half_h)
        w, h = max(bx1 - bx0 + 1, 1), max(by1 - by0 + 1, 1)
        padded = F.pad(torch.from_numpy(self.mask_probs[index])[None, None], (1, 1, 1, 1))
        crop = F.interpolate(padded, size=(h, w), mode="bilinear", align_corners=False)
        return by0, bx0, crop[0, 0].numpy()

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
        """Binary masks (probability > ``threshold``) as :class:`Instances` crops."""
        offsets = np.zeros((len(self), 2), np.int64)
        crops = []
        for i in range(len(self)):
            y, x, crop = self.paste(i)
            offsets[i] = y, x
            crops.append(crop > threshold)
        return Instances(self.image_size, offsets, crops, self.scores.astype(np.float64))


class Segmenter:
    """A trained Mask R-CNN with its baseline's preparation and post-processing.

    Args:
        model: The network (moved to ``device``, put in eval mode).
        cfg: Its configuration.
        device: Where it runs.
        dtype: Autocast dtype (None = fp32).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        cfg: SegmenterConfig,
        device: torch.device,
        dtype: torch.dtype | None,
    ) -> None:
        self.model = model.to(device).eval()
        self.cfg = cfg
        self.device = device
        self.dtype = dtype

    def scale_for(self, height: int, width: int) -> float:
        """The resize factor the baseline applies to an image of this size."""
        size = self.cfg.prep.size
        if self.cfg.prep.policy == "zoom_crop":  # upscale only (§1.2)
            return max(1.0, size / min(height, width))
        return size / max(height, width)  # longest side -> size (§2.2)

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

        Returns:
            One :class:`Detections` per image, in that image's coordinates, with the model's
            score threshold, NMS and detection cap applied.
        """
        prepared = [self._prepare(image) for image in images]
        model = self.model
        with autocast(self.device, self.dtype):
            batch, _ = model.transform([t for t, _, _ in prepared])
            features = model.backbone(batch.tensors)
            proposals, _ = model.rpn(batch, features)
            outputs, _ = model.roi_heads(features, proposals, batch.image_sizes)
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

    def predict(self, image: np.ndarray) -> np.ndarray:
        """Single-pass segmentation of one image.

        Mirzaev's fallback (§2.7, ``post.fallback_canvas``): when fewer than 2 foreground
        pixels are found, the image is pasted into a k-times larger zero canvas (top-left),
        segmented again and cropped back.

        Returns:
            int32 (H, W) label image of the input's size, 0 = background.
        """
        post = self.cfg.post
        labels = self.postprocess(self.raw([image])[0].instances(post.mask_threshold))
        if post.fallback_canvas and np.count_nonzero(labels) < 2:
            height, width = image.shape[:2]
            k = post.fallback_canvas
            canvas = np.zeros((k * height, k * width, 3), np.uint8)
            canvas[:height, :width] = image
            big = self.postprocess(self.raw([canvas])[0].instances(post.mask_threshold))
            cropped = big[:height, :width]
            ids = np.unique(cropped)
            lookup = np.zeros(int(ids.max()) + 1, np.int32)
            lookup[ids] = np.arange(len(ids), dtype=np.int32)
            labels = lookup[cropped]
        return labels


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
    model = build_model(cfg, pretrained=False)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise NucleistyleError(
            f"{model_path}: weights do not match the stored configuration: "
            f"{str(exc).splitlines()[0]}"
        ) from exc
    torch_device = select_device(device)
    dtype = resolve_precision(cfg.precision, torch_device)
    log.info("loaded %s (%s, %s) on %s", model_path, cfg.baseline, cfg.backbone, torch_device)
    return Segmenter(model, cfg, torch_device, dtype)


def predict_folder(
    model_path: PathLike,
    images_dir: PathLike,
    submission_csv: PathLike,
    labels_dir: PathLike | None = None,
    device: str = "auto",
) -> int:
    """Segment every image of a folder (single pass + the baseline's post-processing).

    Args:
        model_path: A model file from :func:`~.engine.train_segmenter`.
        images_dir: BBBC038-layout or flat folder of images.
        submission_csv: Kaggle submission (``ImageId,EncodedPixels``), written atomically; an
            image without nuclei gets one empty row.
        labels_dir: If given, ``<labels_dir>/<ImageId>.png``: 16-bit label images of each
            input's size (0 = background).
        device: Where to run.

    Returns:
        The number of images segmented.

    Raises:
        NucleistyleError: bad model file, empty folder or unreadable image (named).
    """
    segmenter = load_segmenter(model_path, device)
    records = list_images(images_dir)
    out_dir = None if labels_dir is None else Path(labels_dir)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    predictions = CompressedLabels()
    for record in tqdm(records, desc="predict", unit="image", disable=None, file=sys.stderr):
        image, _ = read_image(record.image_path)
        labels = segmenter.predict(image)
        predictions.add(record.image_id, labels)
        if out_dir is not None:
            write_label_png(out_dir / f"{record.image_id}.png", labels)
    write_submission(submission_csv, predictions)
    log.info("segmented %d images of %s", len(records), images_dir)
    return len(records)
