"""The `nucleistyle` command line: what users run on their own files."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nucleistyle.cli import main
from nucleistyle.data.csvio import read_submission, write_solution, write_submission
from tests.cli_checks import flat_folder


def _labels(*boxes: tuple[int, int, int, int], shape=(20, 20)) -> np.ndarray:
    labels = np.zeros(shape, np.int32)
    for k, (r0, r1, c0, c1) in enumerate(boxes, start=1):
        labels[r0:r1, c0:c1] = k
    return labels


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    truth = {"a": _labels((0, 4, 0, 4), (10, 14, 10, 14)), "b": _labels((2, 6, 2, 6))}
    # image a: one perfect nucleus, one missed; image b: perfect
    prediction = {"a": _labels((0, 4, 0, 4)), "b": _labels((2, 6, 2, 6))}
    write_solution(tmp_path / "solution.csv", truth)
    write_submission(tmp_path / "submission.csv", prediction)
    return tmp_path / "solution.csv", tmp_path / "submission.csv"


def test_score_json_prints_one_object_with_score_and_n_images(files, capsys):
    solution, submission = files
    assert main(["score", str(solution), str(submission), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    # image a: TP 1, FN 1 at every threshold -> 0.5; image b -> 1.0
    assert out["n_images"] == 2
    assert out["score"] == pytest.approx(0.75)


def test_score_writes_the_per_image_table(files, tmp_path):
    solution, submission = files
    out = tmp_path / "per_image.csv"
    assert main(["score", str(solution), str(submission), "--per-image", str(out)]) == 0
    table = pd.read_csv(out).set_index("ImageId")
    assert table.loc["a", "score"] == pytest.approx(0.5)
    assert table.loc["b", "score"] == pytest.approx(1.0)


def test_score_reports_per_group_means(files, tmp_path, capsys):
    solution, submission = files
    groups = tmp_path / "groups.csv"
    groups.write_text("ImageId,modality\na,tissue\nb,fluorescent\n")
    assert main(["score", str(solution), str(submission), "--groups", str(groups), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["groups"]["tissue"]["score"] == pytest.approx(0.5)
    assert out["groups"]["fluorescent"]["score"] == pytest.approx(1.0)


def test_score_of_a_submission_with_a_wrong_header_fails_with_one_line(files, tmp_path):
    solution, _ = files
    bad = tmp_path / "bad.csv"
    bad.write_text("Id,Pixels\na,1 3\n")
    result = subprocess.run(
        [sys.executable, "-m", "nucleistyle.cli", "score", str(solution), str(bad)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "bad.csv" in lines[0]


def test_score_of_an_unknown_image_id_is_an_error(files, tmp_path, capsys):
    solution, _ = files
    extra = tmp_path / "extra.csv"
    write_submission(extra, {"a": _labels((0, 4, 0, 4)), "zzz": _labels()})
    assert main(["score", str(solution), str(extra)]) == 2
    assert "zzz" in capsys.readouterr().err


def test_synthesize_then_classical_then_score_runs_on_users_files(tmp_path, capsys):
    data = tmp_path / "data"
    assert main(["synthesize", str(data), "--n-train", "10", "--n-test-per-modality", "1",
                 "--size", "96"]) == 0  # fmt: skip
    submission = tmp_path / "submission.csv"
    labels_dir = tmp_path / "labels"
    assert main(["classical", str(data / "stage1_test"), str(submission),
                 "--labels-dir", str(labels_dir), "--workers", "1"]) == 0  # fmt: skip
    assert len(list(labels_dir.glob("*.png"))) == 5
    capsys.readouterr()
    assert main(["score", str(data / "stage1_solution.csv"), str(submission), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n_images"] == 5 and 0.0 < out["score"] <= 1.0


def test_cluster_writes_assignments_for_a_flat_folder(tmp_path, capsys):
    data = tmp_path / "data"
    assert main(["synthesize", str(data), "--n-train", "20", "--n-test-per-modality", "1",
                 "--size", "64"]) == 0  # fmt: skip
    flat = tmp_path / "flat"
    flat.mkdir()
    for png in sorted((data / "stage1_train").glob("*/images/*.png")):
        (flat / png.name).write_bytes(png.read_bytes())
    out = tmp_path / "assignments.csv"
    assert main(["cluster", str(flat), "--k", "3", "--out", str(out)]) == 0
    table = pd.read_csv(out)
    assert len(table) == 20 and {"ImageId", "cluster"} <= set(table.columns)
    assert set(table["ImageId"]) == {p.stem for p in flat.iterdir()}
    assert sorted(table["cluster"].unique()) == [0, 1, 2]


def test_cluster_with_more_clusters_than_images_fails_with_one_line(tmp_path, capsys):
    flat = tmp_path / "flat"
    flat.mkdir()
    from PIL import Image

    for i in range(3):
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(flat / f"im{i}.png")
    assert main(["cluster", str(flat), "--k", "6", "--out", str(tmp_path / "a.csv")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "6" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "a.csv").exists()


def test_segment_writes_16bit_label_images_of_each_input_size(
    tiny_segmenter, tmp_path, capsys, caplog
):
    out, submission = tmp_path / "labels", tmp_path / "sub.csv"
    args = ["segment", str(tiny_segmenter["model"]), str(tiny_segmenter["test"]), str(out)]
    caplog.set_level(logging.INFO, "nucleistyle")
    assert main([*args, "--submission", str(submission), "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    assert "segmented 5 images" in captured.err and captured.out == ""
    assert "predict: 1/5 images" in caplog.text and "predict: 5/5 images" in caplog.text
    from PIL import Image

    from nucleistyle.data.csvio import read_submission

    sub = read_submission(submission)
    assert sorted(p.stem for p in out.iterdir()) == sorted(sub) and len(sub) == 5
    found = 0
    for image_id, rles in sub.items():
        with Image.open(out / f"{image_id}.png") as im:
            assert im.mode == "I;16" and im.size == (64, 64)
            labels = np.asarray(im)
        assert labels.max() == len(rles)  # the PNG and the submission hold the same objects
        found += len(rles)
    assert found > 0
    # a flat folder of odd sizes, labels only
    flat = tmp_path / "flat"
    flat.mkdir()
    rng = np.random.default_rng(0)
    for name, (h, w) in {"wide": (40, 72), "tall": (90, 50)}.items():
        Image.fromarray(rng.integers(0, 255, (h, w, 3), np.uint8)).save(flat / f"{name}.tif")
    assert main(["segment", str(tiny_segmenter["model"]), str(flat), str(tmp_path / "odd")]) == 0
    for name, size in {"wide": (72, 40), "tall": (50, 90)}.items():
        with Image.open(tmp_path / "odd" / f"{name}.png") as im:
            assert im.mode == "I;16" and im.size == size
    assert sorted(p.name for p in tmp_path.iterdir()) == ["flat", "labels", "odd", "sub.csv"]


def test_segment_tta_runs_the_baselines_own_variants_of_each_image(
    tiny_segmenter, tmp_path, monkeypatch
):
    from nucleistyle.segment.inference import Segmenter

    batches = []
    real_raw = Segmenter.raw

    def raw(self, images):
        batches.append(len(images))
        return real_raw(self, images)

    monkeypatch.setattr(Segmenter, "raw", raw)
    out = tmp_path / "labels"
    args = ["segment", str(tiny_segmenter["model"]), str(tiny_segmenter["test"]), str(out)]
    assert main([*args, "--tta", "--device", "cpu"]) == 0
    # Deep Retina's TTA preset: 15 variants of each image, one forward pass per image
    assert batches == [15] * 5
    assert len(list(out.glob("*.png"))) == 5


def test_segment_with_a_corrupt_image_writes_nothing(tiny_segmenter, tmp_path, capsys):
    from PIL import Image

    flat = tmp_path / "flat"
    flat.mkdir()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(flat / "a.png")
    (flat / "b.png").write_bytes(b"not a png")
    out = tmp_path / "new" / "labels"
    args = ["segment", str(tiny_segmenter["model"]), str(flat), str(out)]
    assert main([*args, "--submission", str(tmp_path / "sub.csv")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: cannot read image") and "b.png" in err
    assert len(err.splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["flat"]  # no new/, no sub.csv


@pytest.mark.parametrize(
    ("model", "images", "message"),
    [
        ("missing.pt", "test", r"model file not found: .*missing\.pt"),
        ("foreign.pt", "test", r"foreign\.pt is not a nucleistyle model file: not a PyTorch file$"),
        ("checkpoint.pt", "test", r"checkpoint\.pt is not a segmenter model file"),
        ("model", "empty", r"no images found in .*empty"),
    ],
)
def test_segment_bad_input_fails_with_one_line(
    model, images, message, tiny_segmenter, tmp_path, capsys
):
    import re

    import torch

    (tmp_path / "foreign.pt").write_text("ImageId,EncodedPixels\n")
    torch.save({"format": "something else", "model": {}}, tmp_path / "checkpoint.pt")
    (tmp_path / "empty").mkdir()
    model_path = tiny_segmenter["model"] if model == "model" else tmp_path / model
    images_dir = tiny_segmenter["test"] if images == "test" else tmp_path / images
    out = tmp_path / "labels"
    assert main(["segment", str(model_path), str(images_dir), str(out), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and len(err.splitlines()) == 1
    assert re.search(message, err), err
    assert not out.exists()


def test_segment_entry_point_reports_a_missing_model_on_stderr(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "nucleistyle.cli", "segment", str(tmp_path / "m.pt"),
         str(tmp_path), str(tmp_path / "out")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip() == f"error: model file not found: {tmp_path / 'm.pt'}"
    assert not (tmp_path / "out").exists()


def _rgb_folder(folder: Path, shapes: dict[str, tuple[int, int]], seed: int = 0) -> Path:
    """A flat folder of random RGB PNGs ``<name>.png`` of the given (H, W)."""
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for name, (h, w) in shapes.items():
        Image.fromarray(rng.integers(0, 256, (h, w, 3), np.uint8)).save(folder / f"{name}.png")
    return folder


def test_stylize_writes_rgb_images_of_each_input_size(tiny_gan, tmp_path, capsys):
    from PIL import Image

    shapes = {"wide": (23, 57), "tall": (61, 19), "one": (1, 1)}
    flat = _rgb_folder(tmp_path / "flat", shapes)
    out = tmp_path / "styled"
    args = ["stylize", str(tiny_gan["model"]), str(flat), str(out), "--domain", "2"]
    assert main([*args, "--seed", "5", "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    assert captured.out == ""  # the status line is on stderr, with no progress bar (no terminal)
    assert captured.err == f"stylized 3 images into domain 2 -> {out}\n"
    assert sorted(p.name for p in out.iterdir()) == ["one.png", "tall.png", "wide.png"]
    for name, (h, w) in shapes.items():
        with Image.open(out / f"{name}.png") as im:
            assert im.mode == "RGB" and im.size == (w, h)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["flat", "styled"]  # no staging left


def test_stylize_is_deterministic_for_a_seed_and_independent_of_the_other_images(
    tiny_gan, tmp_path
):
    flat = _rgb_folder(tmp_path / "flat", {"a": (30, 35), "b": (18, 44), "c": (40, 40)})
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "b.png").write_bytes((flat / "b.png").read_bytes())

    def run(name: str, folder: Path, *extra: str) -> bytes:
        out = tmp_path / name
        argv = ["stylize", str(tiny_gan["model"]), str(folder), str(out), "--device", "cpu"]
        assert main([*argv, "--domain", "1", *extra]) == 0
        return (out / "b.png").read_bytes()

    b = run("s7", flat, "--seed", "7")
    assert run("s7_again", flat, "--seed", "7") == b
    assert run("s7_alone", alone, "--seed", "7") == b  # a, c absent: b unchanged
    assert run("s8", flat, "--seed", "8") != b
    assert run("s7_domain2", flat, "--seed", "7", "--domain", "2") != b  # last --domain wins
    assert run("s7_prior", flat, "--seed", "7", "--attribute", "prior") != run(
        "s7_stats", flat, "--seed", "7", "--attribute", "domain_stats"
    )


@pytest.mark.parametrize(
    ("model", "images", "domain", "message"),
    [
        ("model", "flat", "3", r"target domain must be an integer in 0\.\.2 \(.*model\.pt: 0 "),
        ("model", "flat", "-1", r"in 0\.\.2 .*got -1$"),
        ("missing.pt", "flat", "0", r"model file not found: .*missing\.pt$"),
        ("foreign.pt", "flat", "0", r"foreign\.pt is not a nucleistyle model file: not a PyTorch"),
        ("other.pt", "flat", "0", r"other\.pt is not a nucleistyle GAN model"),
        ("model", "empty", "0", r"no images found in .*empty$"),
        ("model", "nowhere", "0", r"image folder not found: .*nowhere$"),
        ("model", "corrupt", "0", r"cannot read image .*b\.png"),
    ],
)
def test_stylize_bad_input_fails_with_one_line_and_writes_nothing(
    model, images, domain, message, tiny_gan, tmp_path, capsys
):
    import re

    import torch

    inputs = tmp_path / "inputs"
    _rgb_folder(inputs / "flat", {"a": (16, 16)})
    _rgb_folder(inputs / "corrupt", {"a": (16, 16), "c": (16, 16)})
    (inputs / "corrupt" / "b.png").write_bytes(b"not a png")
    (inputs / "empty").mkdir()
    (inputs / "foreign.pt").write_text("ImageId,EncodedPixels\n")
    torch.save({"format": "nucleistyle.segment/1", "model": {}}, inputs / "other.pt")
    model_path = tiny_gan["model"] if model == "model" else inputs / model
    out = tmp_path / "new" / "styled"
    argv = ["stylize", str(model_path), str(inputs / images), str(out), "--domain", domain]
    assert main([*argv, "--device", "cpu"]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert captured.out == "" and err.startswith("error:") and len(err.splitlines()) == 1
    assert re.search(message, err), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inputs"]  # no new/, no staging


def test_stylize_entry_point_reports_a_bad_domain_on_stderr(tiny_gan, tmp_path):
    flat = _rgb_folder(tmp_path / "flat", {"a": (16, 16)})
    result = subprocess.run(
        [sys.executable, "-m", "nucleistyle.cli", "stylize", str(tiny_gan["model"]), str(flat),
         str(tmp_path / "out"), "--domain", "9", "--device", "cpu"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 2 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "error: target domain must be an integer in 0..2"
    )
    assert lines[0].endswith("got 9")
    assert not (tmp_path / "out").exists()


def test_stylize_requires_a_domain_and_a_known_attribute_source(tiny_gan, tmp_path, capsys):
    args = ["stylize", str(tiny_gan["model"]), str(tmp_path), str(tmp_path / "out")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "--domain" in err and len(err.splitlines()) == 1
    assert main([*args, "--domain", "0", "--attribute", "uniform"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "invalid choice: 'uniform'" in err


def test_an_output_sent_to_dev_stdout_is_the_only_thing_on_stdout(tmp_path):
    flat = flat_folder(tmp_path / "flat")
    # nucleistyle classical DIR /dev/stdout > sub.csv
    with (tmp_path / "sub.csv").open("wb") as stdout:
        result = subprocess.run(
            [sys.executable, "-m", "nucleistyle.cli", "classical", str(flat), "/dev/stdout"],
            stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=120,
        )  # fmt: skip
    assert result.returncode == 0 and result.stderr == "segmented 3 images -> /dev/stdout\n"
    submission = read_submission(tmp_path / "sub.csv")
    assert sorted(submission) == ["im0", "im1", "im2"]
    solution = tmp_path / "solution.csv"
    write_solution(solution, {f"im{k}": np.zeros((16, 16), np.int32) for k in range(3)})
    assert main(["score", str(solution), str(tmp_path / "sub.csv")]) == 0  # a valid submission
