"""Synthetic multi-modality nuclei images: the project's offline demo data set.

Five modalities mimic the five image groups of the 2018 Data Science Bowl (Caicedo et al. 2019):
small and large fluorescent nuclei (grey, stored as RGB with R == G == B), grayscale tissue
(cytology: dark nuclei inside grey cells on a bright background) and two H&E-like colour tissues.
Every image comes with non-overlapping instance labels. :func:`generate` writes a train set with
masks, a test set without masks, the test ground truth as a Kaggle solution file and a table of
modalities, all in BBBC038 layout, byte-identical for a given seed.

Calibration: :data:`REAL_STATS` holds per-group statistics measured on the 531 real BBBC038
training images of ``/work/shared/bbbc038`` (see the table's comment); the modality styles in
:data:`_STYLES` were tuned until :func:`image_stats` on generated images reproduced them
(checked by ``tests/test_synthetic.py``). A generated image of side S shows a real-looking field
of view of side S / scale native pixels; the default scale (:func:`default_scale`) makes a
128-px image look like a 160-px real crop shrunk to 0.8x.

Example:
    >>> from pathlib import Path
    >>> table = generate(SyntheticConfig(n_train=20, n_test_per_modality=2), Path("demo"))
    ... # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage as ndi
from skimage.color import rgb2hsv
from skimage.draw import polygon2mask
from tqdm import tqdm

from nucleistyle.data.bbbc038 import write_sample
from nucleistyle.data.csvio import write_solution
from nucleistyle.utils import NucleistyleError, atomic_dir, config_from_mapping

__all__ = [
    "DEFAULT_PROPORTIONS",
    "MODALITIES",
    "REAL_GROUP",
    "REAL_STATS",
    "GroupStats",
    "SyntheticConfig",
    "default_scale",
    "generate",
    "image_id",
    "image_stats",
    "synthesize",
    "train_counts",
]

log = logging.getLogger(__name__)

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

SETS: tuple[str, str] = ("stage1_train", "stage1_test")
FIELD_OF_VIEW = 160  # native px shown by an image smaller than this (see default_scale)
MIN_TRAIN_PER_MODALITY = 2


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
class _Style:
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
_STYLES: Mapping[str, _Style] = MappingProxyType(
    {
        "small_fluorescent": _Style(
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
        "large_fluorescent": _Style(
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
        "grayscale_tissue": _Style(
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
        "purple_tissue": _Style(
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
        "pink_purple_tissue": _Style(
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


@dataclass(frozen=True)
class SyntheticConfig:
    """What :func:`generate` makes.

    Attributes:
        seed: Master seed; the same seed gives byte-identical files.
        n_train: Training images (with masks); at least 2 per modality with a positive proportion.
        n_test_per_modality: Test images per modality (the test set is balanced), >= 1.
        height: Image height (px), >= 32.
        width: Image width (px), >= 32.
        proportions: Training proportion per modality (known names, >= 0, sum > 0; missing names
            count as 0); normalised internally.
        scale: Nucleus length scale relative to real images (generated px per native px);
            ``None`` means ``min(1, min(height, width) / 160)`` (see :func:`default_scale`).

    Raises:
        NucleistyleError: On an invalid field (named in the message).
    """

    seed: int = 0
    n_train: int = 100
    n_test_per_modality: int = 6
    height: int = 128
    width: int = 128
    proportions: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_PROPORTIONS))
    scale: float | None = None

    def __post_init__(self) -> None:
        for name in ("seed", "n_train", "n_test_per_modality", "height", "width"):
            value = getattr(self, name)
            if not isinstance(value, int | np.integer) or isinstance(value, bool):
                raise NucleistyleError(f"synthetic.{name} must be an integer, got {value!r}")
        if self.seed < 0:
            raise NucleistyleError(f"synthetic.seed must be >= 0, got {self.seed}")
        if min(self.height, self.width) < 32:
            raise NucleistyleError(
                f"synthetic.height/width must be >= 32 px, got {self.height} x {self.width}"
            )
        if self.n_test_per_modality < 1:
            raise NucleistyleError(
                f"synthetic.n_test_per_modality must be >= 1, got {self.n_test_per_modality}"
            )
        if not isinstance(self.proportions, Mapping):
            raise NucleistyleError(
                f"synthetic.proportions must map modality names to weights, got "
                f"{self.proportions!r}"
            )
        unknown = sorted(set(self.proportions) - set(MODALITIES))
        if unknown:
            raise NucleistyleError(
                f"synthetic.proportions: unknown modality {unknown[0]!r} (known: "
                f"{', '.join(MODALITIES)})"
            )
        values = [float(self.proportions.get(m, 0.0)) for m in MODALITIES]
        if any(not math.isfinite(v) or v < 0 for v in values) or sum(values) <= 0:
            raise NucleistyleError(
                f"synthetic.proportions must be finite, >= 0 and sum to > 0, got "
                f"{dict(self.proportions)}"
            )
        needed = MIN_TRAIN_PER_MODALITY * sum(v > 0 for v in values)
        if self.n_train < needed:
            raise NucleistyleError(
                f"synthetic.n_train must be >= {needed} ({MIN_TRAIN_PER_MODALITY} per modality "
                f"with a positive proportion), got {self.n_train}"
            )
        if self.scale is not None and not (math.isfinite(self.scale) and self.scale > 0):
            raise NucleistyleError(f"synthetic.scale must be > 0, got {self.scale}")

    @classmethod
    def from_config(cls, mapping: Mapping[str, Any]) -> SyntheticConfig:
        """Build from the config section ``data.synthetic`` (missing keys take the defaults)."""
        return config_from_mapping(cls, mapping, "data.synthetic")

    @property
    def length_scale(self) -> float:
        """Generated px per native px (``scale`` or its default)."""
        return self.scale if self.scale is not None else default_scale(self.height, self.width)


def default_scale(height: int, width: int) -> float:
    """Generated px per native px: ``min(1, min(height, width) / FIELD_OF_VIEW)``.

    A small image shows a ``FIELD_OF_VIEW``-px real field of view, shrunk (128 px: scale 0.8,
    nuclei 0.8x their real size, 0.39x the nuclei of a 256-px real crop); from 160 px on, nuclei
    keep their real size and the field grows with the image. Smaller scales make nuclei so small
    that a 1-px boundary error costs most of the IoU (the classical baseline then scores far
    below its real-data score on small fluorescent nuclei).
    """
    return min(1.0, min(height, width) / FIELD_OF_VIEW)


def image_id(seed: int, set_name: str, index: int) -> str:
    """The ImageId of a generated image: 64 hex digits of SHA-256 of (seed, set, index)."""
    return hashlib.sha256(f"nucleistyle-synthetic:{seed}:{set_name}:{index}".encode()).hexdigest()


def train_counts(n_train: int, proportions: Mapping[str, float]) -> dict[str, int]:
    """Split ``n_train`` images over the modalities: largest remainder, at least 2 each.

    Modalities with proportion 0 get no image; the others get at least
    ``MIN_TRAIN_PER_MODALITY`` and otherwise as close to ``n_train * p`` as the sum allows.
    """
    p = np.array([float(proportions.get(m, 0.0)) for m in MODALITIES])
    quota = n_train * p / p.sum()
    floor = np.where(p > 0, MIN_TRAIN_PER_MODALITY, 0)
    counts = np.maximum(np.floor(quota).astype(int), floor)
    while counts.sum() < n_train:  # at most 5 rounds: give to the largest shortfall
        counts[np.argmax(np.where(p > 0, quota - counts, -np.inf))] += 1
    while counts.sum() > n_train:  # take from the largest excess above the floor
        counts[np.argmax(np.where(counts > floor, counts - quota, -np.inf))] -= 1
    return dict(zip(MODALITIES, counts.tolist(), strict=True))


# ------------------------------------------------------------------------------------------------
# drawing


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
    kept = []
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
    style: _Style, rng: np.random.Generator, shape: tuple[int, int], scale: float
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
    style: _Style,
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
    style: _Style,
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


def _od(rgb: tuple[float, float, float] | np.ndarray) -> np.ndarray:
    """Optical density -ln(I / 255) of 0-255 intensities."""
    return -np.log(np.clip(np.asarray(rgb, float), 1.0, 255.0) / 255.0)


def _tissue_background(
    name: str,
    style: _Style,
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
    style: _Style,
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
) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic image of ``modality`` and its instance labels.

    Args:
        modality: One of :data:`MODALITIES`.
        rng: The random generator (consumed).
        height: Image height (px).
        width: Image width (px).
        scale: Generated px per native px; ``None`` = :func:`default_scale`.

    Returns:
        ``(image, labels)``: uint8 (H, W, 3) RGB (R == G == B for grey modalities) and int32
        (H, W) labels 1..n (0 = background), sequential, non-overlapping.

    Raises:
        NucleistyleError: Unknown modality.
    """
    if modality not in _STYLES:
        raise NucleistyleError(f"unknown modality {modality!r} (known: {', '.join(MODALITIES)})")
    style = _STYLES[modality]
    scale = default_scale(height, width) if scale is None else scale
    shape = (height, width)
    for _ in range(100):  # every real image has a nucleus: redraw the rare layout without one
        blobs = _layout(style, rng, shape, scale)
        labels, rasters, kept = _rasterise_nuclei(blobs, shape, max(8.0, 20 * scale**2))
        if kept:
            break
    if style.brightfield:
        kept_blobs = [blobs[i] for i in kept]
        image = _brightfield(modality, style, rng, shape, rasters, kept_blobs, scale)
    else:
        image = np.repeat(_fluorescence(style, rng, shape, rasters, scale)[:, :, None], 3, axis=2)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), labels


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


# ------------------------------------------------------------------------------------------------
# the data set


def _plan(cfg: SyntheticConfig) -> pd.DataFrame:
    """ImageId, set, modality and index of every image, in generation order."""
    rows = []
    counts = train_counts(cfg.n_train, cfg.proportions)
    for set_name, modalities in (
        (SETS[0], [m for m in MODALITIES for _ in range(counts[m])]),
        (SETS[1], [m for _ in range(cfg.n_test_per_modality) for m in MODALITIES]),
    ):
        # a seeded shuffle so that the modalities are interleaved, not in blocks
        order = np.random.default_rng([cfg.seed, SETS.index(set_name), 0]).permutation(
            len(modalities)
        )
        rows += [
            (image_id(cfg.seed, set_name, i), set_name, modalities[k], i)
            for i, k in enumerate(order)
        ]
    return pd.DataFrame(rows, columns=["ImageId", "set", "modality", "index"])


def generate(
    cfg: SyntheticConfig, out_dir: str | os.PathLike[str], *, overwrite: bool = False
) -> pd.DataFrame:
    """Write the synthetic data set to ``out_dir`` (atomically: built beside it, then renamed).

    Layout::

        out_dir/stage1_train/<id>/images/<id>.png, masks/<id>_<k>.png   (train, with masks)
        out_dir/stage1_test/<id>/images/<id>.png                       (test, images only)
        out_dir/stage1_solution.csv   test ground truth (Kaggle solution, Usage "Public")
        out_dir/modalities.csv        ImageId, set, modality

    Every image is drawn from its own generator seeded by (seed, set, index), so the files are
    byte-identical for the same configuration.

    Args:
        cfg: What to make.
        out_dir: Output folder: new, empty, or (with ``overwrite``) one that ``generate`` wrote
            before (its marker file), replaced once the new one is complete. Anything else
            (a file, a folder of other files) is refused, so nothing of the user's is lost.
        overwrite: Replace a non-empty ``out_dir`` written by ``generate``.

    Returns:
        The modalities table (columns ImageId, set, modality), train then test images.

    Raises:
        NucleistyleError: ``out_dir`` cannot be replaced (see ``overwrite``) or written.
    """
    plan = _plan(cfg)
    truth: dict[str, np.ndarray] = {}
    log.info(
        "generating %d train + %d test synthetic images (%d x %d, scale %.3f, seed %d)",
        (plan.set == SETS[0]).sum(),
        (plan.set == SETS[1]).sum(),
        cfg.height,
        cfg.width,
        cfg.length_scale,
        cfg.seed,
    )
    rows = tqdm(
        plan.itertuples(index=False),
        total=len(plan),
        desc="synthetic",
        disable=None,
        file=sys.stderr,
    )
    with atomic_dir(out_dir, marker="synthesize", overwrite=overwrite) as tmp:
        for row in rows:
            # index + 1: stream 0 of each set shuffles the modalities in _plan
            rng = np.random.default_rng([cfg.seed, SETS.index(row.set), row.index + 1])
            image, labels = synthesize(row.modality, rng, cfg.height, cfg.width, cfg.length_scale)
            if row.set == SETS[0]:
                write_sample(tmp / row.set, row.ImageId, image, labels)
            else:
                write_sample(tmp / row.set, row.ImageId, image, None)
                truth[row.ImageId] = labels
        write_solution(tmp / "stage1_solution.csv", truth, usage="Public")
        table = plan[["ImageId", "set", "modality"]]
        table.to_csv(tmp / "modalities.csv", index=False, lineterminator="\n")
    log.info("wrote %s", out_dir)
    return table.reset_index(drop=True)
