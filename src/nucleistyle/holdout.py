"""A held-out test set carved out of a BBBC038-layout training set, stratified by modality.

For experiments without the official test sets (or without network access), this turns a
training folder into the ``data.source: local`` layout: ``stage1_train/`` (the rest, with
masks), ``stage1_test/`` (images only), ``stage1_solution.csv`` (the held-out masks, Usage
``Public``) and ``holdout.csv`` (ImageId, cluster, name, set). Strata are the K-means clusters
of the HSV features (paper §2.2), so every modality, rare ones included, appears on both sides:
per stratum, ``round(fraction * n)`` images are held out, at least one when the stratum has two
or more, never all of them.

Example:
    >>> make_holdout("data/stage1_train", "resources/holdout", 0.2)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from nucleistyle.cluster import ClusterConfig, features_table, fit_clusters, hsv_features
from nucleistyle.data.bbbc038 import ImageRecord, iter_samples, list_images
from nucleistyle.data.csvio import CompressedLabels, write_solution
from nucleistyle.utils import NucleistyleError, atomic_dir, check_separate, link_or_copy

__all__ = ["make_holdout", "split_strata"]

log = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]


def _check_fraction(fraction: float) -> None:
    if not 0 < fraction < 1:
        raise NucleistyleError(f"holdout fraction must be in (0, 1), got {fraction!r}")


def split_strata(strata: pd.Series, fraction: float, seed: int = 0) -> pd.Series:
    """Choose the held-out items of each stratum.

    Args:
        strata: Stratum per item (index = item id).
        fraction: Share held out, in (0, 1).
        seed: Seeds the draw (the result does not depend on the row order).

    Returns:
        Bool series (True = held out) with the index of ``strata``, sorted.

    Raises:
        NucleistyleError: ``fraction`` outside (0, 1).

    Example:
        >>> s = pd.Series(["a"] * 10 + ["b"] * 2, index=[f"i{k:02d}" for k in range(12)])
        >>> split_strata(s, 0.2).groupby(s).sum().to_dict()
        {'a': 2, 'b': 1}
    """
    _check_fraction(fraction)
    strata = strata.sort_index()
    rng = np.random.default_rng(seed)
    held = pd.Series(False, index=strata.index)
    for _, members in strata.groupby(strata, sort=True):
        n = len(members)
        take = 0 if n < 2 else min(n - 1, max(1, round(fraction * n)))
        chosen = rng.choice(n, size=take, replace=False)
        held.loc[members.index[chosen]] = True
    return held


def make_holdout(
    train_dir: PathLike,
    out_dir: PathLike,
    fraction: float = 0.2,
    seed: int = 0,
    k: int = 6,
    workers: int = 2,
    *,
    overwrite: bool = False,
) -> pd.DataFrame:
    """Split a BBBC038-layout training set into train / held-out test, stratified by cluster.

    Every image and mask is decoded and checked first (masks of the image's size), on both
    sides of the split; only the listed image and mask files are written, hard-linked where
    possible (no extra space). ``out_dir`` is built in a temporary folder beside it and renamed
    into place, so a failed run leaves nothing.

    Args:
        train_dir: BBBC038-layout training folder (``<id>/images``, ``<id>/masks``).
        out_dir: New or empty folder for the ``data.source: local`` layout, outside
            ``train_dir``; with ``overwrite`` also one that ``make_holdout`` wrote before.
        fraction: Share of each cluster held out, in (0, 1).
        seed: Seeds K-means and the draw.
        k: Number of HSV clusters (strata).
        workers: Decoding processes.
        overwrite: Replace a non-empty ``out_dir`` written by ``make_holdout`` (its marker).

    Returns:
        The ``holdout.csv`` table: ImageId, cluster, name, set (``stage1_train`` /
        ``stage1_test``), in ImageId order.

    Raises:
        NucleistyleError: ``out_dir`` is not empty (see ``overwrite``) or lies inside
            ``train_dir``, ``train_dir`` is empty or not BBBC038 layout, an image has no
            masks, an image or mask is unreadable or of the wrong size, or a bad
            ``fraction`` / ``k``.
    """
    _check_fraction(fraction)
    check_separate({"training folder": train_dir}, {"output folder": out_dir})
    cluster_cfg = ClusterConfig(k=k, seed=seed)
    records = list_images(train_dir)
    missing = [r.image_id for r in records if not r.mask_paths]
    if missing:
        raise NucleistyleError(f"{train_dir}: image {missing[0]} has no masks")
    with atomic_dir(out_dir, marker="holdout", overwrite=overwrite) as tmp:
        labels, rows = CompressedLabels(), []
        for sample in iter_samples(records, workers=workers):
            rows.append(hsv_features(sample.image))
            assert sample.labels is not None  # checked above: every image has masks
            labels.add(sample.image_id, sample.labels)
        model = fit_clusters(features_table([r.image_id for r in records], rows), cluster_cfg)
        table = model.table[["ImageId", "cluster", "name"]].copy()
        held = split_strata(table.set_index("ImageId")["cluster"], fraction, seed)
        table["set"] = np.where(
            held.loc[table["ImageId"]].to_numpy(), "stage1_test", "stage1_train"
        )
        truth = {}
        subset_of = dict(zip(table["ImageId"], table["set"], strict=True))
        for record in records:
            subset = subset_of[record.image_id]
            test = subset == "stage1_test"
            _link_sample(record, tmp / subset / record.image_id, masks=not test)
            if test:
                truth[record.image_id] = labels[record.image_id]
        write_solution(tmp / "stage1_solution.csv", truth)
        table.to_csv(tmp / "holdout.csv", index=False)
    counts = table.groupby(["name", "set"]).size().unstack(fill_value=0)
    log.info("held out %d of %d images:\n%s", held.sum(), len(table), counts.to_string())
    return table


def _link_sample(record: ImageRecord, folder: Path, masks: bool) -> None:
    """Link the image (and masks) of one sample into ``folder`` in BBBC038 layout."""
    (folder / "images").mkdir(parents=True)
    link_or_copy(record.image_path, folder / "images" / record.image_path.name)
    if masks:
        (folder / "masks").mkdir()
        for path in record.mask_paths:
            link_or_copy(path, folder / "masks" / path.name)
