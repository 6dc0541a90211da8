"""Writing the synthetic data set in BBBC038 layout (:func:`generate`): the plan of images per
modality and set, the images, the test ground truth and the modality table."""

from __future__ import annotations

import hashlib
import logging
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from nucleistyle.data.bbbc038 import write_sample
from nucleistyle.data.csvio import write_solution
from nucleistyle.data.synthetic.calibration import DEFAULT_PROPORTIONS, MODALITIES, default_scale
from nucleistyle.data.synthetic.draw import synthesize
from nucleistyle.errors import NucleistyleError
from nucleistyle.outputs import atomic_dir
from nucleistyle.paths import PathLike
from nucleistyle.schema import check
from nucleistyle.utils import config_from_mapping

__all__ = [
    "MIN_TRAIN_PER_MODALITY",
    "SETS",
    "SyntheticConfig",
    "generate",
    "image_id",
    "train_counts",
]

log = logging.getLogger(__name__)

SETS: tuple[str, str] = ("stage1_train", "stage1_test")
MIN_TRAIN_PER_MODALITY = 2


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
    n_train: int = 120
    n_test_per_modality: int = 6
    height: int = 128
    width: int = 128
    proportions: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_PROPORTIONS))
    scale: float | None = None

    def __post_init__(self) -> None:
        check(self, "#/properties/data/properties/synthetic", "data.synthetic")
        values = [float(self.proportions.get(m, 0.0)) for m in MODALITIES]
        if sum(values) <= 0:
            raise NucleistyleError(
                f"config key data.synthetic.proportions must sum to > 0, got "
                f"{dict(self.proportions)}"
            )
        needed = MIN_TRAIN_PER_MODALITY * sum(v > 0 for v in values)
        if self.n_train < needed:
            raise NucleistyleError(
                f"config key data.synthetic.n_train must be >= {needed} "
                f"({MIN_TRAIN_PER_MODALITY} per modality with a positive proportion), "
                f"got {self.n_train}"
            )

    @classmethod
    def from_config(cls, mapping: Mapping[str, Any]) -> SyntheticConfig:
        """Build from the config section ``data.synthetic`` (missing keys take the defaults)."""
        return config_from_mapping(cls, mapping, "data.synthetic")

    @property
    def length_scale(self) -> float:
        """Generated px per native px (``scale`` or its default)."""
        return self.scale if self.scale is not None else default_scale(self.height, self.width)


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


def generate(cfg: SyntheticConfig, out_dir: PathLike, *, overwrite: bool = False) -> pd.DataFrame:
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
