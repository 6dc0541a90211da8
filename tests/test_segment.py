"""Mask R-CNN baselines without a network: configs, transforms, data, post-processing, figure."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from nucleistyle.data.bbbc038 import write_sample
from nucleistyle.errors import NucleistyleError
from nucleistyle.report import segment as report_segment
from nucleistyle.report.segment import plot_training
from nucleistyle.segment.configs import (
    PostConfig,
    config_from_fingerprint,
    flatten,
    get_config,
)
from nucleistyle.segment.dataset import (
    DrawDataset,
    TrainItem,
    cluster_weights,
    fill_label_holes,
    list_training_records,
    load_items,
    split_validation,
)
from nucleistyle.segment.postprocess import Instances, postprocess
from nucleistyle.segment.transforms import (
    ChannelShift,
    ColourJitter,
    Compose,
    FitLongest,
    RandomAffine,
    RandomCrop,
    RandomFlip,
    RandomRot90,
    RandomRotate,
    RandomZoomCrop,
    to_target,
    training_pipeline,
)

BASELINES_MD = Path(__file__).resolve().parents[2] / "shared" / "research" / "baselines.md"

# ------------------------------------------------------------------------------------------------
# configs


def test_deep_retina_defaults_match_baselines_md() -> None:
    cfg = get_config("deep_retina")
    m = cfg.model
    assert m.anchor_sizes == (8, 16, 32, 64, 128) and m.aspect_ratios == (0.5, 1.0, 2.0)
    assert (m.rpn_batch_size_per_image, m.box_batch_size_per_image) == (256, 600)
    assert (m.rpn_post_nms_top_n_train, m.rpn_post_nms_top_n_test) == (2000, 1000)
    assert (m.box_score_thresh, m.box_nms_thresh, m.box_detections_per_img) == (0.9, 0.2, 512)
    assert m.box_positive_fraction == 0.33
    assert (cfg.prep.policy, cfg.prep.size, cfg.prep.pad_multiple) == ("zoom_crop", 512, 64)
    assert (cfg.prep.min_enlarge, cfg.prep.zoom, cfg.prep.aspect) == (1.2, 1.5, 1.3)
    assert (cfg.augment.rot90, cfg.augment.rotate_deg, cfg.augment.channel_shift) == (
        "any",
        10.0,
        15.0,
    )
    assert (cfg.optim.optimizer, cfg.optim.lr, cfg.optim.momentum) == ("sgd", 1e-3, 0.9)
    assert cfg.optim.lr_factors == pytest.approx((1.0, 0.1, 1 / 30))
    assert (cfg.epochs, cfg.batch_size, cfg.val_fraction, cfg.selection) == (75, 2, 0.0, "last")
    p = cfg.post
    # no 1-px dilation: torchvision's masks are not Matterport's (test_learning.py shows the cap)
    assert (p.mask_threshold, p.dilation, p.max_lost, p.min_area, p.fill_holes) == (
        0.5,
        0,
        0.7,
        0,
        False,
    )


def test_mirzaev_defaults_match_baselines_md() -> None:
    cfg = get_config("mirzaev")
    m = cfg.model
    assert (m.rpn_batch_size_per_image, m.box_batch_size_per_image) == (320, 512)
    assert (m.rpn_post_nms_top_n_train, m.rpn_post_nms_top_n_test) == (2048, 2048)
    assert (m.box_score_thresh, m.box_nms_thresh, m.box_detections_per_img) == (0.75, 0.3, 400)
    assert (cfg.prep.policy, cfg.prep.size, cfg.prep.crop, cfg.prep.fill_holes) == (
        "fit_longest",
        512,
        256,
        True,
    )
    assert (cfg.augment.affine_p, cfg.augment.affine_scale, cfg.augment.affine_deg) == (
        0.5,
        (0.5, 2.0),
        15.0,
    )
    assert (cfg.augment.rot90, cfg.augment.channel_shift) == ("pm1", 0.0)
    assert (cfg.optim.optimizer, cfg.optim.amsgrad, cfg.optim.lr) == ("adam", True, 1e-4)
    assert cfg.optim.lr_factors == (1.0, 0.1, 0.01)
    assert (cfg.val_fraction, cfg.split_seed, cfg.selection) == (0.1, 11, "best_val")
    p = cfg.post
    # 0.5, not the original 0.35 (tuned for Matterport's masks; 0.5 scored higher here)
    assert (p.mask_threshold, p.min_area, p.fill_holes, p.closing, p.drop_fragmented) == (
        0.5,
        10,
        True,
        True,
        True,
    )
    assert (p.dilation, p.fallback_canvas) == (0, 4)


# (row of baselines.md as a regex with the value as group 1, baseline, config attribute)
DOC_ROWS = [
    (r"\| TRAIN_ROIS_PER_IMAGE \| \*\*(\d+)\*\*", "deep_retina", "model.box_batch_size_per_image"),
    (r"\| DETECTION_MIN_CONFIDENCE \| \*\*([\d.]+)\*\*", "deep_retina", "model.box_score_thresh"),
    (r"\| DETECTION_MAX_INSTANCES \| \*\*(\d+)\*\* \|", "mirzaev", "model.box_detections_per_img"),
    (r"\| RPN_TRAIN_ANCHORS_PER_IMAGE \| \*\*(\d+)", "mirzaev", "model.rpn_batch_size_per_image"),
]  # fmt: skip


@pytest.mark.parametrize(("row", "baseline", "attribute"), DOC_ROWS)
def test_config_values_are_the_ones_in_baselines_md(
    row: str, baseline: str, attribute: str
) -> None:
    if not BASELINES_MD.is_file():
        pytest.skip(f"{BASELINES_MD} not found")
    found = re.search(row, BASELINES_MD.read_text())
    assert found is not None, row
    section, name = attribute.split(".")
    assert float(found.group(1)) == getattr(getattr(get_config(baseline), section), name)


def test_overrides_set_budget_and_sections() -> None:
    cfg = get_config(
        "mirzaev",
        {
            "iterations": 50,
            "backbone": "resnet18",
            "optim": {"lr": 3e-4},
            "model": {"anchor_sizes": [4, 8, 16, 32, 64]},
        },
    )
    assert (cfg.iterations, cfg.epochs, cfg.backbone) == (50, None, "resnet18")
    assert cfg.optim.lr == 3e-4 and cfg.optim.optimizer == "adam"  # baseline default kept
    assert cfg.model.anchor_sizes == (4, 8, 16, 32, 64)
    assert cfg.total_iterations(1000) == 50
    epochs = get_config("deep_retina", {"epochs": 2, "batch_size": 4})
    assert epochs.total_iterations(10) == 6  # ceil(10 / 4) = 3 iterations per epoch


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"colour": 1}, "segment.colour"),
        ({"optim": {"learning_rate": 1}}, "segment.optim.learning_rate"),
        ({"model": {"box_score_thresh": 1.5}}, "segment.model.box_score_thresh"),
        ({"iterations": 5, "epochs": 2}, "segment.iterations"),
        ({"backbone": "vgg16"}, "segment.backbone"),
        ({"optim": {"milestones": [0.5], "lr_factors": [1.0]}}, "segment.optim.lr_factors"),
    ],
)
def test_bad_overrides_name_the_key(overrides: dict, key: str) -> None:
    with pytest.raises(NucleistyleError, match=re.escape(key)):
        get_config("deep_retina", overrides)


def test_unknown_baseline_is_an_error() -> None:
    with pytest.raises(NucleistyleError, match="unknown segmentation baseline"):
        get_config("unet", {})


def test_lr_schedule_scales_with_the_budget() -> None:
    optim = get_config("deep_retina").optim  # 1e-3 until 30/75, 1e-4 until 50/75, then 1e-3/30
    for total in (75, 750):
        assert optim.lr_at(0, total) == pytest.approx(1e-3)
        assert optim.lr_at(30 * total // 75 - 1, total) == pytest.approx(1e-3)
        assert optim.lr_at(30 * total // 75, total) == pytest.approx(1e-4)
        assert optim.lr_at(50 * total // 75, total) == pytest.approx(1e-3 / 30)
    assert optim.phase_start(75) == 50
    warm = get_config("deep_retina", {"optim": {"warmup_iters": 10}}).optim
    assert warm.lr_at(0, 100) == pytest.approx(1e-6)
    assert warm.lr_at(5, 100) == pytest.approx(1e-3 * (0.5 + 0.5e-3))


def test_fingerprint_round_trips_to_the_same_config() -> None:
    cfg = get_config("mirzaev", {"iterations": 7, "prep": {"size": 128}})
    flat = flatten(cfg)
    assert flat["model.anchor_sizes"] == [8, 16, 32, 64, 128]  # plain lists, not tuples
    assert config_from_fingerprint(flat) == cfg
    with pytest.raises(NucleistyleError, match=r"segment\.model\.wings"):
        config_from_fingerprint({**flat, "model.wings": 2})


# ------------------------------------------------------------------------------------------------
# transforms: a labelled square must move exactly with its image


def _square(h: int = 20, w: int = 30) -> tuple[np.ndarray, np.ndarray]:
    labels = np.zeros((h, w), np.int32)
    labels[3:8, 4:12] = 1  # rows 3..7, cols 4..11
    labels[12:16, 20:23] = 2
    image = np.zeros((h, w, 3), np.uint8)
    image[..., 0] = labels * 100  # the image shows the labels: alignment is checkable
    image[..., 1] = 7
    return image, labels


def _assert_aligned(image: np.ndarray, labels: np.ndarray) -> None:
    np.testing.assert_array_equal(image[..., 0], labels * 100)


class _Fixed:
    """A generator stand-in returning fixed draws (for transforms with known outcomes)."""

    def __init__(self, random: float, integers: int = 0, uniform: float = 0.0) -> None:
        self._random, self._integers, self._uniform = random, integers, uniform

    def random(self) -> float:
        return self._random

    def integers(self, low: int, high: int) -> int:
        return min(max(self._integers, low), high - 1)

    def uniform(self, low: float, high: float, size: int | None = None) -> float:
        return self._uniform


def test_horizontal_and_vertical_flips_move_the_box() -> None:
    image, labels = _square()
    img, lab = RandomFlip(1.0, axis=1)(image, labels, np.random.default_rng(0))
    _assert_aligned(img, lab)
    rows, cols = np.nonzero(lab == 1)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (3, 7, 30 - 12, 30 - 5)
    img, lab = RandomFlip(1.0, axis=0)(image, labels, np.random.default_rng(0))
    rows, cols = np.nonzero(lab == 1)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (20 - 8, 20 - 4, 4, 11)
    _assert_aligned(img, lab)
    img, lab = RandomFlip(0.0)(image, labels, np.random.default_rng(0))
    assert img is image and lab is labels


def test_rot90_moves_the_box_counter_clockwise() -> None:
    image, labels = _square()
    for seed in range(8):
        rng = np.random.default_rng(seed)
        k = int(np.random.default_rng(seed).integers(0, 4))
        img, lab = RandomRot90("any")(image, labels, rng)
        _assert_aligned(img, lab)
        np.testing.assert_array_equal(lab, np.rot90(labels, k))
    img, lab = RandomRot90("pm1")(image, labels, _Fixed(random=0.2))  # p < .5, then k = +1
    rows, cols = np.nonzero(lab == 1)
    # (r, c) -> (W - 1 - c, r): cols 4..11 become rows 18..25, rows 3..7 become cols 3..7
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (18, 25, 3, 7)


def test_free_rotation_keeps_nearest_neighbour_alignment() -> None:
    image, labels = _square(40, 40)
    img, lab = RandomRotate(1.0, 10.0)(image, labels, np.random.default_rng(3))
    _assert_aligned(img, lab)
    assert set(np.unique(lab)) == {0, 1, 2}
    assert not np.array_equal(lab, labels)


def test_crops_cut_image_and_labels_at_the_same_place() -> None:
    image, labels = _square()
    img, lab = RandomCrop(10, p=1.0)(image, labels, _Fixed(random=0.0, integers=2))
    np.testing.assert_array_equal(lab, labels[2:12, 2:12])
    _assert_aligned(img, lab)
    # a crop without instances is rejected: the input comes back
    img, lab = RandomCrop(3, p=1.0)(image, labels, _Fixed(random=0.0, integers=0))
    assert lab is labels


def _centroid(mask: np.ndarray) -> np.ndarray:
    return np.array(np.nonzero(mask)).mean(axis=1)


def test_zoom_crop_scales_the_short_side_to_the_crop_and_keeps_objects_aligned() -> None:
    labels = np.zeros((20, 30), np.int32)
    labels[4:16, 6:24] = 1
    image = np.zeros((20, 30, 3), np.uint8)
    image[labels > 0] = 200
    for seed in range(5):
        img, lab = RandomZoomCrop(64, 1.2, 1.5, 1.3)(image, labels, np.random.default_rng(seed))
        assert img.shape == (64, 64, 3) and lab.shape == (64, 64)
        # upscaled 3.2-4.8x: bilinear image and nearest labels differ at most along the edge
        bright, inside = img[..., 0] > 100, lab > 0
        assert inside.any()
        assert np.count_nonzero(bright & inside) / np.count_nonzero(bright | inside) > 0.9


def test_fit_longest_and_affine_keep_objects_aligned() -> None:
    image, labels = _square(20, 40)
    img, lab = FitLongest(80)(image, labels, np.random.default_rng(0))
    assert lab.shape == (40, 80)
    np.testing.assert_array_equal(lab[6:16, 8:24], 1)  # rows 3..7, cols 4..11 doubled
    assert np.count_nonzero(lab == 1) == 160
    np.testing.assert_array_equal(img[..., 0] > 50, lab > 0)  # bilinear edges cross at 50 %
    big_image, big_labels = _square(40, 40)
    img, lab = RandomAffine(1.0, (0.8, 1.2), 15.0)(big_image, big_labels, np.random.default_rng(1))
    assert lab.max() >= 2
    for k in range(1, lab.max() + 1):
        mask = lab == k
        assert abs(float(img[..., 0][mask].mean()) - 100 * big_labels.max()) < 200
    # every object of the warped image sits where the warped labels say
    bright = img[..., 0] > 50
    assert np.mean(bright == (lab > 0)) > 0.97


def test_colour_transforms_change_colour_only() -> None:
    image, labels = _square()
    image[..., 2] = 40
    img, lab = ChannelShift(15.0)(image, labels, np.random.default_rng(0))
    assert lab is labels and img.min() >= image.min() and img.max() <= image.max()
    img, lab = ColourJitter(p=1.0, invert=1.0)(image, labels, np.random.default_rng(0))
    assert lab is labels and img.shape == image.shape and not np.array_equal(img, image)


def test_training_pipelines_give_network_sized_samples() -> None:
    image, labels = _square(60, 90)
    for baseline, shape in (("deep_retina", (64, 64)), ("mirzaev", None)):
        cfg = get_config(baseline, {"prep": {"size": 64, "crop": 32}})
        for arm in ("none", "jitter"):
            pipe = training_pipeline(cfg, arm)
            assert isinstance(pipe, Compose)
            img, lab = pipe(image, labels, np.random.default_rng(5))
            assert img.shape[:2] == lab.shape
            assert (shape is None and max(lab.shape) == 64) or lab.shape == shape


def test_to_target_boxes_enclose_each_mask() -> None:
    image, labels = _square()
    tensor, target = to_target(image, labels, 256, np.random.default_rng(0))
    assert tensor.shape == (3, 20, 30) and float(tensor.max()) <= 1.0
    np.testing.assert_array_equal(target["boxes"].numpy(), [[4, 3, 12, 8], [20, 12, 23, 16]])
    assert target["masks"].shape == (2, 20, 30) and int(target["masks"][0].sum()) == 40
    assert target["labels"].tolist() == [1, 1]
    _, capped = to_target(image, labels, 1, np.random.default_rng(0))
    assert len(capped["boxes"]) == 1
    _, empty = to_target(image, np.zeros_like(labels), 5, np.random.default_rng(0))
    assert empty["boxes"].shape == (0, 4) and empty["masks"].shape == (0, 20, 30)


# ------------------------------------------------------------------------------------------------
# post-processing


def _instances(masks: list[np.ndarray], scores: list[float]) -> Instances:
    return Instances.from_dense(np.stack(masks), np.array(scores))


def _box(shape: tuple[int, int], r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[r0:r1, c0:c1] = True
    return mask


def test_overlaps_go_to_the_higher_score() -> None:
    low, high = _box((10, 10), 0, 6, 0, 6), _box((10, 10), 3, 9, 3, 9)
    labels = postprocess(_instances([low, high], [0.5, 0.8]), PostConfig(dilation=0, max_lost=1.0))
    assert labels[4, 4] == 1 and labels[0, 0] == 2  # label 1 = best score
    assert np.count_nonzero(labels == 1) == 36 and np.count_nonzero(labels == 2) == 27


def test_deep_retina_drops_an_instance_that_lost_most_of_its_area() -> None:
    big, inside = _box((12, 12), 0, 10, 0, 10), _box((12, 12), 2, 8, 2, 9)
    cfg = get_config("deep_retina", {"post": {"dilation": 1}}).post
    labels = postprocess(_instances([inside, big], [0.6, 0.9]), cfg)
    assert labels.max() == 1  # the inner box lost 100 % to the better one
    # dilation by a 3x3 cross grows a 10x10 box to 10x10 + 4 x 10 edge pixels (+ clipping)
    assert np.count_nonzero(labels == 1) == 11 * 11 - 1


def test_mirzaev_removes_small_fills_holes_and_drops_fragments() -> None:
    cfg = get_config("mirzaev").post  # min_area 10, fill holes, closing, drop fragmented
    ring = _box((20, 20), 1, 8, 1, 8)
    ring[3:6, 3:6] = False
    tiny = _box((20, 20), 15, 18, 15, 18)  # 9 px <= 10
    # a low-score bar split in two by a better instance -> fragmented -> dropped
    bar = _box((20, 20), 10, 13, 0, 20)
    cutter = _box((20, 20), 9, 14, 8, 12)
    labels = postprocess(_instances([ring, tiny, bar, cutter], [0.9, 0.95, 0.5, 0.8]), cfg)
    assert np.count_nonzero(labels == 1) == 49  # the ring's hole is filled (7 x 7)
    assert labels[16, 16] == 0  # the tiny object is gone
    assert labels[11, 2] == 0 and labels[11, 18] == 0  # the cut bar is gone
    assert labels[11, 10] == 2 and labels.max() == 2


def test_instances_dense_round_trip() -> None:
    masks = np.stack([_box((6, 7), 1, 3, 2, 6), np.zeros((6, 7), bool)])
    inst = Instances.from_dense(masks, np.array([0.3, 0.2]))
    np.testing.assert_array_equal(inst.dense(), masks)


# ------------------------------------------------------------------------------------------------
# training data


def _write(root: Path, image_id: str, size: tuple[int, int] = (32, 32)) -> Path:
    labels = np.zeros(size, np.int32)
    labels[4:12, 4:12] = 1
    labels[20:28, 14:22] = 2
    image = np.zeros((*size, 3), np.uint8)
    image[labels > 0] = 200
    return write_sample(root, image_id, image, labels)


def test_an_image_without_masks_is_an_error_naming_it(tmp_path: Path) -> None:
    _write(tmp_path / "train", "a")
    write_sample(tmp_path / "train", "b", np.zeros((32, 32, 3), np.uint8), None)
    with pytest.raises(NucleistyleError, match=r"training image .*b\.png has no masks"):
        list_training_records([tmp_path / "train"])


def test_a_mask_of_the_wrong_size_is_an_error_naming_it(tmp_path: Path) -> None:
    folder = _write(tmp_path / "train", "a")
    Image.fromarray(np.full((16, 16), 255, np.uint8)).save(folder / "masks" / "a_9999.png")
    with pytest.raises(NucleistyleError, match=r"mask .*a_9999\.png is 16x16"):
        load_items(list_training_records([tmp_path / "train"]), fill_holes=False, workers=1)


def test_an_empty_training_set_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(NucleistyleError, match=r"no images found in .*empty"):
        list_training_records([tmp_path / "empty"])
    with pytest.raises(NucleistyleError, match="training set is empty"):
        list_training_records([])


def test_an_imageid_in_two_folders_is_an_error(tmp_path: Path) -> None:
    _write(tmp_path / "one", "a")
    _write(tmp_path / "two", "a")
    with pytest.raises(NucleistyleError, match="ImageId a is in two training folders"):
        list_training_records([tmp_path / "one", tmp_path / "two"])


def test_hole_filling_fills_only_enclosed_background() -> None:
    labels = np.zeros((7, 7), np.int32)
    labels[1:6, 1:6] = 1
    labels[3, 3] = 0  # a hole
    labels[2, 2] = 2  # another instance inside: untouched
    filled = fill_label_holes(labels)
    assert filled[3, 3] == 1 and filled[2, 2] == 2 and filled[0, 0] == 0


def _item(image_id: str, kind: str, source: int = 0) -> TrainItem:
    return TrainItem(
        image_id, np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4), np.int32), source, kind
    )


def test_validation_split_is_stratified_and_keeps_added_folders_in_training() -> None:
    items = [_item(f"g{i}", "grey/dark") for i in range(20)]
    items += [_item(f"c{i}", "colour/bright") for i in range(10)]
    items += [_item(f"s{i}", "grey/dark", source=1) for i in range(10)]
    train, val = split_validation(items, 0.1, 11)
    assert len(val) == 3 and len(train) == 37
    assert sum(items[i].kind == "colour/bright" for i in val) == 1
    assert all(items[i].source == 0 for i in val)
    assert split_validation(items, 0.1, 11) == (train, val)  # deterministic
    assert split_validation(items, 0.0, 11) == (list(range(40)), [])


def test_oversampling_weights_draw_every_cluster_equally() -> None:
    ids = ["a", "b", "c", "d"]
    weights = cluster_weights(ids, {"a": "0", "b": "0", "c": "0", "d": "1"}, "clusters.csv")
    np.testing.assert_allclose(weights, [1 / 6, 1 / 6, 1 / 6, 1 / 2])
    with pytest.raises(NucleistyleError, match=r"clusters\.csv: ImageId d"):
        cluster_weights(ids, {"a": "0", "b": "0", "c": "0"}, "clusters.csv")


def test_draws_are_deterministic_and_cover_each_epoch() -> None:
    items = [_item(str(i), "k") for i in range(5)]
    for item in items:
        item.labels[1:3, 1:3] = 1
    pipe = Compose([RandomFlip(0.5, axis=1)])
    ds = DrawDataset(items, pipe, 20, seed=4, max_instances=10)
    assert sorted(ds.item_index(j) for j in range(5)) == list(range(5))
    a, b = ds[7], DrawDataset(items, pipe, 20, seed=4, max_instances=10)[7]
    np.testing.assert_array_equal(a[1]["masks"].numpy(), b[1]["masks"].numpy())
    weighted = DrawDataset(items, pipe, 1000, 0, 10, weights=np.array([0, 0, 0, 0, 1.0]))
    assert {weighted.item_index(j) for j in range(50)} == {4}


# ------------------------------------------------------------------------------------------------
# report figure


def test_plot_training_draws_every_history(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rows = pd.DataFrame(
        {
            "iteration": [10, 20],
            "loss": [2.0, 1.0],
            "loss_mask": [0.7, 0.5],
            "loss_classifier": [0.4, 0.3],
        }
    )
    rows.to_csv(tmp_path / "a.tsv", sep="\t", index=False)
    scored = {"iteration": [20], "val_loss": [1.5], "val_score": [0.4], "cpu_s": [120.0]}
    calibrated = {"iteration": [20], "val_score_calibrated": [0.45]}  # the engine's extra row
    with_val = pd.concat([rows, pd.DataFrame(scored), pd.DataFrame(calibrated)])
    with_val.to_csv(tmp_path / "b.tsv", sep="\t", index=False)
    figures = []
    monkeypatch.setattr(report_segment, "save_figure", lambda fig, out: figures.append(fig))
    plot_training({"a": tmp_path / "a.tsv", "b": tmp_path / "b.tsv"}, tmp_path / "x.png")
    curve, against_cpu = figures[0].axes[:2]
    stars = [
        (line.get_xdata()[0], line.get_ydata()[0])
        for line in curve.lines
        if line.get_marker() == "*"
    ]
    assert stars == [(20, 0.45)] and "calibration" in curve.get_title()
    assert [
        (ln.get_xdata()[0], ln.get_ydata()[0]) for ln in against_cpu.lines if ln.get_marker() == "*"
    ] == [(2.0, 0.45)]
    monkeypatch.undo()
    plot_training({"a": tmp_path / "a.tsv", "b": tmp_path / "b.tsv"}, tmp_path / "curves.png")
    with Image.open(tmp_path / "curves.png") as im:
        # two rows (learning curves above, the four loss panels below), four panels wide
        assert im.width / im.height == pytest.approx(4 * 4 / 6.4, rel=0.01)
    (tmp_path / "bad.tsv").write_text("x\ty\n1\t2\n")
    with pytest.raises(NucleistyleError, match=r"bad\.tsv: not a training history"):
        plot_training({"bad": tmp_path / "bad.tsv"}, tmp_path / "x.png")


def test_the_config_schema_documents_every_segmenter_key_and_no_other():
    """segment.common / segment.<baseline> in the schema list exactly the dataclass fields
    (recursively), each with a description naming the baselines' actual defaults."""
    import dataclasses
    import json

    import yaml

    from nucleistyle.segment.configs import BACKBONES, SegmenterConfig, get_config
    from tests.conftest import REPO

    schema = yaml.safe_load((REPO / "src/nucleistyle/schemas/config.schema.yaml").read_text())
    node = schema["$defs"]["segmenter"]

    def shown(value: object) -> str:
        return json.dumps(list(value) if isinstance(value, tuple) else value)

    def check(props: dict, deep_retina: object, mirzaev: object, path: str) -> None:
        fields = {f.name for f in dataclasses.fields(deep_retina)} - {"baseline", "seed"}
        assert set(props) == fields, path
        for name in fields:
            ours, theirs = getattr(deep_retina, name), getattr(mirzaev, name)
            if dataclasses.is_dataclass(ours):
                check(props[name]["properties"], ours, theirs, f"{path}.{name}")
                continue
            default = (
                f"Default: both {shown(ours)}"
                if ours == theirs
                else f"Default: Deep Retina {shown(ours)}, Mirzaev {shown(theirs)}"
            )
            assert default in " ".join(props[name]["description"].split()), f"{path}.{name}"

    check(node["properties"], get_config("deep_retina"), get_config("mirzaev"), "segment")
    assert isinstance(get_config("deep_retina"), SegmenterConfig)
    assert tuple(node["properties"]["backbone"]["enum"]) == BACKBONES
    for key in ("common", "deep_retina", "mirzaev"):
        assert schema["properties"]["segment"]["properties"][key]["$ref"] == "#/$defs/segmenter"


@pytest.mark.parametrize("baseline", ["deep_retina", "mirzaev"])
def test_config_yaml_spells_out_the_real_experiment_with_the_solutions_values(baseline):
    """The training length, batch, backbone and image size written in config.yaml are what the
    baseline's defaults are: the file shows the experiment without changing it."""
    from nucleistyle.segment.configs import get_config
    from nucleistyle.workflow import load_config, segmenter_settings
    from tests.conftest import REPO

    config = load_config([REPO / "config.yaml"])
    written = config["segment"]["common"]
    assert {"epochs", "batch_size", "backbone"} <= set(written)
    assert "size" in config["segment"][baseline]["prep"]
    assert get_config(baseline, segmenter_settings(config, baseline)) == get_config(baseline)
