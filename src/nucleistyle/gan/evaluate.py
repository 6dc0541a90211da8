"""How well the style transfer keeps structure and reaches the target style.

For a few images of every source domain and every target domain (the diagonal is a same-domain
restyle with a new attribute), :func:`evaluate_transfer` measures:

* **Structure** (the nuclei must stay where they were, so that the masks can be inherited):

  - ``seg_score``: the official DSB score (mean over IoU thresholds 0.5-0.95) of the classical
    segmenter's nuclei on the stylised image against its nuclei on the original;
  - ``fg_iou``: how well the stylised image still shows the nuclei whose masks it inherits:
    the IoU of the inherited foreground (the true masks; without masks, the classical
    segmentation of the original) with the best single-threshold foreground of the stylised
    image (:func:`threshold_iou`). It asks no segmenter to cope with the new style, so a
    perfect transfer scores near the original's own value, and an unrelated image of the
    target style scores low (both measured by :func:`perfect_transfer`);
  - ``edge_corr``: Pearson correlation of the gradient magnitudes (Sobel after a σ = 1 px
    Gaussian) of the grey original and the grey stylised image. Gradient magnitude ignores
    polarity, so a fluorescence -> bright-field transfer (bright nuclei become dark) can still
    score 1;
  - ``contrast``: how clearly the inherited nuclei stand out from a 3-px band around them in
    the stylised image (d', :func:`nucleus_contrast`), beside ``contrast_original``, the same
    for the original: ``fg_iou`` finds nuclei at the best threshold however faint, so a restyle
    that washes them out or paints nucleus-like texture around them shows here;
  - with ``truth_labels`` and masks on disk: ``gt_score_original`` / ``gt_score_stylised``, the
    DSB score of the classical segmentation of the original / stylised image against the true
    masks (on synthetic data the truth is exact).

  The classical segmenter decides polarity and thresholds per image, so ``seg_score`` mixes the
  transfer's structure loss with the segmenter's own sensitivity to style (on synthetic
  pink-purple tissue it finds almost nothing even in a perfect transfer); ``fg_iou`` and
  ``edge_corr`` do not depend on it.

* **Style**: ``style_hit``, the share of stylised images whose HSV features the fitted K-means
  model (:class:`nucleistyle.cluster.ClusterModel`) assigns to the target cluster.

Rows: one per (source domain, target domain), means over the images.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image
from scipy import ndimage as ndi

from nucleistyle.classical import segment_image
from nucleistyle.cluster import FEATURE_NAMES, ClusterModel, hsv_features, v_median
from nucleistyle.data.bbbc038 import ImageRecord, list_images, load_sample
from nucleistyle.data.synthetic import MODALITIES, SyntheticConfig, synthesize
from nucleistyle.enhance import ClaheConfig, enhance_image
from nucleistyle.errors import NucleistyleError
from nucleistyle.gan.data import DomainSet, read_assignments
from nucleistyle.gan.quality import (
    LOOK_IMAGES,
    DomainLook,
    copy_quality,
    domain_looks,
    record_looks,
    visibility,
)
from nucleistyle.gan.stylize import Stylizer, load_stylizer
from nucleistyle.metrics import image_score
from nucleistyle.outputs import atomic_path
from nucleistyle.paths import PathLike
from nucleistyle.torchutils import select_device

__all__ = [
    "EVALUATION_COLUMNS",
    "TransferMonitor",
    "edge_similarity",
    "evaluate_transfer",
    "perfect_transfer",
    "threshold_iou",
]

log = logging.getLogger(__name__)

EVALUATION_COLUMNS = (
    "source_domain",
    "source_name",
    "target_domain",
    "target_name",
    "n_images",
    "style_hit",
    "visibility_ratio",
    "visibility_kept",
    "phantoms_per_100",
    "visibility_ratio_unrelated",
    "phantoms_per_100_unrelated",
    "phantoms_per_100_real",
    "fg_iou",
    "seg_score",
    "edge_corr",
    "gt_score_original",
    "gt_score_stylised",
)


def _gradient_magnitude(image: np.ndarray, sigma: float) -> np.ndarray:
    grey = np.asarray(image, np.float64)
    if grey.ndim == 3:
        grey = grey.mean(axis=2)
    smooth = ndi.gaussian_filter(grey, sigma)
    return np.hypot(ndi.sobel(smooth, 0), ndi.sobel(smooth, 1))


def edge_similarity(original: np.ndarray, other: np.ndarray, sigma: float = 1.0) -> float:
    """Pearson correlation of the gradient magnitudes of two images of the same size.

    Args:
        original: (H, W) or (H, W, 3) image (any numeric dtype).
        other: Same shape.
        sigma: Gaussian smoothing (px) before the Sobel filters.

    Returns:
        Correlation in [-1, 1]; NaN when either image is flat.

    Example:
        >>> a = np.zeros((16, 16), np.uint8); a[4:12, 4:12] = 200
        >>> round(edge_similarity(a, 255 - a), 6)  # inverted polarity, same edges
        1.0
    """
    if np.shape(original) != np.shape(other):
        raise ValueError(f"shapes differ: {np.shape(original)} vs {np.shape(other)}")
    a = _gradient_magnitude(original, sigma).ravel()
    b = _gradient_magnitude(other, sigma).ravel()
    a, b = a - a.mean(), b - b.mean()
    norm = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / norm) if norm > 0 else float("nan")


def threshold_iou(image: np.ndarray, foreground: np.ndarray, sigma: float = 1.0) -> float:
    """The best IoU any single threshold of the image reaches against a foreground mask.

    The image is smoothed (Gaussian, ``sigma`` px); its grey level and each colour channel are
    thresholded at every level, either polarity (bright nuclei on a dark background or dark
    on bright), and the best IoU with ``foreground`` is returned. It measures whether the
    image still shows the nuclei of a mask, in whatever style, without a segmenter's opinion
    of that style.

    Args:
        image: (H, W) or (H, W, 3) uint8 image.
        foreground: (H, W) mask or label image (> 0 = foreground).

    Returns:
        IoU in [0, 1]; NaN when the foreground is empty.

    Example:
        >>> a = np.zeros((16, 16), np.uint8); a[4:12, 4:12] = 200
        >>> threshold_iou(255 - a, a > 0)  # dark nuclei on a bright background
        1.0
    """
    fg = np.asarray(foreground) > 0
    if np.shape(image)[:2] != fg.shape:
        raise ValueError(f"shapes differ: {np.shape(image)} vs {fg.shape}")
    n_fg = np.count_nonzero(fg)
    if n_fg == 0:
        return float("nan")
    pixels = np.asarray(image, np.float64)
    planes = [pixels] if pixels.ndim == 2 else [pixels.mean(axis=2), *np.moveaxis(pixels, 2, 0)]
    best = 0.0
    for plane in planes:
        level = np.clip(np.rint(ndi.gaussian_filter(plane, sigma)), 0, 255).astype(np.int64)
        inside = np.bincount(level[fg], minlength=256)
        outside = np.bincount(level[~fg], minlength=256)
        for hit, miss in (  # foreground = level >= t, then level <= t
            (np.cumsum(inside[::-1]), np.cumsum(outside[::-1])),
            (np.cumsum(inside), np.cumsum(outside)),
        ):
            best = max(best, float((hit / (n_fg + miss)).max()))
    return best


def _transfer_row(
    stylizer: Stylizer,
    clusters: ClusterModel,
    image: np.ndarray,
    labels: np.ndarray,
    source: int,
    target: int,
    seed: int,
    looks: list[DomainLook | None],
    seg_original: np.ndarray,
    attribute: np.ndarray | None = None,
) -> dict[str, Any]:
    """Structure and style measures of one image restyled to ``target`` (and, as ``_styled``,
    the segmentation of the restyled image); ``labels`` are the nuclei it inherits."""
    styled = stylizer.stylize([image], target, attribute, seed=seed, source_domain=source)[0]
    seg_styled = segment_image(styled)
    features = pd.DataFrame([hsv_features(styled)], columns=list(FEATURE_NAMES))
    assigned = int(clusters.assign(features)[0])
    row: dict[str, Any] = {
        "seg_score": image_score(seg_original, seg_styled),
        "fg_iou": threshold_iou(styled, labels),
        "edge_corr": edge_similarity(image, styled),
        "style_hit": float(assigned == stylizer.cluster_ids[target]),
        "_styled": seg_styled,
    }
    look, own = looks[target], looks[source]
    if look is not None:
        quality = copy_quality(styled, labels, look)
        row["visibility_ratio"] = quality["visibility_ratio"]
        row["phantoms_per_100"] = quality["phantoms_per_100"]
        before = visibility(image, labels, own) if own is not None else np.nan
        row["visibility_kept"] = quality["visibility"] / before if before > 0 else np.nan
    return row


def _unrelated(
    image: np.ndarray, labels: np.ndarray, other: np.ndarray, look: DomainLook | None
) -> dict[str, float]:
    """The quality measures of an unrelated image of the target domain (``other``, brought to
    the size of ``image``) against the inherited nuclei: what a generator that ignores the
    content scores."""
    if look is None:
        return {}
    h, w = image.shape[:2]
    if other.shape[:2] != (h, w):
        other = np.asarray(Image.fromarray(other).resize((w, h), Image.Resampling.BILINEAR))
    quality = copy_quality(other, labels, look)
    return {
        "visibility_ratio_unrelated": quality["visibility_ratio"],
        "phantoms_per_100_unrelated": quality["phantoms_per_100"],
    }


def _labels_at(labels: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Instance labels brought to an image's (H, W) as :func:`~nucleistyle.gan.data.
    load_domain_set` brought the image: reflect-padded when smaller, else resized (nearest)."""
    if labels.shape == shape[:2]:
        return labels
    if all(s <= t for s, t in zip(labels.shape, shape, strict=False)):
        pad = [(0, t - s) for s, t in zip(labels.shape, shape, strict=False)]
        return np.pad(labels, pad, mode="reflect")
    resized = Image.fromarray(labels.astype(np.int32)).resize(
        (shape[1], shape[0]), Image.Resampling.NEAREST
    )
    return np.asarray(resized).astype(labels.dtype)


def _off_diagonal_means(table: pd.DataFrame) -> dict[str, float]:
    off = table[table["source"] != table["target"]]
    columns = [c for c in table if not c.startswith("_") and c not in ("source", "target")]
    return {k: float(v) for k, v in off[columns].mean().items()}


class TransferMonitor:
    """Transfer quality during GAN training (the report's learning curve).

    Called by :func:`nucleistyle.gan.engine.train_gan` with the current model state and the
    training set; restyles ``per_domain`` fixed images of every domain to every domain and
    returns the off-diagonal means of ``style_hit``, ``visibility_ratio``,
    ``phantoms_per_100``, ``fg_iou``, ``edge_corr`` and ``seg_score``, the diagonal's
    ``visibility_kept`` (self-reconstruction: the share of the original's visibility kept), plus
    ``style_hit_chance`` (1 / number of domains) and ``fg_iou_original`` (``fg_iou`` of the
    unstyled images: what keeping every nucleus visible scores).

    Args:
        cluster_model_json: The fitted cluster model (decides which style an image has).
        images_dir: The training images with their masks (the inherited nuclei; images
            without masks, or ``None``, use the classical segmentation of the original).
        per_domain: Images per source domain (the first ones by ImageId).
        seed: Seeds the attribute draws (the same at every evaluation).
        device: Where the generator runs (``auto``, ``cpu``, ``cuda``...), in fp32.
    """

    def __init__(
        self,
        cluster_model_json: PathLike,
        images_dir: PathLike | None = None,
        per_domain: int = 2,
        seed: int = 0,
        device="auto",
    ) -> None:
        self.clusters = ClusterModel.from_json(cluster_model_json)
        self.images_dir = images_dir
        self.per_domain = per_domain
        self.seed = seed
        self.device = select_device(device)
        self._labels: dict[str, np.ndarray] = {}
        self._records: dict[str, ImageRecord] | None = None
        self._looks: list[DomainLook | None] | None = None

    def _labels_of(self, data: DomainSet, index: int) -> np.ndarray:
        """The true nuclei of a training image, brought to its size in ``data`` (cached)."""
        image_id, image = data.image_ids[index], data.images[index]
        if image_id not in self._labels:
            if self._records is None:
                found = list_images(self.images_dir) if self.images_dir is not None else []
                self._records = {r.image_id: r for r in found}
            record = self._records.get(image_id)
            labels = load_sample(record).labels if record is not None else None
            if labels is None:
                self._labels[image_id] = segment_image(image)
            else:
                self._labels[image_id] = _labels_at(labels, image.shape)
        return self._labels[image_id]

    def _domain_looks(self, data: DomainSet) -> list[DomainLook | None]:
        if self._looks is None:
            self._looks = domain_looks(
                (
                    (data.images[i], self._labels_of(data, int(i)), d)
                    for d, members in enumerate(data.members)
                    for i in members[:LOOK_IMAGES]
                ),
                data.n_domains,
                LOOK_IMAGES,
            )
        return self._looks

    def __call__(self, state: dict, data: DomainSet) -> dict[str, float]:
        stylizer = Stylizer(state, self.device, None)
        looks = self._domain_looks(data)
        rows, kept = [], []
        for source, members in enumerate(data.members):
            for k, index in enumerate(members[: self.per_domain]):
                image = data.images[index]
                labels = self._labels_of(data, int(index))
                seg_original = segment_image(image)
                kept.append(threshold_iou(image, labels))
                own = stylizer.encode_attribute(image, source)
                for target in range(data.n_domains):
                    row = _transfer_row(
                        stylizer, self.clusters, image, labels, source, target,
                        self.seed + 1000 * k + target, looks, seg_original,
                        own if target == source else None,
                    )  # fmt: skip
                    rows.append({"source": source, "target": target, **row})
        table = pd.DataFrame(rows).drop(columns="_styled")
        diagonal = table[table["source"] == table["target"]]
        return {
            **{f"eval_{k}": v for k, v in _off_diagonal_means(table).items()},
            "eval_self_visibility_kept": float(diagonal["visibility_kept"].mean())
            if "visibility_kept" in diagonal
            else float("nan"),
            "eval_style_hit_chance": 1.0 / data.n_domains,
            "eval_fg_iou_original": float(np.nanmean(kept)),
        }


def evaluate_transfer(
    images_dir: PathLike,
    assignments_csv: PathLike,
    model_path: PathLike,
    cluster_model_json: PathLike,
    out_csv: PathLike,
    per_domain: int = 4,
    seed: int = 0,
    truth_labels: bool = True,
    device: str = "auto",
) -> pd.DataFrame:
    """Structure kept, phantoms and style reached per (source domain, target domain).

    The diagonal is the self-reconstruction G(E_c(x), E_a(x, c), c); off-diagonal rows restyle
    to a random attribute of the target domain. Each row also holds what an unrelated real
    image of the target domain scores against the same nuclei, and the phantom rate of the
    target domain's own real images (the two ends of the scale).

    Args:
        images_dir: Images with their cluster (BBBC038 layout; masks used with ``truth_labels``).
        assignments_csv: Cluster assignment table (source domains).
        model_path: GAN model.
        cluster_model_json: The fitted cluster model (:meth:`ClusterModel.to_json`).
        out_csv: Result table (:data:`EVALUATION_COLUMNS`), written atomically.
        per_domain: Images drawn per source domain (all when the domain has fewer).
        seed: Seeds the choice of images and the attribute draws.
        truth_labels: Use the true masks as the inherited nuclei where the images have them
            (else the classical segmentation of the original).
        device: ``auto``, ``cpu`` or ``cuda``.

    Returns:
        The table.

    Raises:
        NucleistyleError: An image without an assignment row (naming the file), a missing
            model or cluster model, ``per_domain < 1``.
    """
    if per_domain < 1:
        raise NucleistyleError(f"per_domain must be >= 1, got {per_domain}")
    stylizer = load_stylizer(model_path, device)
    clusters = ClusterModel.from_json(cluster_model_json)
    table = read_assignments(assignments_csv, stylizer.n_domains)
    cluster_of = dict(zip(table["ImageId"], table["cluster"], strict=True))
    records = list_images(images_dir)
    missing = [r for r in records if r.image_id not in cluster_of]
    if missing:
        raise NucleistyleError(
            f"cluster assignments {assignments_csv}: no row for ImageId {missing[0].image_id} "
            f"({missing[0].image_path})"
        )
    by_domain = [
        [r for r in records if cluster_of[r.image_id] == d] for d in range(stylizer.n_domains)
    ]
    looks = record_looks(records if truth_labels else [], cluster_of, stylizer.n_domains)
    rng = np.random.default_rng(seed)
    rows = []
    for source, members in enumerate(by_domain):
        if not members:
            continue
        picked = rng.choice(len(members), size=min(per_domain, len(members)), replace=False)
        for index in np.sort(picked):
            sample = load_sample(members[index])
            rows += _image_rows(
                stylizer, clusters, sample, source, by_domain, looks, truth_labels, rng
            )
    result = _pair_table(pd.DataFrame(rows), stylizer.domain_names)
    with atomic_path(out_csv) as tmp:
        result.to_csv(tmp, index=False, float_format="%.4f", lineterminator="\n")
    _log_summary(result, len(rows) // max(1, stylizer.n_domains))
    return result


def _image_rows(
    stylizer: Stylizer,
    clusters: ClusterModel,
    sample: Any,
    source: int,
    by_domain: list[list[ImageRecord]],
    looks: list[DomainLook | None],
    truth_labels: bool,
    rng: np.random.Generator,
) -> list[dict[str, Any]]:
    """One image restyled to every domain: a row per target (see :func:`evaluate_transfer`)."""
    truth = sample.labels if truth_labels else None
    seg_original = segment_image(sample.image)
    labels = truth if truth is not None else seg_original
    gt_original = image_score(truth, seg_original) if truth is not None else np.nan
    own = stylizer.encode_attribute(sample.image, source)
    rows = []
    for target in range(stylizer.n_domains):
        row = _transfer_row(
            stylizer, clusters, sample.image, labels, source, target, int(rng.integers(2**31)),
            looks, seg_original, own if target == source else None,
        )  # fmt: skip
        seg_styled = row.pop("_styled")
        others = [r for r in by_domain[target] if r.image_id != sample.image_id]
        if others:
            other = load_sample(others[int(rng.integers(len(others)))]).image
            row.update(_unrelated(sample.image, labels, other, looks[target]))
        look = looks[target]
        row["phantoms_per_100_real"] = look.phantoms if look is not None else np.nan
        row["gt_score_original"] = gt_original
        row["gt_score_stylised"] = image_score(truth, seg_styled) if truth is not None else np.nan
        rows.append({"source_domain": source, "target_domain": target, **row})
    return rows


def _pair_table(per_image: pd.DataFrame, names: tuple[str, ...]) -> pd.DataFrame:
    """Means per (source, target) pair with their image counts, in :data:`EVALUATION_COLUMNS`."""
    metrics = list(EVALUATION_COLUMNS[5:])
    per_image = per_image.reindex(columns=["source_domain", "target_domain", *metrics])
    pairs = per_image.groupby(["source_domain", "target_domain"])
    result = pairs[metrics].mean().join(pairs.size().rename("n_images")).reset_index()
    result["source_name"] = [names[d] for d in result["source_domain"]]
    result["target_name"] = [names[d] for d in result["target_domain"]]
    return result[list(EVALUATION_COLUMNS)]


def _log_summary(result: pd.DataFrame, n_images: int) -> None:
    off = result[result.source_domain != result.target_domain]
    diagonal = result[result.source_domain == result.target_domain]
    means = [
        off[m].mean()
        for m in (
            "visibility_ratio",
            "visibility_ratio_unrelated",
            "phantoms_per_100",
            "phantoms_per_100_unrelated",
            "phantoms_per_100_real",
            "style_hit",
        )
    ]
    log.info(
        "style transfer on %d images, off-diagonal means over pairs: visibility %.2f of the "
        "target domain's (unrelated image %.2f), phantoms %.1f per 100 nuclei (unrelated "
        "image %.1f, real images %.1f), style_hit %.2f (chance %.2f), fg_iou %.3f; "
        "self-reconstruction keeps %.2f of the visibility",
        n_images,
        *means,
        1 / max(1, result.source_domain.nunique()),
        off["fg_iou"].mean(),
        diagonal["visibility_kept"].mean(),
    )


def _reference_row(
    original: np.ndarray,
    truth: np.ndarray,
    seg_original: np.ndarray,
    styled: np.ndarray,
    unrelated: np.ndarray,
    look: DomainLook | None,
) -> dict[str, float]:
    """The measures of a perfect transfer ``styled`` and an ``unrelated`` image of the target."""
    seg_styled = segment_image(styled)
    row = {
        "seg_score": image_score(seg_original, seg_styled),
        "fg_iou": threshold_iou(styled, truth),
        "fg_iou_unrelated": threshold_iou(unrelated, truth),
        "edge_corr": edge_similarity(original, styled),
        "gt_score_stylised": image_score(truth, seg_styled),
    }
    if look is not None:
        quality = copy_quality(styled, truth, look)
        row["visibility_ratio"] = quality["visibility_ratio"]
        row["phantoms_per_100"] = quality["phantoms_per_100"]
        row.update(_unrelated(original, truth, unrelated, look))
    return row


def perfect_transfer(
    synthetic: Mapping[str, Any],
    clahe: Mapping[str, Any] | None = None,
    per_pair: int = 4,
    seed: int = 0,
    modalities: tuple[str, ...] | None = None,
) -> pd.DataFrame:
    """What the structure measures give a perfect style transfer, on synthetic data.

    A generated image's nuclei are drawn again in the style of every other modality (the same
    labels, :func:`nucleistyle.data.synthetic.synthesize` with ``render_as``): the transfer an
    ideal GAN would make. Both images get the pipeline's CLAHE where it selects them, then the
    measures of :class:`TransferMonitor`. Some modalities draw structures that are not nuclei
    (debris, textured stroma) and the classical segmenter decides foreground differently in
    each style, so even this transfer scores below 1: the reference the GAN's measures are read
    against. The ``*_unrelated`` columns are the other end: an independent image of the
    target modality (other nuclei) against the same nuclei, what a transfer that ignores the
    content scores. Each modality's :class:`~nucleistyle.gan.quality.DomainLook` comes from
    ``per_pair`` further images of it.

    Args:
        synthetic: The config section ``data.synthetic`` (size and length scale).
        clahe: The config section ``clahe`` (``None``: no enhancement); ``select: clusters``
            is read as ``dark`` (no clusters exist here).
        per_pair: Images per (source, target) modality pair.
        seed: Seeds the layouts and renderings.
        modalities: The modalities to pair (default: every one with a positive proportion).

    Returns:
        One row per ordered pair of different modalities: ``source_name``, ``target_name``,
        ``n_images`` and the means of ``seg_score``, ``fg_iou``, ``fg_iou_unrelated``,
        ``edge_corr``, ``gt_score_stylised`` (the classical segmenter against the true masks),
        ``visibility_ratio``, ``phantoms_per_100`` and their ``*_unrelated`` counterparts.
    """
    cfg = SyntheticConfig.from_config(synthetic)
    names = modalities or tuple(m for m in MODALITIES if cfg.proportions.get(m, 0) > 0)
    enhance = ClaheConfig.from_config(clahe or {"select": "none"})

    def draw(source: str, target: str, key: list[int]) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(key)
        image, labels = synthesize(
            source, rng, cfg.height, cfg.width, cfg.length_scale, render_as=target
        )
        dark = v_median(image) < enhance.dark_v_median
        if enhance.selects(v_median(image), -1) or (enhance.select == "clusters" and dark):
            image = enhance_image(image, enhance)
        return image, labels

    looks = domain_looks(
        (
            (*draw(name, name, [seed + 2, i, k]), i)
            for i, name in enumerate(names)
            for k in range(per_pair)
        ),
        len(names),
        per_pair,
    )
    rows = []
    for i, source in enumerate(names):
        for k in range(per_pair):
            original, truth = draw(source, source, [seed, i, k])
            seg_original = segment_image(original)
            for j, target in enumerate(names):
                if target == source:
                    continue
                styled, _ = draw(source, target, [seed, i, k])
                unrelated, _ = draw(target, target, [seed + 1, i, k])
                row = _reference_row(original, truth, seg_original, styled, unrelated, looks[j])
                rows.append({"source_name": source, "target_name": target, **row})
    per_image = pd.DataFrame(rows)
    groups = per_image.groupby(["source_name", "target_name"], sort=False)
    return groups.mean().join(groups.size().rename("n_images")).reset_index()
