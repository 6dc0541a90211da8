"""Modality discovery (paper §2.2, §3.1): HSV features, K-means and PCA.

BBBC038 has no modality metadata, so the training images are grouped by K-means on per-image
hue-saturation-value features (:func:`hsv_features`) into ``k = 6`` domains for the style-transfer
GAN; a 2-D PCA of the same features is Figure 2a. (CLAHE enhancement of the dark images is in
:mod:`nucleistyle.enhance`.)

Cluster ids are stable: rows are put in ImageId order before K-means (so the input order does not
matter), K-means is seeded, and the fitted clusters are renumbered by a fixed rule (see
:func:`fit_clusters`). A fitted :class:`ClusterModel` is saved as plain JSON, so a later stage can
assign new (test) images to the nearest centre without pickles.

Example:
    >>> table = cluster_dataset("resources/stage1_train", "results/cluster/assignments.csv",
    ...                         ClusterConfig(k=6), model_json="results/cluster/model.json")
    ... # doctest: +SKIP
    >>> model = ClusterModel.from_json("results/cluster/model.json")  # doctest: +SKIP
    >>> model.assign(compute_features("resources/stage1_test"))  # doctest: +SKIP
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.cluster import KMeans
from sklearn.metrics import (
    adjusted_rand_score,
    normalized_mutual_info_score,
    silhouette_score,
)
from threadpoolctl import threadpool_limits

from nucleistyle.data.bbbc038 import ImageRecord, list_images, read_image
from nucleistyle.errors import NucleistyleError
from nucleistyle.outputs import OutputSet, atomic_path, published_together
from nucleistyle.paths import PathLike
from nucleistyle.schema import check
from nucleistyle.utils import config_from_mapping

__all__ = [
    "FEATURE_NAMES",
    "ClusterConfig",
    "ClusterModel",
    "assign_dataset",
    "check_rgb",
    "cluster_dataset",
    "cluster_quality",
    "cluster_training_set",
    "compute_features",
    "features_table",
    "fit_clusters",
    "hsv_features",
    "silhouette_by_k",
    "v_median",
]

log = logging.getLogger(__name__)

FEATURE_NAMES: tuple[str, ...] = (
    "hue_cos",
    "hue_sin",
    "sat_p10",
    "sat_p50",
    "val_p10",
    "val_p50",
)
"""Columns of :func:`hsv_features`, in order."""

_PERCENTILES = np.array([10.0, 50.0])
_HALF_SQRT3 = math.sqrt(3.0) / 2.0
# Median V (0-1) below which an image counts as dark. On the 531 real training images the
# median V is <= 0.17 for every fluorescence image and >= 0.75 for every bright-field image; a
# dense synthetic fluorescence image (nuclei on over half the field) reaches 0.25.
DARK_V_MEDIAN = 0.4


# ------------------------------------------------------------------------------------------------
# Features


def check_rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or image.size == 0:
        raise NucleistyleError(
            f"expected a non-empty uint8 (H, W, 3) RGB image, got {image.dtype} {image.shape}"
        )
    return image


def _percentiles_u8(values: np.ndarray) -> np.ndarray:
    """Inverted-CDF percentiles (numpy ``method="inverted_cdf"``) of uint8 values, in 0-1."""
    cdf = np.cumsum(np.bincount(values.ravel(), minlength=256))
    return np.searchsorted(cdf, _PERCENTILES / 100.0 * values.size, side="left") / 255.0


def hsv_features(image: np.ndarray) -> np.ndarray:
    """The per-image HSV feature vector that K-means clusters (columns :data:`FEATURE_NAMES`).

    Every pixel counts (no sub-sampling: the vector costs ~4 ms for a 1024 x 1024 image, less
    than decoding it). With R, G, B in 0-255, V = max(R, G, B) / 255 and S = (max - min) / max
    (S = 0 where max = 0), as in the HSV hexcone. The six features are:

    * ``hue_cos``, ``hue_sin``: the saturation-weighted circular mean of hue, mean over all
      pixels of S₂·(cos H₂, sin H₂), where H₂ and C₂ are the angle and length of the opponent-
      colour vector α = R − (G + B)/2, β = (√3/2)(G − B) (the hexagon-to-circle projection of
      HSV; H₂ = 2π·H exactly at the six primary and secondary colours) and S₂ = C₂ / max.
      The components are therefore mean(α / max) and mean(β / max) (0 where max = 0). Hue is
      circular by construction (0.99 and 0.01 are neighbours), and a grey pixel (R = G = B) has
      α = β = 0 exactly, so an undefined hue contributes nothing: a grey image has
      ``hue_cos = hue_sin = 0`` by design. The length of the mean vector grows with how
      saturated and how uniform in hue the image is.
    * ``sat_p10``, ``sat_p50``: 10th and 50th percentiles of S, computed on S quantised to
      round(255·S)/255 (error <= 1/510).
    * ``val_p10``, ``val_p50``: 10th and 50th percentiles of V (exact: V is 8-bit).

    Percentiles are the inverted-CDF ones (numpy ``method="inverted_cdf"``): the smallest level
    at or below which at least p % of the pixels lie. Only the lower half of the S and V
    distributions enters: it is the background and the stain, i.e. the imaging modality, while
    the upper percentiles (and means and standard deviations) follow the bright nuclei, whose
    area fraction is content (density, nucleus size), not style; with them, K-means splits the
    fluorescence images by nucleus density instead of separating the bright-field styles.

    Args:
        image: uint8 RGB image, shape (H, W, 3).

    Returns:
        float64 array of shape (6,), every value in [-1, 1] (hue) or [0, 1] (S, V).

    Raises:
        NucleistyleError: ``image`` is not a non-empty uint8 (H, W, 3) array.

    Example:
        >>> grey = np.full((4, 4, 3), 51, np.uint8)
        >>> hsv_features(grey).round(2).tolist()
        [0.0, 0.0, 0.0, 0.0, 0.2, 0.2]
    """
    rgb = check_rgb(image)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    top = np.maximum(np.maximum(r, g), b)  # channel-wise: 30x faster than rgb.max(axis=2)
    chroma = (top - np.minimum(np.minimum(r, g), b)).astype(np.uint16)
    safe = np.maximum(top, 1).astype(np.uint16)
    sat_u8 = ((chroma * 255 + safe // 2) // safe).astype(np.uint8)  # round(255 * S)
    inv = 1.0 / safe.astype(np.float32)
    rf, gf, bf = (c.astype(np.float32) for c in (r, g, b))
    hue_cos = ((rf - 0.5 * (gf + bf)) * inv).mean(dtype=np.float64)
    hue_sin = _HALF_SQRT3 * ((gf - bf) * inv).mean(dtype=np.float64)
    return np.concatenate(
        [[hue_cos, hue_sin], _percentiles_u8(sat_u8), _percentiles_u8(top)]
    ).astype(np.float64)


def v_median(image: np.ndarray) -> float:
    """Median V = max(R, G, B) / 255 of an image (inverted-CDF median; ``val_p50``), in 0-1."""
    rgb = check_rgb(image)
    top = np.maximum(np.maximum(rgb[..., 0], rgb[..., 1]), rgb[..., 2])
    return float(_percentiles_u8(top)[1])


def _features_of(record: ImageRecord) -> np.ndarray:
    return hsv_features(read_image(record.image_path)[0])


def compute_features(images_dir: PathLike, workers: int = 2) -> pd.DataFrame:
    """HSV features of every image in a folder (BBBC038 layout or flat); masks are not read.

    Each worker thread decodes an image and computes its features (Pillow's decoding and the
    numpy work release the GIL): 1.8x the serial speed with 2 workers on the 531 real images,
    against 1.4x when only the decoding runs in threads (``iter_samples``) and the features in
    the calling thread.

    Args:
        images_dir: Image folder (see :func:`nucleistyle.data.bbbc038.list_images`).
        workers: Threads (0 or 1: serial).

    Returns:
        One row per image in ImageId order: ``ImageId`` and the :data:`FEATURE_NAMES` columns
        (float64).

    Raises:
        NucleistyleError: The folder is missing or empty, or an image cannot be read (the
            message names the file).
    """
    records = list_images(images_dir)
    if workers <= 1:
        rows = [_features_of(r) for r in records]
    else:
        with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="hsv") as pool:
            rows = list(pool.map(_features_of, records))
    table = features_table([r.image_id for r in records], rows)
    log.info("HSV features of %d images from %s", len(table), images_dir)
    return table


def features_table(image_ids: Sequence[str], rows: Sequence[np.ndarray]) -> pd.DataFrame:
    """The :func:`compute_features` table of :func:`hsv_features` vectors (one per ImageId)."""
    table = pd.DataFrame(np.vstack(rows), columns=list(FEATURE_NAMES))
    table.insert(0, "ImageId", list(image_ids))
    return table


def _feature_matrix(features: pd.DataFrame, what: str = "features") -> np.ndarray:
    missing = [c for c in FEATURE_NAMES if c not in features.columns]
    if missing:
        raise NucleistyleError(f"{what}: missing feature column(s) {', '.join(missing)}")
    matrix = features[list(FEATURE_NAMES)].to_numpy(np.float64)
    bad = ~np.isfinite(matrix).all(axis=1)
    if bad.any():
        where = features["ImageId"].iloc[int(np.argmax(bad))] if "ImageId" in features else "?"
        raise NucleistyleError(f"{what}: non-finite feature value for ImageId {where}")
    return matrix


# ------------------------------------------------------------------------------------------------
# K-means


@dataclass(frozen=True)
class ClusterConfig:
    """K-means settings (config section ``cluster``).

    Attributes:
        k: Number of clusters (the paper uses 6), >= 2.
        seed: K-means random seed.
        n_init: K-means restarts; the best (lowest inertia) is kept. With 20 the real-data
            clustering is identical for seeds 0-4.
        standardise: Scale each feature to zero mean and unit variance over the training
            images before K-means and PCA (a constant feature gets scale 1).

    Raises:
        NucleistyleError: On an invalid field (named in the message).
    """

    k: int = 6
    seed: int = 0
    n_init: int = 20
    standardise: bool = True

    def __post_init__(self) -> None:
        check(self, "#/properties/cluster", "cluster", skip=("seed",))
        check(self.seed, "#/properties/seed", "cluster.seed")

    @classmethod
    def from_config(cls, mapping: Mapping[str, Any]) -> ClusterConfig:
        """Build from a config mapping (keys = field names; missing keys take the defaults)."""
        return config_from_mapping(cls, mapping, "cluster")


_HUE_NAMES = (  # (upper bound of the hue angle in degrees, name); red wraps around 0
    (15, "red"),
    (45, "orange"),
    (75, "yellow"),
    (165, "green"),
    (195, "cyan"),
    (255, "blue"),
    (290, "purple"),
    (345, "pink"),
    (360, "red"),
)


def _describe(centre: Mapping[str, float]) -> str:
    """Short name of a cluster centre given in feature units (see :func:`fit_clusters`)."""
    if centre["sat_p50"] < 0.05:
        v = centre["val_p50"]
        return "dark-grey" if v < DARK_V_MEDIAN else ("bright-grey" if v > 0.6 else "grey")
    angle = math.degrees(math.atan2(centre["hue_sin"], centre["hue_cos"])) % 360.0
    hue = next(name for bound, name in _HUE_NAMES if angle < bound)
    return f"pale-{hue}" if centre["sat_p50"] < 0.15 else hue


def _unique_names(names: Iterable[str]) -> tuple[str, ...]:
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}-{seen[name]}")
    return tuple(out)


@dataclass(frozen=True)
class ClusterModel:
    """A fitted clustering: standardisation, K-means centres, PCA, and the training table.

    Attributes:
        config: The settings it was fitted with.
        feature_names: The feature columns (:data:`FEATURE_NAMES`).
        mean: Standardisation offset per feature, shape (F,) (zeros without standardising).
        scale: Standardisation divisor per feature, shape (F,) (ones without standardising).
        centres: K-means centres in standardised space, shape (k, F), row i = cluster i.
        names: A short descriptive name per cluster, e.g. "dark-grey", "purple", "pale-pink".
        pca_mean: Mean of the standardised training features, shape (F,).
        pca_components: The first two principal axes in standardised space, shape (2, F).
        pca_explained: Fraction of the variance explained by each of the two axes.
        table: One row per training image in ImageId order: ImageId, cluster (int), name, the
            feature columns, pc1, pc2.
    """

    config: ClusterConfig
    feature_names: tuple[str, ...]
    mean: np.ndarray
    scale: np.ndarray
    centres: np.ndarray
    names: tuple[str, ...]
    pca_mean: np.ndarray
    pca_components: np.ndarray
    pca_explained: tuple[float, float]
    table: pd.DataFrame

    def standardised(self, features: pd.DataFrame) -> np.ndarray:
        """The feature columns of ``features`` in standardised space, shape (N, F)."""
        return (_feature_matrix(features) - self.mean) / self.scale

    def assign(self, features: pd.DataFrame) -> np.ndarray:
        """Nearest-centre cluster of each row (e.g. test images), int64 array of shape (N,).

        Ties go to the lower cluster id. Reproduces the fitted labels on the training features.

        Raises:
            NucleistyleError: A feature column is missing or a value is not finite.
        """
        z = self.standardised(features)
        dist = ((z[:, None, :] - self.centres[None, :, :]) ** 2).sum(axis=2)
        return np.argmin(dist, axis=1).astype(np.int64)

    def project(self, features: pd.DataFrame) -> np.ndarray:
        """Coordinates of each row on the two principal axes, float64 shape (N, 2)."""
        return (self.standardised(features) - self.pca_mean) @ self.pca_components.T

    def to_json(self, path: PathLike, outputs: OutputSet | None = None) -> None:
        """Write the model as plain JSON (atomically, or published with ``outputs``); floats
        round-trip exactly."""
        payload = {
            "format": "nucleistyle.cluster/1",
            "config": dataclasses.asdict(self.config),
            "feature_names": list(self.feature_names),
            "mean": self.mean.tolist(),
            "scale": self.scale.tolist(),
            "centres": self.centres.tolist(),
            "names": list(self.names),
            "pca_mean": self.pca_mean.tolist(),
            "pca_components": self.pca_components.tolist(),
            "pca_explained": list(self.pca_explained),
            "table": self.table.to_dict(orient="list"),
        }
        with atomic_path(path, outputs) as tmp:
            tmp.write_text(json.dumps(payload, indent=1) + "\n")

    @classmethod
    def from_json(cls, path: PathLike) -> ClusterModel:
        """Read a model written by :meth:`to_json`.

        Raises:
            NucleistyleError: The file is missing, not JSON, or not a cluster model (or was made
                with other feature columns).
        """
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (UnicodeError, json.JSONDecodeError) as exc:
            raise NucleistyleError(
                f"{path} is not a nucleistyle cluster model file: not JSON text"
            ) from exc
        except OSError as exc:
            raise NucleistyleError(f"cannot read cluster model {path}: {exc}") from exc
        if not isinstance(data, dict) or data.get("format") != "nucleistyle.cluster/1":
            raise NucleistyleError(f"{path} is not a nucleistyle cluster model file")
        try:
            if tuple(data["feature_names"]) != FEATURE_NAMES:
                raise ValueError(f"feature columns {data['feature_names']} != {FEATURE_NAMES}")
            table = pd.DataFrame(data["table"])
            table["cluster"] = table["cluster"].astype(np.int64)
            return cls(
                config=ClusterConfig(**data["config"]),
                feature_names=FEATURE_NAMES,
                mean=np.asarray(data["mean"], np.float64),
                scale=np.asarray(data["scale"], np.float64),
                centres=np.asarray(data["centres"], np.float64),
                names=tuple(data["names"]),
                pca_mean=np.asarray(data["pca_mean"], np.float64),
                pca_components=np.asarray(data["pca_components"], np.float64),
                pca_explained=(float(data["pca_explained"][0]), float(data["pca_explained"][1])),
                table=table,
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise NucleistyleError(f"cannot read cluster model {path}: {exc}") from exc


def _sorted_by_id(features: pd.DataFrame) -> pd.DataFrame:
    if "ImageId" not in features.columns:
        raise NucleistyleError("features: missing column ImageId")
    ids = features["ImageId"].astype(str)
    duplicated = ids[ids.duplicated()]
    if len(duplicated):
        raise NucleistyleError(f"features: ImageId {duplicated.iloc[0]} appears more than once")
    return features.assign(ImageId=ids).sort_values("ImageId", kind="stable", ignore_index=True)


def _standardisation(x: np.ndarray, on: bool) -> tuple[np.ndarray, np.ndarray]:
    if not on:
        return np.zeros(x.shape[1]), np.ones(x.shape[1])
    scale = x.std(axis=0)
    return x.mean(axis=0), np.where(scale > 0, scale, 1.0)


def _kmeans(z: np.ndarray, k: int, seed: int, n_init: int) -> KMeans:
    # One OpenMP thread: a few hundred 6-D points need no threads (measured: 0.02 s vs 1.4 s
    # for 20 restarts with 2 threads on a busy 2-core machine), and serial sums do not depend on
    # the machine's core count.
    with threadpool_limits(limits=1, user_api="openmp"):
        return KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit(z)


def _pca2(z: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    """Mean, first two principal axes (sign: largest |loading| positive), explained ratios."""
    mean = z.mean(axis=0)
    _, sing, vt = np.linalg.svd(z - mean, full_matrices=False)
    axes = np.zeros((2, z.shape[1]))
    n_axes = min(2, vt.shape[0])
    axes[:n_axes] = vt[:n_axes]
    rows = np.arange(2)
    axes *= np.where(axes[rows, np.argmax(np.abs(axes), axis=1)] < 0, -1.0, 1.0)[:, None]
    var = sing**2
    total = var.sum()
    ratio = [float(var[i] / total) if i < n_axes and total > 0 else 0.0 for i in range(2)]
    return mean, axes, (ratio[0], ratio[1])


def fit_clusters(features: pd.DataFrame, cfg: ClusterConfig) -> ClusterModel:
    """K-means on the (standardised) HSV features, plus a 2-D PCA.

    Determinism: rows are sorted by ImageId first, so the result does not depend on the row
    order; K-means uses ``cfg.seed`` and keeps the best of ``cfg.n_init`` runs. Training labels
    are the nearest fitted centre (:meth:`ClusterModel.assign`).

    Ordering rule: clusters are renumbered 0..k-1 by descending size (number of images); equal
    sizes are ordered by their centre in feature units (column by column, ascending, rounded to
    1e-9 so that last-bit float differences between machines cannot swap them). Each cluster is
    named from its centre: sat_p50 < 0.05 is grey ("dark-grey" if val_p50 < 0.4, "bright-grey"
    if > 0.6, else "grey"); otherwise the hue angle atan2(hue_sin, hue_cos) gives red, orange,
    yellow, green, cyan, blue, purple (255-290°) or pink (290-345°), prefixed "pale-" when
    sat_p50 < 0.15; repeated names get "-2", "-3", ... in id order.

    Args:
        features: ``ImageId`` and the :data:`FEATURE_NAMES` columns, one row per image (as from
            :func:`compute_features`); other columns are ignored.
        cfg: K-means settings.

    Returns:
        The fitted :class:`ClusterModel`; its ``table`` holds ImageId, cluster, name, the
        features, pc1, pc2 in ImageId order.

    Raises:
        NucleistyleError: ``cfg.k`` exceeds the number of images, an ImageId repeats, or a
            feature column is missing or not finite.
    """
    table = _sorted_by_id(features)
    x = _feature_matrix(table)
    if cfg.k > len(table):
        raise NucleistyleError(f"cluster.k = {cfg.k} exceeds the number of images ({len(table)})")
    mean, scale = _standardisation(x, cfg.standardise)
    z = (x - mean) / scale
    n_distinct = len(np.unique(z, axis=0))
    if cfg.k > n_distinct:
        raise NucleistyleError(
            f"cluster.k = {cfg.k} exceeds the number of distinct feature vectors ({n_distinct})"
        )
    km = _kmeans(z, cfg.k, cfg.seed, cfg.n_init)
    labels = np.argmin(((z[:, None, :] - km.cluster_centers_[None]) ** 2).sum(axis=2), axis=1)
    sizes = np.bincount(labels, minlength=cfg.k)
    raw_centres = km.cluster_centers_ * scale + mean
    keys = [(-int(sizes[i]), *np.round(raw_centres[i], 9).tolist()) for i in range(cfg.k)]
    order = sorted(range(cfg.k), key=lambda i: keys[i])
    new_id = np.empty(cfg.k, np.int64)
    new_id[order] = np.arange(cfg.k)
    centres = km.cluster_centers_[order]
    names = _unique_names(
        _describe(dict(zip(FEATURE_NAMES, raw_centres[i], strict=True))) for i in order
    )
    pca_mean, axes, explained = _pca2(z)
    pcs = (z - pca_mean) @ axes.T
    cluster = new_id[labels]
    out = table[["ImageId"]].copy()
    out["cluster"] = cluster
    out["name"] = [names[c] for c in cluster]
    out[list(FEATURE_NAMES)] = x
    out["pc1"], out["pc2"] = pcs[:, 0], pcs[:, 1]
    log.info(
        "K-means k=%d on %d images: sizes %s (%s)",
        cfg.k,
        len(out),
        np.bincount(cluster, minlength=cfg.k).tolist(),
        ", ".join(names),
    )
    return ClusterModel(
        config=cfg,
        feature_names=FEATURE_NAMES,
        mean=mean,
        scale=scale,
        centres=centres,
        names=names,
        pca_mean=pca_mean,
        pca_components=axes,
        pca_explained=explained,
        table=out,
    )


def cluster_dataset(
    images_dir: PathLike,
    out_csv: PathLike,
    cfg: ClusterConfig,
    workers: int = 2,
    model_json: PathLike | None = None,
    outputs: OutputSet | None = None,
) -> pd.DataFrame:
    """Cluster a training set: features, K-means, PCA; write the assignment table (and model).

    The table and the model appear together or not at all.

    Args:
        images_dir: Training images (BBBC038 layout or a flat folder).
        out_csv: Assignment table: ImageId, cluster, name, the :data:`FEATURE_NAMES` columns,
            pc1, pc2; ImageId order.
        cfg: K-means settings.
        workers: Decoding threads.
        model_json: Where to write the fitted :class:`ClusterModel` as JSON (optional).
        outputs: Publish both with these other outputs (default: on their own, at the end).

    Returns:
        The assignment table.

    Raises:
        NucleistyleError: Empty or missing folder, unreadable image (named), or ``cfg.k``
            larger than the number of images.
    """
    model = fit_clusters(compute_features(images_dir, workers=workers), cfg)
    with published_together(outputs) as together:
        with atomic_path(out_csv, together) as tmp:
            model.table.to_csv(tmp, index=False)
        if model_json is not None:
            model.to_json(model_json, together)
    return model.table


# ------------------------------------------------------------------------------------------------
# Quality


def cluster_quality(assignments: pd.DataFrame, truth: Mapping[str, str]) -> dict[str, Any]:
    """Agreement of the clusters with known groups (e.g. the manifest's ``group``).

    Only images present in both are compared.

    Args:
        assignments: Table with ImageId and cluster columns.
        truth: ImageId -> group name.

    Returns:
        ``ari`` (adjusted Rand index) and ``nmi`` (normalised mutual information, arithmetic
        mean) as floats, ``n_images`` compared, ``n_unmatched`` assignments without a truth
        entry, and ``contingency``: a DataFrame of image counts, rows = true group (sorted),
        columns = cluster id.

    Raises:
        NucleistyleError: No ImageId of ``assignments`` is in ``truth``.
    """
    known = assignments["ImageId"].astype(str).isin(list(truth))
    matched = assignments[known]
    if matched.empty:
        raise NucleistyleError("cluster_quality: no assigned ImageId has a true group")
    groups = matched["ImageId"].astype(str).map(truth).to_numpy()
    clusters = matched["cluster"].to_numpy()
    contingency = pd.crosstab(pd.Series(groups, name="group"), pd.Series(clusters, name="cluster"))
    return {
        "ari": float(adjusted_rand_score(groups, clusters)),
        "nmi": float(normalized_mutual_info_score(groups, clusters)),
        "n_images": len(matched),
        "n_unmatched": int((~known).sum()),
        "contingency": contingency,
    }


def silhouette_by_k(
    features: pd.DataFrame,
    ks: Iterable[int] = range(2, 11),
    seed: int = 0,
    n_init: int = 20,
    standardise: bool = True,
) -> pd.DataFrame:
    """Silhouette score and K-means inertia for several k (same K-means as :func:`fit_clusters`).

    Args:
        features: ``ImageId`` and the :data:`FEATURE_NAMES` columns.
        ks: Cluster counts to try; each must satisfy 2 <= k < number of images.
        seed: K-means seed.
        n_init: K-means restarts.
        standardise: As :attr:`ClusterConfig.standardise`.

    Returns:
        Columns k (int), silhouette (Euclidean, in standardised space; -1..1), inertia (sum of
        squared distances to the nearest centre); one row per k in the given order.

    Raises:
        NucleistyleError: A k outside [2, number of images - 1].
    """
    x = _feature_matrix(_sorted_by_id(features))
    mean, scale = _standardisation(x, standardise)
    z = (x - mean) / scale
    rows = []
    for k in ks:
        if not 2 <= k < len(z):
            raise NucleistyleError(
                f"silhouette needs 2 <= k < {len(z)} (number of images), got {k}"
            )
        km = _kmeans(z, k, seed, n_init)
        score = silhouette_score(z, km.labels_) if len(np.unique(km.labels_)) > 1 else -1.0
        rows.append({"k": int(k), "silhouette": float(score), "inertia": float(km.inertia_)})
    return pd.DataFrame(rows, columns=["k", "silhouette", "inertia"])


# ------------------------------------------------------------------------------------------------
# Pipeline entry points (one call per Snakemake rule)


def cluster_training_set(
    images_dir: PathLike,
    assignments_csv: PathLike,
    model_json: PathLike,
    silhouette_csv: PathLike,
    cfg: ClusterConfig,
    workers: int = 2,
    max_k: int = 10,
) -> pd.DataFrame:
    """:func:`cluster_dataset` plus the silhouette diagnostic for k = 2..``max_k``.

    The silhouette table lets users judge whether ``cfg.k`` suits their data; k values that the
    number of images does not allow are skipped.

    Returns:
        The assignment table.
    """
    with published_together() as outputs:
        table = cluster_dataset(
            images_dir, assignments_csv, cfg, workers=workers, model_json=model_json,
            outputs=outputs,
        )  # fmt: skip
        ks = range(2, min(max_k, len(table) - 1) + 1)
        silhouette = silhouette_by_k(
            table, ks, seed=cfg.seed, n_init=cfg.n_init, standardise=cfg.standardise
        )
        with atomic_path(silhouette_csv, outputs) as tmp:
            silhouette.to_csv(tmp, index=False)
    return table


def assign_dataset(
    images_dir: PathLike, model_json: PathLike, out_csv: PathLike, workers: int = 2
) -> pd.DataFrame:
    """Assign new images (e.g. a test set) to the fitted clusters: nearest centre.

    Returns:
        Columns ImageId, cluster, name, pc1, pc2 (also written to ``out_csv``, atomically).
    """
    model = ClusterModel.from_json(model_json)
    features = _sorted_by_id(compute_features(images_dir, workers=workers))
    clusters = model.assign(features)
    pcs = model.project(features)
    table = pd.DataFrame(
        {
            "ImageId": features["ImageId"].to_numpy(),
            "cluster": clusters,
            "name": [model.names[c] for c in clusters],
            "pc1": pcs[:, 0],
            "pc2": pcs[:, 1],
        }
    )
    with atomic_path(out_csv) as tmp:
        table.to_csv(tmp, index=False)
    return table
