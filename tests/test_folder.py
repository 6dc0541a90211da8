"""Your own images: TIFF and 16-bit multi-channel reading by the intensity rule, label images,
the paired images/ + masks/ folder imported into the pipeline's layout, label images and
overlays out, and the train-segmenter / train-gan commands (the rules' code paths)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import yaml
from PIL import Image

from nucleistyle.data.bbbc038 import list_images, load_sample, relabel_sequential
from nucleistyle.data.csvio import read_solution, write_submission
from nucleistyle.data.folder import export_labels, import_folder, list_pairs
from nucleistyle.data.images import IntensityRule, read_image, read_label_image
from nucleistyle.errors import NucleistyleError
from nucleistyle.metrics import score_files
from tests.cli_checks import run, snapshot
from tests.conftest import TINY_SEGMENTER, small_real_records, write_paired_tiffs

# two channels of a 2 x 3 image, 16-bit: channel 0 dim, channel 1 bright
CH0 = np.array([[0, 100, 200], [300, 400, 1000]], np.uint16)
CH1 = np.array([[0, 10000, 20000], [30000, 40000, 50000]], np.uint16)


def _scaled(values, low, high):
    return np.rint(np.clip((values - low) / (high - low), 0, 1) * 255).astype(np.uint8)


def test_a_16bit_two_channel_tiff_is_red_and_green_on_one_scale_by_default(tmp_path):
    path = tmp_path / "two.tif"
    tifffile.imwrite(path, np.stack([CH0, CH1]), imagej=True, metadata={"axes": "CYX"})
    image, mode = read_image(path)
    assert mode == "2xuint16" and image.shape == (2, 3, 3)
    np.testing.assert_array_equal(image[..., 0], _scaled(CH0, 0, 50000))
    np.testing.assert_array_equal(image[..., 1], _scaled(CH1, 0, 50000))
    assert not image[..., 2].any()


def test_the_channel_axis_may_come_first_or_last(tmp_path):
    first, last = tmp_path / "cyx.tif", tmp_path / "yxc.tif"
    tifffile.imwrite(first, np.stack([CH0, CH1]), imagej=True, metadata={"axes": "CYX"})
    tifffile.imwrite(last, np.stack([CH0, CH1, CH0], axis=2), photometric="rgb")
    rule = IntensityRule(channels=(1, 0))
    np.testing.assert_array_equal(read_image(first, rule)[0], read_image(last, rule)[0])


def test_a_chosen_channel_is_grey_and_percentiles_set_the_scale(tmp_path):
    path = tmp_path / "two.tif"
    tifffile.imwrite(path, np.stack([CH0, CH1]), imagej=True, metadata={"axes": "CYX"})
    rule = IntensityRule(channels=(0,), low=20, high=80)
    image, _ = read_image(path, rule)
    low, high = np.percentile(CH0, 20), np.percentile(CH0, 80)
    for c in range(3):
        np.testing.assert_array_equal(image[..., c], _scaled(CH0.astype(float), low, high))
    assert image.min() == 0 and image.max() == 255


def test_per_channel_scaling_brightens_the_dim_channel(tmp_path):
    path = tmp_path / "two.tif"
    tifffile.imwrite(path, np.stack([CH0, CH1]), imagej=True, metadata={"axes": "CYX"})
    joint = read_image(path)[0]
    separate = read_image(path, IntensityRule(per_channel=True))[0]
    assert joint[..., 0].max() == 5 and separate[..., 0].max() == 255
    np.testing.assert_array_equal(separate[..., 1], joint[..., 1])


def test_8bit_tiffs_are_shown_as_stored(tmp_path):
    grey = np.array([[0, 7], [50, 90]], np.uint8)
    tifffile.imwrite(tmp_path / "g.tif", grey)
    image, mode = read_image(tmp_path / "g.tif", IntensityRule(low=1, high=99))
    assert mode == "L"
    np.testing.assert_array_equal(image, np.repeat(grey[:, :, None], 3, axis=2))


def test_a_stack_of_planes_and_a_missing_channel_are_refused_naming_the_file(tmp_path):
    stack = tmp_path / "stack.tif"
    tifffile.imwrite(stack, np.zeros((3, 4, 4), np.uint16), imagej=True, metadata={"axes": "ZYX"})
    with pytest.raises(
        NucleistyleError, match=r"cannot read image .*stack\.tif: .*stack of planes"
    ):
        read_image(stack)
    one = tmp_path / "one.tif"
    tifffile.imwrite(one, np.zeros((4, 4), np.uint16))
    with pytest.raises(NucleistyleError, match=r"one\.tif: channel 1 requested, the image has 1"):
        read_image(one, IntensityRule(channels=(1,)))


# the two channels at 8 x 12 (a last axis of 3 would be taken for RGB samples)
PAGES = [np.tile(CH0, (4, 4)), np.tile(CH1, (4, 4))]


def _two_channels_without_saying_so(path: Path, how: str) -> None:
    if how == "pages":  # page by page, no metadata: tifffile's generic I axis
        tifffile.imwrite(path, PAGES[0], metadata=None)
        tifffile.imwrite(path, PAGES[1], metadata=None, append=True)
    elif how == "shaped":  # tifffile's own metadata: an unnamed Q axis
        tifffile.imwrite(path, np.stack(PAGES))
    else:  # ImageJ, the channels saved as Z slices
        tifffile.imwrite(path, np.stack(PAGES), imagej=True, metadata={"axes": "ZYX"})


@pytest.mark.parametrize("how", ["pages", "shaped", "imagej_slices"])
def test_a_declared_channel_axis_reads_a_stack_without_channel_metadata_as_channels(tmp_path, how):
    reference = tmp_path / "cyx.tif"
    tifffile.imwrite(reference, np.stack(PAGES), imagej=True, metadata={"axes": "CYX"})
    path = tmp_path / "stack.tif"
    _two_channels_without_saying_so(path, how)
    if how != "pages":
        with pytest.raises(NucleistyleError, match=r"stack of planes .*--channel-axis"):
            read_image(path)
    image, mode = read_image(path, IntensityRule(channel_axis=0))
    assert mode == "2xuint16"
    np.testing.assert_array_equal(image, read_image(reference)[0])
    with pytest.raises(NucleistyleError, match=r"stack\.tif: channel axis 1 declared"):
        read_image(path, IntensityRule(channel_axis=1))  # Y
    rule = IntensityRule.from_config({"channel_axis": 0, "channels": [1]})
    assert rule == IntensityRule(channels=(1,), channel_axis=0)
    with pytest.raises(NucleistyleError, match=r"config key data\.folder\.intensity\.channel_axis"):
        IntensityRule(channel_axis=-1)


def test_import_folder_takes_the_channel_axis_from_the_command_line(tmp_path):
    folder = tmp_path / "mine"
    (folder / "images").mkdir(parents=True)
    _two_channels_without_saying_so(folder / "images" / "a.tif", "shaped")
    tifffile.imwrite(tmp_path / "cyx.tif", np.stack(PAGES), imagej=True,
                     metadata={"axes": "CYX"})  # fmt: skip
    argv = ["import-folder", folder, tmp_path / "out", "--test", "--channel-axis"]
    assert run([*argv, "0"])[0] == 0
    imported = read_image(tmp_path / "out" / "a" / "images" / "a.png")[0]
    np.testing.assert_array_equal(imported, read_image(tmp_path / "cyx.tif")[0])
    code, _, err = run(["import-folder", folder, tmp_path / "out2", "--test"])
    assert code == 2 and "--channel-axis" in err


@pytest.mark.parametrize(
    "kwargs",
    [{"channels": ()}, {"channels": (0, 0)}, {"channels": (0, 1, 2, 3)}, {"low": 50, "high": 50}],
)
def test_an_invalid_intensity_rule_is_refused(kwargs):
    with pytest.raises(NucleistyleError):
        IntensityRule(**kwargs)


@pytest.mark.parametrize(
    ("suffix", "dtype"),
    [
        (".png", np.uint8),
        (".png", np.uint16),
        (".tif", np.uint16),
        (".tif", np.int32),
        (".tif", np.uint32),
    ],
)
def test_label_images_of_8_16_32_bits_are_read_as_stored(tmp_path, suffix, dtype):
    labels = np.array([[0, 3], [250, 3]], dtype)
    path = tmp_path / f"l{suffix}"
    if suffix == ".png":
        Image.fromarray(labels).save(path)
    else:
        tifffile.imwrite(path, labels)
    np.testing.assert_array_equal(read_label_image(path), labels.astype(np.int32))


def _paired(root: Path, samples, *, labels: bool = True) -> Path:
    return write_paired_tiffs(root, samples, labels)


@pytest.fixture(scope="module")
def real_samples(shared_bbbc038):
    """Six small real images (at most 256 x 320) with their labels, renamed a..f."""
    small = small_real_records(shared_bbbc038 / "stage1_train", 6)
    samples = [load_sample(r) for r in small]
    return [(name, s.image, s.labels) for name, s in zip("abcdef", samples, strict=True)]


def test_import_keeps_every_nucleus_and_applies_the_rule(tmp_path, real_samples):
    folder = _paired(tmp_path / "mine", real_samples)
    rule = IntensityRule(channels=(0,), low=1, high=99.8)
    assert import_folder(folder, tmp_path / "out", training=True, rule=rule) == 6
    imported = {s.image_id: s for s in map(load_sample, list_images(tmp_path / "out"))}
    for name, _, labels in real_samples:
        np.testing.assert_array_equal(imported[name].labels, relabel_sequential(labels))
        expected, _ = read_image(folder / "images" / f"{name}.tif", rule)
        np.testing.assert_array_equal(imported[name].image, expected)


def test_a_labelled_test_folder_gives_a_solution_its_own_labels_score_1(tmp_path, real_samples):
    folder = _paired(tmp_path / "test", real_samples[:3])
    out, solution = tmp_path / "out", tmp_path / "solution.csv"
    import_folder(folder, out, training=False, solution_csv=solution)
    assert all(not r.mask_paths for r in list_images(out))
    truth = read_solution(solution)
    assert sorted(truth) == ["a", "b", "c"]
    write_submission(tmp_path / "sub.csv", {n: lab for n, _, lab in real_samples[:3]})
    _, summary = score_files(solution, tmp_path / "sub.csv")
    assert summary["score"] == pytest.approx(1.0)


def test_an_unlabelled_test_folder_is_imported_without_a_solution(tmp_path, real_samples):
    folder = _paired(tmp_path / "test", real_samples[:2], labels=False)
    assert [p.labels for p in list_pairs(folder, training=False)] == [None, None]
    assert import_folder(folder, tmp_path / "out", training=False) == 2
    with pytest.raises(NucleistyleError, match="no labels"):
        import_folder(folder, tmp_path / "out2", training=False, solution_csv=tmp_path / "s.csv")


def test_export_writes_label_tiffs_and_overlays_of_each_image(tmp_path, real_samples):
    folder = _paired(tmp_path / "test", real_samples[:2])
    import_folder(folder, tmp_path / "imp", training=False, solution_csv=tmp_path / "s.csv")
    predictions = {n: lab for n, _, lab in real_samples[:2]}
    write_submission(tmp_path / "sub.csv", predictions)
    assert (
        export_labels(tmp_path / "sub.csv", tmp_path / "imp", tmp_path / "lab", overlays=True) == 2
    )
    for name, image, labels in real_samples[:2]:
        written = tifffile.imread(tmp_path / "lab" / f"{name}.tif")
        assert written.dtype == np.uint16
        np.testing.assert_array_equal(relabel_sequential(written), relabel_sequential(labels))
        overlay = np.asarray(Image.open(tmp_path / "lab" / "overlays" / f"{name}.png"))
        assert overlay.shape == (*image.shape[:2], 3)
        yellow = (overlay == (255, 255, 0)).all(axis=2)
        assert yellow.any() and (labels[yellow] > 0).all()  # outlines lie on the nuclei


def _bad_folder(tmp_path: Path, case: str) -> tuple[Path, str]:
    """A training folder with one defect; returns it and the file name the error must name."""
    root = tmp_path / "mine"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    image = np.zeros((8, 10), np.uint16)
    labels = np.zeros((8, 10), np.uint16)
    labels[2:5, 2:5] = 1
    tifffile.imwrite(root / "images" / "a.tif", image)
    tifffile.imwrite(root / "masks" / "a.tif", labels)
    if case == "size":
        tifffile.imwrite(root / "masks" / "a.tif", labels[:, :9])
        return root, "a.tif"
    if case == "float":
        tifffile.imwrite(root / "masks" / "a.tif", labels.astype(np.float32))
        return root, "a.tif"
    if case == "rgb_labels":
        Image.fromarray(np.zeros((8, 10, 3), np.uint8)).save(root / "masks" / "b.png")
        tifffile.imwrite(root / "images" / "b.tif", image)
        return root, "b.png"
    if case == "no_labels":
        tifffile.imwrite(root / "images" / "b.tif", image)
        return root, "b.tif"
    if case == "no_masks_folder":
        (root / "masks" / "a.tif").unlink()
        (root / "masks").rmdir()
        return root, "mine"
    if case == "duplicate":
        Image.fromarray(np.zeros((8, 10), np.uint8)).save(root / "images" / "a.png")
        return root, "a.png"
    if case == "orphan_labels":
        tifffile.imwrite(root / "masks" / "c.tif", labels)
        return root, "c.tif"
    raise AssertionError(case)


@pytest.mark.parametrize(
    "case",
    ["size", "float", "rgb_labels", "no_labels", "no_masks_folder", "duplicate", "orphan_labels"],
)
def test_bad_training_folders_fail_with_one_line_naming_the_file_and_write_nothing(tmp_path, case):
    folder, named = _bad_folder(tmp_path, case)
    before = snapshot(tmp_path)
    code, out, err = run(["import-folder", folder, tmp_path / "out"])
    assert code == 2 and out == ""
    assert err.startswith("error: ") and err.count("\n") == 1 and named in err, err
    assert snapshot(tmp_path) == before


def _tiny_config(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    common = {**TINY_SEGMENTER, "iterations": 3, "val_fraction": 0.0, "selection": "last"}
    gan = {"crop": 32, "resize": 0, "base_channels": 4, "iterations": 3, "checkpoint_every": 3}
    path.write_text(yaml.safe_dump({"segment": {"common": common}, "gan": gan}))
    return path


def test_train_segmenter_is_the_rules_training_and_resumes(tmp_path, real_samples):
    from nucleistyle.segment.configs import get_config
    from nucleistyle.segment.engine import train_segmenter
    from nucleistyle.workflow import load_config, segmenter_settings

    import_folder(_paired(tmp_path / "mine", real_samples), tmp_path / "train", training=True)
    config_file = _tiny_config(tmp_path)
    code, _, err = run(
        ["train-segmenter", tmp_path / "train", tmp_path / "cli", "--baseline", "mirzaev",
         "--config", config_file, "--threads", "1"]
    )  # fmt: skip
    assert code == 0, err
    assert (tmp_path / "cli" / "history.tsv").is_file()
    # what the rule's script does, with the same settings
    settings = segmenter_settings(load_config([config_file]), "mirzaev")
    train_segmenter([tmp_path / "train"], tmp_path / "lib.pt", get_config("mirzaev", settings))
    ours = torch.load(tmp_path / "cli" / "model.pt", weights_only=True)["model"]
    theirs = torch.load(tmp_path / "lib.pt", weights_only=True)["model"]
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    # a longer budget resumes from the checkpoint
    code, _, err = run(
        ["train-segmenter", tmp_path / "train", tmp_path / "cli", "--baseline", "mirzaev",
         "--config", config_file, "--iterations", "5", "--threads", "1"]
    )  # fmt: skip
    assert code == 0, err
    history = (tmp_path / "cli" / "history.tsv").read_text().splitlines()
    assert history[-1].split("\t")[0] == "5"


def test_train_gan_trains_on_the_clusters_of_the_assignment_table(tmp_path, real_samples):
    import_folder(_paired(tmp_path / "mine", real_samples), tmp_path / "train", training=True)
    assert run(["cluster", tmp_path / "train", "--k", "2", "--out", tmp_path / "a.csv"])[0] == 0
    code, out, err = run(
        ["train-gan", tmp_path / "train", tmp_path / "a.csv", tmp_path / "gan",
         "--config", _tiny_config(tmp_path), "--threads", "1"]
    )  # fmt: skip
    assert code == 0, err
    assert "2 domains" in err and out == ""  # a status line, on stderr
    model = torch.load(tmp_path / "gan" / "model.pt", weights_only=True)
    assert model["config"]["n_domains"] == 2 and model["config"]["iterations"] == 3
    # the trained model stylises the user's images
    code, _, err = run(
        ["stylize", tmp_path / "gan" / "model.pt", tmp_path / "train", tmp_path / "styled",
         "--domain", "1", "--threads", "1"]
    )  # fmt: skip
    assert code == 0, err
    assert len(list((tmp_path / "styled").glob("*.png"))) == 6


def test_segment_writes_label_tiffs_and_overlays_and_a_second_run_merges_them(
    tiny_segmenter, tmp_path
):
    argv = ["segment", tiny_segmenter["model"], tiny_segmenter["test"], tmp_path / "out",
            "--format", "tif", "--overlays", "--threads", "1"]  # fmt: skip
    code, _, err = run(argv)
    assert code == 0, err
    ids = sorted(r.image_id for r in list_images(tiny_segmenter["test"]))
    assert sorted(p.stem for p in (tmp_path / "out").glob("*.tif")) == ids
    assert sorted(p.stem for p in (tmp_path / "out" / "overlays").glob("*.png")) == ids
    assert tifffile.imread(tmp_path / "out" / f"{ids[0]}.tif").shape == (64, 64)
    (tmp_path / "out" / "overlays" / "notes.txt").write_text("mine")  # the user's, kept
    before = sorted(p.name for p in (tmp_path / "out").rglob("*"))
    assert run(argv)[0] == 0  # the same names replaced, sub-folder merged, nothing else touched
    assert sorted(p.name for p in (tmp_path / "out").rglob("*")) == before
    assert (tmp_path / "out" / "overlays" / "notes.txt").read_text() == "mine"
