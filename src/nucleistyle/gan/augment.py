"""The style-augmented training set (paper §2.3): stylised copies that inherit the masks.

Every training image gets ``copies`` restyled copies, each rendered in a random **other** domain
with its own random attribute, written in BBBC038 layout beside the original set. Training
(:mod:`nucleistyle.segment.dataset`) shows a random copy instead of the original in a share of
the draws (the paper restyles half of the images), so the domain and attribute vary from epoch
to epoch as in the paper's random draw, and copies of validation images can be left out. The
target domain is drawn uniformly from the domains other than the image's own cluster: the
augmentation is meant to add modalities an image does not have, and a same-domain copy (which
HistAuGAN's on-line augmentation also allows) adds little beyond colour jitter.

The content code is kept, so nuclei stay where they were and the mask PNGs are hard-linked
(byte-identical, no extra space; copied where links are impossible). A new ImageId is the
SHA-256 of ``"<source ImageId>:<target domain>:<seed>"`` (64 hex digits, the BBBC038 format),
distinct from every original, so the folder can be used next to the original training set. The
manifest lists, per new image: ImageId, source_ImageId, source_cluster, target_domain,
target_name, seed (of the attribute draw), attribute_source and source_image (the file).

Example:
    >>> manifest = augment_dataset("resources/stage1_train", "results/cluster/assignments.csv",
    ...     "results/gan/model.pt", "results/augment/stage1_train", "results/augment/manifest.csv",
    ...     copies=3)  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import logging
import os

import numpy as np
import pandas as pd

from nucleistyle.data.bbbc038 import list_images, read_image, write_sample
from nucleistyle.gan.data import read_assignments
from nucleistyle.gan.stylize import load_stylizer
from nucleistyle.utils import NucleistyleError, Progress, link_or_copy, published_together

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
    copies: int = 1,
    seed: int = 0,
    device: str = "auto",
) -> pd.DataFrame:
    """Write ``copies`` stylised copies of every training image.

    Args:
        train_dir: Training images with masks (BBBC038 layout).
        assignments_csv: Cluster assignment table (each image's own domain).
        model_path: GAN model from :func:`nucleistyle.gan.engine.train_gan`.
        out_dir: Output folder (BBBC038 layout, new images only); written atomically.
        manifest_csv: Manifest (:data:`MANIFEST_COLUMNS`), one row per new image.
        copies: Restyled copies per image (each with its own target domain and attribute).
        seed: Seeds the target domains and attributes.
        device: ``auto``, ``cpu`` or ``cuda``.

    Returns:
        The manifest.

    Raises:
        NucleistyleError: Bad ``copies``, an image without a row in the assignment table or with
            a cluster the model does not know (naming the file), an unreadable model or image.
    """
    if isinstance(copies, bool) or not isinstance(copies, int) or copies < 1:
        raise NucleistyleError(f"augment copies must be an integer >= 1, got {copies!r}")
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
    rows = []
    progress = Progress(len(records), "augment", log)
    with published_together() as outputs, progress:  # the folder and its manifest, or nothing
        tmp = outputs.folder(out_dir)
        for record in records:
            source = int(cluster_of[record.image_id])
            others = [d for d in range(stylizer.n_domains) if d != source]
            image = read_image(record.image_path)[0]
            for _ in range(copies):
                target = int(rng.choice(others))
                image_seed = int(rng.integers(2**31))
                new_id = augmented_id(record.image_id, target, image_seed)
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
            progress.update()
        manifest = pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS))
        manifest.to_csv(outputs.file(manifest_csv), index=False, lineterminator="\n")
    log.info(
        "wrote %d stylised copies of %d training images to %s", len(manifest), len(records), out_dir
    )
    return manifest
