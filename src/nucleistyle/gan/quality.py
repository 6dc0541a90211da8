"""Copy quality: do the inherited nuclei show in a restyled copy, and does it show others too?

A restyled copy is trained on with the masks of its original, so it is worth training on only when
(a) the inherited nuclei are as visible as nuclei are in real images of the target domain, in the
target domain's polarity (dark nuclei on a bright ground in bright-field, bright on dark in
fluorescence), and (b) it shows no nucleus-like objects where the masks say there is background
(a segmenter trained on it learns to ignore nuclei). Both are measured against what real images
of the target domain look like with their own masks (:class:`DomainLook`), so the scale's ends
are known: a perfect transfer scores about 1 and the real images' own phantom rate; an unrelated
image of the target domain (other nuclei) scores about 0 and many phantoms.

* **Visibility** (:func:`visibility`): d' between the inherited nuclei and a 3-px band around them,
  *signed* in the target domain's polarity, on the plane (grey, red, green or blue) where that
  domain's nuclei stand out most. Nuclei painted in the wrong polarity score below 0; faded ones
  near 0. :func:`copy_quality` divides it by the domain's typical value (clipped to [0, 1]).
* **Phantoms** (:func:`phantom_objects`): a fixed detector for the target domain finds what
  stands out from the copy's background as far as the domain's real nuclei do (same plane and
  polarity); every object that lies mostly outside the inherited masks (dilated by 2 px) is a
  phantom, counted in nucleus-sized units. Reported per 100 inherited nuclei.

Example:
    >>> labels = np.zeros((32, 32), np.int32); labels[4:10, 4:10] = 1; labels[20:26, 20:26] = 2
    >>> image = np.where(labels[..., None] > 0, 200, 40).astype(np.uint8).repeat(3, axis=2)
    >>> look = domain_look([image], [labels])
    >>> look.polarity, phantom_objects(image, labels, look)
    (1, (0, 2))
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from nucleistyle.data.bbbc038 import ImageRecord, load_sample

__all__ = [
    "LOOK_IMAGES",
    "PLANES",
    "DomainLook",
    "copy_quality",
    "domain_look",
    "domain_looks",
    "phantom_objects",
    "record_looks",
    "signed_contrasts",
    "visibility",
]

PLANES = ("grey", "red", "green", "blue")
RING = 3  # px band around the nuclei
NEAR = 2  # px: an object this close to an inherited nucleus is that nucleus
MIN_AREA = 0.25  # of the median inherited nucleus area: smaller objects are noise
SIGMA = 1.0  # px of smoothing before thresholding
LOOK_IMAGES = 32  # labelled images per domain that define how its nuclei look
MIN_LOOK_VISIBILITY = 1.0  # d' below which a domain's nuclei are too faint to detect phantoms
VARIANCE_FLOOR = 1.0  # grey levels²: keeps d' finite on flat (drawn) images


def _planes(image: np.ndarray) -> np.ndarray:
    """(4, H, W) float64: grey, red, green, blue (a grey image repeats itself)."""
    pixels = np.asarray(image, np.float64)
    if pixels.ndim == 2:
        return np.repeat(pixels[None], 4, axis=0)
    return np.concatenate([pixels.mean(axis=2)[None], np.moveaxis(pixels[..., :3], 2, 0)])


def signed_contrasts(image: np.ndarray, labels: np.ndarray, ring: int = RING) -> np.ndarray:
    """Signed d' of the nuclei against a ``ring`` px band around them, per plane.

    d' = (mean_nuclei - mean_band) / sqrt((var_nuclei + var_band) / 2 + 1): positive when the
    nuclei are brighter than what surrounds them (the 1 grey level² keeps flat images finite).

    Args:
        image: (H, W) or (H, W, 3) image, 0-255.
        labels: (H, W) mask or label image (> 0 = nucleus).
        ring: Width of the band (px).

    Returns:
        (4,) float: grey, red, green, blue; NaN when the nuclei or the band have fewer than 5
        pixels.
    """
    fg = np.asarray(labels) > 0
    if np.shape(image)[:2] != fg.shape:
        raise ValueError(f"shapes differ: {np.shape(image)} vs {fg.shape}")
    band = ndi.binary_dilation(fg, iterations=ring) & ~fg
    if np.count_nonzero(fg) < 5 or np.count_nonzero(band) < 5:
        return np.full(len(PLANES), np.nan)
    out = np.empty(len(PLANES))
    for k, plane in enumerate(_planes(image)):
        inside, around = plane[fg], plane[band]
        spread = math.sqrt(0.5 * (inside.var() + around.var()) + VARIANCE_FLOOR)
        out[k] = (inside.mean() - around.mean()) / spread
    return out


@dataclass(frozen=True)
class DomainLook:
    """How the nuclei of one domain show in its real images (with their own masks).

    Attributes:
        plane: Index into :data:`PLANES` where the nuclei stand out most.
        polarity: +1 nuclei brighter than their surroundings (fluorescence), -1 darker.
        visibility: Median d' of the real images on ``plane`` in ``polarity`` (> 0).
        gap: Median grey-level gap between the nuclei and the background of the real images
            on ``plane`` in ``polarity`` (smoothed; each image's medians): how far from its
            background an object must stand to look like a nucleus of this domain.
        phantoms: Median phantoms per 100 nuclei of the real images against their own masks
            (what a perfect transfer into this domain would show: unannotated nuclei, debris).
        n_images: Real images measured.
    """

    plane: int
    polarity: int
    visibility: float
    gap: float
    phantoms: float
    n_images: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def domain_look(images: Sequence[np.ndarray], labels: Sequence[np.ndarray]) -> DomainLook:
    """The :class:`DomainLook` of a domain from some of its real images and their masks.

    The plane and polarity are those of the largest mean signed d' over the images (grey
    first on ties); ``visibility`` and ``gap`` are medians on that plane.

    Raises:
        ValueError: no image with measurable nuclei.
    """
    contrasts = np.array([signed_contrasts(i, m) for i, m in zip(images, labels, strict=True)])
    usable = ~np.isnan(contrasts).any(axis=1) if len(contrasts) else np.zeros(0, bool)
    if not usable.any():
        raise ValueError("no image with at least 5 nucleus and 5 background pixels")
    mean = contrasts[usable].mean(axis=0)
    plane = int(np.argmax(np.abs(mean)))
    polarity = 1 if mean[plane] >= 0 else -1
    kept = [(i, m) for i, m, ok in zip(images, labels, usable, strict=True) if ok]
    gaps = [_levels(i, m, plane, polarity)[1:] for i, m in kept]
    look = DomainLook(
        plane,
        polarity,
        float(np.median(polarity * contrasts[usable, plane])),
        float(np.median([nuclei - ground for nuclei, ground in gaps])),
        float("nan"),
        len(kept),
    )
    rates = [_per_100(*phantom_objects(i, m, look)) for i, m in kept]
    return dataclasses.replace(look, phantoms=float(np.nanmedian(rates)))


def _levels(
    image: np.ndarray, labels: np.ndarray, plane: int, polarity: int
) -> tuple[np.ndarray, float, float]:
    """The smoothed plane in ``polarity``, the median of the nuclei and the level of the
    background: the lower quartile of the pixels more than 2 px from any nucleus (robust to
    what else stands out there, unannotated nuclei included; the nuclei's median when there are
    none)."""
    fg = np.asarray(labels) > 0
    values = polarity * ndi.gaussian_filter(_planes(image)[plane], SIGMA)
    near = ndi.binary_dilation(fg, iterations=NEAR)
    nuclei = float(np.median(values[fg]))
    ground = float(np.quantile(values[~near], 0.25)) if not near.all() else nuclei
    return values, nuclei, ground


def visibility(image: np.ndarray, labels: np.ndarray, look: DomainLook) -> float:
    """d' of the nuclei in ``labels`` on the domain's plane, signed in its polarity."""
    return float(look.polarity * signed_contrasts(image, labels)[look.plane])


def phantom_objects(image: np.ndarray, labels: np.ndarray, look: DomainLook) -> tuple[int, int]:
    """Nucleus-like objects outside the inherited masks, and the number of inherited nuclei.

    A fixed detector for the target domain: the image's plane ``look.plane`` is smoothed
    (Gaussian, 1 px), turned to the domain's polarity, and what stands at least ``look.gap``
    grey levels from the image's background (the lower quartile of what lies more than 2 px from
    any nucleus) is foreground, as a typical nucleus of the domain does. An object (connected
    component) is a phantom when less than half of it lies within 2 px of an inherited nucleus;
    it counts as its area in median nucleus areas (at least one; objects under a quarter of that
    are noise), so that a large false region weighs like the nuclei it could hide.

    Args:
        image: (H, W) or (H, W, 3) image, 0-255.
        labels: (H, W) instance labels of the inherited nuclei (0 = background).
        look: The target domain's :class:`DomainLook`.

    Returns:
        (phantoms, nuclei); (0, 0) when ``labels`` has no nucleus.
    """
    labels = np.asarray(labels)
    fg = labels > 0
    areas = np.bincount(labels[fg].ravel())
    areas = areas[areas > 0]
    if areas.size == 0:
        return 0, 0
    values, _, ground = _levels(image, labels, look.plane, look.polarity)
    objects, n = ndi.label(values >= ground + look.gap)
    size = np.bincount(objects.ravel(), minlength=n + 1)
    near = ndi.binary_dilation(fg, iterations=NEAR)
    close = np.bincount(objects[near].ravel(), minlength=n + 1)
    unit = float(np.median(areas))
    outside = (size >= MIN_AREA * unit) & (close < 0.5 * size)
    outside[0] = False
    count = np.maximum(1, np.rint(size[outside] / unit)).sum()
    return int(count), int(areas.size)


def _per_100(phantoms: int, nuclei: int) -> float:
    return 100.0 * phantoms / nuclei if nuclei else float("nan")


def copy_quality(image: np.ndarray, labels: np.ndarray, look: DomainLook) -> dict[str, float]:
    """The copy's visibility relative to its target domain, and its phantoms per 100 nuclei.

    Visibility asks for both what makes nuclei clear in a real image of the domain: their d'
    (separable from what surrounds them) and their grey-level gap to the background (as strong
    as the domain's nuclei, not a faint trace in a near-blank image). The ratio is the smaller
    of the two shares, clipped to [0, 1].

    Returns:
        ``visibility`` (d', signed), ``gap`` (grey levels, signed), ``visibility_ratio`` (1 for
        nuclei at least as clear as in real images of the domain, 0 for none or in the wrong
        polarity; clipped so that a clear copy does not make up for a faded one in a mean),
        ``phantoms_per_100`` (NaN where the domain's own nuclei stand out too little, d' below
        :data:`MIN_LOOK_VISIBILITY`, for a detector to tell them from texture) and ``nuclei``.
    """
    value = visibility(image, labels, look)
    gap = _levels(image, labels, look.plane, look.polarity)[1:] if np.any(labels) else (0, 0)
    gap_value = float(gap[0] - gap[1])
    phantoms, nuclei = phantom_objects(image, labels, look)
    shares = [value / look.visibility, gap_value / look.gap] if look.gap > 0 else [np.nan]
    ratio = float("nan") if math.isnan(value) else min(1.0, max(0.0, min(shares)))
    reliable = look.visibility >= MIN_LOOK_VISIBILITY
    return {
        "visibility": value,
        "gap": gap_value,
        "visibility_ratio": ratio,
        "phantoms_per_100": _per_100(phantoms, nuclei) if reliable else float("nan"),
        "nuclei": float(nuclei),
    }


def domain_looks(
    samples: Iterable[tuple[np.ndarray, np.ndarray | None, int]],
    n_domains: int,
    per_domain: int = LOOK_IMAGES,
) -> list[DomainLook | None]:
    """The :class:`DomainLook` of every domain from its first ``per_domain`` labelled images.

    Args:
        samples: (image, labels or None, domain) in a fixed order (e.g. by ImageId); images
            without labels are skipped.
        n_domains: Number of domains.
        per_domain: Images used per domain at most.

    Returns:
        One look per domain; None for a domain without a labelled image with measurable nuclei.
    """
    chosen: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in range(n_domains)]
    for image, labels, domain in samples:
        if labels is not None and len(chosen[domain]) < per_domain:
            chosen[domain].append((image, labels))
    looks: list[DomainLook | None] = []
    for members in chosen:
        try:
            looks.append(domain_look([m[0] for m in members], [m[1] for m in members]))
        except ValueError:
            looks.append(None)
    return looks


def record_looks(
    records: Sequence[ImageRecord], domain_of: Mapping[str, int], n_domains: int
) -> list[DomainLook | None]:
    """:func:`domain_looks` of a folder's images: the first :data:`LOOK_IMAGES` images with
    masks of each domain, in the given order (``domain_of``: ImageId -> domain)."""
    chosen: list[list[ImageRecord]] = [[] for _ in range(n_domains)]
    for record in records:
        members = chosen[int(domain_of[record.image_id])]
        if record.mask_paths and len(members) < LOOK_IMAGES:
            members.append(record)
    return domain_looks(
        (
            (sample.image, sample.labels, d)
            for d, members in enumerate(chosen)
            for sample in map(load_sample, members)
        ),
        n_domains,
    )
