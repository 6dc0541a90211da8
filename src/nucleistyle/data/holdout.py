"""A held-out test set carved out of a BBBC038-layout training set, stratified by modality.

For experiments without the official test sets (or without network access), this turns a
training folder into the ``data.source: local`` layout: ``stage1_train/`` (the rest, with
masks), ``stage1_test/`` (images only), ``stage1_solution.csv`` (the held-out masks, Usage
``Public``) and ``holdout.csv`` (ImageId, cluster, name, set). Strata are the K-means clusters
of the HSV features (paper §2.2), so every modality, rare ones included, appears on both sides:
per stratum, ``round(fraction * n)`` images are held out, at least one when the stratum has two
or more, never all of them.

Example:
    >>> make_holdout("../shared/bbbc038/stage1_train", "resources/holdout", 0.2)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from nucleistyle.cluster import ClusterConfig, compute_features, fit_clusters
from nucleistyle.data.bbbc038 import list_images, load_sample
from nucleistyle.data.csvio import write_solution
from nucleistyle.utils import NucleistyleError, atomic_dir, atomic_path, link_or_copy

__all__ = ["make_holdout", "split_strata"]

log = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]


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
    if not 0 < fraction < 1:
        raise NucleistyleError(f"holdout fraction must be in (0, 1), got {fraction!r}")
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
) -> pd.DataFrame:
    """Split a BBBC038-layout training set into train / held-out test, stratified by cluster.

    Image and mask files are hard-linked where possible (no extra space). ``out_dir`` is built
    in a temporary folder beside it and renamed into place, so a failed run leaves nothing.

    Args:
        train_dir: BBBC038-layout training folder (``<id>/images``, ``<id>/masks``).
        out_dir: New folder (must not exist) for the ``data.source: local`` layout.
        fraction: Share of each cluster held out, in (0, 1).
        seed: Seeds K-means and the draw.
        k: Number of HSV clusters (strata).
        workers: Decoding threads.

    Returns:
        The ``holdout.csv`` table: ImageId, cluster, name, set (``stage1_train`` /
        ``stage1_test``), in ImageId order.

    Raises:
        NucleistyleError: ``out_dir`` exists, ``train_dir`` is empty or not BBBC038 layout,
            an image has no masks, or a bad ``fraction`` / ``k``.
    """
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise NucleistyleError(f"{out_dir}: already exists (choose a new folder)")
    records = {r.image_id: r for r in list_images(train_dir)}
    missing = [i for i, r in records.items() if not r.mask_paths]
    if missing:
        raise NucleistyleError(f"{train_dir}: image {missing[0]} has no masks")
    model = fit_clusters(
        compute_features(train_dir, workers=workers), ClusterConfig(k=k, seed=seed)
    )
    table = model.table[["ImageId", "cluster", "name"]].copy()
    held = split_strata(table.set_index("ImageId")["cluster"], fraction, seed)
    table["set"] = np.where(held.loc[table["ImageId"]].to_numpy(), "stage1_test", "stage1_train")
    with atomic_dir(out_dir) as tmp:
        truth = {}
        for image_id, subset in zip(table["ImageId"], table["set"], strict=True):
            src = Path(train_dir) / image_id
            if subset == "stage1_train":
                shutil.copytree(src, tmp / subset / image_id, copy_function=link_or_copy)
            else:
                shutil.copytree(
                    src / "images", tmp / subset / image_id / "images", copy_function=link_or_copy
                )
                truth[image_id] = load_sample(records[image_id]).labels
        write_solution(tmp / "stage1_solution.csv", truth)
        with atomic_path(tmp / "holdout.csv") as csv:
            table.to_csv(csv, index=False)
    counts = table.groupby(["name", "set"]).size().unstack(fill_value=0)
    log.info("held out %d of %d images:\n%s", held.sum(), len(table), counts.to_string())
    return table
