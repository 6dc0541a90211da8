"""Training data for the segmenters: loading, validation split, sampling, per-draw samples.

The training images are decoded once (validated up front, so a bad file fails before any
training) and kept in memory. Sampling is a pure function of the seed and the draw number:
draw ``j`` (iteration ``j // batch_size``) comes from epoch ``j // n`` of a per-epoch order
and is augmented with ``numpy.random.default_rng([seed, j])``, so a resumed run, or any number
of DataLoader workers, sees exactly the same samples.

Orders: a shuffled permutation per epoch (both solutions); arm ``oversample`` draws with
replacement so that each cluster of the assignment table is equally likely (instead of the
GAN). Arm ``style`` does not add images to the pool: each original carries its GAN-restyled
copies (``TrainItem.variants``), and a draw shows one of them, chosen at random, with
probability ``style_p`` (the paper restyles half of the images to a random domain with a random
attribute). Epochs, the schedule and the validation split are therefore the same in every arm,
and a draw of an original is augmented identically in all arms; restyled copies of validation
images are never trained on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy import ndimage as ndi

from nucleistyle.data.bbbc038 import ImageRecord, iter_samples, list_images, read_image
from nucleistyle.errors import NucleistyleError
from nucleistyle.paths import PathLike
from nucleistyle.segment.configs import ARMS, SegmenterConfig
from nucleistyle.segment.transforms import Compose, to_target

__all__ = [
    "DrawDataset",
    "TrainItem",
    "attach_variants",
    "cluster_weights",
    "fill_label_holes",
    "image_kind",
    "list_training_records",
    "load_items",
    "split_validation",
]

log = logging.getLogger(__name__)


@dataclass
class TrainItem:
    """One decoded training image.

    Attributes:
        image_id: The ImageId.
        image: uint8 (H, W, 3).
        labels: uint16 or int32 (H, W) instance labels, 0 = background.
        source: Index of the training folder it came from (0 = the original set).
        kind: Stratification key of the validation split (:func:`image_kind`).
        variants: Restyled copies of ``image`` (same size, same labels), arm ``style``.
    """

    image_id: str
    image: np.ndarray
    labels: np.ndarray
    source: int
    kind: str
    variants: tuple[np.ndarray, ...] = ()


def list_training_records(train_dirs: Sequence[PathLike]) -> list[tuple[int, ImageRecord]]:
    """The (folder index, record) of every training image, checked to have masks.

    Raises:
        NucleistyleError: no folder given, an empty or missing folder, an image without
            masks (naming its file), or an ImageId present in two folders.
    """
    if not train_dirs:
        raise NucleistyleError("no training folders given: the training set is empty")
    records: list[tuple[int, ImageRecord]] = []
    seen: dict[str, Path] = {}
    for index, folder in enumerate(train_dirs):
        for record in list_images(folder):
            if not record.mask_paths:
                raise NucleistyleError(
                    f"training image {record.image_path} has no masks "
                    f"(expected {record.image_path.parent.parent / 'masks'}/*.png)"
                )
            if record.image_id in seen:
                raise NucleistyleError(
                    f"ImageId {record.image_id} is in two training folders: "
                    f"{seen[record.image_id]} and {folder}"
                )
            seen[record.image_id] = Path(folder)
            records.append((index, record))
    return records


def fill_label_holes(labels: np.ndarray) -> np.ndarray:
    """Fill the holes of every instance (Mirzaev's ``binary_fill_holes`` per mask).

    A hole is background enclosed by one instance; pixels of other instances are never
    overwritten.
    """
    out = labels.copy()
    for index, window in enumerate(ndi.find_objects(labels), start=1):
        if window is None:
            continue
        mask = labels[window] == index
        filled = ndi.binary_fill_holes(mask) & (labels[window] == 0)
        out[window][filled] = index
    return out


def image_kind(image: np.ndarray) -> str:
    """A cheap image-type key for stratified splits: grey/colour x dark/bright background.

    It stands in for the foreground/background colour classes Mirzaev stratified by (Mirzaev:
    white/black, purple/purple, purple/white, black/white) when no cluster table is given.
    """
    rgb = image.astype(np.float32)
    colour = float(np.abs(rgb - rgb.mean(axis=2, keepdims=True)).mean()) > 2.0
    bright = float(np.median(rgb)) > 127
    return f"{'colour' if colour else 'grey'}/{'bright' if bright else 'dark'}"


def load_items(
    records: Sequence[tuple[int, ImageRecord]], fill_holes: bool, workers: int = 2
) -> list[TrainItem]:
    """Decode the training images and their masks.

    Raises:
        NucleistyleError: an unreadable image or mask, or a mask whose size differs from its
            image (the message names the file).
    """
    items: list[TrainItem] = []
    sources = [source for source, _ in records]
    for source, sample in zip(
        sources, iter_samples([r for _, r in records], workers=workers), strict=True
    ):
        labels = sample.labels
        assert labels is not None  # every record has masks (list_training_records)
        if fill_holes:
            labels = fill_label_holes(labels)
        if labels.max(initial=0) < 2**16:
            labels = labels.astype(np.uint16)
        items.append(
            TrainItem(sample.image_id, sample.image, labels, source, image_kind(sample.image))
        )
    return items


def split_validation(
    items: Sequence[TrainItem],
    fraction: float,
    seed: int,
    groups: Mapping[str, str] | None = None,
) -> tuple[list[int], list[int]]:
    """Stratified train / validation split of the original images (Mirzaev: 90/10, seed 11).

    Like scikit-learn's stratified ``train_test_split``: ``ceil(fraction * n)`` images go to
    validation, shared among the strata in proportion to their sizes (largest remainders
    first), never a stratum's last image. Only images of the first folder (``source == 0``)
    may go to validation; added folders (GAN-restyled images) always train. Strata are
    ``groups[ImageId]`` when given (e.g. the cluster), else :func:`image_kind`.

    Returns:
        ``(train_indices, val_indices)`` into ``items``, each sorted.
    """
    if fraction == 0:
        return list(range(len(items))), []
    strata: dict[str, list[int]] = {}
    for i, item in enumerate(items):
        if item.source == 0:
            key = groups.get(item.image_id, item.kind) if groups else item.kind
            strata.setdefault(str(key), []).append(i)
    keys = sorted(strata)
    sizes = np.array([len(strata[k]) for k in keys])
    n_val = math.ceil(fraction * sizes.sum())
    exact = n_val * sizes / sizes.sum()
    quota = np.floor(exact).astype(int)
    for j in np.argsort(-(exact - quota), kind="stable")[: n_val - quota.sum()]:
        quota[j] += 1
    quota = np.minimum(quota, np.maximum(sizes - 1, 0))
    rng = np.random.default_rng(seed)
    val: list[int] = []
    for key, k in zip(keys, quota, strict=True):
        members = strata[key]
        val += [members[j] for j in rng.permutation(len(members))[:k]]
    held = set(val)
    return [i for i in range(len(items)) if i not in held], sorted(val)


def read_assignments(path: PathLike) -> dict[str, str]:
    """ImageId -> cluster from a cluster assignment table (columns ImageId, cluster).

    Raises:
        NucleistyleError: unreadable file or missing columns.
    """
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise NucleistyleError(f"cannot read cluster assignments {path}: {exc}") from exc
    if not {"ImageId", "cluster"} <= set(table.columns):
        raise NucleistyleError(
            f"{path}: expected columns ImageId and cluster, found {list(table.columns)}"
        )
    return dict(zip(table["ImageId"], table["cluster"], strict=True))


def cluster_weights(
    image_ids: Sequence[str], clusters: Mapping[str, str], source: PathLike
) -> np.ndarray:
    """Sampling probabilities that draw every cluster equally often (arm ``oversample``).

    Raises:
        NucleistyleError: an ImageId without a cluster (names the table and the ImageId).
    """
    missing = [i for i in image_ids if i not in clusters]
    if missing:
        raise NucleistyleError(
            f"{source}: ImageId {missing[0]} of the training set has no cluster"
            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
        )
    keys = np.array([clusters[i] for i in image_ids])
    _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    weights = 1.0 / (len(counts) * counts[inverse])
    return weights / weights.sum()


def attach_variants(
    items: Sequence[TrainItem],
    style_dirs: Sequence[PathLike],
    manifests: Sequence[PathLike],
    left_out: Sequence[str] = (),
) -> tuple[list[TrainItem], int]:
    """Attach the restyled copies of each original (arm ``style``).

    Args:
        items: The originals that train.
        style_dirs: Folders of restyled images (BBBC038 layout, :mod:`nucleistyle.gan.augment`).
        manifests: One manifest per folder (columns ImageId, source_ImageId).
        left_out: ImageIds whose copies are skipped (the validation images).

    Returns:
        The items with ``variants`` set, and the number of copies attached.

    Raises:
        NucleistyleError: an unreadable manifest, a copy missing from its folder, a copy whose
            source is not a training image, or one whose size differs from its source.
    """
    by_id = {item.image_id: item for item in items}
    skipped = set(left_out)
    copies: dict[str, list[np.ndarray]] = {}
    for folder, manifest in zip(style_dirs, manifests, strict=True):
        try:
            table = pd.read_csv(manifest, dtype=str, keep_default_na=False)
        except (OSError, pd.errors.ParserError, UnicodeDecodeError) as exc:
            raise NucleistyleError(
                f"cannot read restyled-image manifest {manifest}: {exc}"
            ) from exc
        if not {"ImageId", "source_ImageId"} <= set(table.columns):
            raise NucleistyleError(
                f"{manifest}: expected columns ImageId and source_ImageId, found "
                f"{list(table.columns)}"
            )
        if table.empty:  # the quality gate may keep no copy: the arm trains on the originals
            continue
        records = {record.image_id: record for record in list_images(folder)}
        for new_id, source_id in zip(table["ImageId"], table["source_ImageId"], strict=True):
            if source_id in skipped:
                continue
            if new_id not in records:
                raise NucleistyleError(f"{manifest}: image {new_id} is not in {folder}")
            if source_id not in by_id:
                raise NucleistyleError(
                    f"{manifest}: image {new_id} restyles {source_id}, not a training image"
                )
            image = read_image(records[new_id].image_path)[0]
            if image.shape != by_id[source_id].image.shape:
                raise NucleistyleError(
                    f"{records[new_id].image_path}: size {image.shape[:2]} differs from its "
                    f"source {source_id} {by_id[source_id].image.shape[:2]}"
                )
            copies.setdefault(source_id, []).append(image)
    out = [
        dataclasses.replace(item, variants=tuple(copies.get(item.image_id, ()))) for item in items
    ]
    return out, sum(len(v) for v in copies.values())


def images_digest(image_ids: Sequence[str]) -> str:
    """SHA-256 of the sorted ImageIds (recorded in checkpoints: same data on resume)."""
    return hashlib.sha256("\n".join(sorted(image_ids)).encode()).hexdigest()


class DrawDataset(torch.utils.data.Dataset):
    """Draw ``j`` -> one augmented training sample, deterministic in (seed, j).

    Args:
        items: The training images.
        pipeline: Joint transforms (:func:`~.transforms.training_pipeline`).
        draws: Number of draws (iterations x batch size).
        seed: Seed of orders and augmentation.
        max_instances: Instance cap per sample.
        weights: Per-item sampling probabilities (with replacement), or None for a shuffled
            permutation per epoch.
        style_p: Probability that a draw of an item with ``variants`` shows one of them.
    """

    def __init__(
        self,
        items: Sequence[TrainItem],
        pipeline: Compose,
        draws: int,
        seed: int,
        max_instances: int,
        weights: np.ndarray | None = None,
        style_p: float = 0.0,
    ) -> None:
        self.items = list(items)
        self.pipeline = pipeline
        self.draws = draws
        self.seed = seed
        self.max_instances = max_instances
        self.weights = weights
        self.style_p = style_p
        self._order = lru_cache(maxsize=2)(self._epoch_order)

    def __len__(self) -> int:
        return self.draws

    def _epoch_order(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, 1, epoch])
        n = len(self.items)
        if self.weights is None:
            return rng.permutation(n)
        return rng.choice(n, size=n, replace=True, p=self.weights)

    def item_index(self, draw: int) -> int:
        """Which item draw ``draw`` uses."""
        n = len(self.items)
        return int(self._order(draw // n)[draw % n])

    def __getitem__(self, draw: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        item = self.items[self.item_index(draw)]
        image = item.image
        if item.variants:  # its own generator: the draw's augmentation is the same in every arm
            pick = np.random.default_rng([self.seed, 4, draw])
            if pick.random() < self.style_p:
                image = item.variants[int(pick.integers(len(item.variants)))]
        rng = np.random.default_rng([self.seed, 2, draw])
        image, labels = self.pipeline(image, item.labels.astype(np.int32), rng)
        return to_target(image, labels, self.max_instances, rng)


def validation_samples(
    items: Sequence[TrainItem], pipeline: Compose, max_instances: int
) -> list[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
    """The validation images prepared once, deterministically (no augmentation)."""
    out = []
    for i, item in enumerate(items):
        rng = np.random.default_rng([0, 3, i])
        image, labels = pipeline(item.image, item.labels.astype(np.int32), rng)
        out.append(to_target(image, labels, max_instances, rng))
    return out


def check_arm(arm: str, assignments_csv: PathLike | None, n_dirs: int) -> None:
    """Validate the augmentation arm against what was passed.

    Raises:
        NucleistyleError: unknown arm, ``oversample`` without an assignment table.
    """
    if arm not in ARMS:
        raise NucleistyleError(f"unknown augmentation arm {arm!r} (known: {ARMS})")
    if arm == "oversample" and assignments_csv is None:
        raise NucleistyleError("arm oversample needs the cluster assignments table")
    if arm == "style" and n_dirs < 1:
        log.warning("arm style without restyled folders: no restyled images added")


def training_config_summary(cfg: SegmenterConfig, n_train: int, n_val: int) -> str:
    """One log line: sizes, budget and schedule."""
    total = cfg.total_iterations(n_train)
    return (
        f"{cfg.baseline}: {n_train} training / {n_val} validation images, {total} iterations "
        f"of batch {cfg.batch_size} ({total * cfg.batch_size / max(n_train, 1):.1f} epochs), "
        f"backbone {cfg.backbone}, weights {cfg.weights}"
    )
