"""Uncertainty of data-set scores: percentile-bootstrap confidence intervals over images.

A data set's DSB score is the unweighted mean of per-image scores, so its sampling uncertainty
comes from which images happen to be in the test set. Every interval here is a percentile
bootstrap over images: draw ``n`` images with replacement ``n_boot`` times, take the mean of each
draw, and report the ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of those means.

* :func:`bootstrap_ci` — one mean and its interval.
* :func:`paired_difference` — two models scored on the *same* images: the images are resampled
  jointly (one draw of images serves both models), which removes the between-image variance
  both models share and gives a much narrower interval than two separate CIs would suggest.
* :func:`group_means` — the mean and interval of each group (modality, cluster) separately.

Everything is vectorised (one ``(n_boot, n)`` index draw, chunked to bound memory) and
deterministic for a given ``seed``: the same values, seed and ``n_boot`` give the same interval.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

__all__ = [
    "DEFAULT_LEVEL",
    "DEFAULT_N_BOOT",
    "MeanCI",
    "PairedDifference",
    "bootstrap_ci",
    "bootstrap_means",
    "group_means",
    "paired_difference",
]

log = logging.getLogger(__name__)

DEFAULT_N_BOOT = 2000
DEFAULT_LEVEL = 0.95
_CHUNK_ELEMENTS = 1 << 22  # indices drawn at once: 4 Mi int64 = 32 MiB whatever the data size


@dataclass(frozen=True)
class MeanCI:
    """A mean over images with its percentile-bootstrap confidence interval.

    Attributes:
        mean: the sample mean (of all images, not of the bootstrap means).
        low, high: the interval's bounds.
        n: number of images.
        level: the interval's nominal coverage (e.g. 0.95).
    """

    mean: float
    low: float
    high: float
    n: int
    level: float = DEFAULT_LEVEL


@dataclass(frozen=True)
class PairedDifference:
    """Model A minus model B over the same images.

    Attributes:
        diff: mean over images of ``score_a - score_b`` (= difference of the two means).
        low, high: percentile-bootstrap interval of ``diff``, images resampled jointly.
        n: number of images.
        wins: images where A scores strictly higher than B.
        losses: images where A scores strictly lower than B.
        ties: images with equal scores (``wins + losses + ties == n``).
        level: the interval's nominal coverage.
    """

    diff: float
    low: float
    high: float
    n: int
    wins: int
    losses: int
    ties: int
    level: float = DEFAULT_LEVEL


def _check_values(values: np.ndarray | pd.Series | list[float], what: str) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"{what}: expected a 1-D array of per-image values, got shape {x.shape}")
    if x.size == 0:
        raise ValueError(f"{what}: no values")
    if not np.isfinite(x).all():
        bad = int(np.flatnonzero(~np.isfinite(x))[0])
        raise ValueError(f"{what}: value {x[bad]} at position {bad} is not finite")
    return x


def _check_options(n_boot: int, level: float) -> None:
    if isinstance(n_boot, bool) or not isinstance(n_boot, int | np.integer) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer, got {n_boot!r}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie strictly between 0 and 1, got {level!r}")


def bootstrap_means(values: np.ndarray, n_boot: int = DEFAULT_N_BOOT, seed: int = 0) -> np.ndarray:
    """Means of ``n_boot`` resamples (with replacement, same size) of ``values``.

    Args:
        values: (n,) float per-image values, finite, n >= 1.
        n_boot: number of resamples.
        seed: seed of the :func:`numpy.random.default_rng` that draws the image indices.

    Returns:
        (n_boot,) float64 bootstrap means, in draw order.

    Raises:
        ValueError: ``values`` is empty, not 1-D or not finite, or ``n_boot`` < 1.

    Example:
        >>> bootstrap_means(np.array([0.5, 0.5]), n_boot=3).tolist()
        [0.5, 0.5, 0.5]
    """
    x = _check_values(values, "bootstrap_means")
    _check_options(n_boot, DEFAULT_LEVEL)
    rng = np.random.default_rng(seed)
    n = x.size
    rows = max(1, _CHUNK_ELEMENTS // n)
    means = np.empty(n_boot, np.float64)
    for start in range(0, n_boot, rows):
        stop = min(n_boot, start + rows)
        idx = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = x[idx].mean(axis=1)
    return means


def _interval(means: np.ndarray, level: float) -> tuple[float, float]:
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return float(low), float(high)


def bootstrap_ci(
    values: np.ndarray | pd.Series | list[float],
    n_boot: int = DEFAULT_N_BOOT,
    seed: int = 0,
    level: float = DEFAULT_LEVEL,
) -> MeanCI:
    """Mean of per-image values with its percentile-bootstrap confidence interval.

    Args:
        values: (n,) per-image values (e.g. DSB image scores), finite, n >= 1.
        n_boot: number of bootstrap resamples.
        seed: random seed; the result is a deterministic function of (values, n_boot, seed).
        level: nominal coverage, e.g. 0.95 for the 2.5 % and 97.5 % quantiles.

    Returns:
        :class:`MeanCI`. Constant values (and a single image) give ``low == high == mean``.

    Raises:
        ValueError: empty, non-1-D or non-finite values; ``n_boot`` < 1; ``level`` not in (0, 1).

    Example:
        >>> ci = bootstrap_ci([0.0, 1.0, 0.0, 1.0], n_boot=2000, seed=0)
        >>> ci.mean, ci.low < 0.5 < ci.high
        (0.5, True)
    """
    _check_options(n_boot, level)
    x = _check_values(values, "bootstrap_ci")
    if np.all(x == x[0]):  # every resample is the same multiset: the interval is a point
        return MeanCI(float(x[0]), float(x[0]), float(x[0]), int(x.size), level)
    low, high = _interval(bootstrap_means(x, n_boot, seed), level)
    return MeanCI(float(x.mean()), low, high, int(x.size), level)


def _as_series(scores: pd.Series | Mapping[str, float], name: str) -> pd.Series:
    series = scores if isinstance(scores, pd.Series) else pd.Series(dict(scores), dtype=float)
    duplicated = series.index[series.index.duplicated()]
    if len(duplicated):
        raise ValueError(f"{name}: image {duplicated[0]!r} appears more than once")
    return series.astype(np.float64)


def paired_difference(
    a: pd.Series | Mapping[str, float],
    b: pd.Series | Mapping[str, float],
    name_a: str = "a",
    name_b: str = "b",
    n_boot: int = DEFAULT_N_BOOT,
    seed: int = 0,
    level: float = DEFAULT_LEVEL,
) -> PairedDifference:
    """Paired comparison of two models scored on the same images (A minus B).

    Args:
        a, b: per-image scores indexed by ImageId (a Series or ``{ImageId: score}``); both must
            cover exactly the same images (order does not matter).
        name_a, name_b: names used in error messages (e.g. the per-image CSV paths).
        n_boot, seed, level: as in :func:`bootstrap_ci`; the same image indices resample both
            models.

    Returns:
        :class:`PairedDifference`. Identical scores give ``diff == low == high == 0``.

    Raises:
        ValueError: the image sets differ (names both inputs and an image missing from one),
            an ImageId is duplicated, or the scores are not finite.

    Example:
        >>> d = paired_difference({"x": 1.0, "y": 0.5}, {"y": 0.5, "x": 0.0})
        >>> d.diff, d.wins, d.losses, d.ties
        (0.5, 1, 0, 1)
    """
    _check_options(n_boot, level)
    sa, sb = _as_series(a, name_a), _as_series(b, name_b)
    only_a = sa.index.difference(sb.index)
    only_b = sb.index.difference(sa.index)
    if len(only_a) or len(only_b):
        if len(only_a):
            example = f"{only_a[0]!r} is only in {name_a}"
        else:
            example = f"{only_b[0]!r} is only in {name_b}"
        raise ValueError(
            f"{name_a} and {name_b} score different images ({len(only_a)} only in the first, "
            f"{len(only_b)} only in the second; e.g. {example})"
        )
    diff = _check_values(sa.to_numpy() - sb.reindex(sa.index).to_numpy(), f"{name_a} - {name_b}")
    ci = bootstrap_ci(diff, n_boot, seed, level)
    wins, losses = int(np.count_nonzero(diff > 0)), int(np.count_nonzero(diff < 0))
    return PairedDifference(
        ci.mean, ci.low, ci.high, ci.n, wins, losses, ci.n - wins - losses, level
    )


def group_means(
    values: pd.Series | np.ndarray | list[float],
    groups: pd.Series | np.ndarray | list[str],
    n_boot: int = DEFAULT_N_BOOT,
    seed: int = 0,
    level: float = DEFAULT_LEVEL,
) -> pd.DataFrame:
    """Mean and bootstrap interval of the values of each group (modality, cluster).

    Each group is resampled on its own (its size fixed), with the same ``seed``, so a group's
    interval does not depend on which other groups exist.

    Args:
        values: (n,) per-image values.
        groups: (n,) group name of each image, aligned with ``values`` by position.
        n_boot, seed, level: as in :func:`bootstrap_ci`.

    Returns:
        One row per group, sorted by group name: ``group`` (str), ``n_images`` (int),
        ``mean``, ``ci_low``, ``ci_high`` (float).

    Raises:
        ValueError: ``values`` and ``groups`` differ in length, or the values are invalid
            (see :func:`bootstrap_ci`).

    Example:
        >>> group_means([1.0, 0.0, 0.5], ["b", "a", "b"])["mean"].tolist()
        [0.0, 0.75]
    """
    x = _check_values(values, "group_means")
    g = np.asarray(groups, dtype=object).astype(str)
    if g.shape != x.shape:
        raise ValueError(f"group_means: {x.size} values but {g.size} group names")
    rows = []
    for name in sorted(set(g.tolist())):
        ci = bootstrap_ci(x[g == name], n_boot, seed, level)
        rows.append(
            {"group": name, "n_images": ci.n, "mean": ci.mean, "ci_low": ci.low, "ci_high": ci.high}
        )
    return pd.DataFrame(rows, columns=["group", "n_images", "mean", "ci_low", "ci_high"])
