"""Bootstrap statistics (nucleistyle.stats) and Table 1 (nucleistyle.report.table1) on small
hand-checked examples."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nucleistyle import stats
from nucleistyle.errors import NucleistyleError
from nucleistyle.naming import ModelName
from nucleistyle.report.table1 import (
    PAPER_TABLE1,
    build_table1,
    load_scores,
    paired_differences,
    score_table,
    tabulate_scores,
)
from nucleistyle.stats import bootstrap_ci, bootstrap_means, group_means, paired_difference

# ---------------------------------------------------------------- bootstrap CI


def test_ci_of_constant_values_is_a_point() -> None:
    ci = bootstrap_ci([0.3] * 7, n_boot=500, seed=1)
    assert (ci.mean, ci.low, ci.high, ci.n) == (0.3, 0.3, 0.3, 7)


def test_ci_of_a_single_image_is_a_point() -> None:
    ci = bootstrap_ci([0.625])
    assert (ci.low, ci.high, ci.n) == (0.625, 0.625, 1)


def test_ci_of_two_values_spans_both() -> None:
    # resample means of {0, 1}: 0 (p 1/4), 0.5 (1/2), 1 (1/4); the 2.5 % and 97.5 % quantiles
    # therefore fall on 0 and 1
    means = bootstrap_means(np.array([0.0, 1.0]), n_boot=4000, seed=0)
    assert set(np.unique(means).tolist()) == {0.0, 0.5, 1.0}
    assert np.mean(means == 0.5) == pytest.approx(0.5, abs=0.03)
    ci = bootstrap_ci([0.0, 1.0], n_boot=4000, seed=0)
    assert (ci.mean, ci.low, ci.high) == (0.5, 0.0, 1.0)


def test_ci_width_matches_the_standard_error_and_shrinks_with_n() -> None:
    widths = {}
    for n in (16, 400):
        values = np.tile([0.0, 1.0], n // 2)  # sd 0.5: standard error of the mean 0.5 / sqrt(n)
        ci = bootstrap_ci(values, n_boot=4000, seed=3)
        assert ci.low < ci.mean == 0.5 < ci.high
        widths[n] = ci.high - ci.low
        assert widths[n] == pytest.approx(2 * 1.96 * 0.5 / math.sqrt(n), rel=0.12)
    assert widths[400] < widths[16] / 4


def test_bootstrap_is_deterministic_for_a_seed() -> None:
    values = np.random.default_rng(0).random(50)
    assert bootstrap_ci(values, seed=7) == bootstrap_ci(values, seed=7)
    assert bootstrap_ci(values, seed=7) != bootstrap_ci(values, seed=8)
    np.testing.assert_array_equal(bootstrap_means(values, 300, 5), bootstrap_means(values, 300, 5))


def test_chunked_draws_equal_one_draw(monkeypatch: pytest.MonkeyPatch) -> None:
    values = np.random.default_rng(1).random(37)
    whole = bootstrap_means(values, n_boot=50, seed=2)
    monkeypatch.setattr(stats, "_CHUNK_ELEMENTS", 37 * 3)  # 3 resamples per chunk
    np.testing.assert_array_equal(bootstrap_means(values, n_boot=50, seed=2), whole)


@pytest.mark.parametrize(
    ("values", "kwargs", "message"),
    [
        ([], {}, "no values"),
        ([0.1, float("nan")], {}, "not finite"),
        ([[0.1, 0.2]], {}, "1-D"),
        ([0.1, 0.2], {"n_boot": 0}, "n_boot must be a positive integer"),
        ([0.1, 0.2], {"level": 1.0}, "level must lie strictly between 0 and 1"),
    ],
)
def test_invalid_bootstrap_inputs_raise(values: list, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        bootstrap_ci(values, **kwargs)


# ---------------------------------------------------------------- paired difference


def test_identical_models_differ_by_exactly_zero() -> None:
    scores = pd.Series([0.1, 0.7, 0.3], index=["a", "b", "c"])
    d = paired_difference(scores, scores.iloc[::-1], "x.csv", "y.csv")
    assert (d.diff, d.low, d.high, d.n) == (0.0, 0.0, 0.0, 3)
    assert (d.wins, d.losses, d.ties) == (0, 0, 3)


def test_constant_improvement_gives_a_point_interval() -> None:
    b = {"a": 0.25, "b": 0.5, "c": 0.0}
    a = {"c": 0.25, "a": 0.5, "b": 0.75}  # b + 0.25 on every image, in another order
    d = paired_difference(a, b)
    assert (d.diff, d.low, d.high, d.wins, d.losses, d.ties) == (0.25, 0.25, 0.25, 3, 0, 0)


def test_paired_interval_hand_checked() -> None:
    # differences 0.25, 0, 0.25, 0: a resample is all zeros (mean 0) or all 0.25 with
    # probability 1/16 each, more than 2.5 %, so the 95 % interval is exactly [0, 0.25]
    a = {"i1": 0.75, "i2": 0.25, "i3": 0.5, "i4": 0.0}
    b = {"i1": 0.5, "i2": 0.25, "i3": 0.25, "i4": 0.0}
    d = paired_difference(a, b, n_boot=2000, seed=0)
    assert (d.diff, d.low, d.high, d.wins, d.losses, d.ties) == (0.125, 0.0, 0.25, 2, 0, 2)


def test_paired_with_different_images_names_both_inputs() -> None:
    a = {"i1": 0.5, "i2": 0.5}
    b = {"i1": 0.5, "i3": 0.5}
    with pytest.raises(ValueError, match=r"a\.csv and b\.csv score different images .*'i2'"):
        paired_difference(a, b, "a.csv", "b.csv")


def test_paired_with_a_duplicated_image_raises() -> None:
    a = pd.Series([0.5, 0.5], index=["i1", "i1"])
    with pytest.raises(ValueError, match=r"a\.csv: image 'i1' appears more than once"):
        paired_difference(a, a, "a.csv", "b.csv")


# ---------------------------------------------------------------- groups


def test_group_means_hand_checked() -> None:
    table = group_means([1.0, 0.0, 0.5, 0.25, 0.25], ["he", "fluo", "he", "bf", "bf"], seed=4)
    assert table["group"].tolist() == ["bf", "fluo", "he"]
    assert table["n_images"].tolist() == [2, 1, 2]
    assert table["mean"].tolist() == [0.25, 0.0, 0.75]
    assert table[["ci_low", "ci_high"]].iloc[:2].to_numpy().tolist() == [[0.25, 0.25], [0.0, 0.0]]
    # he = {1.0, 0.5}: resample means 0.5, 0.75, 1.0, so the interval is [0.5, 1.0]
    assert table[["ci_low", "ci_high"]].iloc[2].tolist() == [0.5, 1.0]
    # a group's interval is that of its images alone
    he = bootstrap_ci([1.0, 0.5], seed=4)
    assert (he.low, he.high) == (0.5, 1.0)


def test_group_means_length_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="3 values but 2 group names"):
        group_means([0.1, 0.2, 0.3], ["a", "b"])


# ---------------------------------------------------------------- Table 1

IMAGES = ["i1", "i2", "i3", "i4"]
GROUPS = ["fluo", "fluo", "he", "he"]
SCORES = {
    "deep_retina-style-tta": [0.25, 0.5, 0.25, 0.25],
    "classical": [0.5, 0.5, 0.25, 0.25],
    "deep_retina-none": [0.5, 0.25, 0.25, 0.0],
    "deep_retina-style": [0.75, 0.25, 0.5, 0.0],
    "deep_retina-none-tta": [0.5, 0.5, 0.25, 0.0],
}
TESTSET = "stage2_test_final"


def _write_scores(
    root: Path, model: str, scores: list[float], testset: str = TESTSET, ap: bool = True
) -> tuple[Path, Path]:
    folder = root / model / testset
    folder.mkdir(parents=True)
    order = [3, 1, 0, 2]  # rows need not be sorted
    table = pd.DataFrame(
        {
            "ImageId": [IMAGES[k] for k in order],
            "n_gt": 2,
            "score": [scores[k] for k in order],
            "group": [GROUPS[k] for k in order],
        }
    )
    table.to_csv(folder / "per_image.csv", index=False)
    summary: dict = {"score": float(np.mean(scores)), "n_images": 4}
    if ap:
        summary.update({"ap": 0.5, "ap50": 0.75, "ap75": None})
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder / "per_image.csv", folder / "summary.json"


@pytest.fixture
def score_files(tmp_path: Path) -> tuple[list[Path], list[Path]]:
    per_image, summaries = [], []
    for model, scores in SCORES.items():
        p, s = _write_scores(tmp_path / "score", model, scores, ap=model != "classical")
        per_image.append(p)
        summaries.append(s)
    return per_image, summaries[::-1]  # pairing is by path, not by position


def test_parse_model_names() -> None:
    assert ModelName.parse("classical") == ModelName(None, None, False)
    assert ModelName.parse("deep_retina-none") == ModelName("deep_retina", "none", False)
    assert ModelName.parse("mirzaev-oversample-tta") == ModelName("mirzaev", "oversample", True)
    assert ModelName.parse("mirzaev-style-tta").label == (
        "Inom Mirzaev w/ style-transfer augmentation, TTA"
    )


def test_paper_table1_constant_matches_the_paper() -> None:
    published = {(r.baseline, r.arm): r.score for r in PAPER_TABLE1}
    assert published == {
        (None, None): 0.570,
        ("deep_retina", "none"): 0.532,
        ("deep_retina", "style"): 0.609,
        ("mirzaev", "none"): 0.599,
        ("mirzaev", "style"): 0.613,
    }


def test_table1_rows_scores_and_paper_rows(score_files: tuple[list[Path], list[Path]]) -> None:
    table = build_table1(load_scores(*score_files), n_boot=500, seed=0)
    ours = table[table.source == "this run"]
    assert ours["model"].tolist() == [
        "classical",
        "deep_retina-none",
        "deep_retina-none-tta",
        "deep_retina-style",
        "deep_retina-style-tta",
    ]
    ours = ours.set_index("model")
    assert ours["score"].tolist() == [0.375, 0.25, 0.3125, 0.375, 0.3125]
    assert ours["score_fluo"].tolist() == [0.5, 0.375, 0.5, 0.5, 0.375]
    assert ours["score_he"].tolist() == [0.25, 0.125, 0.125, 0.25, 0.25]
    assert (ours["n_images"] == 4).all()
    assert (ours["ci_low"] <= ours["score"]).all() and (ours["score"] <= ours["ci_high"]).all()
    assert ours.loc["deep_retina-none", "ap50"] == 0.75
    assert np.isnan(ours.loc["deep_retina-none", "ap75"])  # null in the summary
    assert np.isnan(ours.loc["classical", "ap"])  # not in the summary
    assert ours["paper_score"].fillna(-1).tolist() == [-1, 0.532, 0.532, 0.609, 0.609]
    assert ours.loc["deep_retina-style-tta", "tta"]
    paper = table[table.source == "paper Table 1"]
    assert paper["method"].tolist()[0] == "BIOMAGic" and paper["score"].tolist()[0] == 0.570
    assert len(paper) == 5 and (paper["testset"] == TESTSET).all()


def test_table1_has_no_paper_score_on_other_test_sets(tmp_path: Path) -> None:
    files = _write_scores(tmp_path, "mirzaev-style", SCORES["classical"], testset="stage1_test")
    table = build_table1(load_scores([files[0]], [files[1]]), n_boot=100)
    assert np.isnan(table.loc[table.source == "this run", "paper_score"]).all()


def test_paired_differences_hand_checked(score_files: tuple[list[Path], list[Path]]) -> None:
    paired = paired_differences(load_scores(*score_files), n_boot=2000, seed=0)
    overall = paired[paired.group == "all"]
    assert overall[["model", "reference"]].to_numpy().tolist() == [
        ["deep_retina-style", "deep_retina-none"],
        ["deep_retina-style-tta", "deep_retina-none-tta"],
    ]
    single, tta = overall.to_dict("records")
    # single pass: differences 0.25, 0, 0.25, 0 (see test_paired_interval_hand_checked)
    assert (single["mean_diff"], single["ci_low"], single["ci_high"]) == (0.125, 0.0, 0.25)
    assert (single["wins"], single["losses"], single["ties"], single["tta"]) == (2, 0, 2, False)
    # TTA: differences -0.25, 0, 0, 0.25
    assert (tta["mean_diff"], tta["wins"], tta["losses"], tta["ties"]) == (0.0, 1, 1, 2)
    assert tta["ci_low"] < 0 < tta["ci_high"]


def test_paired_differences_per_modality(score_files: tuple[list[Path], list[Path]]) -> None:
    paired = paired_differences(load_scores(*score_files), n_boot=500, seed=0)
    single = paired[paired.model == "deep_retina-style"].set_index("group")
    assert single.index.tolist() == ["all", "fluo", "he"]
    # fluo: i1 +0.25, i2 0; he: i3 +0.25, i4 0
    assert single.loc["fluo", ["mean_diff", "wins", "ties", "n_images"]].tolist() == [
        0.125,
        1,
        1,
        2,
    ]
    assert single.loc["he", ["mean_diff", "wins", "ties", "n_images"]].tolist() == [0.125, 1, 1, 2]


def test_the_style_arm_is_also_compared_with_the_jitter_control(
    score_files: tuple[list[Path], list[Path]], tmp_path: Path
) -> None:
    p, s = _write_scores(tmp_path / "extra", "deep_retina-jitter", [0.5, 0.5, 0.5, 0.0])
    per_image, summaries = score_files
    paired = paired_differences(load_scores([*per_image, p], [*summaries, s]), n_boot=200)
    rows = paired[(paired.group == "all") & ~paired.tta].set_index(["model", "reference"])
    assert sorted(rows.index) == [
        ("deep_retina-jitter", "deep_retina-none"),
        ("deep_retina-style", "deep_retina-jitter"),
        ("deep_retina-style", "deep_retina-none"),
    ]
    style_vs_jitter = rows.loc[("deep_retina-style", "deep_retina-jitter")]
    assert style_vs_jitter["mean_diff"] == 0.0  # +0.25, -0.25, 0, 0
    assert (style_vs_jitter["wins"], style_vs_jitter["losses"]) == (1, 1)


def test_score_table_has_overall_and_group_rows(
    score_files: tuple[list[Path], list[Path]],
) -> None:
    long = score_table(load_scores(*score_files), n_boot=200)
    classical = long[long.model == "classical"].set_index("group")
    assert classical.index.tolist() == ["all", "fluo", "he"]
    assert classical["score"].tolist() == [0.375, 0.5, 0.25]
    assert classical["n_images"].tolist() == [4, 2, 2]
    # fluo is 0.5 on both images: a point interval
    assert classical.loc["fluo", ["ci_low", "ci_high"]].tolist() == [0.5, 0.5]


def test_tabulate_scores_writes_every_output(
    score_files: tuple[list[Path], list[Path]], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    paths = {name: out / name for name in ("s.csv", "t1.csv", "pd.csv", "c.png")}
    tabulate_scores(*score_files, *paths.values(), n_boot=300, seed=1)
    scores = pd.read_csv(paths["s.csv"])
    assert list(scores.columns) == [
        "model",
        "testset",
        "group",
        "n_images",
        "score",
        "ci_low",
        "ci_high",
    ]
    assert len(scores) == 5 * 3
    table1 = pd.read_csv(paths["t1.csv"])
    assert len(table1) == 5 + len(PAPER_TABLE1)
    assert {"ap50", "ap75", "score_fluo", "score_he", "paper_score"} <= set(table1.columns)
    assert len(pd.read_csv(paths["pd.csv"])) == 2 * 3  # style - none, single / TTA, 3 groups
    assert paths["c.png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    again = tmp_path / "again"
    tabulate_scores(*score_files, *(again / p.name for p in paths.values()), n_boot=300, seed=1)
    for name in ("s.csv", "t1.csv", "pd.csv"):
        assert (again / name).read_bytes() == paths[name].read_bytes()  # deterministic


def test_stale_summary_names_both_files(tmp_path: Path) -> None:
    per_image, summary = _write_scores(tmp_path, "classical", SCORES["classical"])
    summary.write_text(json.dumps({"score": 0.9, "n_images": 4}))
    with pytest.raises(NucleistyleError, match=r"per_image\.csv .* and .*summary\.json .*disagree"):
        load_scores([per_image], [summary])


def test_missing_summary_is_named(tmp_path: Path) -> None:
    per_image, _ = _write_scores(tmp_path, "classical", SCORES["classical"])
    with pytest.raises(
        NucleistyleError, match=r"no summary\.json of classical on stage2_test_final"
    ):
        load_scores([per_image], [])


def test_paired_models_on_different_images_raise(tmp_path: Path) -> None:
    none = _write_scores(tmp_path, "mirzaev-none", SCORES["classical"])
    style = _write_scores(tmp_path, "mirzaev-style", SCORES["classical"])
    table = pd.read_csv(style[0])
    table.loc[0, "ImageId"] = "other"
    table.to_csv(style[0], index=False)
    scored = load_scores([none[0], style[0]], [none[1], style[1]])
    with pytest.raises(ValueError, match=r"mirzaev-style.*per_image\.csv and .*mirzaev-none"):
        paired_differences(scored, n_boot=100)
