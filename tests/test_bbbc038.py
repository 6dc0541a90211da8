"""BBBC038 I/O: image modes, mask merging, folder listing, round trips, real data."""

from __future__ import annotations

import logging
import struct
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from nucleistyle.data.bbbc038 import (
    ImageRecord,
    iter_samples,
    list_images,
    load_sample,
    read_image,
    read_masks,
    relabel_sequential,
    write_sample,
)
from nucleistyle.errors import NucleistyleError

# The six community-fixed images with 1-2 px mask overlaps, by prefix.
OVERLAPPING = ("0a7d30b2", "1609b1b8", "175dbb36", "547ef286", "72e8c49d", "f26f4c2c")

GREY = np.array([[0, 10], [200, 255]], np.uint8)
COLOUR = np.array([[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [12, 34, 56]]], np.uint8)


def _grey_rgb(values: np.ndarray) -> np.ndarray:
    return np.repeat(np.asarray(values, np.uint8)[:, :, None], 3, axis=2)


def _png16(values: np.ndarray, colour_type: int) -> bytes:
    """A 16-bit PNG built by hand (Pillow cannot write 16-bit colour)."""
    height, width = values.shape[:2]
    rows = values.astype(">u2").reshape(height, -1)
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def _palette_image() -> Image.Image:
    im = Image.fromarray(np.array([[0, 1], [2, 1]], np.uint8), "P")
    im.putpalette([0, 0, 0, 250, 20, 30, 5, 6, 7] + [0] * (3 * 253))
    return im


def _save(tmp_path: Path, name: str, im: Image.Image) -> Path:
    path = tmp_path / name
    im.save(path)
    return path


# --- read_image -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "make", "expected"),
    [
        ("L", lambda: Image.fromarray(GREY, "L"), _grey_rgb(GREY)),
        (
            "LA",
            lambda: Image.fromarray(np.dstack([GREY, [[0, 255], [7, 9]]]).astype(np.uint8), "LA"),
            _grey_rgb(GREY),
        ),
        ("RGB", lambda: Image.fromarray(COLOUR, "RGB"), COLOUR),
        (
            # alpha 0 must not black out or composite the colour: it is simply dropped
            "RGBA",
            lambda: Image.fromarray(np.dstack([COLOUR, [[255, 0], [128, 255]]]).astype(np.uint8)),
            COLOUR,
        ),
        (
            "P",
            _palette_image,
            np.array([[[0, 0, 0], [250, 20, 30]], [[5, 6, 7], [250, 20, 30]]], np.uint8),
        ),
        (
            "1",
            lambda: Image.fromarray(np.array([[1, 0], [0, 1]], bool)),
            _grey_rgb([[255, 0], [0, 255]]),
        ),
    ],
)
def test_read_image_converts_8bit_png_modes_to_exact_rgb(tmp_path, mode, make, expected):
    im = make()
    assert im.mode == mode
    image, read_mode = read_image(_save(tmp_path, f"x_{mode}.png", im))
    assert read_mode == mode
    assert image.dtype == np.uint8 and image.flags.writeable
    np.testing.assert_array_equal(image, expected)


def test_read_image_scales_dark_16bit_grey_by_its_own_max(tmp_path):
    dark = np.array([[0, 1000], [2000, 4000]], np.uint16)  # max 4000 of 65535: black if >> 8
    image, mode = read_image(_save(tmp_path, "dark.png", Image.fromarray(dark)))
    assert mode == "I;16"
    np.testing.assert_array_equal(image, _grey_rgb([[0, 64], [128, 255]]))


def test_read_image_reads_big_endian_16bit_tiff_with_its_mode(tmp_path):
    dark = np.array([[0, 1000], [2000, 4000]], np.uint16)
    im = Image.frombytes("I;16B", (2, 2), dark.astype(">u2").tobytes())
    image, mode = read_image(_save(tmp_path, "dark.tif", im))
    assert mode == "I;16B"
    np.testing.assert_array_equal(image, _grey_rgb([[0, 64], [128, 255]]))


def test_read_image_clips_negative_32bit_values_and_scales_by_max(tmp_path):
    im = Image.fromarray(np.array([[-5, 0], [100, 1000]], np.int32))
    image, mode = read_image(_save(tmp_path, "int.tif", im))
    assert mode == "I"
    np.testing.assert_array_equal(image, _grey_rgb([[0, 0], [26, 255]]))


@pytest.mark.parametrize(("value", "expected"), [(0, 0), (500, 255)])
def test_read_image_handles_constant_16bit_images(tmp_path, value, expected):
    im = Image.fromarray(np.full((3, 4), value, np.uint16))
    image, _ = read_image(_save(tmp_path, "flat.png", im))
    np.testing.assert_array_equal(image, np.full((3, 4, 3), expected, np.uint8))


def test_read_image_keeps_16bit_colour_png_visible_and_marks_its_mode(tmp_path):
    rgb16 = np.array([[[0, 1000, 2000], [4000, 256, 0]]], np.uint16)
    path = tmp_path / "rgb16.png"
    path.write_bytes(_png16(rgb16, colour_type=2))
    image, mode = read_image(path)
    assert mode == "RGB;16"
    # Pillow keeps the high bytes (0, 3, 7 / 15, 1, 0); scaled by their max 15
    np.testing.assert_array_equal(image, [[[0, 51, 119], [255, 17, 0]]])


def test_read_image_of_truncated_png_names_the_file(tmp_path):
    rng = np.random.default_rng(0)
    path = _save(
        tmp_path, "noise.png", Image.fromarray(rng.integers(0, 256, (64, 64, 3), np.uint8))
    )
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(NucleistyleError, match=r"cannot read image .*noise\.png: "):
        read_image(path)


def test_read_image_of_non_image_file_names_the_file(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("not an image\n")
    with pytest.raises(NucleistyleError, match=r"cannot read image .*notes\.png: "):
        read_image(path)


def test_read_image_of_missing_file_names_the_file(tmp_path):
    with pytest.raises(NucleistyleError, match=r"cannot read image .*absent\.png"):
        read_image(tmp_path / "absent.png")


# --- read_masks -------------------------------------------------------------------------------


def _mask(folder: Path, name: str, box: tuple[slice, slice], shape=(4, 4), value=255) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    arr = np.zeros(shape, np.uint8)
    arr[box] = value
    path = folder / name
    Image.fromarray(arr, "L").save(path)
    return path


def test_read_masks_first_mask_in_sorted_order_wins_overlaps_and_warns(tmp_path, caplog):
    masks = tmp_path / "img" / "masks"
    b = _mask(masks, "b.png", np.s_[1:3, 1:3])
    a = _mask(masks, "a.png", np.s_[0:2, 0:2])
    with caplog.at_level(logging.WARNING):
        labels, overlap = read_masks([b, a], (4, 4))  # given unsorted on purpose
    expected = np.array([[1, 1, 0, 0], [1, 1, 2, 0], [0, 2, 2, 0], [0, 0, 0, 0]], np.int32)
    np.testing.assert_array_equal(labels, expected)
    assert labels.dtype == np.int32
    assert overlap == 1
    assert "1 pixel(s)" in caplog.text and str(masks) in caplog.text


def test_read_masks_counts_a_pixel_claimed_three_times_once(tmp_path):
    masks = tmp_path / "masks"
    boxes = (np.s_[0, 0:2], np.s_[0:2, 0], np.s_[0:3, 0])  # (0,0) in all three, (1,0) in two
    paths = [_mask(masks, f"m{i}.png", box) for i, box in enumerate(boxes)]
    labels, overlap = read_masks(paths, (4, 4))
    assert overlap == 2
    np.testing.assert_array_equal(labels[:, :2], [[1, 1], [2, 0], [3, 0], [0, 0]])


def test_read_masks_without_overlap_logs_nothing(tmp_path, caplog):
    masks = tmp_path / "masks"
    paths = [_mask(masks, "a.png", np.s_[0, 0]), _mask(masks, "b.png", np.s_[3, 3])]
    with caplog.at_level(logging.WARNING):
        labels, overlap = read_masks(paths, (4, 4))
    assert overlap == 0 and caplog.text == ""
    assert labels[0, 0] == 1 and labels[3, 3] == 2 and np.count_nonzero(labels) == 2


def test_read_masks_drops_a_fully_covered_or_empty_mask_and_keeps_labels_consecutive(
    tmp_path, caplog
):
    masks = tmp_path / "masks"
    paths = [
        _mask(masks, "a.png", np.s_[0:2, 0:2]),
        _mask(masks, "b.png", np.s_[0:1, 0:1]),  # inside a: nothing left
        _mask(masks, "c.png", np.s_[0:0, 0:0]),  # empty file
        _mask(masks, "d.png", np.s_[3, 3]),
    ]
    with caplog.at_level(logging.WARNING):
        labels, overlap = read_masks(paths, (4, 4))
    assert overlap == 1
    assert sorted(np.unique(labels).tolist()) == [0, 1, 2]
    assert labels[3, 3] == 2
    assert "b.png has no pixel of its own" in caplog.text
    assert "c.png has no pixel of its own" in caplog.text


def test_read_masks_treats_any_nonzero_pixel_as_foreground_in_any_mode(tmp_path):
    masks = tmp_path / "masks"
    low = _mask(masks, "a.png", np.s_[0, 0:2], value=1)
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[1, 1, 2] = 9  # only the blue channel set
    Image.fromarray(rgb, "RGB").save(masks / "b.png")
    bits = np.zeros((4, 4), bool)
    bits[3, 0] = True
    Image.fromarray(bits).save(masks / "c.png")
    labels, _ = read_masks([low, masks / "b.png", masks / "c.png"], (4, 4))
    assert labels[0, 0] == labels[0, 1] == 1
    assert labels[1, 1] == 2 and labels[3, 0] == 3
    assert np.count_nonzero(labels) == 4


def test_read_masks_rejects_a_mask_of_the_wrong_size_by_name(tmp_path):
    masks = tmp_path / "masks"
    good = _mask(masks, "a.png", np.s_[0, 0])
    bad = _mask(masks, "wide.png", np.s_[0, 0], shape=(4, 5))
    with pytest.raises(NucleistyleError, match=r"mask .*wide\.png is 4x5, its image is 4x4"):
        read_masks([good, bad], (4, 4))


def test_read_masks_rejects_an_unreadable_mask_by_name(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(NucleistyleError, match=r"cannot read mask .*broken\.png"):
        read_masks([tmp_path / "broken.png"], (4, 4))


# --- list_images ------------------------------------------------------------------------------


def test_list_images_reads_bbbc038_layout_sorted_and_skips_hidden(tmp_path):
    for image_id in ("bbb", "aaa"):
        write_sample(tmp_path, image_id, np.zeros((4, 4, 3), np.uint8))
    masks = tmp_path / "aaa" / "masks"
    for name in ("m2.png", "m1.png", ".m0.png"):
        _mask(masks, name, np.s_[0, 0])
    (tmp_path / ".ccc.tmp").mkdir()  # a half-written sample from atomic_dir
    (tmp_path / "manifest.csv").write_text("ImageId\n")
    records = list_images(tmp_path)
    assert [r.image_id for r in records] == ["aaa", "bbb"]
    assert records[0].image_path == tmp_path / "aaa" / "images" / "aaa.png"
    assert [p.name for p in records[0].mask_paths] == ["m1.png", "m2.png"]
    assert records[1].mask_paths == ()


def test_list_images_reads_a_flat_folder_by_stem(tmp_path):
    Image.fromarray(GREY).save(tmp_path / "b.tif")
    Image.fromarray(COLOUR).save(tmp_path / "a.png")
    Image.fromarray(COLOUR).save(tmp_path / "c.JPG")
    Image.fromarray(COLOUR).save(tmp_path / ".hidden.png")
    (tmp_path / "notes.txt").write_text("x")
    records = list_images(tmp_path)
    assert records == [
        ImageRecord("a", tmp_path / "a.png", ()),
        ImageRecord("b", tmp_path / "b.tif", ()),
        ImageRecord("c", tmp_path / "c.JPG", ()),
    ]


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda root: None, r"no images found in "),
        (lambda root: (root / ".x.png").write_bytes(b""), r"no images found in "),
        (lambda root: (root / "s1" / "images").mkdir(parents=True), r"s1/images/s1\.png not found"),
        (
            lambda root: [(root / n).write_bytes(b"") for n in ("a.png", "a.tif")],
            r"two images with ImageId 'a'",
        ),
        (
            lambda root: [(root / "a.png").write_bytes(b""), (root / "s1").mkdir()],
            r"mixes sample folders",
        ),
    ],
    ids=["empty", "only-hidden", "folder-without-image", "duplicate-stem", "mixed"],
)
def test_list_images_rejects_bad_folders(tmp_path, setup, message):
    setup(tmp_path)
    with pytest.raises(NucleistyleError, match=message):
        list_images(tmp_path)


def test_list_images_of_missing_folder_names_it(tmp_path):
    with pytest.raises(NucleistyleError, match=r"image folder not found: .*nowhere"):
        list_images(tmp_path / "nowhere")


# --- write_sample / load_sample / iter_samples ------------------------------------------------


def test_write_sample_then_load_sample_round_trips(tmp_path):
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (5, 6, 3), np.uint8)
    labels = np.zeros((5, 6), np.int64)
    labels[0:2, 0:2] = 9
    labels[3:5, 1:4] = 5
    labels[4, 5] = 12
    folder = write_sample(tmp_path, "s1", image, labels)
    assert folder == tmp_path / "s1"
    names = sorted(p.name for p in (folder / "masks").iterdir())
    assert names == ["s1_0005.png", "s1_0009.png", "s1_0012.png"]
    with Image.open(folder / "masks" / "s1_0009.png") as im:
        assert im.mode == "L"
        assert set(np.unique(np.asarray(im)).tolist()) == {0, 255}
    with Image.open(folder / "images" / "s1.png") as im:
        assert im.mode == "RGB"
    [record] = list_images(tmp_path)
    sample = load_sample(record)
    np.testing.assert_array_equal(sample.image, image)
    np.testing.assert_array_equal(sample.labels, relabel_sequential(labels))
    assert (sample.mode, sample.overlap_pixels) == ("RGB", 0)


def test_write_sample_replaces_an_existing_sample_and_leaves_no_temp_folder(tmp_path):
    image = np.zeros((3, 3, 3), np.uint8)
    write_sample(tmp_path, "s1", image, np.arange(9).reshape(3, 3))
    write_sample(tmp_path, "s1", np.full((3, 3), 7, np.uint8))  # grey, no labels
    assert [p.name for p in tmp_path.iterdir()] == ["s1"]
    assert not (tmp_path / "s1" / "masks").exists()
    sample = load_sample(list_images(tmp_path)[0])
    assert sample.labels is None
    np.testing.assert_array_equal(sample.image, np.full((3, 3, 3), 7, np.uint8))


@pytest.mark.parametrize(
    ("image_id", "image", "labels", "message"),
    [
        ("s", np.zeros((2, 2, 3), np.float32), None, r"s: image must be uint8"),
        ("s", np.zeros((2, 2, 4), np.uint8), None, r"s: image must be uint8"),
        ("s", np.zeros((2, 2, 3), np.uint8), np.zeros((2, 3), np.int32), r"s: labels must be"),
        ("s", np.zeros((2, 2, 3), np.uint8), np.zeros((2, 2), np.float32), r"s: labels must be"),
        ("s", np.zeros((2, 2, 3), np.uint8), np.full((2, 2), -1), r"s: labels must be >= 0"),
        ("a/b", np.zeros((2, 2, 3), np.uint8), None, r"invalid ImageId 'a/b'"),
        (".s", np.zeros((2, 2, 3), np.uint8), None, r"invalid ImageId '\.s'"),
    ],
)
def test_write_sample_rejects_bad_arrays_and_ids(tmp_path, image_id, image, labels, message):
    with pytest.raises(NucleistyleError, match=message):
        write_sample(tmp_path, image_id, image, labels)
    assert list(tmp_path.iterdir()) == []


def test_relabel_sequential_orders_by_label_value():
    out = relabel_sequential(np.array([[0, 7, 7], [3, 0, 40]]))
    np.testing.assert_array_equal(out, [[0, 2, 2], [1, 0, 3]])
    assert out.dtype == np.int32
    np.testing.assert_array_equal(relabel_sequential(np.array([4, 2])), [2, 1])


def _write_numbered_samples(root: Path, n: int) -> list[ImageRecord]:
    for i in range(n):
        labels = np.zeros((4, 4), np.int32)
        labels.flat[: i + 1] = np.arange(1, i + 2)
        write_sample(root, f"s{i:02d}", np.full((4, 4, 3), i, np.uint8), labels)
    return list_images(root)


def test_iter_samples_in_parallel_yields_input_order_like_serial(tmp_path):
    records = _write_numbered_samples(tmp_path, 11)[::-1]
    parallel = list(iter_samples(records, workers=2))
    serial = list(iter_samples(records, workers=1))
    assert [s.image_id for s in parallel] == [r.image_id for r in records]
    for a, b in zip(parallel, serial, strict=True):
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.labels, b.labels)
        assert int(a.image[0, 0, 0]) == int(a.image_id[1:]) == a.labels.max() - 1


def test_iter_samples_of_images_without_masks_yields_input_order(tmp_path):
    for i in range(9):
        write_sample(tmp_path, f"s{i}", np.full((3, 5, 3), i, np.uint8))
    records = list_images(tmp_path)[::-1]
    samples = list(iter_samples(records, workers=2))
    assert [int(s.image[0, 0, 0]) for s in samples] == list(range(8, -1, -1))
    assert all(s.labels is None and s.overlap_pixels == 0 for s in samples)


def test_iter_samples_relays_worker_warnings_and_errors(tmp_path, caplog):
    records = _write_numbered_samples(tmp_path, 3)
    _mask(tmp_path / "s01" / "masks", "s01_0000.png", np.s_[:, :])  # overlaps every other mask
    records = list_images(tmp_path)
    with caplog.at_level(logging.WARNING):
        samples = list(iter_samples(records, workers=2))
    assert [s.overlap_pixels for s in samples] == [0, 2, 0]
    assert "claimed by several masks" in caplog.text and "s01" in caplog.text
    (tmp_path / "s02" / "images" / "s02.png").write_text("broken")
    with pytest.raises(NucleistyleError, match=r"cannot read image .*s02\.png"):
        list(iter_samples(list_images(tmp_path), workers=2))


# --- real data --------------------------------------------------------------------------------


@pytest.mark.full
def test_real_samples_match_manifest_and_only_known_images_overlap(shared_bbbc038):
    manifest = pd.read_csv(shared_bbbc038 / "manifest.csv").set_index("ImageId")
    records = list_images(shared_bbbc038 / "stage1_train")
    assert [r.image_id for r in records] == sorted(manifest.index)
    overlaps = {}
    for sample in iter_samples(records, workers=2):
        row = manifest.loc[sample.image_id]
        assert sample.image.shape == (row["height"], row["width"], 3), sample.image_id
        assert sample.labels.max() == row["n_masks"], sample.image_id
        assert len(np.unique(sample.labels)) == row["n_masks"] + 1, sample.image_id
        assert sample.mode == "RGBA"
        if sample.overlap_pixels:
            overlaps[sample.image_id] = sample.overlap_pixels
    present = {i for i in manifest.index if i.startswith(OVERLAPPING)}
    assert present, "none of the six overlapping images is in the sample"
    assert set(overlaps) == present
    assert all(1 <= n <= 2 for n in overlaps.values()), overlaps
