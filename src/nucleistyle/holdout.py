"""A held-out test set carved out of a BBBC038-layout training set, by modality.

For experiments without the official test sets (or without network access), this turns a
training folder into the ``data.source: local`` layout: ``stage1_train/`` (the rest, with
masks), ``stage1_test/`` (images only), ``stage1_solution.csv`` (the held-out masks, Usage
``Public``) and ``holdout.csv`` (ImageId, cluster, name, set). Modalities are the K-means
clusters of the HSV features (paper §2.2). Three schemes (:data:`SCHEMES`):

* ``stratified``: per cluster, ``round(fraction * n)`` images are held out, at least one when
  the cluster has two or more, never all of them: the test set has the training set's mix, the
  setting where style augmentation should help least.
* ``minority``: the test set over-represents the rare modalities, as the paper's stage-2 test
  set does: half of every cluster but the largest (at least one of two or more, never all),
  and as many of the largest cluster, at most ``fraction`` of it.
* ``leave-cluster-out``: one cluster (``held_cluster``, by name or id) entirely in the test
  set, the rest stratified: a modality the segmenters never see in training.

Example:
    >>> make_holdout("data/stage1_train", "resources/holdout", 0.2)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from nucleistyle.cluster import ClusterConfig, features_table, fit_clusters, hsv_features
from nucleistyle.data.bbbc038 import ImageRecord, iter_samples, list_images
from nucleistyle.data.csvio import CompressedLabels, write_solution
from nucleistyle.errors import NucleistyleError
from nucleistyle.outputs import atomic_dir, link_or_copy
from nucleistyle.paths import PathLike, check_separate
from nucleistyle.schema import choices

__all__ = ["SCHEMES", "make_holdout", "split_leave_cluster_out", "split_minority", "split_strata"]

SCHEMES = choices("data.holdout.scheme")  # stratified, minority, leave-cluster-out

log = logging.getLogger(__name__)


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


def _take(members: pd.Index, take: int, rng: np.random.Generator) -> pd.Index:
    return members[rng.choice(len(members), size=take, replace=False)]


def split_minority(strata: pd.Series, fraction: float, seed: int = 0) -> pd.Series:
    """Hold out half of every stratum but the largest, and as many of the largest (at most
    ``fraction`` of it): a test set in which the rare strata weigh about half. Arguments,
    result and errors as :func:`split_strata`.

    Example:
        >>> s = pd.Series(["a"] * 20 + ["b"] * 4 + ["c"] * 2, index=[f"i{k}" for k in range(26)])
        >>> split_minority(s, 0.2).groupby(s).sum().to_dict()
        {'a': 3, 'b': 2, 'c': 1}
    """
    _check_fraction(fraction)
    strata = strata.sort_index()
    sizes = strata.value_counts()
    largest = sorted(sizes[sizes == sizes.max()].index, key=str)[0]
    rng = np.random.default_rng(seed)
    held = pd.Series(False, index=strata.index)
    rare = 0
    for name, members in strata.groupby(strata, sort=True):
        if name == largest:
            continue
        n = len(members)
        take = 0 if n < 2 else min(n - 1, max(1, round(n / 2)))
        held.loc[_take(members.index, take, rng)] = True
        rare += take
    members = strata.index[strata == largest]
    take = min(rare, round(fraction * len(members)), len(members) - 1)
    held.loc[_take(members, take, rng)] = True
    return held


def split_leave_cluster_out(
    strata: pd.Series, held_out: object, fraction: float, seed: int = 0
) -> pd.Series:
    """Hold out every item of the stratum ``held_out`` and a stratified ``fraction`` of the
    others (:func:`split_strata`).

    Raises:
        NucleistyleError: ``held_out`` is not a stratum, is the only one, or a bad ``fraction``.
    """
    if held_out not in set(strata):
        known = sorted(set(strata), key=str)
        raise NucleistyleError(f"holdout cluster {held_out!r} is not one of the clusters {known}")
    if strata.nunique() < 2:
        raise NucleistyleError("leave-cluster-out needs at least two clusters")
    held = split_strata(strata, fraction, seed)
    held[strata.loc[held.index] == held_out] = True
    return held


def make_holdout(
    train_dir: PathLike,
    out_dir: PathLike,
    fraction: float = 0.2,
    seed: int = 0,
    k: int = 6,
    workers: int = 2,
    *,
    scheme: str = "stratified",
    held_cluster: str | int | None = None,
    overwrite: bool = False,
) -> pd.DataFrame:
    """Split a BBBC038-layout training set into train / held-out test by cluster (``scheme``).

    Every image and mask is decoded and checked first (masks of the image's size), on both
    sides of the split; only the listed image and mask files are written, hard-linked where
    possible (no extra space). ``out_dir`` is built in a temporary folder beside it and renamed
    into place, so a failed run leaves nothing.

    Args:
        train_dir: BBBC038-layout training folder (``<id>/images``, ``<id>/masks``).
        out_dir: New or empty folder for the ``data.source: local`` layout, outside
            ``train_dir``; with ``overwrite`` also one that ``make_holdout`` wrote before.
        fraction: Share of each cluster held out, in (0, 1) (``minority``: at most this
            share of the largest cluster).
        seed: Seeds K-means and the draw.
        k: Number of HSV clusters (strata).
        workers: Decoding processes.
        scheme: One of :data:`SCHEMES` (see the module docstring).
        held_cluster: ``leave-cluster-out``: the cluster held out entirely, by name (as in
            ``holdout.csv``, e.g. ``purple``) or id.
        overwrite: Replace a non-empty ``out_dir`` written by ``make_holdout`` (its marker).

    Returns:
        The ``holdout.csv`` table: ImageId, cluster, name, set (``stage1_train`` /
        ``stage1_test``), in ImageId order.

    Raises:
        NucleistyleError: ``out_dir`` is not empty (see ``overwrite``) or lies inside
            ``train_dir``, ``train_dir`` is empty or not BBBC038 layout, an image has no
            masks, an image or mask is unreadable or of the wrong size, or a bad
            ``fraction`` / ``k``, an unknown scheme or held-out cluster.
    """
    _check_scheme(scheme, fraction, held_cluster)
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
        held = _held_out(table, scheme, fraction, seed, held_cluster)
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
    log.info(
        "held out %d of %d images (%s):\n%s", held.sum(), len(table), scheme, counts.to_string()
    )
    return table


def _check_scheme(scheme: str, fraction: float, held_cluster: str | int | None) -> None:
    _check_fraction(fraction)
    if scheme not in SCHEMES:
        raise NucleistyleError(f"holdout scheme must be one of {SCHEMES}, got {scheme!r}")
    if (scheme == "leave-cluster-out") != (held_cluster is not None):
        raise NucleistyleError(
            "a held-out cluster is given with the leave-cluster-out scheme, and only with it"
        )


def _held_out(
    table: pd.DataFrame, scheme: str, fraction: float, seed: int, held_cluster: str | int | None
) -> pd.Series:
    """Whether each image of ``table`` (ImageId, cluster, name) is held out, by ``scheme``;
    ``held_cluster`` is matched against the names first, then the ids."""
    clusters = table.set_index("ImageId")["cluster"]
    if scheme == "minority":
        return split_minority(clusters, fraction, seed)
    if scheme == "leave-cluster-out":
        names = table.set_index("ImageId")["name"]
        by_name = str(held_cluster) in set(names)
        return split_leave_cluster_out(
            names if by_name else clusters.astype(str), str(held_cluster), fraction, seed
        )
    return split_strata(clusters, fraction, seed)


def _link_sample(record: ImageRecord, folder: Path, masks: bool) -> None:
    """Link the image (and masks) of one sample into ``folder`` in BBBC038 layout."""
    (folder / "images").mkdir(parents=True)
    link_or_copy(record.image_path, folder / "images" / record.image_path.name)
    if masks:
        (folder / "masks").mkdir()
        for path in record.mask_paths:
            link_or_copy(path, folder / "masks" / path.name)
