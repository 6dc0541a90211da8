"""Tests for nucleistyle.tta: transforms, merging, labels, batching, fake models."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage as ndi

from nucleistyle.errors import NucleistyleError
from nucleistyle.tta import (
    DIHEDRAL,
    Instances,
    TTAConfig,
    make_transforms,
    mask_iou,
    merge,
    merge_union,
    merge_vote,
    predict_tta,
    predict_tta_labels,
    to_labels,
)

SHAPES = [(5, 7), (6, 6), (4, 9), (7, 7)]


def blob_image(shape: tuple[int, int] = (23, 30)) -> np.ndarray:
    """Bright rectangles of distinct brightness on black: (H, W, 3) uint8."""
    image = np.zeros((*shape, 3), np.uint8)
    image[2:6, 3:9] = 200  # top left
    image[10:15, 20:27] = 150  # right
    image[17:21, 2:5] = 250  # bottom left
    image[15:18, 12:14] = 180  # small, middle
    return image


def blob_model(image: np.ndarray) -> Instances:
    """Flip/rotation-equivariant fake model: connected bright components, score = brightness."""
    components, n = ndi.label(image[..., 0] > 100)
    masks = (components[None] == np.arange(1, n + 1)[:, None, None]).astype(np.float32)
    scores = np.array(
        [image[..., 0][components == k].mean() / 255 for k in range(1, n + 1)], np.float32
    )
    return Instances(masks, scores)


def blob_predict(images: list[np.ndarray]) -> list[Instances]:
    return [blob_model(im) for im in images]


def noisy_predict(images: list[np.ndarray]) -> list[Instances]:
    """Arbitrary soft masks (deterministic per image), including images with no instance."""
    out = []
    for image in images:
        rng = np.random.default_rng(int(image.sum()))
        n = int(image.sum()) % 4
        masks = rng.random((n, *image.shape[:2])).astype(np.float32)
        out.append(Instances(masks, rng.random(n).astype(np.float32)))
    return out


def square(shape: tuple[int, int], rows: slice, cols: slice) -> np.ndarray:
    mask = np.zeros(shape, np.float32)
    mask[rows, cols] = 1.0
    return mask


def same_instances(a: Instances, b: Instances) -> bool:
    return (
        a.masks.dtype == b.masks.dtype
        and np.array_equal(a.masks, b.masks)
        and np.array_equal(a.scores, b.scores)
    )


# -- transforms --------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(
    "name", [*DIHEDRAL, "hflip+rot90", "vflip+hflip+rot270", "transpose+jitter:3"]
)
def test_geometric_inverse_undoes_forward_exactly(name: str, shape: tuple[int, int]) -> None:
    image = np.random.default_rng(0).integers(0, 256, (*shape, 3), dtype=np.uint8)
    (t,) = make_transforms([name])
    forward = t.forward(image)
    assert forward.flags.c_contiguous
    masks = forward.transpose(2, 0, 1)  # the 3 channels as 3 "masks" in the transformed frame
    back = t.inverse(masks, shape)
    if "jitter" not in name:
        np.testing.assert_array_equal(back.transpose(1, 2, 0), image)
    assert back.shape == (3, *shape) and back.flags.c_contiguous


def test_dihedral_forward_maps_match_hand_values() -> None:
    x = np.array([[1, 2, 3], [4, 5, 6]], np.uint8)[..., None]
    expected = {
        "identity": [[1, 2, 3], [4, 5, 6]],
        "rot90": [[3, 6], [2, 5], [1, 4]],  # counter-clockwise
        "rot180": [[6, 5, 4], [3, 2, 1]],
        "rot270": [[4, 1], [5, 2], [6, 3]],
        "hflip": [[3, 2, 1], [6, 5, 4]],
        "vflip": [[4, 5, 6], [1, 2, 3]],
        "transpose": [[1, 4], [2, 5], [3, 6]],
        "transverse": [[6, 3], [5, 2], [4, 1]],
    }
    for t in make_transforms(DIHEDRAL):
        np.testing.assert_array_equal(t.forward(x)[..., 0], expected[t.name], err_msg=t.name)


def test_scale_resizes_like_pillow_bilinear() -> None:
    values = np.random.default_rng(1).random((9, 14)).astype(np.float32)
    (t,) = make_transforms(["scale:1.5"])
    back = t.inverse(values[None], (6, 9))[0]  # 9 x 14 (the scaled frame) -> 6 x 9
    reference = np.asarray(Image.fromarray(values, mode="F").resize((9, 6), Image.BILINEAR))
    np.testing.assert_allclose(back, reference, atol=1e-6)


@pytest.mark.parametrize("spec", ["scale:0.75", "scale:1.5", "scale:0.5x1.25", "rot90+scale:0.6"])
def test_scale_round_trip_keeps_disk_within_tolerance(spec: str) -> None:
    shape = (41, 58)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    disk = (yy - 20) ** 2 + (xx - 25) ** 2 <= 12**2
    image = np.repeat((disk * 255).astype(np.uint8)[..., None], 3, axis=2)
    (t,) = make_transforms([spec])
    forward = t.forward(image)
    assert forward.dtype == np.uint8
    back = t.inverse(forward[None, ..., 0].astype(np.float32) / 255, shape)
    assert back.shape == (1, *shape) and back.dtype == np.float32
    assert mask_iou(back >= 0.5, disk[None])[0, 0] >= 0.95
    ones = t.inverse(np.ones((1, *forward.shape[:2]), np.float32), shape)
    np.testing.assert_allclose(ones, 1.0, atol=1e-6)  # a constant stays constant


def test_scale_forward_size_rounds_and_inverse_checks_frame() -> None:
    (t,) = make_transforms(["scale:0.75"])
    assert t.forward(np.zeros((7, 10, 3), np.uint8)).shape == (5, 8, 3)  # 5.25 -> 5, 7.5 -> 8
    with pytest.raises(NucleistyleError, match=r"masks of size \(7, 10\), expected \(5, 8\)"):
        t.inverse(np.zeros((1, 7, 10), np.float32), (7, 10))


def test_jitter_is_deterministic_colour_shift_and_leaves_masks_alone() -> None:
    image = np.full((4, 5, 3), 100, np.uint8)
    a, b, c = make_transforms(["jitter:7", "jitter:7", "jitter:8"])
    assert np.array_equal(a.forward(image), b.forward(image))
    assert not np.array_equal(a.forward(image), c.forward(image))
    assert np.abs(a.forward(image).astype(int) - 100).max() <= 10 + 15 + 1
    masks = np.random.default_rng(0).random((2, 4, 5)).astype(np.float32)
    assert a.inverse(masks, (4, 5)) is masks


@pytest.mark.parametrize("bad", ["rot45", "scale:0", "scale:abc", "jitter:-1", "hflip+", ""])
def test_make_transforms_rejects_bad_names(bad: str) -> None:
    with pytest.raises(NucleistyleError, match=r"tta\.transforms"):
        make_transforms([bad])


# -- configuration -----------------------------------------------------------------------------


def test_config_from_mapping_takes_lists_and_names_bad_keys() -> None:
    cfg = TTAConfig.from_config({"transforms": ["identity", "hflip"], "merge": "union"})
    assert cfg.transforms == ("identity", "hflip") and cfg.merge == "union"
    assert TTAConfig().transforms == DIHEDRAL and TTAConfig().iou_match == 0.6
    with pytest.raises(NucleistyleError, match=r"tta\.iou"):
        TTAConfig.from_config({"iou": 0.5})
    with pytest.raises(
        NucleistyleError,
        match=r"config key tta\.iou_match: 0.0 is less than or equal to the minimum of 0",
    ):
        TTAConfig(iou_match=0.0)
    with pytest.raises(NucleistyleError, match=r"tta\.merge"):
        TTAConfig(merge="mean")
    with pytest.raises(NucleistyleError, match=r"tta\.batch_size"):
        TTAConfig(batch_size=-1)
    with pytest.raises(NucleistyleError, match=r"tta\.transforms"):
        TTAConfig(transforms="hflip")


# -- merging -----------------------------------------------------------------------------------


def test_mask_iou_hand_values() -> None:
    a = np.stack([square((4, 4), slice(0, 2), slice(0, 2)), np.zeros((4, 4))]) > 0
    b = np.stack(
        [square((4, 4), slice(0, 2), slice(1, 3)), square((4, 4), slice(2, 4), slice(2, 4))]
    )
    np.testing.assert_allclose(mask_iou(a, b > 0), [[2 / 6, 0.0], [0.0, 0.0]])


def four_variants() -> list[Instances]:
    """Object A (4x4) in all 4 variants, once shifted right by one column (IoU 12/20 = 0.6 with
    the others); object B (2x2) only in variant 2."""
    shape = (6, 8)
    a = square(shape, slice(1, 5), slice(0, 4))
    a_shifted = square(shape, slice(1, 5), slice(1, 5))
    b = square(shape, slice(0, 2), slice(6, 8))
    return [
        Instances(a[None], np.array([0.9], np.float32)),
        Instances(a[None], np.array([0.8], np.float32)),
        Instances(np.stack([b, a]), np.array([0.5, 0.7], np.float32)),
        Instances(a_shifted[None], np.array([0.6], np.float32)),
    ]


def test_merge_vote_keeps_majority_pixels_and_drops_rare_objects() -> None:
    merged = merge_vote(four_variants(), TTAConfig(min_votes=0.5, pixel_vote=0.5))
    assert len(merged) == 1
    np.testing.assert_allclose(merged.scores, [0.75])  # mean of 0.9, 0.8, 0.7, 0.6
    # votes: column 0: 3 of 4 (kept, 0.5 + 0.5 * 3/4), columns 1-3: 4 of 4, column 4: 1 of 4
    expected = np.zeros((6, 8), np.float32)
    expected[1:5, 0], expected[1:5, 1:4], expected[1:5, 4] = 0.875, 1.0, 0.125
    np.testing.assert_allclose(merged.masks[0], expected)
    np.testing.assert_array_equal(to_labels(merged) > 0, expected >= 0.5)


def test_merge_vote_keeps_rare_object_with_low_min_votes_and_strict_pixel_vote() -> None:
    merged = merge_vote(four_variants(), TTAConfig(min_votes=0.25, pixel_vote=1.0))
    np.testing.assert_allclose(merged.scores, [0.75, 0.5])
    assert np.count_nonzero(merged.masks[0] >= 0.5) == 12  # columns 1-3 only: unanimous
    assert np.count_nonzero(merged.masks[1] >= 0.5) == 4  # B, its only member


def test_merge_union_keeps_union_of_members() -> None:
    merged = merge_union(four_variants(), TTAConfig(min_votes=0.25))
    np.testing.assert_allclose(merged.scores, [0.75, 0.5])
    np.testing.assert_array_equal(merged.masks[0], square((6, 8), slice(1, 5), slice(0, 5)))
    dropped = merge_union(four_variants(), TTAConfig(min_votes=0.5))
    assert len(dropped) == 1


def test_merge_does_not_match_below_iou_threshold() -> None:
    merged = merge_vote(four_variants(), TTAConfig(iou_match=0.61, min_votes=0.0))
    # the shifted copy of A (IoU 0.6) now forms its own cluster: A, B, shifted A
    np.testing.assert_allclose(merged.scores, [0.8, 0.6, 0.5])


def test_merge_puts_at_most_one_instance_per_variant_in_a_cluster() -> None:
    a = square((4, 4), slice(0, 3), slice(0, 3))
    twice = Instances(np.stack([a, a]), np.array([0.9, 0.8], np.float32))
    once = Instances(a[None], np.array([0.7], np.float32))
    merged = merge_vote([twice, once], TTAConfig(min_votes=0.0))
    np.testing.assert_allclose(merged.scores, [0.8, 0.8])  # (0.9 + 0.7) / 2 and 0.8 alone


# -- labels ------------------------------------------------------------------------------------


def test_to_labels_gives_contested_pixels_to_higher_score() -> None:
    low = square((5, 5), slice(0, 3), slice(0, 3))
    high = square((5, 5), slice(1, 4), slice(1, 4))
    for order in ([0, 1], [1, 0]):
        masks = np.stack([low, high])[order]
        scores = np.array([0.3, 0.9], np.float32)[order]
        labels = to_labels(Instances(masks, scores))
        assert labels.dtype == np.int32
        np.testing.assert_array_equal(labels == 1, high > 0)  # label 1: highest score, all of it
        np.testing.assert_array_equal(labels == 2, (low > 0) & (high == 0))


def test_to_labels_never_overlaps_and_covers_every_masked_pixel() -> None:
    rng = np.random.default_rng(3)
    masks = rng.random((6, 12, 10)).astype(np.float32)
    labels = to_labels(Instances(masks, rng.random(6).astype(np.float32)), threshold=0.7)
    np.testing.assert_array_equal(labels > 0, (masks >= 0.7).any(axis=0))
    for k in range(1, labels.max() + 1):  # every label's pixels lie inside one mask
        assert (masks[:, labels == k] >= 0.7).all(axis=1).any()
    assert set(np.unique(labels)) == set(range(labels.max() + 1))


def test_to_labels_min_size_drops_small_and_squeezed_objects() -> None:
    big = square((6, 6), slice(0, 4), slice(0, 4))  # 16 px
    small = square((6, 6), slice(5, 6), slice(5, 6))  # 1 px, alone
    squeezed = square((6, 6), slice(0, 4), slice(2, 5))  # 12 px, 4 left outside `big`
    masks = np.stack([big, small, squeezed])
    labels = to_labels(Instances(masks, np.array([0.9, 0.8, 0.1], np.float32)), min_size=5)
    np.testing.assert_array_equal(labels, big.astype(np.int32))
    labels = to_labels(Instances(masks, np.array([0.9, 0.8, 0.1], np.float32)), min_size=4)
    assert np.count_nonzero(labels == 2) == 4 and labels.max() == 2
    assert not to_labels(Instances.empty((3, 4))).any()


# -- prediction --------------------------------------------------------------------------------


@pytest.mark.parametrize("merge", ["none", "vote", "union"])
def test_identity_tta_reproduces_single_pass_exactly(merge: str) -> None:
    rng = np.random.default_rng(5)
    images = [rng.integers(0, 256, s, dtype=np.uint8) for s in [(9, 7, 3), (8, 8, 3), (5, 11, 3)]]
    single = noisy_predict(images)
    assert sorted(len(s) for s in single) != [0, 0, 0]
    tta = predict_tta(noisy_predict, images, TTAConfig(transforms=("identity",), merge=merge))
    assert all(same_instances(a, b) for a, b in zip(tta, single, strict=True))


def test_equivariant_model_gives_same_labels_with_and_without_dihedral_tta() -> None:
    images = [blob_image((23, 30)), blob_image((30, 30))[::-1].copy()]
    plain = [to_labels(p) for p in blob_predict(images)]
    for how in ("vote", "union"):
        tta = predict_tta_labels(blob_predict, images, TTAConfig(merge=how))
        for a, b in zip(tta, plain, strict=True):
            np.testing.assert_array_equal(a, b)
    assert [p.max() for p in plain] == [4, 4]


def test_object_missed_in_some_variants_needs_enough_votes() -> None:
    def misses_left_half(images: list[np.ndarray]) -> list[Instances]:
        """Detects only blobs whose centre lies in the right half of the image it sees."""
        out = []
        for inst in blob_predict(images):
            centre = [np.argwhere(m).mean(axis=0)[1] for m in inst.masks]
            keep = np.array([c >= inst.shape[1] / 2 for c in centre], bool)
            out.append(Instances(inst.masks[keep], inst.scores[keep]))
        return out

    image = blob_image()  # 2 blobs on the right (always seen once flipped), 2 on the left
    flips = ("identity", "hflip")
    strict = predict_tta(misses_left_half, [image], TTAConfig(transforms=flips, min_votes=1.0))
    lenient = predict_tta(misses_left_half, [image], TTAConfig(transforms=flips, min_votes=0.5))
    union = predict_tta(
        misses_left_half, [image], TTAConfig(transforms=flips, merge="union", min_votes=0.5)
    )
    assert len(strict[0]) == 0  # every blob is on the left in one of the two views
    assert len(lenient[0]) == 4 and len(union[0]) == 4
    np.testing.assert_array_equal(to_labels(union[0]), to_labels(blob_model(image)))


@pytest.mark.parametrize(
    ("batch_size", "calls"), [(0, [16]), (1, [1] * 16), (8, [8, 8]), (5, [5, 5, 5, 1])]
)
def test_batching_sends_expected_batch_sizes_with_equal_results(
    batch_size: int, calls: list[int]
) -> None:
    images = [blob_image((23, 30)), blob_image((26, 21))]
    seen: list[int] = []

    def counting(batch: list[np.ndarray]) -> list[Instances]:
        seen.append(len(batch))
        return blob_predict(batch)

    result = predict_tta(counting, images, TTAConfig(batch_size=batch_size))
    reference = predict_tta(blob_predict, images, TTAConfig(batch_size=1))
    assert seen == calls
    assert all(same_instances(a, b) for a, b in zip(result, reference, strict=True))


def test_predict_tta_rejects_wrong_model_outputs() -> None:
    image = blob_image()
    with pytest.raises(NucleistyleError, match="returned 0 results for 8 images"):
        predict_tta(lambda batch: [], [image])
    with pytest.raises(NucleistyleError, match="transform rot90: masks of size"):
        predict_tta(lambda batch: [Instances.empty((23, 30)) for _ in batch], [image])
    with pytest.raises(NucleistyleError, match=r"image 0: expected \(H, W, 3\)"):
        predict_tta(blob_predict, [image[..., 0]])


@pytest.mark.parametrize("how", ["vote", "union"])
def test_a_variant_without_detections_still_merges(how):
    # a barely trained model finds nothing under some transforms: that variant votes "absent"
    found = np.zeros((1, 8, 8), np.float32)
    found[0, 2:5, 2:5] = 1
    nothing = np.zeros((0, 8, 8), np.float32)
    variants = [
        Instances(found, np.array([0.9], np.float32)),
        Instances(nothing, np.zeros(0, np.float32)),
        Instances(found, np.array([0.7], np.float32)),
    ]
    merged = merge(variants, TTAConfig(merge=how, min_votes=0.5))
    assert len(merged) == 1 and np.array_equal(merged.masks[0] >= 0.5, found[0] > 0)
    none = merge([Instances(nothing, np.zeros(0, np.float32))] * 2, TTAConfig(merge=how))
    assert len(none) == 0 and none.shape == (8, 8)
