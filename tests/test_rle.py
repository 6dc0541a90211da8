"""Kaggle RLE: column-major 1-indexed runs, validation of malformed rows, real-mask round trips."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nucleistyle.data.rle import (
    RLEError,
    rle_decode,
    rle_decode_labels,
    rle_encode,
    rle_encode_labels,
)
from nucleistyle.errors import NucleistyleError


def test_rle_decode_is_column_major_and_1_indexed() -> None:
    # 3x3, pixels numbered down the columns: 1 2 3 | 4 5 6 | 7 8 9
    mask = rle_decode("2 2 7 1", (3, 3))
    expected = np.array([[0, 0, 1], [1, 0, 0], [1, 0, 0]], bool)
    np.testing.assert_array_equal(mask, expected)
    assert mask.dtype == bool and mask.flags.c_contiguous


def test_rle_decode_kaggle_example_1_3_10_5() -> None:
    # the evaluation page's example: pixels 1,2,3,10,11,12,13,14 (here on a 3x5 image)
    expected = np.zeros((3, 5), bool)
    expected[:, 0] = True  # pixels 1-3
    expected[:, 3] = True  # pixels 10-12
    expected[:2, 4] = True  # pixels 13-14
    np.testing.assert_array_equal(rle_decode("1 3 10 5", (3, 5)), expected)
    assert rle_encode(expected) == "1 3 10 5"


def test_rle_encode_3x3_by_hand() -> None:
    mask = np.array([[1, 0, 1], [1, 1, 0], [0, 1, 1]])
    # column 0: pixels 1,2 ; column 1: 5,6 ; column 2: 7, 9
    assert rle_encode(mask) == "1 2 5 3 9 1"
    np.testing.assert_array_equal(rle_decode("1 2 5 3 9 1", (3, 3)), mask.astype(bool))


def test_rle_full_and_empty_masks() -> None:
    assert rle_encode(np.ones((4, 5), bool)) == "1 20"
    assert rle_encode(np.zeros((4, 5), bool)) == ""
    assert not rle_decode("", (4, 5)).any()
    assert not rle_decode("  ", (4, 5)).any()
    assert rle_encode_labels(np.zeros((4, 5), np.int32)) == {}
    labels, contested = rle_decode_labels([], (2, 3))
    assert labels.shape == (2, 3) and not labels.any() and contested == 0


def test_rle_encode_labels_sorted_keys_and_gaps() -> None:
    labels = np.array([[0, 70000], [2, 70000]], np.int64)
    assert rle_encode_labels(labels) == {2: "2 1", 70000: "3 2"}
    assert list(rle_encode_labels(np.array([[9, 3, 1]]))) == [1, 3, 9]


def test_rle_encode_labels_splits_runs_between_touching_objects() -> None:
    # objects 1 and 2 are adjacent in column-major order: their runs must not merge
    labels = np.array([[1], [1], [2], [2]])
    assert rle_encode_labels(labels) == {1: "1 2", 2: "3 2"}


@pytest.mark.parametrize("seed", range(5))
def test_rle_roundtrip_random_label_images(seed: int) -> None:
    rng = np.random.default_rng(seed)
    shape = (int(rng.integers(1, 40)), int(rng.integers(1, 40)))
    ids = rng.choice(np.arange(1, 10**6), size=6, replace=False)
    labels = np.where(rng.random(shape) < 0.3, 0, rng.choice(ids, size=shape))
    rles = rle_encode_labels(labels)
    assert list(rles) == sorted(np.unique(labels[labels > 0]).tolist())
    for label, rle in rles.items():
        assert rle == rle_encode(labels == label)
        np.testing.assert_array_equal(rle_decode(rle, shape), labels == label)
    decoded, contested = rle_decode_labels(list(rles.values()), shape)
    assert contested == 0
    lut = np.array([0, *rles])
    np.testing.assert_array_equal(lut[decoded], labels)


@pytest.mark.parametrize(
    ("rle", "message"),
    [
        ("1 2 5", "odd number of values"),
        ("1 x", "non-integer value 'x'"),
        ("1.5 2", "non-integer value '1.5'"),
        ("0 2", "both must be > 0"),
        ("3 0", "both must be > 0"),
        ("1 -2", "non-positive value '-2'"),
        ("8 3", "ends past the last pixel 9"),
        ("1 99999999999999999999999", "exceeds the image size"),
        ("5 1 1 1", "not sorted by start"),
        ("1 3 3 2", "overlapping runs"),
        ("2 1 2 1", "overlapping runs"),
    ],
)
def test_rle_decode_rejects_malformed_rows_naming_where(rle: str, message: str) -> None:
    where = "submission.csv line 12, ImageId 0a1b"
    with pytest.raises(RLEError, match=message) as info:
        rle_decode(rle, (3, 3), where=where)
    assert str(info.value).startswith(where + ":")
    assert "\n" not in str(info.value)
    assert isinstance(info.value, NucleistyleError)


def test_rle_decode_accepts_adjacent_runs() -> None:
    # "1 2 3 1" is unusual (two touching runs) but neither unsorted nor overlapping
    np.testing.assert_array_equal(rle_decode("1 2 3 1", (3, 1)), np.ones((3, 1), bool))


def test_rle_decode_labels_overlap_is_an_error_naming_the_row() -> None:
    with pytest.raises(RLEError, match=r"sub.csv line 8: overlaps row 1 at 1 pixel"):
        rle_decode_labels(["1 3", "3 2"], (3, 3), where=["sub.csv line 7", "sub.csv line 8"])
    with pytest.raises(RLEError, match=r"img 4, row 2: overlaps row 1"):
        rle_decode_labels(["1 3", "3 2"], (3, 3), where="img 4")


def test_rle_decode_labels_overlap_first_row_wins_when_allowed() -> None:
    labels, contested = rle_decode_labels(["1 3", "3 2", "3 1"], (3, 3), allow_overlap=True)
    expected = np.array([[1, 2, 0], [1, 0, 0], [1, 0, 0]])
    np.testing.assert_array_equal(labels, expected)
    assert contested == 1  # pixel 3 is claimed by rows 1, 2 and 3: one contested pixel


def test_rle_decode_labels_bad_row_names_its_row() -> None:
    with pytest.raises(RLEError, match=r"^f.csv, row 2: odd number"):
        rle_decode_labels(["1 1", "4"], (3, 3), where="f.csv")


def test_rle_decode_rejects_bad_shape() -> None:
    with pytest.raises(ValueError, match="shape"):
        rle_decode("1 1", (0, 3))


def _masks(image_dir: Path) -> list[np.ndarray]:
    return [np.asarray(Image.open(p)) > 0 for p in sorted((image_dir / "masks").glob("*.png"))]


def test_rle_roundtrip_on_real_masks(shared_bbbc038: Path) -> None:
    image_dirs = sorted((shared_bbbc038 / "stage1_train").iterdir())[::40]
    assert len(image_dirs) >= 10
    for image_dir in image_dirs:
        masks = _masks(image_dir)
        rles = [rle_encode(m) for m in masks]
        for mask, rle in zip(masks, rles, strict=True):
            np.testing.assert_array_equal(rle_decode(rle, mask.shape), mask)
            assert rle_encode(rle_decode(rle, mask.shape)) == rle
        # the label image of disjoint masks encodes to the same rows in one pass
        labels, contested = rle_decode_labels(rles, masks[0].shape, allow_overlap=True)
        if contested == 0:
            assert list(rle_encode_labels(labels).values()) == rles
