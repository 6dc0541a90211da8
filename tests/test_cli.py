"""The `nucleistyle` command line: what users run on their own files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nucleistyle.cli import main
from nucleistyle.data.csvio import write_solution, write_submission


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
