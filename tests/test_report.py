"""Figure 4 (contours without / with style augmentation) and the provenance page, on tiny inputs."""

from __future__ import annotations

import dataclasses
import datetime as dt
import html
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from nucleistyle.data.bbbc038 import write_sample
from nucleistyle.data.csvio import write_solution, write_submission
from nucleistyle.errors import NucleistyleError
from nucleistyle.report import DPI
from nucleistyle.report.provenance import (
    collect_provenance,
    find_seeds,
    git_state,
    package_versions,
    render_provenance,
    write_provenance,
)
from nucleistyle.report.segment import (
    gained_objects,
    group_predictions,
    matched_pairs,
    plot_figure4,
    select_figure4_images,
)

# ------------------------------------------------------------------------------------------------
# object matching


def test_matched_pairs_needs_iou_strictly_above_one_half() -> None:
    gt = np.zeros((4, 8), np.int32)
    gt[:, :2] = 3  # 8 px
    gt[:, 4:6] = 9  # 8 px
    pred = np.zeros_like(gt)
    pred[:, :3] = 40  # covers 3: 8 / 12 > 0.5
    pred[:2, 4:6] = 7  # half of 9: 4 / 8 = 0.5, not a match
    gt_ids, pred_ids = matched_pairs(gt, pred)
    assert gt_ids.tolist() == [3] and pred_ids.tolist() == [40]


def test_matched_pairs_of_identical_label_images_is_the_identity() -> None:
    labels = np.array([[0, 5, 5], [2, 2, 0], [0, 0, 11]])
    gt_ids, pred_ids = matched_pairs(labels, labels)
    assert gt_ids.tolist() == pred_ids.tolist() == [2, 5, 11]


def test_matched_pairs_without_overlap_is_empty() -> None:
    gt_ids, pred_ids = matched_pairs(np.eye(3, dtype=int), np.zeros((3, 3), int))
    assert gt_ids.size == pred_ids.size == 0


@pytest.mark.parametrize(
    ("gt", "pred", "message"),
    [
        (np.zeros((2, 2), int), np.zeros((2, 3), int), "same shape"),
        (np.zeros((2, 2), float), np.zeros((2, 2), int), "integer"),
        (np.full((2, 2), -1), np.zeros((2, 2), int), "negative"),
    ],
)
def test_matched_pairs_rejects_bad_label_images(gt, pred, message) -> None:
    with pytest.raises(ValueError, match=message):
        matched_pairs(gt, pred)


def test_gained_objects_are_truth_found_only_with_augmentation() -> None:
    gt = np.zeros((6, 12), np.int32)
    gt[:, 0:3], gt[:, 4:7], gt[:, 8:11] = 1, 2, 3
    without = np.where(gt == 1, 10, 0)  # finds 1
    with_aug = np.where(gt == 1, 20, 0) + np.where(gt == 3, 30, 0)  # finds 1 and 3
    gt_ids, pred_ids = gained_objects(gt, without, with_aug)
    assert gt_ids.tolist() == [3] and pred_ids.tolist() == [30]
    assert gained_objects(gt, with_aug, without)[0].size == 0  # the other way round: nothing


# ------------------------------------------------------------------------------------------------
# inputs and sample


def test_group_predictions_splits_baseline_names_at_the_arm() -> None:
    named = {
        "images": "t/",
        "deep_retina_style": "s.csv",
        "deep_retina_none": "n.csv",
        "groups": "g.csv",
        "mirzaev_none": "m0.csv",
        "mirzaev_style": "m1.csv",
    }
    assert group_predictions(named) == {
        "deep_retina": {"none": "n.csv", "style": "s.csv"},
        "mirzaev": {"none": "m0.csv", "style": "m1.csv"},
    }


def test_group_predictions_needs_both_arms_of_every_baseline() -> None:
    with pytest.raises(NucleistyleError, match="mirzaev has no 'style'"):
        group_predictions({"mirzaev_none": "a.csv"})
    with pytest.raises(NucleistyleError, match="no predictions"):
        group_predictions({"images": "x", "solution": "y"})


def test_sample_takes_the_largest_gain_per_group_ties_by_image_id() -> None:
    scores = pd.DataFrame(
        {
            "ImageId": ["d", "c", "b", "a", "e"],
            "group": ["x", "x", "y", "y", "y"],
            "gain": [0.1, 0.4, 0.2, 0.2, -0.5],
        }
    )
    assert select_figure4_images(scores, 1)["ImageId"].tolist() == ["c", "a"]
    assert select_figure4_images(scores, 2)["ImageId"].tolist() == ["c", "d", "a", "b"]
    assert len(select_figure4_images(scores, 10)) == 5
    with pytest.raises(ValueError, match="per_group"):
        select_figure4_images(scores, 0)


# ------------------------------------------------------------------------------------------------
# the figure on a tiny test set: 32 x 32 images with three square nuclei A, B, C

SIDE = 32
SQUARES = {"A": (slice(2, 8), slice(2, 8)), "B": (slice(12, 18), slice(12, 18)),
           "C": (slice(22, 28), slice(22, 28))}  # fmt: skip
GROUPS = {"img_a1": "fluo", "img_a2": "fluo", "img_b1": "tissue", "img_b2": "tissue"}
# per image and baseline: the nuclei found without and with style augmentation
FOUND = {
    "img_a1": {"deep_retina": ("A", "AB"), "mirzaev": ("AB", "AB")},  # mean gain 1/6
    "img_a2": {"deep_retina": ("", "ABC"), "mirzaev": ("A", "ABC")},  # mean gain 5/6
    "img_b1": {"deep_retina": ("A", "AB"), "mirzaev": ("A", "AB")},  # 1/3, tie with b2
    "img_b2": {"deep_retina": ("A", "AB"), "mirzaev": ("A", "AB")},
}


def _labels(names: str) -> np.ndarray:
    labels = np.zeros((SIDE, SIDE), np.int32)
    for k, name in enumerate(names, start=1):
        labels[SQUARES[name]] = k
    return labels


def _cyan_pixels(png: Path) -> int:
    """Cyan pixels in the panels (the legend strip at the bottom, with its cyan patch, is cut)."""
    rgb = np.asarray(Image.open(png).convert("RGB")).astype(int)[: -int(0.5 * DPI)]
    return int(np.count_nonzero((rgb[..., 0] < 60) & (rgb[..., 1] > 200) & (rgb[..., 2] > 200)))


@pytest.fixture()
def tiny_test_set(tmp_path: Path) -> dict[str, object]:
    """Images, solution, groups and four submissions (2 baselines x 2 arms) of FOUND."""
    images = tmp_path / "stage1_test"
    truth = _labels("ABC")
    for image_id in GROUPS:
        write_sample(images, image_id, np.where(truth > 0, 200, 20).astype(np.uint8))
    write_solution(tmp_path / "solution.csv", {i: truth for i in GROUPS})
    pd.DataFrame({"ImageId": list(GROUPS), "modality": list(GROUPS.values())}).to_csv(
        tmp_path / "groups.csv", index=False
    )
    predictions: dict[str, dict[str, str]] = {}
    for baseline in ("deep_retina", "mirzaev"):
        for arm, index in (("none", 0), ("style", 1)):
            path = tmp_path / f"{baseline}-{arm}.csv"
            write_submission(path, {i: _labels(FOUND[i][baseline][index]) for i in GROUPS})
            predictions.setdefault(baseline, {})[arm] = str(path)
    return {
        "images_dir": images,
        "solution_csv": tmp_path / "solution.csv",
        "groups_csv": tmp_path / "groups.csv",
        "group_column": "modality",
        "predictions": predictions,
    }


def test_figure4_shows_the_best_gain_of_each_group_with_gained_nuclei_in_cyan(
    tiny_test_set, tmp_path
) -> None:
    out = tmp_path / "fig4.png"
    chosen = plot_figure4(**tiny_test_set, out_png=out)
    assert chosen["ImageId"].tolist() == ["img_a2", "img_b1"]
    assert chosen["group"].tolist() == ["fluo", "tissue"]
    assert chosen["gain"].tolist() == pytest.approx([5 / 6, 1 / 3])
    assert chosen["deep_retina/none"].tolist() == pytest.approx([0.0, 1 / 3])
    assert chosen["mirzaev/style"].tolist() == pytest.approx([1.0, 2 / 3])
    width, height = Image.open(out).size
    assert width > height > 0  # 2 rows x 5 columns
    assert _cyan_pixels(out) > 50


def test_figure4_draws_no_highlight_when_augmentation_gains_nothing(
    tiny_test_set, tmp_path
) -> None:
    same = {b: {"none": arms["none"], "style": arms["none"]}
            for b, arms in tiny_test_set["predictions"].items()}  # fmt: skip
    out = tmp_path / "fig4.png"
    chosen = plot_figure4(**{**tiny_test_set, "predictions": same}, out_png=out, per_group=2)
    assert chosen["ImageId"].tolist() == ["img_a1", "img_a2", "img_b1", "img_b2"]
    assert (chosen["gain"] == 0).all()
    assert _cyan_pixels(out) == 0


def test_figure4_is_deterministic(tiny_test_set, tmp_path) -> None:
    first, second = tmp_path / "1.png", tmp_path / "2.png"
    plot_figure4(**tiny_test_set, out_png=first)
    plot_figure4(**tiny_test_set, out_png=second)
    assert first.read_bytes() == second.read_bytes()


def test_figure4_names_an_image_whose_size_differs_from_its_solution(
    tiny_test_set, tmp_path
) -> None:
    write_sample(tiny_test_set["images_dir"], "img_a2", np.zeros((SIDE, SIDE - 2), np.uint8))
    with pytest.raises(NucleistyleError, match=r"img_a2\.png is 32x30 but .*solution\.csv"):
        plot_figure4(**tiny_test_set, out_png=tmp_path / "fig4.png")
    assert not (tmp_path / "fig4.png").exists()


def test_figure4_needs_both_arms(tiny_test_set, tmp_path) -> None:
    partial = {"mirzaev": {"none": tiny_test_set["predictions"]["mirzaev"]["none"]}}
    with pytest.raises(NucleistyleError, match="mirzaev needs predictions"):
        plot_figure4(**{**tiny_test_set, "predictions": partial}, out_png=tmp_path / "f.png")


# ------------------------------------------------------------------------------------------------
# provenance


def test_find_seeds_walks_nested_sections() -> None:
    config = {"seed": 1, "data": {"synthetic": {"seed": 7}, "split_seed": 3}, "gan": {"lr": 2}}
    assert find_seeds(config) == {"seed": 1, "data.synthetic.seed": 7, "data.split_seed": 3}
    assert find_seeds({"gan": {}}) == {}


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.org", *args],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip


@pytest.mark.skipif(subprocess.run(["which", "git"], capture_output=True).returncode != 0,
                    reason="git not installed")  # fmt: skip
def test_git_state_gives_commit_and_dirty_flag(tmp_path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "Snakefile").write_text("rule all:\n")
    _git(repo, "add", "Snakefile")
    _git(repo, "commit", "-q", "-m", "first")
    head = _git(repo, "rev-parse", "HEAD")
    assert git_state(repo) == {"basedir": str(repo.resolve()), "commit": head, "dirty": "no"}
    (repo / "untracked.txt").write_text("not counted")
    assert git_state(repo)["dirty"] == "no"
    (repo / "Snakefile").write_text("rule all:\n    input: []\n")
    assert git_state(repo)["dirty"] == "yes (1 files changed)"


def test_git_state_outside_a_repository_is_unknown(tmp_path) -> None:
    state = git_state(tmp_path)
    assert state["commit"] == state["dirty"] == "unknown"


def test_package_versions_reports_installed_and_missing() -> None:
    versions = package_versions(["numpy", "surely-not-a-distribution"])
    assert versions == {"numpy": np.__version__, "surely-not-a-distribution": "not installed"}


def test_provenance_page_holds_config_seeds_versions_envs_and_date(tmp_path) -> None:
    (tmp_path / "envs").mkdir()
    (tmp_path / "envs" / "report.yaml").write_text("dependencies:\n  - numpy =2.4\n")
    config = {
        "seed": 11,
        "data": {"source": "synthetic", "synthetic": {"seed": 4}, "note": "<b>&</b>"},
        "path": Path("/data/x"),
    }
    out = tmp_path / "out" / "provenance.html"
    when = dt.datetime(2026, 3, 4, 5, 6, 7)
    prov = write_provenance(config, tmp_path, out, now=when)
    page = out.read_text()
    assert prov.date == "2026-03-04T05:06:07+00:00" and prov.date in page
    assert prov.seeds == {"seed": 11, "data.synthetic.seed": 4}
    assert "data.synthetic.seed" in page and "source: synthetic" in page
    assert "path: /data/x" in page  # non-YAML types are written as text
    assert html.escape("<b>&</b>") in page and "<b>&</b>" not in page
    assert f'<td>numpy</td><td class="">{np.__version__}</td>' in page
    assert "report.yaml" in page and "numpy =2.4" in page
    assert prov.git["commit"] == "unknown" and prov.hardware["gpus"]
    assert prov.hardware["cores"].split()[0].isdigit()
    assert "<script" not in page.lower() and "http" not in page  # self-contained


def test_provenance_render_marks_a_dirty_checkout(tmp_path) -> None:
    prov = collect_provenance({"seed": 0}, tmp_path, now=dt.datetime(2026, 1, 1))
    dirty = dataclasses.replace(prov, git={**prov.git, "dirty": "yes (2 files changed)"})
    assert 'class="dirty">yes (2 files changed)' in render_provenance(dirty)
    assert 'class="dirty"' not in render_provenance(prov)


def test_provenance_rejects_a_config_that_is_not_a_mapping(tmp_path) -> None:
    with pytest.raises(TypeError, match="mapping"):
        collect_provenance(["seed"], tmp_path)  # type: ignore[arg-type]


def test_the_results_page_replaces_one_configuration_and_keeps_the_others(tmp_path):
    from nucleistyle.report.results import PAGE_HEADER, update_page

    page = tmp_path / "results.md"
    update_page(page, "demo", "## demo\n\nfirst\n")
    update_page(page, "cpu", "## cpu\n\nreal images\n\n### Table 1\n\nrows\n")
    update_page(page, "demo", "## demo\n\nsecond\n")
    text = page.read_text()
    assert text.startswith(PAGE_HEADER.splitlines()[0])
    assert "second" in text and "first" not in text
    assert text.index("## cpu") < text.index("## demo")  # sections sorted by name
    assert "### Table 1\n\nrows" in text and text.count("## demo") == 1
