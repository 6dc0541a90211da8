"""Drawing one synthetic image and its instance labels (:func:`synthesize`): nuclei shapes and
layout, fluorescence and bright-field rendering, in the style of a modality."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from skimage.draw import polygon2mask

from nucleistyle.data.synthetic.calibration import (
    MODALITIES,
    REAL_GROUP,
    REAL_STATS,
    STYLES,
    Style,
    default_scale,
)
from nucleistyle.errors import NucleistyleError

__all__ = ["synthesize"]


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Zero-mean, unit-sd Gaussian-filtered white noise, float64 (H, W)."""
    field_ = ndi.gaussian_filter(rng.standard_normal(shape), max(sigma, 0.3), mode="wrap")
    return (field_ - field_.mean()) / max(field_.std(), 1e-12)


def _illumination(rng: np.random.Generator, shape: tuple[int, int], strength: float) -> np.ndarray:
    """Mean-1 multiplicative illumination: a linear gradient plus a vignette, (H, W)."""
    h, w = shape
    y, x = np.mgrid[0:h, 0:w]
    y = (y - (h - 1) / 2) / max(h, w)
    x = (x - (w - 1) / 2) / max(h, w)
    angle = rng.uniform(0, 2 * np.pi)
    gradient = (x * np.cos(angle) + y * np.sin(angle)) * rng.uniform(0, 2 * strength)
    cy, cx = rng.uniform(-0.2, 0.2, 2)
    vignette = -((x - cx) ** 2 + (y - cy) ** 2) * rng.uniform(0, 2 * strength)
    out = 1 + gradient + vignette
    return out / out.mean()


# a rasterised nucleus: bounding-box slices, coverage in [0, 1], normalised radius
_Raster = tuple[tuple[slice, slice], np.ndarray, np.ndarray]


@dataclass(frozen=True)
class _Blob:
    """An irregular ellipse: centre (px), semi-axes a >= b (px), orientation, boundary harmonics."""

    cy: float
    cx: float
    a: float
    b: float
    theta: float
    amps: np.ndarray  # harmonics k = 2, 3, ... of the radius, relative
    phases: np.ndarray

    @property
    def reach(self) -> float:
        return self.a * (1 + float(np.abs(self.amps).sum())) + 1.5

    def raster(self, shape: tuple[int, int]) -> _Raster | None:
        """Rasterise in its bounding box: (slices, coverage in [0, 1], normalised radius rho).

        Coverage is an anti-aliased 1-px edge ramp (>= 0.5 inside the shape); rho is the
        distance from the centre over the boundary radius in that direction. ``None`` when the
        blob lies outside the image.
        """
        h, w = shape
        r = self.reach
        y0, y1 = max(int(self.cy - r), 0), min(int(self.cy + r) + 2, h)
        x0, x1 = max(int(self.cx - r), 0), min(int(self.cx + r) + 2, w)
        if y0 >= y1 or x0 >= x1:
            return None
        yy = np.arange(y0, y1)[:, None] - self.cy
        xx = np.arange(x0, x1)[None, :] - self.cx
        c, s = np.cos(self.theta), np.sin(self.theta)
        u = xx * c + yy * s
        v = -xx * s + yy * c
        phi = np.arctan2(v, u)
        radius = self.a * self.b / np.hypot(self.b * np.cos(phi), self.a * np.sin(phi))
        k = np.arange(2, 2 + self.amps.size)[:, None, None]
        radius = radius * (
            1 + (self.amps[:, None, None] * np.cos(k * phi + self.phases[:, None, None])).sum(0)
        )
        dist = np.hypot(u, v)
        coverage = np.clip(radius - dist + 0.5, 0.0, 1.0)
        return (slice(y0, y1), slice(x0, x1)), coverage, dist / radius


def _blob(
    rng: np.random.Generator,
    cy: float,
    cx: float,
    area: float,
    axis_ratio: tuple[float, float],
    irregularity: float,
    harmonics: int = 4,
) -> _Blob:
    """A random irregular ellipse of about ``area`` px centred at (cy, cx)."""
    q = rng.uniform(*axis_ratio)
    a = math.sqrt(area / (math.pi * q))
    k = np.arange(2, 2 + harmonics)
    amps = rng.uniform(0, 1, harmonics) * irregularity * 2 / k
    return _Blob(
        cy, cx, a, q * a, rng.uniform(0, np.pi), amps, rng.uniform(0, 2 * np.pi, harmonics)
    )


def _place(
    rng: np.random.Generator,
    shape: tuple[int, int],
    radii: np.ndarray,
    cluster: float,
) -> np.ndarray:
    """Centres (n, 2) for nuclei of equivalent radii ``radii``: clusters and spread singles.

    With probability ``cluster`` a nucleus touches (or slightly overlaps) an earlier one; otherwise
    the best of 8 uniform candidates (largest clearance to the nuclei placed so far) is taken.
    Centres may lie just outside the image so that nuclei are cut by the border, as in real crops.
    """
    h, w = shape
    n = radii.size
    centres = np.zeros((n, 2))
    for i in range(n):
        margin = 0.3 * radii[i]
        if i and rng.random() < cluster:
            j = rng.integers(i)
            angle = rng.uniform(0, 2 * np.pi)
            dist = (radii[i] + radii[j]) * rng.uniform(0.8, 1.05)
            centres[i] = centres[j] + dist * np.array([np.sin(angle), np.cos(angle)])
            continue
        cand = rng.uniform([-margin, -margin], [h + margin, w + margin], (8, 2))
        if i:
            gap = np.linalg.norm(cand[:, None] - centres[None, :i], axis=2) - radii[:i] - radii[i]
            cand = cand[np.argmax(gap.min(1))][None]
        centres[i] = cand[0]
    return centres


def _rasterise_nuclei(
    blobs: list[_Blob], shape: tuple[int, int], min_area: float
) -> tuple[np.ndarray, list[_Raster], list[int]]:
    """Label image (front to back in list order), the kept blobs' rasters and their indices.

    A nucleus keeps the pixels no earlier nucleus took; it is dropped (from labels and from the
    rendering) when fewer than ``min_area`` px or less than half of its in-image area remain.
    """
    labels = np.zeros(shape, np.int32)
    rasters = []
    kept: list[int] = []
    for i, blob in enumerate(blobs):
        raster = blob.raster(shape)
        if raster is None:
            continue
        sl, coverage, _ = raster
        inside = coverage >= 0.5
        free = inside & (labels[sl] == 0)
        n_free = int(free.sum())
        if n_free < min_area or n_free < 0.5 * inside.sum():
            continue
        labels[sl][free] = len(kept) + 1
        rasters.append(raster)
        kept.append(i)
    return labels, rasters, kept


def _layout(
    style: Style, rng: np.random.Generator, shape: tuple[int, int], scale: float
) -> list[_Blob]:
    """Sample the nuclei of one image (count, sizes, shapes, positions), in drawing order."""
    h, w = shape
    field_of_view = h * w / scale**2 / 256**2  # in units of 256^2 native px
    expected = style.count * field_of_view
    # log-normal over images, floored at a quarter of the median (real groups have no empty crops)
    n = int(rng.poisson(expected * math.exp(rng.normal(0, style.count_sd))))
    n = max(n, round(expected / 4), 1)
    median_area = style.area * scale**2 * math.exp(rng.normal(0, style.area_sd))
    areas = median_area * np.exp(rng.normal(0, style.area_within_sd, n))
    radii = np.sqrt(areas / np.pi)
    centres = _place(rng, shape, radii, style.cluster)
    return [
        _blob(rng, cy, cx, area, style.axis_ratio, style.irregularity)
        for (cy, cx), area in zip(centres, areas, strict=True)
    ]


def _nucleus_fields(
    style: Style,
    rng: np.random.Generator,
    shape: tuple[int, int],
    rasters: list[_Raster],
    scale: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Total coverage (H, W) (> 1 where nuclei overlap) and coverage-weighted nucleus strength.

    Strength is a per-nucleus factor (log-normal, mean ~1) times a dome profile times chromatin
    texture; textured nuclei are paler with coarse texture (open chromatin).
    """
    cover = np.zeros(shape)
    strength = np.zeros(shape)
    fine = _smooth_noise(rng, shape, 1.0 * scale)
    coarse = _smooth_noise(rng, shape, 2.0 * scale)
    for sl, coverage, rho in rasters:
        level = math.exp(rng.normal(0, style.nucleus_sd) - style.nucleus_sd**2 / 2)
        texture = style.chromatin * fine[sl]
        if rng.random() < style.textured:
            level *= 0.7
            texture = 2.5 * style.chromatin * coarse[sl] + texture
        profile = 1 - style.dome * (np.clip(rho, 0, 1) ** 2 - 0.5)  # mean 1 over an ellipse
        cover[sl] += coverage
        strength[sl] += coverage * level * profile * np.clip(1 + texture, 0.2, None)
    return cover, strength


def _fluorescence(
    style: Style,
    rng: np.random.Generator,
    shape: tuple[int, int],
    rasters: list[_Raster],
    scale: float,
) -> np.ndarray:
    """Grey fluorescence image, float64 (H, W), 0-255 scale: bright nuclei on a dark background."""
    level = math.exp(rng.normal(0, style.level_sd) - style.level_sd**2 / 2)
    bg = style.background[0] * level
    # brighter exposures lift background and nuclei together (real groups: r ~ 0.7)
    signal = max(style.nucleus[0] - style.background[0], 1.0) * level**0.7
    signal *= math.exp(rng.normal(0, style.nucleus_level_sd) - style.nucleus_level_sd**2 / 2)
    cover, strength = _nucleus_fields(style, rng, shape, rasters, scale)
    # out-of-focus haze around nuclei and a faint uneven background
    haze = ndi.gaussian_filter(np.minimum(cover, 1.0), 6 * scale) * 0.15 * signal
    image = bg * (1 + 0.1 * _smooth_noise(rng, shape, 8 * scale)) + signal * strength + haze
    image *= _illumination(rng, shape, style.illumination)
    image = ndi.gaussian_filter(image, style.blur * max(scale, 0.5))
    photons = rng.poisson(np.clip(image, 0, None) * style.noise) / style.noise
    return photons + rng.normal(0, 0.5, shape)


def _fibres(
    rng: np.random.Generator, shape: tuple[int, int], angle: float, scale: float
) -> np.ndarray:
    """Zero-mean, unit-sd noise stretched along ``angle`` (radians): wavy stroma fibres, (H, W)."""
    h, w = shape
    side = math.ceil(math.hypot(h, w)) + 2
    noise = ndi.gaussian_filter(rng.standard_normal((side, side)), (1.2 * scale, 10 * scale))
    noise = ndi.rotate(noise, math.degrees(angle), reshape=False, order=1, mode="reflect")
    y0, x0 = (side - h) // 2, (side - w) // 2
    out = noise[y0 : y0 + h, x0 : x0 + w]
    return (out - out.mean()) / max(out.std(), 1e-12)


def _polygon(
    rng: np.random.Generator,
    shape: tuple[int, int],
    cy: float,
    cx: float,
    area: float,
    softness: float,
) -> np.ndarray:
    """Coverage (H, W) in [0, 1] of a random 5-8-gon of about ``area`` px centred at (cy, cx),
    its edges blurred by ``softness`` px."""
    n = int(rng.integers(5, 9))
    angles = np.sort(rng.uniform(0, 2 * np.pi, n))
    radii = math.sqrt(area / np.pi) * rng.uniform(0.75, 1.25, n)
    rows = cy + radii * np.sin(angles)
    cols = cx + radii * np.cos(angles)
    mask = polygon2mask(shape, np.stack([rows, cols], 1)).astype(np.float64)
    return ndi.gaussian_filter(mask, softness)  # rounded corners, soft edges


def _stain(
    rgb: tuple[float, float, float], rgb_sd: tuple[float, float, float], z: float
) -> np.ndarray:
    """Per-image optical density (3,): the mean colour ``rgb`` with its stain amount varied by
    the standard normal ``z``, so that the intensity sd over images is about ``rgb_sd``.

    dI = I * OD * dlog(OD), hence the per-channel log-sd ``rgb_sd / (I * OD)``; the factor is
    log-normal with mean 1.
    """
    od = _od(rgb)
    log_sd = np.asarray(rgb_sd) / (np.asarray(rgb) * np.maximum(od, 1e-3))
    return od * np.exp(z * log_sd - log_sd**2 / 2)


def _od(rgb: float | tuple[float, float, float] | np.ndarray) -> np.ndarray:
    """Optical density -ln(I / 255) of 0-255 intensities."""
    return -np.log(np.clip(np.asarray(rgb, float), 1.0, 255.0) / 255.0)


def _tissue_background(
    name: str,
    style: Style,
    rng: np.random.Generator,
    shape: tuple[int, int],
    scale: float,
    blobs: list[_Blob],
    od_bg: np.ndarray,
) -> np.ndarray:
    """Background optical density (H, W, 3) of a bright-field modality, before nuclei.

    ``od_bg`` (3,) is this image's mean background OD; ``blobs`` are the nuclei (cytology
    cells are centred on them).
    """
    h, w = shape
    texture = (
        _smooth_noise(rng, shape, 6 * scale) * 0.6 + _smooth_noise(rng, shape, 1.5 * scale) * 0.4
    )
    if name == "grayscale_tissue":
        # cytology: white glass, grey polygonal cells (one per nucleus, plus cut-off ones) that
        # darken where they overlap, and a few small dark debris specks that are not nuclei
        white = _od(240.0)
        cells = np.zeros(shape)
        hosts = [(b.cy, b.cx) for b in blobs]
        n_extra = rng.poisson(1.5 * h * w / scale**2 / 256**2)
        hosts += [tuple(rng.uniform([0, 0], [h, w])) for _ in range(n_extra)]
        for cy, cx in hosts:
            area = 7000 * scale**2 * math.exp(rng.normal(0, 0.35))
            offset = rng.normal(0, 0.08 * math.sqrt(area), 2)
            cells += _polygon(
                rng, shape, cy + offset[0], cx + offset[1], area, 1.5 * scale
            ) * rng.uniform(0.5, 2.2)
        od_cell = (od_bg[0] - white) / 0.55  # cells cover about 55 % of the non-nucleus area
        grain = _smooth_noise(rng, shape, 0.7 * scale)
        od = white + od_cell * cells * (1 + style.background_texture * (texture + grain))
        # dark debris specks, mostly on cells
        specks = (rng.random(shape) < 3e-4 * (0.2 + (cells > 0))) * rng.uniform(0.5, 1.2, shape)
        od += ndi.gaussian_filter(specks, 0.8 * max(scale, 0.6)) * 8
        return np.repeat(od[:, :, None], 3, axis=2)
    od = od_bg[None, None, :] * (1 + style.background_texture * texture[:, :, None])
    if name == "pink_purple_tissue":
        # stroma: wavy eosin fibres, and sometimes a band of strongly eosinophilic (red) tissue
        y, x = np.mgrid[0:h, 0:w] / scale
        angle = rng.uniform(0, np.pi)
        across = x * np.cos(angle) + y * np.sin(angle)
        wobble = _smooth_noise(rng, shape, 10 * scale) * 6
        fibres = _fibres(rng, shape, angle, scale)
        od = od * (1 + 0.3 * fibres[:, :, None])
        if rng.random() < 0.6:
            centre = rng.uniform(-0.3, 1.3) * max(h, w) / scale
            width = rng.uniform(25, 60)
            band = 1 / (1 + np.exp((np.abs(across + 3 * wobble - centre) - width) / 3))
            od = od + band[:, :, None] * np.array([0.02, 0.9, 0.35])
        # pale hematoxylin-tinted cytoplasm patches, the classical segmenter's false positives
        patches = np.clip(_smooth_noise(rng, shape, 5 * scale) - 0.8, 0, None)
        od = od + 0.6 * patches[:, :, None] * (_od(style.nucleus) - od_bg)
    return od


def _brightfield(
    name: str,
    style: Style,
    rng: np.random.Generator,
    shape: tuple[int, int],
    rasters: list[_Raster],
    blobs: list[_Blob],
    scale: float,
) -> np.ndarray:
    """RGB bright-field image, float64 (H, W, 3), 0-255: stained nuclei over tissue background."""
    real = REAL_STATS[REAL_GROUP[name]]
    z_bg, z_other = rng.standard_normal(2)
    z_nuc = 0.7 * z_bg + math.sqrt(1 - 0.7**2) * z_other  # real groups: r ~ 0.7
    od_nuc = _stain(style.nucleus, real.nucleus_rgb_sd, z_nuc)
    od = _tissue_background(
        name,
        style,
        rng,
        shape,
        scale,
        blobs,
        _stain(style.background, real.background_rgb_sd, z_bg),
    )
    cover, strength = _nucleus_fields(style, rng, shape, rasters, scale)
    weight = np.minimum(cover, 1.0)[:, :, None]
    relative = (strength / np.maximum(cover, 1e-9))[:, :, None]
    overlap = 1 + 0.35 * np.maximum(cover - 1, 0)[:, :, None]  # overlapping nuclei look darker
    od = od * (1 - weight) + weight * od_nuc * relative * overlap
    if len(set(style.background)) == 1 and len(set(style.nucleus)) == 1:
        od = od[:, :, :1]  # grey tissue: one channel, so that R == G == B after noise
    image = 255 * np.exp(-od) * _illumination(rng, shape, style.illumination)[:, :, None]
    image = ndi.gaussian_filter(image, (style.blur * max(scale, 0.5),) * 2 + (0,))
    image = image + rng.normal(0, style.noise, image.shape)
    return np.broadcast_to(image, (*shape, 3))


def synthesize(
    modality: str,
    rng: np.random.Generator,
    height: int = 128,
    width: int = 128,
    scale: float | None = None,
    render_as: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic image of ``modality`` and its instance labels.

    With ``render_as``, the nuclei that ``modality`` would get from this ``rng`` (the same
    labels) are drawn in the style of another modality: a perfect style transfer of that image,
    the reference for what a transfer measure can reach (:mod:`nucleistyle.gan.evaluate`).

    Args:
        modality: One of :data:`MODALITIES`.
        rng: The random generator (consumed).
        height: Image height (px).
        width: Image width (px).
        scale: Generated px per native px; ``None`` = :func:`default_scale`.
        render_as: The modality whose style draws the image (``None``: ``modality``).

    Returns:
        ``(image, labels)``: uint8 (H, W, 3) RGB (R == G == B for grey modalities) and int32
        (H, W) labels 1..n (0 = background), sequential, non-overlapping.

    Raises:
        NucleistyleError: Unknown modality.
    """
    for name in (modality, render_as or modality):
        if name not in STYLES:
            raise NucleistyleError(f"unknown modality {name!r} (known: {', '.join(MODALITIES)})")
    style = STYLES[modality]
    scale = default_scale(height, width) if scale is None else scale
    shape = (height, width)
    for _ in range(100):  # every real image has a nucleus: redraw the rare layout without one
        blobs = _layout(style, rng, shape, scale)
        labels, rasters, kept = _rasterise_nuclei(blobs, shape, max(8.0, 20 * scale**2))
        if kept:
            break
    modality = render_as or modality
    style = STYLES[modality]
    if style.brightfield:
        kept_blobs = [blobs[i] for i in kept]
        image = _brightfield(modality, style, rng, shape, rasters, kept_blobs, scale)
    else:
        image = np.repeat(_fluorescence(style, rng, shape, rasters, scale)[:, :, None], 3, axis=2)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), labels
