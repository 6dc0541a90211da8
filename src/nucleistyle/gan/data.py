"""Training data for the GAN: images grouped into domains by the cluster assignment.

Preprocessing follows MDMM (docs/gan.md): every image is read as uint8 RGB and
resized to ``resize`` x ``resize`` (bicubic, aspect ratio not kept) once, at load time; each
draw takes a random ``crop`` x ``crop`` window and a random horizontal flip, scaled to [-1, 1].
With ``resize = 0`` the crop is taken at native resolution instead (nuclei keep their scale,
which is what :mod:`nucleistyle.gan.stylize` sees at inference; images smaller than the crop are
reflect-padded).

:class:`DomainSampler` reproduces MDMM's domain balancing: every sample first draws a domain
uniformly, then an image of that domain uniformly, so small domains are oversampled (the DSB
clusters hold 8-588 images). All randomness comes from one ``torch.Generator`` whose state is
saved in checkpoints.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from PIL import Image

from nucleistyle.data.bbbc038 import ImageRecord, list_images, load_sample, read_image
from nucleistyle.errors import NucleistyleError
from nucleistyle.paths import PathLike

__all__ = [
    "DomainSampler",
    "DomainSet",
    "centre_crop",
    "domain_names",
    "load_domain_set",
    "one_hot",
    "read_assignments",
    "to_tensor",
]

log = logging.getLogger(__name__)


def read_assignments(path: PathLike, n_domains: int | None = None) -> pd.DataFrame:
    """Read a cluster assignment table (columns ImageId, cluster; ``name`` optional).

    Args:
        path: CSV written by :func:`nucleistyle.cluster.cluster_dataset`.
        n_domains: When given, every cluster id must lie in ``0 .. n_domains - 1``.

    Returns:
        The table with ImageId as str and cluster as int64.

    Raises:
        NucleistyleError: Missing or unreadable file, missing column, no rows, non-integer,
            negative or out-of-range cluster id, duplicated ImageId (each naming the file).
    """
    try:
        table = pd.read_csv(path, dtype={"ImageId": str})
    except (OSError, ValueError) as exc:
        raise NucleistyleError(f"cannot read cluster assignments {path}: {exc}") from exc
    for column in ("ImageId", "cluster"):
        if column not in table.columns:
            raise NucleistyleError(f"cluster assignments {path}: no column {column!r}")
    if table.empty:
        raise NucleistyleError(f"cluster assignments {path}: no rows, only the header")
    clusters = pd.to_numeric(table["cluster"], errors="coerce")
    bad = clusters.isna() | (clusters != clusters.round()) | (clusters < 0)
    if n_domains is not None:
        bad |= clusters >= n_domains
    if bad.any():
        row = int(np.argmax(bad.to_numpy()))
        expected = "an integer >= 0" if n_domains is None else f"an integer in 0..{n_domains - 1}"
        raise NucleistyleError(
            f"cluster assignments {path}: ImageId {table['ImageId'].iloc[row]} has cluster "
            f"{table['cluster'].iloc[row]!r}, expected {expected}"
        )
    duplicated = table["ImageId"].duplicated()
    if duplicated.any():
        raise NucleistyleError(
            f"cluster assignments {path}: ImageId {table['ImageId'][duplicated].iloc[0]} appears "
            "twice"
        )
    table = table.copy()
    table["cluster"] = clusters.astype(np.int64)
    return table


def domain_names(table: pd.DataFrame, n_domains: int) -> tuple[str, ...]:
    """Name of each domain: the assignment table's ``name`` column, else ``cluster<k>``."""
    names = []
    for k in range(n_domains):
        rows = table[table["cluster"] == k]
        if "name" in table.columns and len(rows) and isinstance(rows["name"].iloc[0], str):
            names.append(rows["name"].iloc[0])
        else:
            names.append(f"cluster{k}")
    return tuple(names)


def _prepare(record: ImageRecord, resize: int, crop: int) -> np.ndarray:
    return _fit(read_image(record.image_path)[0], resize, crop)


def _fit(array: np.ndarray, resize: int, crop: int) -> np.ndarray:
    """Resize to ``resize`` x ``resize`` (bicubic; nearest for label images), or reflect-pad
    a native-size array to at least ``crop``."""
    if resize > 0:
        labels = array.ndim == 2
        resample = Image.Resampling.NEAREST if labels else Image.Resampling.BICUBIC
        out = Image.fromarray(array.astype(np.int32) if labels else array).resize(
            (resize, resize), resample
        )
        return np.asarray(out).astype(array.dtype)
    short = [max(0, crop - s) for s in array.shape[:2]]
    if any(short):
        pad = [(0, short[0]), (0, short[1])] + [(0, 0)] * (array.ndim - 2)
        array = np.pad(array, pad, mode="reflect")
    return array


def _prepare_labels(record: ImageRecord, resize: int, crop: int) -> np.ndarray | None:
    labels = load_sample(record).labels
    return None if labels is None else _fit(labels, resize, crop)


@dataclass(frozen=True)
class DomainSet:
    """Preprocessed training images and their domains.

    Attributes:
        image_ids: ImageIds, sorted.
        images: uint8 RGB arrays (resize x resize, or native size >= crop), one per ImageId.
        domains: Domain (cluster id) per image, int64 (N,).
        names: Domain names, one per domain.
        members: Indices into ``images`` of each domain's images.
        fingerprint: SHA-1 of the sorted "ImageId:cluster" lines (stored in checkpoints, so a
            run cannot resume on a different training set).
        labels: With ``load_domain_set(..., with_labels=True)``: each image's instance labels
            (None without masks), brought to the image's size as the image was.
    """

    image_ids: tuple[str, ...]
    images: tuple[np.ndarray, ...]
    domains: np.ndarray
    names: tuple[str, ...]
    members: tuple[np.ndarray, ...]
    fingerprint: str
    labels: tuple[np.ndarray | None, ...] | None = None

    @property
    def n_domains(self) -> int:
        return len(self.names)


def load_domain_set(
    images_dir: PathLike,
    assignments_csv: PathLike,
    n_domains: int,
    resize: int = 256,
    crop: int = 216,
    workers: int = 2,
    with_labels: bool = False,
) -> DomainSet:
    """Load and preprocess every training image and attach its domain.

    Assignment rows for images that are not in ``images_dir`` are ignored (logged).

    Args:
        images_dir: Training images (BBBC038 layout or flat folder).
        assignments_csv: Cluster assignment table.
        n_domains: Number of domains C (= the cluster k).
        resize: Side every image is resized to (0: keep the native size).
        crop: Training crop (images smaller than it are reflect-padded when ``resize`` is 0).
        workers: Decoding threads.
        with_labels: Also load every image's masks (:attr:`DomainSet.labels`).

    Returns:
        The :class:`DomainSet`.

    Raises:
        NucleistyleError: An empty or missing folder, an unreadable image, an image without a
            row in the assignment table, or a domain without any image (each naming the file).
    """
    records = list_images(images_dir)
    table = read_assignments(assignments_csv, n_domains)
    cluster_of = dict(zip(table["ImageId"], table["cluster"], strict=True))
    missing = [r for r in records if r.image_id not in cluster_of]
    if missing:
        raise NucleistyleError(
            f"cluster assignments {assignments_csv}: no row for ImageId {missing[0].image_id} "
            f"({missing[0].image_path}; {len(missing)} image(s) missing)"
        )
    extra = len(cluster_of) - len(records)
    if extra > 0:
        log.info("%d assignment rows have no image in %s (ignored)", extra, images_dir)
    domains = np.array([cluster_of[r.image_id] for r in records], np.int64)
    members = tuple(np.flatnonzero(domains == k) for k in range(n_domains))
    empty = [k for k, m in enumerate(members) if m.size == 0]
    if empty:
        raise NucleistyleError(
            f"cluster assignments {assignments_csv}: domain {empty[0]} has no image in "
            f"{images_dir} (n_domains = {n_domains})"
        )
    with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
        images = tuple(pool.map(lambda r: _prepare(r, resize, crop), records))
        labels = (
            tuple(pool.map(lambda r: _prepare_labels(r, resize, crop), records))
            if with_labels
            else None
        )
    lines = "\n".join(f"{r.image_id}:{d}" for r, d in zip(records, domains, strict=True))
    names = domain_names(table, n_domains)
    log.info(
        "GAN training set: %d images in %d domains (%s) from %s",
        len(records),
        n_domains,
        ", ".join(f"{n}: {m.size}" for n, m in zip(names, members, strict=True)),
        images_dir,
    )
    return DomainSet(
        image_ids=tuple(r.image_id for r in records),
        images=images,
        domains=domains,
        names=names,
        members=members,
        fingerprint=hashlib.sha1(lines.encode()).hexdigest(),
        labels=labels,
    )


def to_tensor(batch: np.ndarray | Sequence[np.ndarray]) -> torch.Tensor:
    """uint8 images (N, H, W, 3) -> float32 tensor (N, 3, H, W) in [-1, 1]."""
    array = np.ascontiguousarray(
        np.stack(list(batch)) if not isinstance(batch, np.ndarray) else batch
    )
    return torch.from_numpy(array).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)


def one_hot(domains: torch.Tensor | np.ndarray | Sequence[int], n_domains: int) -> torch.Tensor:
    """Domain indices (N,) -> float32 one-hot (N, C)."""
    index = torch.as_tensor(domains, dtype=torch.int64)
    return torch.nn.functional.one_hot(index, n_domains).float()


def centre_crop(image: np.ndarray, crop: int) -> np.ndarray:
    """The central ``crop`` x ``crop`` window (the whole image where it is smaller)."""
    h, w = image.shape[:2]
    y, x = max(0, (h - crop) // 2), max(0, (w - crop) // 2)
    return image[y : y + crop, x : x + crop]


class DomainSampler:
    """Domain-balanced random crops: domain ~ U{0..C-1}, then image ~ U(domain), crop, flip.

    Args:
        data: The training set.
        batch_size: Images per batch.
        crop: Crop side (px).
        flip: Random horizontal flips.
        seed: Seed of the sampler's own generator.
    """

    def __init__(
        self, data: DomainSet, batch_size: int, crop: int, flip: bool = True, seed: int = 0
    ) -> None:
        self.data = data
        self.batch_size = batch_size
        self.crop = crop
        self.flip = flip
        self.generator = torch.Generator().manual_seed(seed)

    def _randint(self, high: int) -> int:
        return int(torch.randint(high, (1,), generator=self.generator))

    def draw(self) -> tuple[np.ndarray, np.ndarray]:
        """One batch: uint8 crops (N, crop, crop, 3) and their domains, int64 (N,)."""
        crops, domains, _ = self.draw_with_masks()
        return crops, domains

    def draw_with_masks(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """:meth:`draw` plus the crops' foreground (N, crop, crop) bool, from
        :attr:`DomainSet.labels` (all False for an image without masks; None when the set
        has no labels). The random draws are those of :meth:`draw`."""
        crops, domains, masks = [], [], []
        labels = self.data.labels
        for _ in range(self.batch_size):
            domain = self._randint(self.data.n_domains)
            members = self.data.members[domain]
            index = members[self._randint(members.size)]
            image = self.data.images[index]
            y = self._randint(image.shape[0] - self.crop + 1)
            x = self._randint(image.shape[1] - self.crop + 1)
            window = (slice(y, y + self.crop), slice(x, x + self.crop))
            flip = bool(self.flip and self._randint(2))
            crops.append(image[window][:, ::-1] if flip else image[window])
            domains.append(domain)
            if labels is not None:
                own = labels[index]
                mask = np.zeros((self.crop, self.crop), bool) if own is None else own[window] > 0
                masks.append(mask[:, ::-1] if flip else mask)
        stacked = np.stack(masks) if labels is not None else None
        return np.stack(crops), np.array(domains, np.int64), stacked

    def state(self) -> torch.Tensor:
        """The generator state (a uint8 tensor) for a checkpoint."""
        return self.generator.get_state()

    def set_state(self, state: torch.Tensor) -> None:
        """Restore what :meth:`state` returned."""
        self.generator.set_state(state)
