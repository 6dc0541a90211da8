"""The stratified held-out test set (data.source local layout) carved out of a training set."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from nucleistyle.data.bbbc038 import list_images
from nucleistyle.data.csvio import read_solution
from nucleistyle.data.synthetic import SyntheticConfig, generate
from nucleistyle.errors import NucleistyleError
from nucleistyle.holdout import (
    make_holdout,
    split_leave_cluster_out,
    split_minority,
    split_strata,
)


def test_every_stratum_of_two_or_more_keeps_items_on_both_sides():
    strata = pd.Series(["a"] * 10 + ["b"] * 2 + ["c"], index=[f"i{k:02d}" for k in range(13)])
    held = split_strata(strata, 0.2, seed=3)
    counts = held.groupby(strata).agg(["sum", "size"])
    assert counts.loc["a"].tolist() == [2, 10]
    assert counts.loc["b"].tolist() == [1, 2]
    assert counts.loc["c"].tolist() == [0, 1]  # a singleton stays in training


def test_the_split_does_not_depend_on_row_order():
    strata = pd.Series([k % 3 for k in range(30)], index=[f"i{k:02d}" for k in range(30)])
    shuffled = strata.sample(frac=1.0, random_state=1)
    assert split_strata(strata, 0.3, 5).equals(split_strata(shuffled, 0.3, 5))
    assert not split_strata(strata, 0.3, 5).equals(split_strata(strata, 0.3, 6))


def test_minority_split_holds_out_half_of_every_rare_stratum_and_as_many_of_the_largest():
    strata = pd.Series(
        ["a"] * 40 + ["b"] * 6 + ["c"] * 3 + ["d"], index=[f"i{k:02d}" for k in range(50)]
    )
    held = split_minority(strata, 0.2, seed=1)
    counts = held.groupby(strata).sum()
    assert counts.to_dict() == {"a": 5, "b": 3, "c": 2, "d": 0}  # c: round(1.5) = 2 of 3
    assert held[strata != "a"].sum() == held[strata == "a"].sum()  # rare modalities weigh half
    assert split_minority(strata, 0.05, seed=1).groupby(strata).sum()["a"] == 2  # the cap
    shuffled = strata.sample(frac=1.0, random_state=3)
    assert split_minority(shuffled, 0.2, 1).equals(held)


def test_leave_cluster_out_holds_out_the_whole_cluster_and_a_share_of_the_others():
    strata = pd.Series(["a"] * 10 + ["b"] * 5 + ["c"] * 5, index=[f"i{k:02d}" for k in range(20)])
    held = split_leave_cluster_out(strata, "b", 0.2, seed=0)
    counts = held.groupby(strata).agg(["sum", "size"])
    assert counts.loc["b"].tolist() == [5, 5]
    assert counts.loc["a"].tolist() == [2, 10] and counts.loc["c"].tolist() == [1, 5]
    with pytest.raises(NucleistyleError, match="holdout cluster 'z' is not one of"):
        split_leave_cluster_out(strata, "z", 0.2)


@pytest.mark.parametrize("fraction", [0, 1, -0.1, 1.5])
def test_a_fraction_outside_zero_one_is_refused(fraction):
    with pytest.raises(NucleistyleError, match="fraction"):
        split_strata(pd.Series([0, 0]), fraction)


@pytest.fixture(scope="module")
def synthetic_train(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    generate(
        SyntheticConfig.from_config({"n_train": 24, "n_test_per_modality": 1, "height": 48,
                                     "width": 48}),
        root,
    )  # fmt: skip
    return root / "stage1_train"


def test_holdout_writes_the_local_layout_with_the_held_out_masks_as_solution(
    synthetic_train, tmp_path
):
    out = tmp_path / "holdout"
    table = make_holdout(synthetic_train, out, fraction=0.25, seed=0, k=3)
    test_ids = set(table.loc[table["set"] == "stage1_test", "ImageId"])
    train_ids = set(table.loc[table["set"] == "stage1_train", "ImageId"])
    assert test_ids and train_ids and not test_ids & train_ids
    assert len(test_ids | train_ids) == 24
    assert {r.image_id for r in list_images(out / "stage1_train")} == train_ids
    test_records = list_images(out / "stage1_test")
    assert {r.image_id for r in test_records} == test_ids
    assert all(not r.mask_paths for r in test_records)  # images only
    solution = read_solution(out / "stage1_solution.csv")
    assert set(solution) == test_ids
    assert set(table.groupby("cluster")["set"].nunique()) == {2}  # every cluster on both sides
    assert pd.read_csv(out / "holdout.csv").equals(table.reset_index(drop=True))


@pytest.mark.parametrize("scheme", ["minority", "leave-cluster-out"])
def test_holdout_schemes_write_the_same_layout(synthetic_train, tmp_path, scheme):
    stratified = make_holdout(synthetic_train, tmp_path / "s", fraction=0.25, k=3)
    cluster = stratified["name"].value_counts().index[-1] if scheme != "minority" else None
    table = make_holdout(
        synthetic_train, tmp_path / "h", fraction=0.25, k=3, scheme=scheme, held_cluster=cluster
    )
    test = table[table["set"] == "stage1_test"]
    assert set(read_solution(tmp_path / "h" / "stage1_solution.csv")) == set(test["ImageId"])
    largest = stratified["name"].value_counts().index[0]
    share = (test["name"] != largest).mean()
    assert share > (stratified.loc[stratified["set"] == "stage1_test", "name"] != largest).mean()
    if cluster is not None:
        assert (table.loc[table["name"] == cluster, "set"] == "stage1_test").all()


def test_holdout_refuses_a_cluster_without_leave_cluster_out_and_the_reverse(
    synthetic_train, tmp_path
):
    with pytest.raises(NucleistyleError, match="leave-cluster-out scheme, and only with it"):
        make_holdout(synthetic_train, tmp_path / "a", k=3, held_cluster="x")
    with pytest.raises(NucleistyleError, match="leave-cluster-out scheme, and only with it"):
        make_holdout(synthetic_train, tmp_path / "b", k=3, scheme="leave-cluster-out")
    with pytest.raises(NucleistyleError, match="scheme must be one of"):
        make_holdout(synthetic_train, tmp_path / "c", k=3, scheme="random")
    assert not any(tmp_path.iterdir())


def test_holdout_refuses_an_existing_folder_and_a_set_without_masks(synthetic_train, tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    with pytest.raises(NucleistyleError, match="already exists and is not empty"):
        make_holdout(synthetic_train, tmp_path / "taken")
    assert (tmp_path / "taken" / "notes.txt").read_text() == "mine"
    flat = tmp_path / "flat"
    flat.mkdir()
    first = list_images(synthetic_train)[0]
    (flat / f"{first.image_id}.png").write_bytes(first.image_path.read_bytes())
    with pytest.raises(NucleistyleError, match="has no masks"):
        make_holdout(flat, tmp_path / "new")
    assert not (tmp_path / "new").exists()


def test_holdout_command_prints_the_split_per_cluster_on_stderr(synthetic_train, tmp_path, capsys):
    from nucleistyle.cli import main

    assert main(["holdout", str(synthetic_train), str(tmp_path / "h"), "--k", "3"]) == 0
    captured = capsys.readouterr()
    assert captured.err.startswith("held out ") and "stage1_test" in captured.err
    assert captured.out == ""  # a status, not data: stdout stays free
    assert main(["holdout", str(synthetic_train), str(tmp_path / "h")]) == 2
    assert "already exists" in capsys.readouterr().err


@pytest.mark.workflow
def test_the_cpu_profile_holds_out_the_minority_test_set_and_trains_three_arms(
    synthetic_train, tmp_path
):
    """`snakemake --profile profiles/cpu --config data={holdout: {train: ...}}`: config.small.yaml
    and config.cpu.yaml are applied, the held-out copy (minority scheme) is the test set, and
    Deep Retina trains the none, style and jitter arms."""
    from tests.conftest import snakemake, workflow_copy

    copy = workflow_copy(tmp_path)
    override = f"data={{holdout: {{train: {synthetic_train}}}}}"
    result = snakemake("-n", "--profile", "profiles/cpu", "--cores", "2", "--config", override,
                       cwd=copy)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "make_holdout" in result.stdout and "stage1_test" in result.stdout
    assert "mirzaev" not in result.stdout  # Deep Retina only on two cores
    for arm in ("none", "style", "jitter"):
        assert f"deep_retina-{arm}" in result.stdout
    assert "synthesize_dataset" not in result.stdout and "download" not in result.stdout
