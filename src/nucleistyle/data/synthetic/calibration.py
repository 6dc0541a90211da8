"""What the synthetic images must look like: the five modalities, the statistics measured on the
real BBBC038 groups, the drawing style of each modality tuned to them, and the measurement itself
(:func:`image_stats`)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np
from skimage.color import rgb2hsv

__all__ = [
    "DEFAULT_PROPORTIONS",
    "FIELD_OF_VIEW",
    "MODALITIES",
    "REAL_GROUP",
    "REAL_STATS",
    "STYLES",
    "GroupStats",
    "Style",
    "default_scale",
    "image_stats",
]

MODALITIES: tuple[str, ...] = (
    "small_fluorescent",
    "large_fluorescent",
    "grayscale_tissue",
    "purple_tissue",
    "pink_purple_tissue",
)
"""The five modalities, in the order of the DSB image groups."""

REAL_GROUP: Mapping[str, str] = MappingProxyType(
    {
        "small_fluorescent": "Default",
        "large_fluorescent": "Superbig",
        "grayscale_tissue": "TissueBW",
        "purple_tissue": "Purple",
        "pink_purple_tissue": "PinkAndPurple",
    }
)
"""Modality -> real group name (``group`` column of the BBBC038 sample's manifest.csv)."""

# stage1_train group sizes 457 / 89 / 16 / 104 / 4 of 670 images (Caicedo et al. 2019)
DEFAULT_PROPORTIONS: Mapping[str, float] = MappingProxyType(
    {
        "small_fluorescent": 457 / 670,
        "large_fluorescent": 89 / 670,
        "grayscale_tissue": 16 / 670,
        "purple_tissue": 104 / 670,
        "pink_purple_tissue": 4 / 670,
    }
)
"""Default training proportions, those of stage1_train (68.2 / 13.3 / 2.4 / 15.5 / 0.6 %)."""

FIELD_OF_VIEW = 160  # native px shown by an image smaller than this (see default_scale)


@dataclass(frozen=True)
class GroupStats:
    """Statistics of one real image group (see :data:`REAL_STATS`).

    Colours are 0-255 RGB means over an image's background (outside every mask) or nucleus
    (inside any mask) pixels, then mean (``*_rgb``) and standard deviation (``*_rgb_sd``) over the
    group's images; ``hsv`` likewise for the image-mean HSV of ``skimage.color.rgb2hsv`` (each
    in [0, 1]); ``background_sd`` / ``nucleus_sd`` are the within-image sd of the grey level
    (mean of R, G, B) over those regions (texture + noise), averaged over images. ``area`` holds
    quantiles of the per-nucleus areas (native px) pooled over the group (large images weigh
    more), ``image_median_area`` those of each image's median area; ``nuclei_per_image`` counts
    per image; ``nuclei_per_256`` per 256 x 256 native px (a generated image has this density
    over its field of view). Quantiles are (25 %, 50 %, 75 %).
    """

    n_images: int
    background_rgb: tuple[float, float, float]
    background_rgb_sd: tuple[float, float, float]
    nucleus_rgb: tuple[float, float, float]
    nucleus_rgb_sd: tuple[float, float, float]
    hsv: tuple[float, float, float]
    hsv_sd: tuple[float, float, float]
    background_sd: float
    nucleus_sd: float
    area: tuple[float, float, float]
    image_median_area: tuple[float, float, float]
    nuclei_per_image: tuple[float, float, float]
    nuclei_per_256: tuple[float, float, float]
    foreground_fraction: float


# Measured once (not at run time) on the 531 images of /work/shared/bbbc038/stage1_train, grouped
# by the manifest's `group` column: the image is read as RGB (alpha dropped), the union of its mask
# PNGs is the nucleus region, and per image the mean RGB of the nucleus / background region, the
# mean H, S, V of rgb2hsv(image), every mask's pixel count and the number of masks are recorded
# (what image_stats() returns for one image); then per group the mean / sd over images and the
# quartiles of the pooled areas, image median areas, counts and counts per 256^2 px. Grey images
# give H = S = 0. The PinkAndPurple row rests on 3 images only.
REAL_STATS: Mapping[str, GroupStats] = MappingProxyType(
    {
        "Default": GroupStats(
            n_images=361,
            background_rgb=(9.2, 9.2, 9.2),
            background_rgb_sd=(6.1, 6.1, 6.1),
            nucleus_rgb=(64.4, 64.4, 64.4),
            nucleus_rgb_sd=(31.1, 31.1, 31.1),
            hsv=(0.0, 0.0, 0.053),
            hsv_sd=(0.0, 0.0, 0.032),
            background_sd=4.3,
            nucleus_sd=25.6,
            area=(108.0, 253.0, 536.0),
            image_median_area=(122.0, 171.0, 338.0),
            nuclei_per_image=(12.0, 29.0, 55.0),
            nuclei_per_256=(10.0, 21.0, 38.0),
            foreground_fraction=0.097,
        ),
        "Superbig": GroupStats(
            n_images=72,
            background_rgb=(5.8, 5.8, 5.8),
            background_rgb_sd=(1.2, 1.2, 1.2),
            nucleus_rgb=(23.4, 23.4, 23.4),
            nucleus_rgb_sd=(3.1, 3.1, 3.1),
            hsv=(0.0, 0.0, 0.042),
            hsv_sd=(0.0, 0.0, 0.007),
            background_sd=1.6,
            nucleus_sd=5.8,
            area=(633.5, 1720.0, 2195.0),
            image_median_area=(1499.8, 1763.8, 1896.2),
            nuclei_per_image=(20.0, 22.0, 25.2),
            nuclei_per_256=(10.1, 11.1, 12.8),
            foreground_fraction=0.275,
        ),
        "TissueBW": GroupStats(
            n_images=13,
            background_rgb=(213.6, 213.6, 213.6),
            background_rgb_sd=(4.0, 4.0, 4.0),
            nucleus_rgb=(100.5, 100.5, 100.5),
            nucleus_rgb_sd=(10.0, 10.0, 10.0),
            hsv=(0.0, 0.0, 0.829),
            hsv_sd=(0.0, 0.0, 0.018),
            background_sd=28.9,
            nucleus_sd=27.4,
            area=(66.0, 193.0, 400.0),
            image_median_area=(189.5, 222.0, 290.0),
            nuclei_per_image=(63.0, 83.0, 98.0),
            nuclei_per_256=(3.9, 5.2, 6.1),
            foreground_fraction=0.019,
        ),
        "Purple": GroupStats(
            n_images=82,
            background_rgb=(183.6, 169.8, 205.8),
            background_rgb_sd=(14.5, 24.2, 5.0),
            nucleus_rgb=(126.1, 77.3, 186.2),
            nucleus_rgb_sd=(16.8, 21.3, 13.2),
            hsv=(0.695, 0.272, 0.792),
            hsv_sd=(0.057, 0.109, 0.022),
            background_sd=11.3,
            nucleus_sd=22.8,
            area=(137.0, 257.0, 454.5),
            image_median_area=(231.2, 337.0, 673.6),
            nuclei_per_image=(17.0, 33.5, 63.5),
            nuclei_per_256=(13.6, 26.8, 50.8),
            foreground_fraction=0.203,
        ),
        "PinkAndPurple": GroupStats(
            n_images=3,
            background_rgb=(199.6, 106.7, 171.8),
            background_rgb_sd=(0.0, 21.6, 19.7),
            nucleus_rgb=(159.7, 71.9, 171.0),
            nucleus_rgb_sd=(5.3, 6.9, 4.2),
            hsv=(0.861, 0.491, 0.770),
            hsv_sd=(0.016, 0.095, 0.002),
            background_sd=26.9,
            nucleus_sd=24.0,
            area=(485.5, 901.5, 1359.5),
            image_median_area=(866.8, 870.0, 1027.5),
            nuclei_per_image=(10.5, 12.0, 12.5),
            nuclei_per_256=(8.4, 9.6, 10.0),
            foreground_fraction=0.149,
        ),
    }
)
"""Real BBBC038 statistics per manifest group (the calibration targets)."""


@dataclass(frozen=True)
class Style:
    """How one modality is drawn. Sizes in native pixels; levels in 0-255 grey or RGB.

    Fluorescence adds emitted light to a dark background; bright-field mixes optical densities
    (OD = -ln(I / 255)) of background and stain, so colours blend like absorbing dyes.
    """

    brightfield: bool
    background: tuple[float, float, float]  # mean RGB of the non-nucleus pixels (before texture)
    nucleus: tuple[float, float, float]  # mean RGB of a nucleus
    nucleus_sd: float  # per-nucleus log-sd of the brightness / OD
    count: float  # median nuclei per 256^2 native px
    count_sd: float  # log-sd of that count over images
    area: float  # median nucleus area (native px), per image
    area_sd: float  # log-sd of an image's median area over images
    area_within_sd: float  # log-sd of the areas within an image
    axis_ratio: tuple[float, float]  # minor / major axis range
    irregularity: float  # amplitude of the boundary harmonics (fraction of the radius)
    cluster: float  # probability that a nucleus is placed touching an earlier one
    chromatin: float  # amplitude of the intra-nucleus texture
    textured: float = 0.0  # probability of a strongly textured (pale) nucleus
    dome: float = 0.3  # centre-to-edge brightness / OD profile depth
    background_texture: float = 0.0  # amplitude of the background texture
    blur: float = 1.0  # optical blur sigma (native px)
    noise: float = 2.0  # fluorescence: photons per grey level; bright-field: Gaussian sd
    illumination: float = 0.1  # strength of the illumination gradient / vignetting
    # fluorescence only: per-image log-sd of the background level and of the nucleus signal
    # (bright-field modalities take their per-channel spread from REAL_STATS, see _stain)
    level_sd: float = 0.0
    nucleus_level_sd: float = 0.0


# Tuned, not measured: sizes and counts so that generated images reproduce REAL_STATS'
# image_median_area, nuclei_per_256 and foreground_fraction; background / nucleus colours by
# iterating an OD-space correction (new = old + OD(target) - OD(measured)) until the mean
# image_stats() of 40 images per modality matched REAL_STATS within about 1 grey level;
# cluster, textured, nucleus_sd and the tissue structures so that the classical baseline
# (nucleistyle.classical) scores about as on the real group (see tests/test_classical.py).
STYLES: Mapping[str, Style] = MappingProxyType(
    {
        "small_fluorescent": Style(
            brightfield=False,
            background=(9.3, 9.3, 9.3),
            nucleus=(76.4, 76.4, 76.4),
            level_sd=0.6,
            nucleus_level_sd=0.5,
            nucleus_sd=0.3,
            count=21.0,
            count_sd=0.8,
            area=200.0,
            area_sd=0.6,
            area_within_sd=0.5,
            axis_ratio=(0.6, 1.0),
            irregularity=0.06,
            cluster=0.35,
            chromatin=0.15,
            dome=0.4,
            blur=1.0,
            noise=2.0,
            illumination=0.15,
        ),
        "large_fluorescent": Style(
            brightfield=False,
            background=(5.5, 5.5, 5.5),
            nucleus=(25.3, 25.3, 25.3),
            level_sd=0.15,
            nucleus_level_sd=0.15,
            nucleus_sd=0.45,
            count=11.5,
            count_sd=0.2,
            area=2600.0,
            area_sd=0.15,
            area_within_sd=0.45,
            axis_ratio=(0.55, 0.95),
            irregularity=0.05,
            cluster=0.6,
            chromatin=0.08,
            textured=0.5,
            dome=0.2,
            blur=1.5,
            noise=4.0,
            illumination=0.1,
        ),
        "grayscale_tissue": Style(
            brightfield=True,
            background=(194.9, 194.9, 194.9),
            nucleus=(91.5, 91.5, 91.5),
            nucleus_sd=0.12,
            count=5.2,
            count_sd=0.3,
            area=260.0,
            area_sd=0.3,
            area_within_sd=0.9,
            axis_ratio=(0.6, 1.0),
            irregularity=0.08,
            cluster=0.0,
            chromatin=0.12,
            dome=0.1,
            background_texture=0.15,
            blur=1.0,
            noise=3.0,
            illumination=0.05,
        ),
        "purple_tissue": Style(
            brightfield=True,
            background=(191.7, 182.5, 208.7),
            nucleus=(117.6, 62.5, 184.6),
            nucleus_sd=0.15,
            count=38.0,
            count_sd=0.9,
            area=420.0,
            area_sd=0.6,
            area_within_sd=0.45,
            axis_ratio=(0.45, 1.0),
            irregularity=0.08,
            cluster=0.7,
            chromatin=0.18,
            textured=0.3,
            dome=0.1,
            background_texture=0.15,
            blur=1.0,
            noise=2.5,
            illumination=0.05,
        ),
        "pink_purple_tissue": Style(
            brightfield=True,
            background=(204.4, 125.1, 184.3),
            nucleus=(147.6, 48.9, 162.1),
            nucleus_sd=0.12,
            count=11.0,
            count_sd=0.25,
            area=1250.0,
            area_sd=0.2,
            area_within_sd=0.4,
            axis_ratio=(0.5, 0.95),
            irregularity=0.07,
            cluster=0.25,
            chromatin=0.3,
            dome=-0.2,
            background_texture=0.35,
            blur=1.0,
            noise=3.0,
            illumination=0.05,
            textured=0.4,
        ),
    }
)


def default_scale(height: int, width: int) -> float:
    """Generated px per native px: ``min(1, min(height, width) / FIELD_OF_VIEW)``.

    A small image shows a ``FIELD_OF_VIEW``-px real field of view, shrunk (128 px: scale 0.8,
    nuclei 0.8x their real size, 0.39x the nuclei of a 256-px real crop); from 160 px on, nuclei
    keep their real size and the field grows with the image. Smaller scales make nuclei so small
    that a 1-px boundary error costs most of the IoU (the classical baseline then scores far
    below its real-data score on small fluorescent nuclei).
    """
    return min(1.0, min(height, width) / FIELD_OF_VIEW)


def image_stats(image: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """The calibration statistics of one image (what :data:`REAL_STATS` aggregates).

    Args:
        image: uint8 RGB (H, W, 3).
        labels: Integer instance labels (H, W), 0 = background.

    Returns:
        ``background_r/g/b`` and ``nucleus_r/g/b`` (mean 0-255 over background / nucleus pixels;
        NaN when a region is empty), ``h``, ``s``, ``v`` (image means of rgb2hsv, 0-1),
        ``background_sd`` / ``nucleus_sd`` (within-image sd of the mean of R, G, B over the
        region), ``n_nuclei``, ``median_area`` (px; NaN without nuclei), ``foreground_fraction``.
    """
    rgb = image[..., :3].astype(np.float64)
    fg = labels > 0
    hsv = rgb2hsv(image[..., :3]).reshape(-1, 3).mean(0)
    ids, areas = np.unique(labels[fg], return_counts=True)
    out: dict[str, float] = {}
    for region, mask in (("background", ~fg), ("nucleus", fg)):
        means = rgb[mask].mean(0) if mask.any() else np.full(3, np.nan)
        out.update({f"{region}_{c}": float(v) for c, v in zip("rgb", means, strict=True)})
        out[f"{region}_sd"] = float(rgb[mask].mean(1).std()) if mask.any() else math.nan
    out.update(h=float(hsv[0]), s=float(hsv[1]), v=float(hsv[2]))
    out.update(
        n_nuclei=float(ids.size),
        median_area=float(np.median(areas)) if ids.size else math.nan,
        foreground_fraction=float(fg.mean()),
    )
    return out
