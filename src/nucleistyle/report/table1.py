"""Table 1 of the report: every model's DSB score with bootstrap CIs, per modality, AP, and the
paper's published numbers; paired comparisons of each augmentation arm with the baseline.

Inputs are the scorer's outputs, ``results/score/{model}/{testset}/per_image.csv`` (one row per
image: ``ImageId``, ``score``, …, ``group``) and ``summary.json`` (``score``, ``ap``, ``ap50``,
``ap75``, …); the model and test set are read from the two parent folder names. Model names are
``classical`` or ``{baseline}-{arm}`` with an optional ``-tta`` suffix (test-time augmentation).

Intervals are percentile bootstraps over images (:mod:`nucleistyle.stats`), with one seed for
every interval, so that the tables are reproducible.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from nucleistyle.errors import NucleistyleError
from nucleistyle.naming import ModelName
from nucleistyle.outputs import atomic_path
from nucleistyle.paths import PathLike
from nucleistyle.report.figures import ALL, plot_paired_by_group, plot_scores_by_group
from nucleistyle.stats import DEFAULT_N_BOOT, bootstrap_ci, group_means, paired_difference

__all__ = [
    "PAPER_TABLE1",
    "PAPER_TESTSET",
    "PaperResult",
    "ScoredModel",
    "build_table1",
    "load_scores",
    "paired_differences",
    "score_table",
    "tabulate_scores",
]

log = logging.getLogger(__name__)

REFERENCE_ARM = "none"
STYLE_ARM = "style"
CONTROL_ARM = "jitter"  # strong colour augmentation without a GAN: what the GAN must beat
PAIRED_COLUMNS = (
    "testset",
    "baseline",
    "tta",
    "arm",
    "model",
    "reference",
    "group",
    "n_images",
    "mean_diff",
    "ci_low",
    "ci_high",
    "wins",
    "losses",
    "ties",
)
OURS = "this run"
PAPER = "paper Table 1"
_DECIMALS = 4


@dataclass(frozen=True)
class PaperResult:
    """One row of the paper's Table 1.

    Attributes:
        method: the method as the paper names it.
        baseline, arm: the model of this pipeline it corresponds to (None for BIOMAGic, a
            competition team's result that the paper quotes).
        score: the published score (official DSB metric, called "IoU score" in the paper).
    """

    method: str
    baseline: str | None
    arm: str | None
    score: float


# Table 1 of the seed paper (§3.2, "IoU scores of different segmentation methods"): the official
# DSB 2018 score of Kaggle submissions on the stage-2 test set; "our augmentation" is the
# multi-modality style-transfer augmentation (arm "style"). BIOMAGic is quoted by the paper as the
# only top-25 competition entry that used style transfer.
PAPER_TABLE1: tuple[PaperResult, ...] = (
    PaperResult("BIOMAGic", None, None, 0.570),
    PaperResult("Deep Retina w/o our augmentation", "deep_retina", "none", 0.532),
    PaperResult("Deep Retina w/ our augmentation", "deep_retina", "style", 0.609),
    PaperResult("Inom Mirzaev w/o our augmentation", "mirzaev", "none", 0.599),
    PaperResult("Inom Mirzaev w/ our augmentation", "mirzaev", "style", 0.613),
)
PAPER_TESTSET = "stage2_test_final"
"""The test set of the paper's Table 1 (Kaggle stage 2, scored on its private images)."""


@dataclass(frozen=True)
class ScoredModel:
    """The scorer's outputs for one model on one test set.

    Attributes:
        model, testset: names from the file paths.
        per_image: columns ``ImageId`` (str), ``score`` (float) and ``group`` (str; ``all``
            when the scorer had no groups), indexed 0..n-1.
        summary: the parsed ``summary.json``.
        source: the per-image CSV's path (for error messages).
    """

    model: str
    testset: str
    per_image: pd.DataFrame
    summary: dict
    source: str

    @property
    def scores(self) -> pd.Series:
        """Per-image scores indexed by ImageId."""
        return pd.Series(self.per_image["score"].to_numpy(), index=self.per_image["ImageId"])


def _model_and_testset(path: Path) -> tuple[str, str]:
    return path.parent.parent.name, path.parent.name


def _read_per_image(path: Path, summary: dict, summary_path: Path) -> pd.DataFrame:
    try:
        table = pd.read_csv(path, dtype={"ImageId": str, "group": str}, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise NucleistyleError(f"{path}: cannot read the per-image scores ({err})") from err
    if not {"ImageId", "score"} <= set(table.columns):
        raise NucleistyleError(
            f"{path}: expected columns ImageId and score, found {list(table.columns)}"
        )
    if len(table) == 0:
        raise NucleistyleError(f"{path}: no images")
    if "group" not in table.columns:
        if summary.get("groups"):
            raise NucleistyleError(
                f"{path} has no group column but {summary_path} has per-group scores: "
                "rerun score_submission"
            )
        table["group"] = ALL
    scores = pd.to_numeric(table["score"], errors="coerce")
    if not (np.isfinite(scores) & (scores >= 0) & (scores <= 1)).all():
        bad = int(np.flatnonzero(~(np.isfinite(scores) & (scores >= 0) & (scores <= 1)))[0])
        raise NucleistyleError(
            f"{path}: score {table['score'].iloc[bad]!r} of image {table['ImageId'].iloc[bad]} "
            "is not a number in [0, 1]"
        )
    table["score"] = scores.astype(np.float64)
    if not math.isclose(float(table["score"].mean()), float(summary["score"]), abs_tol=1e-9):
        raise NucleistyleError(
            f"{path} (mean {table['score'].mean():.6f}) and {summary_path} "
            f"(score {summary['score']:.6f}) disagree: rerun score_submission"
        )
    return table[["ImageId", "score", "group"]]


def load_scores(
    per_image_csvs: Sequence[PathLike], summaries: Sequence[PathLike]
) -> list[ScoredModel]:
    """Read and cross-check the scorer's per-image tables and summaries.

    Args:
        per_image_csvs: ``…/{model}/{testset}/per_image.csv`` files.
        summaries: the ``…/{model}/{testset}/summary.json`` files of the same models and test
            sets (any order).

    Returns:
        One :class:`ScoredModel` per per-image file, in the order of ``per_image_csvs``.

    Raises:
        NucleistyleError: a per-image file without its summary (or vice versa), an unreadable
            or malformed file, or a summary score that is not the mean of its per-image scores
            (stale outputs); each message names the files.
    """
    by_key: dict[tuple[str, str], Path] = {}
    for path in map(Path, summaries):
        by_key[_model_and_testset(path)] = path
    scored = []
    seen = set()
    for path in map(Path, per_image_csvs):
        key = _model_and_testset(path)
        if key not in by_key:
            raise NucleistyleError(f"{path}: no summary.json of {key[0]} on {key[1]} was given")
        if key in seen:
            raise NucleistyleError(f"{path}: {key[0]} on {key[1]} is given twice")
        seen.add(key)
        summary_path = by_key[key]
        try:
            summary = json.loads(summary_path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise NucleistyleError(f"{summary_path}: cannot read the summary ({err})") from err
        if "score" not in summary:
            raise NucleistyleError(f"{summary_path}: no 'score' key")
        per_image = _read_per_image(path, summary, summary_path)
        scored.append(ScoredModel(key[0], key[1], per_image, summary, str(path)))
    unused = sorted(set(by_key) - seen)
    if unused:
        raise NucleistyleError(f"{by_key[unused[0]]}: no per_image.csv was given for it")
    return scored


def _round(table: pd.DataFrame) -> pd.DataFrame:
    floats = table.select_dtypes(include="float").columns
    table[floats] = table[floats].round(_DECIMALS)
    return table


def score_table(
    scored: Sequence[ScoredModel], n_boot: int = DEFAULT_N_BOOT, seed: int = 0
) -> pd.DataFrame:
    """Long table of every model's score overall and per group, with bootstrap CIs.

    Args:
        scored: from :func:`load_scores`.
        n_boot, seed: bootstrap settings (:func:`nucleistyle.stats.bootstrap_ci`).

    Returns:
        Columns model, testset, group (``all`` = whole test set, first; then groups by name),
        n_images, score, ci_low, ci_high (unrounded floats).
    """
    rows = []
    for item in scored:
        ci = bootstrap_ci(item.per_image["score"], n_boot, seed)
        rows.append(
            {
                "model": item.model,
                "testset": item.testset,
                "group": ALL,
                "n_images": ci.n,
                "score": ci.mean,
                "ci_low": ci.low,
                "ci_high": ci.high,
            }
        )
        groups = item.per_image["group"]
        if set(groups) == {ALL}:
            continue
        by_group = group_means(item.per_image["score"], groups, n_boot, seed)
        for row in by_group.itertuples(index=False):
            rows.append(
                {
                    "model": item.model,
                    "testset": item.testset,
                    "group": row.group,
                    "n_images": int(row.n_images),
                    "score": float(row.mean),
                    "ci_low": float(row.ci_low),
                    "ci_high": float(row.ci_high),
                }
            )
    columns = ["model", "testset", "group", "n_images", "score", "ci_low", "ci_high"]
    return pd.DataFrame(rows, columns=columns)


def _order_key(name: ModelName, baselines: list[str], arms: list[str]) -> tuple:
    """classical first; then by baseline, arm (``none`` first), single pass before TTA."""
    if name.baseline is None:
        return (0, 0, 0, 0)
    return (1, baselines.index(name.baseline), arms.index(name.arm or ""), int(name.tta))


def _sorted(scored: Sequence[ScoredModel]) -> list[ScoredModel]:
    parsed = {item.model: ModelName.parse(item.model) for item in scored}
    baselines = list(dict.fromkeys(p.baseline for p in parsed.values() if p.baseline))
    arms = list(dict.fromkeys([REFERENCE_ARM, *(p.arm or "" for p in parsed.values())]))
    testsets = list(dict.fromkeys(item.testset for item in scored))
    return sorted(
        scored,
        key=lambda item: (
            testsets.index(item.testset),
            _order_key(parsed[item.model], baselines, arms),
        ),
    )


def _paper_score(name: ModelName, testset: str) -> float:
    if testset != PAPER_TESTSET:
        return float("nan")
    for result in PAPER_TABLE1:
        if (result.baseline, result.arm) == (name.baseline, name.arm) and name.baseline:
            return result.score
    return float("nan")


def _summary_float(summary: dict, key: str) -> float:
    value = summary.get(key)
    return float("nan") if value is None else float(value)


def build_table1(
    scored: Sequence[ScoredModel], n_boot: int = DEFAULT_N_BOOT, seed: int = 0
) -> pd.DataFrame:
    """Table 1: one row per model and test set, then the paper's published rows.

    Args:
        scored: from :func:`load_scores`.
        n_boot, seed: bootstrap settings for the 95 % CI of the overall score.

    Returns:
        Columns source (``this run`` or ``paper Table 1``), testset, model, method (readable),
        baseline, arm, tta, n_images, score, ci_low, ci_high, one ``score_<group>`` column per
        modality/cluster (NaN where a test set lacks it), ap, ap50, ap75 (NaN when not in the
        summary) and paper_score (the published score of the same baseline and arm, on the
        stage-2 rows only). Rows: per test set, classical first, then each baseline without /
        with each augmentation arm, single pass before TTA; the paper's rows last (scores only,
        test set ``stage2_test_final``).
    """
    ordered = _sorted(scored)
    group_names = sorted(
        {g for item in ordered for g in item.per_image["group"].unique() if g != ALL}
    )
    rows = []
    for item in ordered:
        name = ModelName.parse(item.model)
        ci = bootstrap_ci(item.per_image["score"], n_boot, seed)
        by_group = item.per_image.groupby("group")["score"].mean()
        row: dict[str, object] = {
            "source": OURS,
            "testset": item.testset,
            "model": item.model,
            "method": name.label,
            "baseline": name.baseline or "",
            "arm": name.arm or "",
            "tta": name.tta,
            "n_images": ci.n,
            "score": ci.mean,
            "ci_low": ci.low,
            "ci_high": ci.high,
        }
        row.update({f"score_{g}": float(by_group.get(g, np.nan)) for g in group_names})
        row.update({key: _summary_float(item.summary, key) for key in ("ap", "ap50", "ap75")})
        row["paper_score"] = _paper_score(name, item.testset)
        rows.append(row)
    for result in PAPER_TABLE1:
        model = "" if result.baseline is None else str(ModelName(result.baseline, result.arm))
        rows.append(
            {
                "source": PAPER,
                "testset": PAPER_TESTSET,
                "model": model,
                "method": result.method,
                "baseline": result.baseline or "",
                "arm": result.arm or "",
                "tta": False,
                "score": result.score,
                "paper_score": result.score,
            }
        )
    columns = [
        "source",
        "testset",
        "model",
        "method",
        "baseline",
        "arm",
        "tta",
        "n_images",
        "score",
        "ci_low",
        "ci_high",
        *(f"score_{g}" for g in group_names),
        "ap",
        "ap50",
        "ap75",
        "paper_score",
    ]
    table = pd.DataFrame(rows, columns=columns)
    table["n_images"] = table["n_images"].astype("Int64")
    return table


def _references(arm: str, baseline: str, tta: bool) -> list[str]:
    """The models an arm is compared with: ``none`` always; the ``jitter`` control for the
    GAN's ``style`` arm (does the GAN beat plain colour augmentation?)."""
    names = [REFERENCE_ARM] + ([CONTROL_ARM] if arm == STYLE_ARM else [])
    return [str(ModelName(baseline, name, tta)) for name in names if name != arm]


def paired_differences(
    scored: Sequence[ScoredModel], n_boot: int = DEFAULT_N_BOOT, seed: int = 0
) -> pd.DataFrame:
    """Each augmentation arm minus the same baseline without augmentation, image by image,
    over all images and per group (modality); the ``style`` arm also minus ``jitter``.

    For every test set, baseline and prediction mode (single pass / TTA) that has the
    reference, every other arm is compared with it on the same images
    (:func:`nucleistyle.stats.paired_difference`), then within each group the scorer
    recorded.

    Args:
        scored: from :func:`load_scores`.
        n_boot, seed: bootstrap settings.

    Returns:
        Columns testset, baseline, tta, arm, model, reference, group (``all`` or a modality),
        n_images, mean_diff (model minus reference), ci_low, ci_high, wins (images where the
        model scores higher), losses, ties; empty (with these columns) when nothing can be
        compared.

    Raises:
        ValueError: the two models were scored on different images (names both files).
    """
    index = {(item.model, item.testset): item for item in scored}
    rows = []
    for item in _sorted(scored):
        name = ModelName.parse(item.model)
        if name.baseline is None or name.arm in (None, REFERENCE_ARM):
            continue
        for reference in _references(name.arm, name.baseline, name.tta):
            if (reference, item.testset) not in index:
                log.info(
                    "no %s on %s: %s not compared with it", reference, item.testset, item.model
                )
                continue
            ref = index[(reference, item.testset)]
            groups = item.per_image.set_index("ImageId")["group"]
            for group in [ALL, *sorted(set(groups) - {ALL})]:
                ids = groups.index if group == ALL else groups.index[groups == group]
                d = paired_difference(
                    item.scores.loc[ids],
                    ref.scores.loc[ref.scores.index.intersection(ids)],
                    item.source,
                    ref.source,
                    n_boot,
                    seed,
                )
                rows.append(
                    {
                        "testset": item.testset,
                        "baseline": name.baseline,
                        "tta": name.tta,
                        "arm": name.arm,
                        "model": item.model,
                        "reference": reference,
                        "group": group,
                        "n_images": d.n,
                        "mean_diff": d.diff,
                        "ci_low": d.low,
                        "ci_high": d.high,
                        "wins": d.wins,
                        "losses": d.losses,
                        "ties": d.ties,
                    }
                )
    return pd.DataFrame(rows, columns=PAIRED_COLUMNS)


def _write_csv(table: pd.DataFrame, path: PathLike) -> None:
    with atomic_path(path) as tmp:
        _round(table.copy()).to_csv(tmp, index=False, lineterminator="\n")


def tabulate_scores(
    per_image_csvs: Sequence[PathLike],
    summaries: Sequence[PathLike],
    scores_csv: PathLike,
    table1_csv: PathLike,
    paired_csv: PathLike,
    chart_png: PathLike,
    paired_png: PathLike | None = None,
    n_boot: int = DEFAULT_N_BOOT,
    seed: int = 0,
) -> pd.DataFrame:
    """Write every score table and the per-modality chart (rule ``tabulate_scores``).

    Args:
        per_image_csvs, summaries: the scorer's outputs (see :func:`load_scores`).
        scores_csv: long table of :func:`score_table` (rounded to 4 decimals).
        table1_csv: :func:`build_table1`.
        paired_csv: :func:`paired_differences`.
        chart_png: per-group scores with their CIs (:func:`plot_scores_by_group`).
        paired_png: per-group paired differences (:func:`plot_paired_by_group`), if given.
        n_boot, seed: bootstrap settings shared by every interval.

    Returns:
        Table 1 (unrounded).

    Raises:
        NucleistyleError: inconsistent or malformed inputs (see :func:`load_scores`).
        ValueError: paired models scored on different images.
    """
    if not per_image_csvs:
        raise NucleistyleError(f"{table1_csv}: no per-image score tables given")
    scored = load_scores(per_image_csvs, summaries)
    log.info("%d scored models x test sets; bootstrap n_boot=%d seed=%d", len(scored), n_boot, seed)
    long = score_table(scored, n_boot, seed)
    table1 = build_table1(scored, n_boot, seed)
    paired = paired_differences(scored, n_boot, seed)
    _write_csv(long, scores_csv)
    _write_csv(table1, table1_csv)
    _write_csv(paired, paired_csv)
    plot_scores_by_group(long, chart_png)
    if paired_png is not None:
        plot_paired_by_group(paired, paired_png)
    for row in paired.itertuples(index=False):
        log.info(
            "%s %s vs %s on %s: %+.4f [%+.4f, %+.4f], wins %d / losses %d",
            row.testset,
            row.model,
            row.reference,
            row.group,
            row.mean_diff,
            row.ci_low,
            row.ci_high,
            row.wins,
            row.losses,
        )
    return table1
