"""Joint image + instance-label transforms for training (torchvision references style).

Every transform takes ``(image, labels, rng)`` and returns ``(image, labels)``: ``image`` uint8
(H, W, 3), ``labels`` an integer instance label image (H, W) with 0 = background, ``rng`` a
:class:`numpy.random.Generator` (a sample's augmentation is a pure function of its seed, so a
resumed run draws the same samples). Geometry moves image and labels together: bilinear for the
image, nearest neighbour for labels. Label values need not stay consecutive; instances that
leave the frame simply disappear. :func:`to_target` turns the labels into torchvision's target.

Baseline pipelines (:func:`training_pipeline`): Deep Retina (Deep Retina) = random zoom +
aspect jitter -> random crop -> flips, rot90, p.5 rotation +-10 (nearest) -> channel shift +-15;
Mirzaev (Mirzaev) = p.5 affine (scale 0.5-2, rotation +-15, reflected borders) -> p.5 crop 256 ->
longest side to 512 -> flips, p.5 rot90 +-1. The ``jitter`` arm adds :class:`ColourJitter`.

Example:
    >>> import numpy as np
    >>> image = np.zeros((8, 8, 3), np.uint8)
    >>> labels = np.zeros((8, 8), np.int32)
    >>> labels[0, 0] = 1
    >>> _, out = RandomFlip(1.0, axis=1)(image, labels, np.random.default_rng(0))
    >>> int(out[0, 7])
    1
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from scipy import ndimage as ndi
from skimage.color import hsv2rgb, rgb2hsv
from skimage.measure import label as connected_components

from nucleistyle.segment.configs import SegmenterConfig

__all__ = [
    "ChannelShift",
    "ColourJitter",
    "Compose",
    "FitLongest",
    "RandomAffine",
    "RandomCrop",
    "RandomFlip",
    "RandomRot90",
    "RandomRotate",
    "RandomZoomCrop",
    "eval_pipeline",
    "mask_boxes",
    "resize_pair",
    "to_target",
    "training_pipeline",
]

Pair = tuple[np.ndarray, np.ndarray]
Transform = Callable[[np.ndarray, np.ndarray, np.random.Generator], Pair]


def resize_image(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of a uint8 (H, W, 3) image (Pillow; antialiased when shrinking)."""
    if image.shape[:2] == (height, width):
        return image
    resized = Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR)
    return np.array(resized)  # writable (np.asarray of a Pillow image is read-only)


def resize_labels(labels: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of a label image (pixel centres mapped back, no new values)."""
    h, w = labels.shape
    if (h, w) == (height, width):
        return labels
    rows = np.minimum(((np.arange(height) + 0.5) * (h / height)).astype(np.intp), h - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * (w / width)).astype(np.intp), w - 1)
    return labels[rows[:, None], cols[None, :]]


def resize_pair(image: np.ndarray, labels: np.ndarray, height: int, width: int) -> Pair:
    """Resize image (bilinear) and labels (nearest) to (height, width)."""
    return resize_image(image, height, width), resize_labels(labels, height, width)


@dataclass(frozen=True)
class Compose:
    """Apply transforms in order."""

    transforms: Sequence[Transform]

    def __call__(self, image: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> Pair:
        for t in self.transforms:
            image, labels = t(image, labels, rng)
        return image, labels


@dataclass(frozen=True)
class RandomZoomCrop:
    """Deep Retina's random zoom with aspect jitter, then a random square crop (Deep Retina).

    ``s_min = size / min(h, w)``, ``s ~ U(s_min, max(min_enlarge, s_min * zoom))``; then the
    width scale (p = 0.5) or else the height scale is multiplied by U(1, aspect); then a uniform
    ``size`` x ``size`` crop. Crops without any instance are redrawn (``tries`` times; Deep
    Retina skips them), the last one is kept either way.
    """

    size: int
    min_enlarge: float = 1.2
    zoom: float = 1.5
    aspect: float = 1.3
    tries: int = 10

    def __call__(self, image: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> Pair:
        h, w = labels.shape
        s_min = self.size / min(h, w)
        s = rng.uniform(s_min, max(self.min_enlarge, s_min * self.zoom))
        sy = sx = s
        stretch = rng.uniform(1.0, self.aspect)
        if rng.random() < 0.5:
            sx *= stretch
        else:
            sy *= stretch
        out_h, out_w = max(self.size, round(h * sy)), max(self.size, round(w * sx))
        image, labels = resize_pair(image, labels, out_h, out_w)
        for _ in range(self.tries):
            y = int(rng.integers(0, out_h - self.size + 1))
            x = int(rng.integers(0, out_w - self.size + 1))
            crop = labels[y : y + self.size, x : x + self.size]
            if crop.any():
                break
        return image[y : y + self.size, x : x + self.size], crop


@dataclass(frozen=True)
class FitLongest:
    """Resize so the longest side is ``size`` (Mirzaev; both up- and down-scaling)."""

    size: int

    def __call__(self, image: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> Pair:
        h, w = labels.shape
        scale = self.size / max(h, w)
        return resize_pair(image, labels, max(1, round(h * scale)), max(1, round(w * scale)))


@dataclass(frozen=True)
class RandomCrop:
    """With probability ``p`` a uniform ``size`` x ``size`` crop (Mirzaev).

    No-op along a side that is not longer than ``size``; a crop without instances is rejected
    (the input is kept), as Mirzaev did.
    """

    size: int
    p: float = 0.5

    def __call__(self, image: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> Pair:
        if rng.random() >= self.p:
            return image, labels
        h, w = labels.shape
        y = int(rng.integers(0, max(h - self.size, 0) + 1))
        x = int(rng.integers(0, max(w - self.size, 0) + 1))
        window = (slice(y, y + self.size), slice(x, x + self.size))
        if not labels[window].any():
            return image, labels
        return image[window], labels[window]


@dataclass(frozen=True)
class RandomFlip:
    """Flip with probability ``p``: ``axis`` 1 = horizontal (left-right), 0 = vertical."""

    p: float = 0.5
    axis: int = 1

    def __call__(self, image: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> Pair:
        if rng.random() >= self.p:
            return image, labels
        return np.flip(image, self.axis), np.flip(labels, self.axis)


@dataclass(frozen=True)
class RandomRot90:
    """Rotate by k x 90 degrees (counter-clockwise, ``np.rot90``).

    ``mode`` ``"any"``: k uniform in {0, 1, 2, 3} (Deep Retina); ``"pm1"``: with p = 0.5, k = +1 or
    -1 (Mirzaev); ``"none"``: identity.
    """

    mode: str = "any"

    def __call__(self, image: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> Pair:
        if self.mode == "any":
            k = int(rng.integers(0, 4))
        elif self.mode == "pm1" and rng.random() < 0.5:
            k = 1 if rng.random() < 0.5 else -1
        else:
            k = 0
        if k == 0:
            return image, labels
        return np.rot90(image, k), np.rot90(labels, k)


@dataclass(frozen=True)
class RandomRotate:
    """With probability ``p`` rotate by U(-deg, deg) about the centre, nearest neighbour for
    image and labels, same canvas, corners zero (Deep Retina's free rotation)."""

    p: float = 0.5
    deg: float = 10.0

    def __call__(self, image: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> Pair:
        if self.p == 0 or rng.random() >= self.p:
            return image, labels
        angle = rng.uniform(-self.deg, self.deg)
        image = ndi.rotate(image, angle, axes=(1, 0), reshape=False, order=0, mode="constant")
        labels = ndi.rotate(labels, angle, axes=(1, 0), reshape=False, order=0, mode="constant")
        return image, labels


def _centre_affine(shape: tuple[int, int], scale: float, angle: float) -> tuple[np.ndarray, ...]:
    """Matrix and offset mapping output (row, col) to input coordinates: scale + rotation about
    the centre (``angle`` counter-clockwise on screen, degrees)."""
    theta = math.radians(angle)
    cos, sin = math.cos(theta), math.sin(theta)
    # output = c + scale * R (input - c); rows point down, so a counter-clockwise turn on screen
    # is R = [[cos, -sin], [sin, cos]] acting on (row, col) with the sign of sin flipped.
    forward = scale * np.array([[cos, sin], [-sin, cos]])
    matrix = np.linalg.inv(forward)
    centre = (np.asarray(shape, float) - 1) / 2
    return matrix, centre - matrix @ centre


@dataclass(frozen=True)
class RandomAffine:
    """With probability ``p`` scale U(scale) and rotate U(-deg, deg) about the centre (Mirzaev):
    same canvas, bilinear image, nearest labels, reflected borders (OpenCV
    REFLECT_101 = scipy ``mirror``), labels re-split into connected components (a reflected
    nucleus becomes its own instance). Rejected (input kept) if no instance survives."""

    p: float = 0.5
    scale: tuple[float, float] = (0.5, 2.0)
    deg: float = 15.0

    def __call__(self, image: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> Pair:
        if self.p == 0 or rng.random() >= self.p:
            return image, labels
        scale = rng.uniform(*self.scale)
        angle = rng.uniform(-self.deg, self.deg)
        matrix, offset = _centre_affine(labels.shape, scale, angle)
        out_labels = ndi.affine_transform(labels, matrix, offset, order=0, mode="mirror")
        if not out_labels.any():
            return image, labels
        channels = [
            ndi.affine_transform(
                image[:, :, c].astype(np.float32), matrix, offset, order=1, mode="mirror"
            )
            for c in range(3)
        ]
        out_image = np.clip(np.rint(np.stack(channels, axis=2)), 0, 255).astype(np.uint8)
        return out_image, connected_components(out_labels, background=0).astype(np.int32)


@dataclass(frozen=True)
class ChannelShift:
    """Add U(-shift, shift) to each RGB channel (0-255 scale), clipped to the image's own
    [min, max] (Deep Retina, +-15)."""

    shift: float = 15.0

    def __call__(self, image: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> Pair:
        if self.shift == 0:
            return image, labels
        shifted = image.astype(np.float32) + rng.uniform(-self.shift, self.shift, 3)
        shifted = np.clip(shifted, float(image.min()), float(image.max()))
        return np.rint(shifted).astype(np.uint8), labels


@dataclass(frozen=True)
class ColourJitter:
    """Strong colour augmentation, the ``jitter`` arm's stand-in for the style GAN.

    With probability ``p``: optionally invert the intensities (``invert``), then in HSV add a
    saturation U(0, ``tint``) to grey pixels' hue-less colour, shift the hue by
    U(-hue, hue) turns, scale saturation by U(saturation) and value by U(value).
    """

    p: float = 0.5
    hue: float = 0.5
    saturation: tuple[float, float] = (0.5, 1.5)
    tint: float = 0.4
    value: tuple[float, float] = (0.6, 1.4)
    invert: float = 0.5

    def __call__(self, image: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> Pair:
        if self.p == 0 or rng.random() >= self.p:
            return image, labels
        if rng.random() < self.invert:
            image = 255 - image
        hsv = rgb2hsv(image)
        tint_hue = rng.random()
        grey = hsv[..., 1] < 1e-3
        hsv[..., 0] = np.where(grey, tint_hue, hsv[..., 0])
        hsv[..., 1] = hsv[..., 1] + rng.uniform(0, self.tint)
        hsv[..., 0] = (hsv[..., 0] + rng.uniform(-self.hue, self.hue)) % 1.0
        hsv[..., 1] = np.clip(hsv[..., 1] * rng.uniform(*self.saturation), 0, 1)
        hsv[..., 2] = np.clip(hsv[..., 2] * rng.uniform(*self.value), 0, 1)
        return np.rint(hsv2rgb(hsv) * 255).astype(np.uint8), labels


def training_pipeline(cfg: SegmenterConfig, arm: str = "none") -> Compose:
    """The baseline's training transforms (plus the colour jitter for arm ``jitter``)."""
    prep, aug = cfg.prep, cfg.augment
    jitter = ColourJitter(
        aug.jitter_p,
        aug.jitter_hue,
        aug.jitter_saturation,
        aug.jitter_tint,
        aug.jitter_value,
        aug.jitter_invert,
    )
    steps: list[Transform] = []
    if prep.policy == "zoom_crop":  # Deep Retina order: zoom, crop, flips, rot90, rotation, shift
        steps.append(RandomZoomCrop(prep.size, prep.min_enlarge, prep.zoom, prep.aspect))
    else:  # Mirzaev order: affine, crop, resize, flips, rot90
        steps += [
            RandomAffine(aug.affine_p, aug.affine_scale, aug.affine_deg),
            RandomCrop(prep.crop, prep.crop_p),
            FitLongest(prep.size),
        ]
    if arm == "jitter":
        steps.append(jitter)
    steps += [RandomFlip(aug.hflip, axis=1), RandomFlip(aug.vflip, axis=0), RandomRot90(aug.rot90)]
    if prep.policy == "zoom_crop":
        steps += [RandomRotate(aug.rotate_p, aug.rotate_deg), ChannelShift(aug.channel_shift)]
    else:
        steps.append(RandomRotate(aug.rotate_p, aug.rotate_deg))
        if aug.channel_shift:
            steps.append(ChannelShift(aug.channel_shift))
    return Compose(steps)


@dataclass(frozen=True)
class _CentreZoomCrop:
    size: int

    def __call__(self, image: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> Pair:
        h, w = labels.shape
        s = self.size / min(h, w)
        out_h, out_w = max(self.size, round(h * s)), max(self.size, round(w * s))
        image, labels = resize_pair(image, labels, out_h, out_w)
        y, x = (out_h - self.size) // 2, (out_w - self.size) // 2
        window = (slice(y, y + self.size), slice(x, x + self.size))
        return image[window], labels[window]


def eval_pipeline(cfg: SegmenterConfig) -> Compose:
    """Deterministic preparation of validation samples (no augmentation, Mirzaev): Mirzaev's
    longest side to ``size``; Deep Retina's short side to ``size`` and a centre crop."""
    if cfg.prep.policy == "zoom_crop":
        return Compose([_CentreZoomCrop(cfg.prep.size)])
    return Compose([FitLongest(cfg.prep.size)])


def mask_boxes(masks: np.ndarray) -> np.ndarray:
    """Bounding boxes of non-empty bool masks (n, H, W): float32 (n, 4) x0, y0, x1, y1 in
    pixel edges (a 1-px object has width 1)."""
    rows, cols = np.any(masks, axis=2), np.any(masks, axis=1)
    h, w = masks.shape[1:]
    y0, y1 = rows.argmax(axis=1), h - rows[:, ::-1].argmax(axis=1)
    x0, x1 = cols.argmax(axis=1), w - cols[:, ::-1].argmax(axis=1)
    return np.stack([x0, y0, x1, y1], axis=1).astype(np.float32).reshape(-1, 4)


def to_target(
    image: np.ndarray, labels: np.ndarray, max_instances: int, rng: np.random.Generator
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """torchvision's Mask R-CNN input from a transformed pair.

    Args:
        image: uint8 (H, W, 3).
        labels: Integer label image (H, W); every distinct nonzero value is one instance.
        max_instances: At most this many instances, a random subset beyond (MAX_GT_INSTANCES).
        rng: For the subset.

    Returns:
        ``(image, target)``: float32 (3, H, W) in [0, 1] and ``{"boxes": float32 (n, 4) xyxy
        (pixel edges, so a 1-px object has width 1), "labels": int64 ones (n,), "masks": uint8
        (n, H, W)}``; n may be 0 (an image without nuclei is a valid negative sample).
    """
    image = np.ascontiguousarray(image)
    ids = np.unique(labels)
    ids = ids[ids != 0]
    if ids.size > max_instances:
        ids = np.sort(rng.choice(ids, max_instances, replace=False))
    masks = labels[None, :, :] == ids[:, None, None]
    boxes = mask_boxes(masks)
    tensor = torch.from_numpy(image).permute(2, 0, 1).float().div_(255)
    target = {
        "boxes": torch.from_numpy(boxes),
        "labels": torch.ones(len(ids), dtype=torch.int64),
        "masks": torch.from_numpy(masks.astype(np.uint8)),
    }
    return tensor, target
