"""The style-augmented training set (paper §2.3): stylised copies that inherit the masks.

Every training image gets ``copies`` restyled copies, each rendered in a random **other** domain
with its own random attribute, written in BBBC038 layout beside the original set. Training
(:mod:`nucleistyle.segment.dataset`) shows a random copy instead of the original in a share of
the draws (the paper restyles half of the images), so the domain and attribute vary from epoch
to epoch as in the paper's random draw, and copies of validation images can be left out. The
target domain is drawn uniformly from the domains other than the image's own cluster: the
augmentation is meant to add modalities an image does not have, and a same-domain copy (which
HistAuGAN's on-line augmentation also allows) adds little beyond colour jitter.

Every copy is measured against the inherited masks (:mod:`nucleistyle.gan.quality`): how clearly its
nuclei show compared with real images of the target domain, and how many nucleus-like objects it
shows where the masks say there is background. With the quality gate (``gate``, an extension
beyond the paper) a copy that fails either is drawn again with another attribute of the same
target domain, up to ``tries`` draws, and is left out when none passes (so a transfer the GAN
cannot make, such as the paper's nuclei-only to nuclei-with-cytoplasm case, is skipped rather
than learned from); the manifest says how many draws each copy took.

The content code is kept, so nuclei stay where they were and the mask PNGs are hard-linked
(byte-identical, no extra space; copied where links are impossible). A new ImageId is the
SHA-256 of ``"<source ImageId>:<target domain>:<seed>"`` (64 hex digits, the BBBC038 format),
distinct from every original, so the folder can be used next to the original training set. The
manifest lists, per new image: ImageId, source_ImageId, source_cluster, target_domain,
target_name, seed (of the attribute draw), attribute_source, source_image (the file),
visibility_ratio, phantoms_per_100 and draws.

Example:
    >>> manifest = augment_dataset("resources/stage1_train", "results/cluster/assignments.csv",
    ...     "results/gan/model.pt", "results/augment/stage1_train", "results/augment/manifest.csv",
    ...     AugmentConfig(copies=3))  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nucleistyle.data.bbbc038 import ImageRecord, Sample, list_images, load_sample, write_sample
from nucleistyle.errors import NucleistyleError
from nucleistyle.gan.data import read_assignments
from nucleistyle.gan.quality import DomainLook, copy_quality, record_looks
from nucleistyle.gan.stylize import Stylizer, load_stylizer
from nucleistyle.outputs import link_or_copy, published_together
from nucleistyle.paths import PathLike
from nucleistyle.schema import check
from nucleistyle.utils import Progress, config_from_mapping

__all__ = ["MANIFEST_COLUMNS", "AugmentConfig", "augment_dataset", "augmented_id"]

log = logging.getLogger(__name__)

MANIFEST_COLUMNS = (
    "ImageId",
    "source_ImageId",
    "source_cluster",
    "target_domain",
    "target_name",
    "seed",
    "attribute_source",
    "source_image",
    "visibility_ratio",
    "phantoms_per_100",
    "draws",
)


@dataclass(frozen=True)
class AugmentConfig:
    """Settings of the augmented training set (config section ``augment``).

    Attributes:
        copies: Restyled copies per training image.
        gate: Redraw copies that fail the quality measure (not in the paper).
        min_visibility: Gate: smallest visibility of the inherited nuclei, as a share of the
            target domain's (:func:`nucleistyle.gan.quality.copy_quality`).
        max_phantoms: Gate: phantoms per 100 inherited nuclei from which a copy is refused.
        tries: Gate: draws per copy before it is given up.
    """

    copies: int = 3
    gate: bool = False
    min_visibility: float = 0.8
    max_phantoms: float = 10.0
    tries: int = 4

    def __post_init__(self) -> None:
        check(self, "#/properties/augment", "augment")

    @classmethod
    def from_config(cls, mapping: Mapping[str, Any]) -> AugmentConfig:
        """Build from the config section ``augment`` (missing keys take the defaults).

        Raises:
            NucleistyleError: An unknown key or an invalid value (named).
        """
        return config_from_mapping(cls, mapping, "augment")

    def passes(self, quality: Mapping[str, float]) -> bool:
        """Whether a copy with these measures is kept (always without the gate). A phantom
        count the target domain cannot support (NaN: its nuclei are too faint for a detector)
        does not refuse a copy; a visibility that cannot be measured does."""
        if not self.gate:
            return True
        phantoms = quality["phantoms_per_100"]
        return bool(
            quality["visibility_ratio"] >= self.min_visibility
            and (math.isnan(phantoms) or phantoms < self.max_phantoms)
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
    config: AugmentConfig | None = None,
    seed: int = 0,
    device: str = "auto",
) -> pd.DataFrame:
    """Write ``config.copies`` stylised copies of every training image.

    Args:
        train_dir: Training images with masks (BBBC038 layout).
        assignments_csv: Cluster assignment table (each image's own domain).
        model_path: GAN model from :func:`nucleistyle.gan.engine.train_gan`.
        out_dir: Output folder (BBBC038 layout, new images only); written atomically.
        manifest_csv: Manifest (:data:`MANIFEST_COLUMNS`), one row per new image.
        config: The settings (default: one copy per image, no gate).
        seed: Seeds the target domains and attributes.
        device: ``auto``, ``cpu`` or ``cuda``.

    Returns:
        The manifest.

    Raises:
        NucleistyleError: An image without a row in the assignment table or with a cluster the
            model does not know (naming the file), an unreadable model or image.
    """
    config = config or AugmentConfig(copies=1)
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
    looks = record_looks(records, cluster_of, stylizer.n_domains)
    rng = np.random.default_rng(seed)
    rows = []
    progress = Progress(len(records), "augment", log)
    with published_together() as outputs, progress:  # the folder and its manifest, or nothing
        tmp = outputs.folder(out_dir)
        for record in records:
            source = int(cluster_of[record.image_id])
            others = [d for d in range(stylizer.n_domains) if d != source]
            sample = load_sample(record)
            for _ in range(config.copies):
                drawn = _draw_copy(stylizer, sample, source, others, looks, config, rng)
                if drawn is None:
                    continue  # every draw failed the gate: one copy fewer
                rows.append(_write_copy(tmp, record, source, drawn, stylizer))
            progress.update()
        manifest = pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS))
        manifest.to_csv(
            outputs.file(manifest_csv), index=False, lineterminator="\n", float_format="%.4f"
        )
    _log_summary(manifest, len(records), out_dir, config)
    if manifest.empty and records:
        log.warning(
            "the quality gate kept no copy: the style arm trains on the originals alone "
            "(augment.gate, augment.min_visibility)"
        )
    return manifest


def _write_copy(
    folder: Path,
    record: ImageRecord,
    source: int,
    drawn: tuple[int, int, np.ndarray, dict[str, float], int],
    stylizer: Stylizer,
) -> tuple[Any, ...]:
    """Write one copy (its image, the original's masks linked) into ``folder``; its manifest
    row."""
    target, image_seed, styled, quality, draws = drawn
    new_id = augmented_id(record.image_id, target, image_seed)
    sample_folder = write_sample(folder, new_id, styled)
    if record.mask_paths:
        (sample_folder / "masks").mkdir()
        for mask in record.mask_paths:
            link_or_copy(mask, sample_folder / "masks" / mask.name)
    return (
        new_id,
        record.image_id,
        source,
        target,
        stylizer.domain_names[target],
        image_seed,
        stylizer.attribute_source,
        str(record.image_path),
        quality["visibility_ratio"],
        quality["phantoms_per_100"],
        draws,
    )


def _log_summary(
    manifest: pd.DataFrame, n_images: int, out_dir: PathLike, config: AugmentConfig
) -> None:
    log.info(
        "wrote %d stylised copies of %d training images to %s (%d wanted; gate %s); mean "
        "visibility %.2f of the target domain's, %.1f phantoms per 100 nuclei",
        len(manifest),
        n_images,
        out_dir,
        n_images * config.copies,
        "on" if config.gate else "off",
        manifest["visibility_ratio"].mean(),
        manifest["phantoms_per_100"].mean(),
    )


def _draw_copy(
    stylizer: Stylizer,
    sample: Sample,
    source: int,
    others: list[int],
    looks: list[DomainLook | None],
    config: AugmentConfig,
    rng: np.random.Generator,
) -> tuple[int, int, np.ndarray, dict[str, float], int] | None:
    """One copy: (target domain, attribute seed, image, its measures, draws taken), or None
    when the gate refused every draw. The target domain is drawn once, so the gate does not
    shift the mix of target styles towards the easy ones; only the attribute is redrawn."""
    target = int(rng.choice(others))
    for draws in range(1, (config.tries if config.gate else 1) + 1):
        image_seed = int(rng.integers(2**31))
        styled = stylizer.stylize([sample.image], target, seed=image_seed, source_domain=source)[0]
        quality = _quality(styled, sample.labels, looks[target])
        if config.passes(quality):
            return target, image_seed, styled, quality, draws
    return None


def _quality(styled: np.ndarray, labels: np.ndarray | None, look: DomainLook | None) -> dict:
    """The copy's measures; NaN (and so refused by the gate) without masks or a look."""
    if labels is None or look is None:
        return {"visibility_ratio": np.nan, "phantoms_per_100": np.nan}
    return copy_quality(styled, labels, look)
