"""The style-augmented training set (paper §2.3): stylised copies that inherit the masks.

For a random ``fraction`` of the training images (0.5 in the paper), a copy is rendered in a
random **other** domain with a random attribute and written in BBBC038 layout beside the
original set. The target domain is drawn uniformly from the domains other than the image's own
cluster: the augmentation is meant to add modalities an image does not have, and a same-domain
copy (which HistAuGAN's on-line augmentation also allows) adds little beyond colour jitter.

The content code is kept, so nuclei stay where they were and the mask PNGs are hard-linked
(byte-identical, no extra space; copied where links are impossible). A new ImageId is the
SHA-256 of ``"<source ImageId>:<target domain>:<seed>"`` (64 hex digits, the BBBC038 format),
distinct from every original, so the folder can be used next to the original training set. The
manifest lists, per new image: ImageId, source_ImageId, source_cluster, target_domain,
target_name, seed (of the attribute draw), attribute_source and source_image (the file).

Example:
    >>> manifest = augment_dataset("resources/stage1_train", "results/cluster/assignments.csv",
    ...     "results/gan/model.pt", "results/augment/stage1_train", "results/augment/manifest.csv")
    ... # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys

import numpy as np
import pandas as pd
from tqdm import tqdm

from nucleistyle.data.bbbc038 import list_images, read_image, write_sample
from nucleistyle.gan.data import read_assignments
from nucleistyle.gan.stylize import load_stylizer
from nucleistyle.utils import NucleistyleError, atomic_dir, atomic_path, link_or_copy

__all__ = ["MANIFEST_COLUMNS", "augment_dataset", "augmented_id"]

log = logging.getLogger(__name__)
PathLike = str | os.PathLike[str]

MANIFEST_COLUMNS = (
    "ImageId",
    "source_ImageId",
    "source_cluster",
    "target_domain",
    "target_name",
    "seed",
    "attribute_source",
    "source_image",
)


def augmented_id(source_id: str, target_domain: int, seed: int) -> str:
    """ImageId of a stylised copy: SHA-256 hex of ``"<source>:<target>:<seed>"``."""
    return hashlib.sha256(f"{source_id}:{int(target_domain)}:{int(seed)}".encode()).hexdigest()


def augment_dataset(
    train_dir: PathLike,
    assignments_csv: PathLike,
    model_path: PathLike,
    out_dir: PathLike,
    manifest_csv: PathLike,
    fraction: float = 0.5,
    seed: int = 0,
    device: str = "auto",
) -> pd.DataFrame:
    """Write stylised copies of a random ``fraction`` of the training images.

    Args:
        train_dir: Training images with masks (BBBC038 layout).
        assignments_csv: Cluster assignment table (each image's own domain).
        model_path: GAN model from :func:`nucleistyle.gan.trainer.train_gan`.
        out_dir: Output folder (BBBC038 layout, new images only); written atomically.
        manifest_csv: Manifest (:data:`MANIFEST_COLUMNS`), one row per new image.
        fraction: Share of the training images to copy, in [0, 1] (rounded to whole images).
        seed: Seeds the choice of images, target domains and attributes.
        device: ``auto``, ``cpu`` or ``cuda``.

    Returns:
        The manifest.

    Raises:
        NucleistyleError: Bad fraction, an image without a row in the assignment table or with
            a cluster the model does not know (naming the file), an unreadable model or image.
    """
    if not 0 <= fraction <= 1:
        raise NucleistyleError(f"augment fraction must be in [0, 1], got {fraction}")
    records = list_images(train_dir)
    stylizer = load_stylizer(model_path, device)
    table = read_assignments(assignments_csv, stylizer.n_domains)
    cluster_of = dict(zip(table["ImageId"], table["cluster"], strict=True))
    for record in records:
        if record.image_id not in cluster_of:
            raise NucleistyleError(
                f"cluster assignments {assignments_csv}: no row for ImageId {record.image_id} "
                f"({record.image_path})"
            )
    rng = np.random.default_rng(seed)
    n = round(fraction * len(records))
    chosen = np.sort(rng.choice(len(records), size=n, replace=False))
    rows = []
    with atomic_dir(out_dir) as tmp:
        for index in tqdm(chosen, desc="augment", disable=None, file=sys.stderr):
            record = records[index]
            source = int(cluster_of[record.image_id])
            others = [d for d in range(stylizer.n_domains) if d != source]
            target = int(rng.choice(others))
            image_seed = int(rng.integers(2**31))
            new_id = augmented_id(record.image_id, target, image_seed)
            image = read_image(record.image_path)[0]
            styled = stylizer.stylize([image], target, seed=image_seed)[0]
            folder = write_sample(tmp, new_id, styled)
            if record.mask_paths:
                (folder / "masks").mkdir()
                for mask in record.mask_paths:
                    link_or_copy(mask, folder / "masks" / mask.name)
            rows.append(
                (
                    new_id,
                    record.image_id,
                    source,
                    target,
                    stylizer.domain_names[target],
                    image_seed,
                    stylizer.attribute_source,
                    str(record.image_path),
                )
            )
    manifest = pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS))
    with atomic_path(manifest_csv) as tmp_csv:
        manifest.to_csv(tmp_csv, index=False, lineterminator="\n")
    log.info(
        "wrote %d stylised copies of %d training images to %s", len(manifest), len(records), out_dir
    )
    return manifest
