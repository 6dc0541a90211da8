"""Solution and submission CSV files: headers, CRLF, stage-2 Usage filtering, atomic writers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from nucleistyle.data.csvio import (
    GroundTruth,
    gather_submissions,
    read_solution,
    read_submission,
    write_solution,
    write_submission,
)
from nucleistyle.data.rle import RLEError
from nucleistyle.errors import NucleistyleError

SOLUTION_HEADER = "ImageId,EncodedPixels,Height,Width,Usage"


def _write(path: Path, lines: list[str], newline: str = "\n") -> Path:
    path.write_bytes(newline.join(lines).encode() + newline.encode())
    return path


def test_read_solution_rejects_wrong_header(tmp_path: Path) -> None:
    path = _write(tmp_path / "sol.csv", ["ImageId,EncodedPixels,Height,Width", "a,1 2,3,3"])
    with pytest.raises(NucleistyleError, match=r"sol.csv: header must be .*found 'ImageId,"):
        read_solution(path)


def test_read_submission_rejects_extra_columns(tmp_path: Path) -> None:
    path = _write(tmp_path / "sub.csv", ["ImageId,EncodedPixels,Score", "a,1 2,0.9"])
    with pytest.raises(NucleistyleError, match=r"sub.csv: header must be 'ImageId,EncodedPixels'"):
        read_submission(path)


def test_read_submission_rejects_row_with_extra_column(tmp_path: Path) -> None:
    path = _write(tmp_path / "sub.csv", ["ImageId,EncodedPixels", "a,1 2", "b,1 2,7"])
    with pytest.raises(NucleistyleError, match=r"sub.csv line 3: expected 2 columns, found 3"):
        read_submission(path)


def test_read_files_tolerate_crlf(tmp_path: Path) -> None:
    sol = _write(
        tmp_path / "sol.csv", [SOLUTION_HEADER, "a,1 2,3,3,Public", "a,7 3,3,3,Public"], "\r\n"
    )
    gt = read_solution(sol)["a"]
    assert (gt.rles, gt.shape, gt.usage, gt.lines) == (["1 2", "7 3"], (3, 3), "Public", [2, 3])
    sub = _write(tmp_path / "sub.csv", ["ImageId,EncodedPixels", "a,1 2", "b,"], "\r\n")
    assert read_submission(sub) == {"a": ["1 2"], "b": []}


def test_read_solution_stage2_keeps_only_private_rows(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "stage2.csv",
        [
            SOLUTION_HEADER,
            "decoy1,1 1,4,4,Ignored",
            "img1,1 2,4,4,Private",
            "img1,9 4,4,4,Private",
            "decoy2,1 1,8,8,Ignored",
            "img2,3 1,2,2,Private",
        ],
    )
    solution = read_solution(path)
    assert list(solution) == ["img1", "img2"]
    assert solution["img1"].rles == ["1 2", "9 4"] and solution["img1"].lines == [3, 4]
    assert solution["img2"].usage == "Private"
    assert set(read_solution(path, usage=None)) == {"decoy1", "img1", "decoy2", "img2"}
    decoys = read_solution(path, usage="Ignored")
    assert list(decoys) == ["decoy1", "decoy2"] and decoys["decoy1"].rles == []


def test_read_solution_stage1_does_not_filter_on_usage(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "stage1.csv",
        [SOLUTION_HEADER, "a,1 2,3,3,Public", "b,1 2,3,3,Usage", "c,1 1,3,3,Public"],
    )
    solution = read_solution(path)
    assert list(solution) == ["a", "b", "c"]
    assert solution["c"].rles == []  # only a placeholder: kept, zero objects
    with pytest.raises(NucleistyleError, match="no rows with Usage 'Private'"):
        read_solution(path, usage="Private")


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("b,1 2,0,3,Public", r"line 3, ImageId b: Height must be a positive integer, found '0'"),
        ("b,1 2,3,x,Public", r"line 3, ImageId b: Width must be a positive integer"),
        ("a,1 2,4,3,Public", r"line 3, ImageId a: size 4x3 differs from 3x3"),
        ("a,3 1,3,3,Private", r"line 3, ImageId a: Usage 'Private' differs from 'Public'"),
        ("a,8 5,3,3,Public", r"line 3, ImageId a: run 1 \(8 5\) ends past the last pixel 9"),
        ("a,1 2,3,3", r"line 3: expected 5 columns, found 4"),
        (",1 2,3,3,Public", r"line 3: empty ImageId"),
    ],
)
def test_read_solution_bad_row_names_file_line_and_image(
    tmp_path: Path, row: str, message: str
) -> None:
    path = _write(tmp_path / "sol.csv", [SOLUTION_HEADER, "a,1 2,3,3,Public", row])
    with pytest.raises(NucleistyleError, match=r"sol.csv " + message):
        read_solution(path)


def test_ground_truth_label_image_first_row_wins(tmp_path: Path) -> None:
    path = _write(tmp_path / "sol.csv", [SOLUTION_HEADER, "a,1 3,3,2,Public", "a,3 2,3,2,Public"])
    labels, contested = read_solution(path)["a"].label_image()
    np.testing.assert_array_equal(labels, [[1, 2], [1, 0], [1, 0]])
    assert contested == 1


def test_ground_truth_label_image_error_names_line() -> None:
    gt = GroundTruth("a", 2, 2, ["1 1", "2 1 1 1"], "Public", [4, 9], "sol.csv")
    with pytest.raises(RLEError, match=r"sol.csv line 9, ImageId a: runs not sorted"):
        gt.label_image()


def test_write_submission_writes_a_row_for_an_empty_prediction(tmp_path: Path) -> None:
    path = tmp_path / "sub.csv"
    predictions = {
        "b": np.array([[0, 5], [2, 5]], np.uint16),
        "a": np.zeros((2, 2), np.int32),
    }
    write_submission(path, predictions)
    assert path.read_text() == "ImageId,EncodedPixels\nb,2 1\nb,3 2\na,\n"
    submission = read_submission(path)
    assert submission == {"b": ["2 1", "3 2"], "a": []}
    assert submission.where("b") == [f"{path} line 2, ImageId b", f"{path} line 3, ImageId b"]


def test_write_solution_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 6, size=(7, 9)) * 11  # labels 0, 11, ..., 55: gaps
    path = tmp_path / "sol.csv"
    write_solution(path, {"x": labels, "empty": np.zeros((3, 4), np.int64)}, usage="Private")
    solution = read_solution(path)
    assert list(solution) == ["x", "empty"]
    assert solution["empty"].rles == [] and solution["empty"].shape == (3, 4)
    decoded, contested = solution["x"].label_image()
    assert contested == 0 and solution["x"].usage == "Private"
    lut = np.array([0, *np.unique(labels[labels > 0])])
    np.testing.assert_array_equal(lut[decoded], labels)


def test_writers_leave_no_partial_file_after_an_error(tmp_path: Path) -> None:
    path = tmp_path / "sub.csv"
    bad = {"good": np.ones((2, 2), np.int32), "bad": np.ones((2, 2), np.float32)}
    with pytest.raises(NucleistyleError, match="ImageId bad: expected a 2-D integer label image"):
        write_submission(path, bad)
    assert list(tmp_path.iterdir()) == []
    path.write_text("old\n")
    with pytest.raises(NucleistyleError, match="negative labels"):
        write_solution(path, {"a": np.full((2, 2), -1)})
    with pytest.raises(NucleistyleError, match="invalid ImageId"):
        write_submission(path, {"a,b": np.ones((2, 2), np.int32)})
    assert path.read_text() == "old\n"
    assert list(tmp_path.iterdir()) == [path]


def test_read_submission_tolerates_bom_and_rejects_binary(tmp_path: Path) -> None:
    path = tmp_path / "sub.csv"
    path.write_bytes(b"\xef\xbb\xbfImageId,EncodedPixels\na,1 1\n")
    assert read_submission(path) == {"a": ["1 1"]}  # in a submission `1 1` is a real pixel
    path.write_bytes(b"ImageId,EncodedPixels\na,\xff\xfe\n")
    with pytest.raises(NucleistyleError, match=r"sub.csv line 2: not UTF-8 text"):
        read_submission(path)
    with pytest.raises(NucleistyleError, match="cannot open"):
        read_submission(tmp_path / "absent.csv")


def test_gather_submissions_sorts_images_and_keeps_each_images_row_order(tmp_path: Path) -> None:
    a = _write(tmp_path / "0.csv", ["ImageId,EncodedPixels", "c,5 2", "c,1 2", "a,"])
    b = _write(tmp_path / "1.csv", ["ImageId,EncodedPixels", "b,3 1"], newline="\r\n")
    empty = _write(tmp_path / "2.csv", ["ImageId,EncodedPixels"])
    assert gather_submissions([a, b, empty], tmp_path / "out" / "sub.csv") == 3
    text = (tmp_path / "out" / "sub.csv").read_text()
    # rows of c stay in their order (descending confidence), a keeps its empty row
    assert text == "ImageId,EncodedPixels\na,\nb,3 1\nc,5 2\nc,1 2\n"


def test_gather_submissions_rejects_an_image_in_two_shards(tmp_path: Path) -> None:
    a = _write(tmp_path / "0.csv", ["ImageId,EncodedPixels", "a,1 2", "b,"])
    b = _write(tmp_path / "1.csv", ["ImageId,EncodedPixels", "c,", "b,4 1"])
    out = tmp_path / "sub.csv"
    with pytest.raises(
        NucleistyleError, match=r"ImageId b appears in two shards: .*0\.csv and .*1\.csv"
    ):
        gather_submissions([a, b], out)
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["0.csv", "1.csv"]


def test_gather_submissions_names_a_bad_shard_and_needs_one(tmp_path: Path) -> None:
    good = _write(tmp_path / "0.csv", ["ImageId,EncodedPixels", "a,1 2"])
    bad = _write(tmp_path / "1.csv", ["ImageId,Pixels", "b,1 2"])
    with pytest.raises(NucleistyleError, match=r"1\.csv: header must be"):
        gather_submissions([good, bad], tmp_path / "sub.csv")
    with pytest.raises(NucleistyleError, match="no shard submissions"):
        gather_submissions([], tmp_path / "sub.csv")
    assert not (tmp_path / "sub.csv").exists()
