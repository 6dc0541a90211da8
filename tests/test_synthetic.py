"""Tests for the synthetic multi-modality data set (nucleistyle.data.synthetic)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nucleistyle.data.bbbc038 import list_images, load_sample
from nucleistyle.data.csvio import read_solution
from nucleistyle.data.synthetic import (
    DEFAULT_PROPORTIONS,
    MODALITIES,
    REAL_GROUP,
    REAL_STATS,
    SyntheticConfig,
    default_scale,
    generate,
    image_id,
    image_stats,
    synthesize,
    train_counts,
)
from nucleistyle.errors import NucleistyleError

GREY = ("small_fluorescent", "large_fluorescent", "grayscale_tissue")
N_STATS = 40  # synthetic images per modality for the calibration checks
# HSV families: the two fluorescent modalities share one (their mean HSV differs by 0.01 in the
# real data too: Default V 0.053, Superbig 0.042), the other modalities are one family each
FAMILY = {
    "small_fluorescent": "fluorescent",
    "large_fluorescent": "fluorescent",
    "grayscale_tissue": "grayscale_tissue",
    "purple_tissue": "purple_tissue",
    "pink_purple_tissue": "pink_purple_tissue",
}
STAT_COLUMNS = [f"{r}_{c}" for r in ("background", "nucleus") for c in "rgb"] + ["h", "s", "v"]


@pytest.fixture(scope="module")
def synthetic_stats() -> pd.DataFrame:
    """image_stats of N_STATS default-size images per modality (fixed seeds)."""
    rows = []
    for k, modality in enumerate(MODALITIES):
        for i in range(N_STATS):
            image, labels = synthesize(modality, np.random.default_rng([11, k, i]))
            rows.append({"modality": modality, **image_stats(image, labels)})
    return pd.DataFrame(rows)


def _table_values(modality: str) -> tuple[np.ndarray, np.ndarray]:
    """REAL_STATS means and between-image sds in STAT_COLUMNS order."""
    real = REAL_STATS[REAL_GROUP[modality]]
    mean = np.array([*real.background_rgb, *real.nucleus_rgb, *real.hsv])
    sd = np.array([*real.background_rgb_sd, *real.nucleus_rgb_sd, *real.hsv_sd])
    return mean, sd


# ------------------------------------------------------------------------------------------------
# configuration


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"proportions": {"phase_contrast": 1.0}}, "proportions"),
        ({"proportions": {"small_fluorescent": -1.0}}, "proportions"),
        ({"proportions": {"small_fluorescent": 0.0}}, "proportions"),
        ({"proportions": {"small_fluorescent": math.nan}}, "proportions"),
        ({"n_train": 9}, "n_train"),
        ({"n_test_per_modality": 0}, "n_test_per_modality"),
        ({"height": 16}, "height"),
        ({"seed": -1}, "seed"),
        ({"seed": 1.5}, "seed"),
        ({"scale": 0.0}, "scale"),
    ],
)
def test_config_rejects_invalid_fields_naming_the_key(kwargs: dict, key: str) -> None:
    with pytest.raises(NucleistyleError, match=rf"synthetic\.{key}"):
        SyntheticConfig(**kwargs)


def test_config_needs_two_training_images_per_used_modality_only() -> None:
    cfg = SyntheticConfig(n_train=4, proportions={"small_fluorescent": 1, "purple_tissue": 1})
    assert train_counts(cfg.n_train, cfg.proportions) == {
        "small_fluorescent": 2,
        "large_fluorescent": 0,
        "grayscale_tissue": 0,
        "purple_tissue": 2,
        "pink_purple_tissue": 0,
    }


def test_train_counts_follow_stage1_proportions_with_two_per_modality_minimum() -> None:
    assert train_counts(100, DEFAULT_PROPORTIONS) == {
        "small_fluorescent": 68,
        "large_fluorescent": 13,
        "grayscale_tissue": 2,
        "purple_tissue": 15,
        "pink_purple_tissue": 2,
    }
    assert set(train_counts(10, DEFAULT_PROPORTIONS).values()) == {2}
    for n in (10, 11, 37, 250):
        counts = train_counts(n, DEFAULT_PROPORTIONS)
        assert sum(counts.values()) == n
        assert min(counts.values()) >= 2


def test_default_scale_shrinks_only_images_smaller_than_the_field_of_view() -> None:
    assert default_scale(128, 128) == pytest.approx(0.8)
    assert default_scale(128, 320) == pytest.approx(0.8)
    assert default_scale(256, 256) == 1.0
    assert SyntheticConfig(height=64, width=64).length_scale == pytest.approx(0.4)
    assert SyntheticConfig(scale=0.5).length_scale == 0.5


def test_image_id_is_64_hex_and_depends_on_seed_set_and_index() -> None:
    ids = {
        image_id(s, n, i) for s in (0, 1) for n in ("stage1_train", "stage1_test") for i in (0, 1)
    }
    assert len(ids) == 8
    assert all(re.fullmatch(r"[0-9a-f]{64}", i) for i in ids)
    assert image_id(3, "stage1_test", 5) == image_id(3, "stage1_test", 5)


# ------------------------------------------------------------------------------------------------
# single images


@pytest.mark.parametrize("modality", MODALITIES)
def test_synthesize_returns_rgb_uint8_and_sequential_labels(modality: str) -> None:
    image, labels = synthesize(modality, np.random.default_rng(5), 96, 112)
    assert image.dtype == np.uint8 and image.shape == (96, 112, 3)
    assert labels.dtype == np.int32 and labels.shape == (96, 112)
    ids = np.unique(labels)
    assert ids[0] == 0 and ids.size >= 2
    np.testing.assert_array_equal(ids, np.arange(ids.size))  # 1..n, no gaps
    grey = (image[..., 0] == image[..., 1]).all() and (image[..., 1] == image[..., 2]).all()
    assert grey == (modality in GREY)


@pytest.mark.parametrize("modality", MODALITIES)
def test_nuclei_have_the_modality_polarity(modality: str) -> None:
    """Fluorescent nuclei are brighter than the background, stained nuclei darker."""
    for seed in range(4):
        image, labels = synthesize(modality, np.random.default_rng([seed, 9]))
        grey = image.astype(float).mean(2)
        inside, outside = grey[labels > 0].mean(), grey[labels == 0].mean()
        if "fluorescent" in modality:
            assert inside > outside + 5
        else:
            assert inside < outside - 5


def test_synthesize_is_deterministic_for_a_seed() -> None:
    a = synthesize("purple_tissue", np.random.default_rng(42))
    b = synthesize("purple_tissue", np.random.default_rng(42))
    c = synthesize("purple_tissue", np.random.default_rng(43))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_render_as_draws_the_same_nuclei_in_another_style() -> None:
    def draw(render_as: str) -> tuple[np.ndarray, np.ndarray]:
        return synthesize("small_fluorescent", np.random.default_rng(7), render_as=render_as)

    image, labels = synthesize("small_fluorescent", np.random.default_rng(7))
    np.testing.assert_array_equal(draw("small_fluorescent")[0], image)  # itself: the plain call
    moved, moved_labels = draw("purple_tissue")
    np.testing.assert_array_equal(moved_labels, labels)
    purple = synthesize("purple_tissue", np.random.default_rng(8))[0]

    def colour_distance(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.abs(a.reshape(-1, 3).mean(0) - b.reshape(-1, 3).mean(0)).sum())

    assert colour_distance(moved, purple) < colour_distance(moved, image)
    with pytest.raises(NucleistyleError, match="unknown modality 'phase'"):
        draw("phase")


def test_synthesize_rejects_unknown_modality() -> None:
    with pytest.raises(NucleistyleError, match="unknown modality 'phase'"):
        synthesize("phase", np.random.default_rng(0))


def test_nucleus_sizes_scale_with_the_length_scale() -> None:
    def median_area(scale: float) -> float:
        areas = [
            np.bincount(
                synthesize("small_fluorescent", np.random.default_rng(i), scale=scale)[1].ravel()
            )[1:]
            for i in range(12)
        ]
        return float(np.median(np.concatenate(areas)))

    ratio = median_area(1.0) / median_area(0.5)
    assert 3.0 < ratio < 5.0  # areas go with scale^2 = 4


def test_image_stats_on_a_hand_made_image() -> None:
    image = np.zeros((4, 4, 3), np.uint8)
    image[:2] = (200, 100, 50)
    labels = np.zeros((4, 4), np.int32)
    labels[0, :2] = 1
    labels[1, :3] = 2
    stats = image_stats(image, labels)
    assert (stats["nucleus_r"], stats["nucleus_g"], stats["nucleus_b"]) == (200, 100, 50)
    assert stats["background_r"] == pytest.approx(200 * 3 / 11)
    assert stats["n_nuclei"] == 2 and stats["median_area"] == 2.5
    assert stats["foreground_fraction"] == 5 / 16
    assert stats["v"] == pytest.approx(8 / 16 * 200 / 255)
    assert stats["s"] == pytest.approx(8 / 16 * 0.75)


# ------------------------------------------------------------------------------------------------
# calibration against the real groups


@pytest.mark.parametrize("modality", MODALITIES)
def test_synthetic_colours_and_hsv_match_the_real_group_table(
    synthetic_stats: pd.DataFrame, modality: str
) -> None:
    """Mean background / nucleus RGB and mean H, S, V over N_STATS images match REAL_STATS
    within 3 standard errors of the difference plus 4 grey levels / 0.01 (HSV)."""
    mean, sd = _table_values(modality)
    got = synthetic_stats.loc[synthetic_stats.modality == modality, STAT_COLUMNS]
    n_real = REAL_STATS[REAL_GROUP[modality]].n_images
    se = np.sqrt(got.var(ddof=0).to_numpy() / len(got) + sd**2 / n_real)
    slack = np.array([4.0] * 6 + [0.01] * 3)
    diff = np.abs(got.mean().to_numpy() - mean)
    assert np.all(diff <= slack + 3 * se), (got.mean().to_numpy(), mean, slack + 3 * se)


@pytest.mark.parametrize("modality", MODALITIES)
def test_synthetic_nucleus_sizes_and_coverage_match_the_real_group_table(
    synthetic_stats: pd.DataFrame, modality: str
) -> None:
    real = REAL_STATS[REAL_GROUP[modality]]
    got = synthetic_stats[synthetic_stats.modality == modality]
    scale = default_scale(128, 128)
    median_area = got.median_area.median() / scale**2  # in native px
    q25, _, q75 = real.image_median_area
    assert 0.7 * q25 <= median_area <= 1.3 * q75
    # within a factor 1.6: a 128-px crop always holds a nucleus, a sparse real 1024-px image
    # (TissueBW: 1.9 % nuclei) has more empty glass
    ratio = got.foreground_fraction.mean() / real.foreground_fraction
    assert 1 / 1.6 <= ratio <= 1.6


def test_modalities_are_distinct_in_mean_hsv(synthetic_stats: pd.DataFrame) -> None:
    """Each HSV family is compact: images are nearest to their own family's centroid, and the
    centroids are farther apart than 1.5x the largest within-family sd (real data: 2.2x, purple
    vs pink-and-purple)."""
    families = synthetic_stats.modality.map(FAMILY)
    features = synthetic_stats[["h", "s", "v"]].to_numpy()
    centroids = synthetic_stats[["h", "s", "v"]].groupby(families).mean()
    nearest = centroids.index.to_numpy()[
        np.linalg.norm(features[:, None] - centroids.to_numpy()[None], axis=2).argmin(1)
    ]
    assert (nearest == families.to_numpy()).mean() >= 0.95
    gaps = np.linalg.norm(centroids.to_numpy()[:, None] - centroids.to_numpy()[None], axis=2)
    spread = np.sqrt(synthetic_stats[["h", "s", "v"]].groupby(families).var().sum(axis=1).max())
    assert gaps[~np.eye(len(gaps), dtype=bool)].min() > 1.5 * spread


@pytest.fixture(scope="module")
def real_subset_stats(shared_bbbc038: Path) -> pd.DataFrame:
    """image_stats of the first 10 images (by ImageId) of each real manifest group."""
    manifest = pd.read_csv(shared_bbbc038 / "manifest.csv").sort_values("ImageId")
    records = {r.image_id: r for r in list_images(shared_bbbc038 / "stage1_train")}
    rows = []
    for group, table in manifest.groupby("group"):
        for image_id_ in table.ImageId.iloc[:10]:
            sample = load_sample(records[image_id_])
            rows.append({"group": group, **image_stats(sample.image, sample.labels)})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("modality", MODALITIES)
def test_synthetic_colours_match_real_images(
    real_subset_stats: pd.DataFrame, synthetic_stats: pd.DataFrame, modality: str
) -> None:
    """Synthetic vs re-measured real group means: within 3 combined standard errors + 4 / 0.01;
    and the real subset agrees with the documented REAL_STATS table the same way."""
    real = real_subset_stats[real_subset_stats.group == REAL_GROUP[modality]][STAT_COLUMNS]
    synthetic = synthetic_stats[synthetic_stats.modality == modality][STAT_COLUMNS]
    slack = np.array([4.0] * 6 + [0.01] * 3)
    se = np.sqrt(real.var(ddof=0) / len(real) + synthetic.var(ddof=0) / len(synthetic))
    diff = (synthetic.mean() - real.mean()).abs().to_numpy()
    assert np.all(diff <= slack + 3 * se.to_numpy()), (synthetic.mean(), real.mean())
    table_mean, table_sd = _table_values(modality)
    table_diff = np.abs(real.mean().to_numpy() - table_mean)
    assert np.all(table_diff <= slack + 3 * table_sd / math.sqrt(len(real)))


def test_synthetic_hsv_centroids_classify_real_images(
    real_subset_stats: pd.DataFrame, synthetic_stats: pd.DataFrame
) -> None:
    """Nearest synthetic family centroid (mean H, S, V) gives the real image's family."""
    real_family = real_subset_stats.group.map({REAL_GROUP[m]: FAMILY[m] for m in MODALITIES})
    centroids = (
        synthetic_stats[["h", "s", "v"]].groupby(synthetic_stats.modality.map(FAMILY)).mean()
    )
    features = real_subset_stats[["h", "s", "v"]].to_numpy()
    nearest = centroids.index.to_numpy()[
        np.linalg.norm(features[:, None] - centroids.to_numpy()[None], axis=2).argmin(1)
    ]
    assert (nearest == real_family.to_numpy()).mean() >= 0.9


# ------------------------------------------------------------------------------------------------
# the data set on disk


SMALL = SyntheticConfig(seed=3, n_train=10, n_test_per_modality=1, height=64, width=80)


@pytest.fixture(scope="module")
def small_set(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    out = tmp_path_factory.mktemp("synthetic") / "demo"
    return out, generate(SMALL, out)


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_generate_writes_the_bbbc038_layout(small_set: tuple[Path, pd.DataFrame]) -> None:
    out, table = small_set
    assert sorted(p.name for p in out.iterdir()) == [
        ".nucleistyle",  # the marker that lets a later run with overwrite replace it
        "modalities.csv",
        "stage1_solution.csv",
        "stage1_test",
        "stage1_train",
    ]
    train = list_images(out / "stage1_train")
    test = list_images(out / "stage1_test")
    assert len(train) == 10 and all(r.mask_paths for r in train)
    assert len(test) == 5 and not any(r.mask_paths for r in test)
    assert not (out / "stage1_test" / test[0].image_id / "masks").exists()
    on_disk = pd.read_csv(out / "modalities.csv")
    assert list(on_disk.columns) == ["ImageId", "set", "modality"]
    pd.testing.assert_frame_equal(on_disk, table)
    assert table.groupby("set").size().to_dict() == {"stage1_test": 5, "stage1_train": 10}
    assert sorted(table[table.set == "stage1_test"].modality) == sorted(MODALITIES)
    assert (table[table.set == "stage1_train"].modality.value_counts() == 2).all()
    expected_ids = {image_id(3, "stage1_train", i) for i in range(10)}
    assert set(table[table.set == "stage1_train"].ImageId) == expected_ids
    assert {r.image_id for r in train} == expected_ids


def test_generated_masks_and_solution_hold_the_generated_labels(
    small_set: tuple[Path, pd.DataFrame],
) -> None:
    out, table = small_set
    plan = table.assign(index=table.groupby("set").cumcount())
    solution = read_solution(out / "stage1_solution.csv")
    assert set(solution) == set(table[table.set == "stage1_test"].ImageId)
    records = {r.image_id: r for r in list_images(out / "stage1_train")}
    for row in plan.itertuples(index=False):
        code = 0 if row.set == "stage1_train" else 1
        image, labels = synthesize(
            row.modality, np.random.default_rng([3, code, row.index + 1]), 64, 80
        )
        if row.set == "stage1_train":
            sample = load_sample(records[row.ImageId])
            np.testing.assert_array_equal(sample.image, image)
            np.testing.assert_array_equal(sample.labels, labels)
        else:
            truth = solution[row.ImageId]
            assert (truth.height, truth.width) == (64, 80)
            assert len(truth.rles) == labels.max()
            np.testing.assert_array_equal(truth.label_image()[0], labels)


def test_generate_is_byte_identical_for_a_seed_and_replaces_only_its_own_output(
    small_set: tuple[Path, pd.DataFrame], tmp_path: Path
) -> None:
    out, _ = small_set
    again = tmp_path / "again"
    (again / "stale").mkdir(parents=True)
    with pytest.raises(NucleistyleError, match="already exists and is not empty"):
        generate(SMALL, again)
    with pytest.raises(NucleistyleError, match="was not written by nucleistyle synthesize"):
        generate(SMALL, again, overwrite=True)
    assert [p.name for p in again.iterdir()] == ["stale"]
    (again / "stale").rmdir()
    generate(SMALL, again)  # an empty folder is fine
    generate(SMALL, again, overwrite=True)  # and so is replacing its own output
    assert _files(again) == _files(out)
    other = tmp_path / "other"
    generate(SyntheticConfig(seed=4, n_train=10, n_test_per_modality=1, height=64, width=80), other)
    assert _files(other).keys() != _files(out).keys()


def test_failed_generate_leaves_no_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import nucleistyle.data.synthetic.dataset as synthetic

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(synthetic, "write_solution", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        generate(SMALL, tmp_path / "demo")
    assert list(tmp_path.iterdir()) == []
