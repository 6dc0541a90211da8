"""The official DSB 2018 metric: hand-checked cases, an independent exact reference on real
masks, file-level scoring, and COCO AP."""

from __future__ import annotations

import csv
import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage as ndi

from nucleistyle.data.bbbc038 import list_images, read_masks
from nucleistyle.data.csvio import write_solution, write_submission
from nucleistyle.data.rle import RLEError
from nucleistyle.errors import NucleistyleError
from nucleistyle.metrics import (
    THRESHOLDS,
    coco_ap,
    image_score,
    match_image,
    rank_confidences,
    score_files,
    score_images,
    score_to_files,
    summarize,
)

ONES = np.ones(10, np.int64)


def _counts(gt: np.ndarray, pred: np.ndarray) -> tuple[list[int], list[int], list[int]]:
    m = match_image(gt, pred)
    return m.tp.tolist(), m.fp.tolist(), m.fn.tolist()


def test_thresholds_are_050_to_095() -> None:
    np.testing.assert_allclose(THRESHOLDS, [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95])


def test_perfect_prediction_scores_1() -> None:
    gt = np.zeros((6, 6), np.int32)
    gt[0:2, 0:2], gt[3:6, 1:3], gt[4, 5] = 1, 2, 3
    m = match_image(gt, gt)
    assert (m.n_gt, m.n_pred, m.score) == (3, 3, 1.0)
    assert m.tp.tolist() == [3] * 10 and not m.fp.any() and not m.fn.any()


def test_empty_prediction_scores_0() -> None:
    gt = np.zeros((4, 4), np.int32)
    gt[0, :2], gt[3, 3] = 1, 2
    assert _counts(gt, np.zeros_like(gt)) == ([0] * 10, [0] * 10, [2] * 10)
    assert image_score(gt, np.zeros_like(gt)) == 0.0


def test_no_gt_conventions() -> None:
    empty = np.zeros((3, 3), np.int32)
    pred = empty.copy()
    pred[1, 1] = 4
    assert image_score(empty, empty) == 1.0  # nothing to find, nothing found
    np.testing.assert_array_equal(match_image(empty, empty).scores, np.ones(10))
    assert _counts(empty, pred) == ([0] * 10, [1] * 10, [0] * 10)
    assert image_score(empty, pred) == 0.0


def test_iou_exactly_one_half_is_a_miss() -> None:
    gt = np.zeros((4, 4), np.int32)
    gt[0:2, 0:2] = 1  # 4 px
    pred = np.zeros_like(gt)
    pred[0:2, 0] = 1  # 2 of them: IoU = 2/4 = 0.5, not > 0.5
    assert _counts(gt, pred) == ([0] * 10, [1] * 10, [1] * 10)
    assert image_score(gt, pred) == 0.0


def test_iou_exactly_three_quarters_is_a_miss_at_075() -> None:
    gt = np.zeros((4, 4), np.int32)
    gt[0:2, 0:2] = 1
    pred = gt.copy()
    pred[1, 1] = 0  # 3 of 4 px: IoU = 0.75 hits for t = 0.50 … 0.70 only
    tp, fp, fn = _counts(gt, pred)
    assert tp == [1] * 5 + [0] * 5
    assert fp == fn == [0] * 5 + [1] * 5
    assert image_score(gt, pred) == 0.5  # (5 * 1 + 5 * 0) / 10


def test_iou_four_fifths_hits_up_to_075() -> None:
    gt = np.zeros((1, 6), np.int32)
    gt[0, :5] = 2
    pred = np.zeros_like(gt)
    pred[0, :4] = 9  # IoU 4/5 = 0.8: hit for t <= 0.75, tie miss at 0.80
    assert _counts(gt, pred)[0] == [1] * 6 + [0] * 4
    assert image_score(gt, pred) == pytest.approx(0.6, abs=1e-15)


def test_merge_of_two_gt_objects_into_one_prediction() -> None:
    gt = np.zeros((2, 5), np.int32)
    gt[:, 0:3] = 1  # A: 6 px
    gt[:, 3] = 2  # B: 2 px
    pred = np.zeros_like(gt)
    pred[:, 0:4] = 1  # A ∪ B: IoU(A) = 6/8 = 0.75, IoU(B) = 2/8
    tp, fp, fn = _counts(gt, pred)
    assert tp == [1] * 5 + [0] * 5
    assert fp == [0] * 5 + [1] * 5
    assert fn == [1] * 5 + [2] * 5
    assert image_score(gt, pred) == 0.25  # 1/2 at five thresholds, 0 at five


def test_split_of_one_gt_object_into_two_predictions() -> None:
    gt = np.zeros((2, 5), np.int32)
    gt[:, 0:4] = 1  # 8 px
    pred = np.zeros_like(gt)
    pred[:, 0:3], pred[:, 3] = 1, 2  # 6 px (IoU 0.75) and 2 px (IoU 0.25)
    tp, fp, fn = _counts(gt, pred)
    assert tp == [1] * 5 + [0] * 5
    assert fp == [1] * 5 + [2] * 5
    assert fn == [0] * 5 + [1] * 5
    assert image_score(gt, pred) == 0.25


def test_image_without_background() -> None:
    gt = np.ones((4, 4), np.int32)
    gt[:, 2:] = 2
    assert image_score(gt, gt * 3 + 5) == 1.0  # labels 8 and 11 everywhere: perfect
    merged = np.full_like(gt, 7)  # one object covering both halves: IoU 0.5 with each
    assert _counts(gt, merged) == ([0] * 10, [1] * 10, [2] * 10)


def test_label_gaps_and_huge_ids_match_sequential_labels() -> None:
    rng = np.random.default_rng(7)
    gt = rng.integers(0, 6, size=(30, 40)).astype(np.int32)
    pred = np.where(rng.random(gt.shape) < 0.1, 0, gt)
    pred[:, 35:] = 0
    reference = match_image(gt, pred)
    gt_lut = np.array([0, 3, 17, 900, 2**40, 2**62], np.int64)  # gaps, huge ids, int64
    pred_lut = np.array([0, 2**31 - 1, 8, 5, 6000, 1], np.int64)
    for g, p in [
        (gt_lut[gt], pred),
        (gt, pred_lut[pred]),
        (gt_lut[gt], pred_lut[pred]),
        (gt.astype(np.uint8), pred.astype(np.uint16)),
        (gt.astype(">i4"), pred.astype(np.uint64)),
        ((gt * 251).astype(np.int32), (pred * 13).astype(np.int32)),  # gaps, max <= n
    ]:
        m = match_image(g, p)
        assert (m.n_gt, m.n_pred) == (reference.n_gt, reference.n_pred)
        np.testing.assert_array_equal(m.tp, reference.tp)
        np.testing.assert_array_equal(m.fp, reference.fp)
        np.testing.assert_array_equal(m.fn, reference.fn)


def test_many_small_objects_use_the_sparse_path_correctly() -> None:
    # 3200 dominoes on 80x80: (n_gt + 1) * (n_pred + 1) far exceeds the pixel count
    gt = (np.arange(80 * 80).reshape(80, 80) // 2 + 1).astype(np.int32)
    perm = np.random.default_rng(0).permutation(np.arange(1, gt.max() + 1))
    relabelled = np.concatenate([[0], perm])[gt]
    assert image_score(gt, relabelled) == 1.0
    halves = np.where(np.arange(80)[None, :] % 2 == 0, relabelled, 0)  # IoU 1/2: all miss
    m = match_image(gt, halves)
    assert (m.tp.max(), m.fp[0], m.fn[0]) == (0, 3200, 3200)


def test_bool_masks_are_one_object() -> None:
    gt = np.zeros((3, 3), bool)
    gt[:2, :2] = True
    assert image_score(gt, gt) == 1.0


@pytest.mark.parametrize(
    ("gt", "pred", "message"),
    [
        (np.zeros((2, 2), int), np.zeros((2, 3), int), "differ in shape"),
        (np.zeros((2, 2), float), np.zeros((2, 2), int), "gt must be a 2-D integer"),
        (np.zeros((2, 2, 1), int), np.zeros((2, 2, 1), int), "gt must be a 2-D integer"),
        (np.zeros((2, 2), int), -np.ones((2, 2), int), "pred has negative labels"),
    ],
)
def test_invalid_inputs_raise(gt: np.ndarray, pred: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        match_image(gt, pred)


def test_score_images_and_summarize() -> None:
    gt = np.zeros((4, 4), np.int32)
    gt[0:2, 0:2] = 1
    empty = np.zeros_like(gt)
    three_quarters = gt.copy()
    three_quarters[1, 1] = 0
    table = score_images([("a", gt, gt), ("b", gt, three_quarters), ("c", gt, empty)])
    assert table["ImageId"].tolist() == ["a", "b", "c"]
    assert table["score"].tolist() == [1.0, 0.5, 0.0]
    assert table["tp_70"].tolist() == [1, 1, 0] and table["tp_75"].tolist() == [1, 0, 0]
    assert table["fn_95"].tolist() == [0, 1, 1] and table["n_pred"].tolist() == [1, 1, 0]
    assert list(table.columns[:4]) == ["ImageId", "n_gt", "n_pred", "score"]
    summary = summarize(table, groups={"a": "fluo", "b": "fluo"})
    assert summary["score"] == pytest.approx(0.5)
    assert summary["n_images"] == 3
    assert summary["score_by_threshold"]["0.70"] == pytest.approx(2 / 3)
    assert summary["score_by_threshold"]["0.75"] == pytest.approx(1 / 3)
    assert summary["groups"] == {
        "fluo": {"score": 0.75, "n_images": 2},
        "unknown": {"score": 0.0, "n_images": 1},
    }
    assert "groups" not in summarize(table)
    with pytest.raises(NucleistyleError, match="no images"):
        summarize(table.iloc[:0])


# ---------------------------------------------------------------- independent exact reference


def reference_counts(gt: np.ndarray, pred: np.ndarray) -> tuple[list[int], list[int], list[int]]:
    """Straightforward DSB counts: one boolean mask per object, Python loops, exact IoU."""
    gt_ids = [int(k) for k in np.unique(gt) if k != 0]
    pred_ids = [int(k) for k in np.unique(pred) if k != 0]
    pred_area = {k: int(np.count_nonzero(pred == k)) for k in pred_ids}
    thresholds = [Fraction(k, 20) for k in range(10, 20)]
    gt_hit = {t: set() for t in thresholds}
    pred_hit = {t: set() for t in thresholds}
    for g in gt_ids:
        g_mask = gt == g
        g_area = int(np.count_nonzero(g_mask))
        for p in {int(k) for k in np.unique(pred[g_mask])} - {0}:
            inter = int(np.count_nonzero(g_mask & (pred == p)))
            iou = Fraction(inter, g_area + pred_area[p] - inter)
            for t in thresholds:
                if iou > t:
                    assert g not in gt_hit[t] and p not in pred_hit[t]  # matches are unique
                    gt_hit[t].add(g)
                    pred_hit[t].add(p)
    tp = [len(gt_hit[t]) for t in thresholds]
    fp = [len(pred_ids) - len(pred_hit[t]) for t in thresholds]
    fn = [len(gt_ids) - len(gt_hit[t]) for t in thresholds]
    return tp, fp, fn


def reference_score(gt: np.ndarray, pred: np.ndarray) -> float:
    tp, fp, fn = reference_counts(gt, pred)
    per_t = [
        Fraction(a, a + b + c) if a + b + c else Fraction(1)
        for a, b, c in zip(tp, fp, fn, strict=True)
    ]
    return float(sum(per_t) / len(per_t))


def _perturbations(gt: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    shifted_down = np.zeros_like(gt)
    shifted_down[1:] = gt[:-1]
    shifted_right = np.zeros_like(gt)
    shifted_right[:, 1:] = gt[:, :-1]
    ids = np.unique(gt[gt > 0])
    deleted = np.where(np.isin(gt, rng.choice(ids, ids.size // 10, replace=False)), 0, gt)
    same = ndi.minimum_filter(gt, 3) == ndi.maximum_filter(gt, 3)
    eroded = np.where(same, gt, 0)
    dilated = np.where(gt == 0, ndi.maximum_filter(gt, 3), gt)
    merged = gt.copy()
    a, b = rng.choice(ids, 2, replace=False)
    merged[merged == b] = a
    # everything at once, with gappy, huge labels
    combo = np.where(np.isin(shifted_right, ids[::7]), 0, shifted_right).astype(np.int64)
    combo[combo > 0] = combo[combo > 0] * 1_000_003 + 2**33
    return {
        "shift_down": shifted_down,
        "shift_right": shifted_right,
        "delete_10pct": deleted,
        "erode": eroded,
        "dilate": dilated,
        "merge_two": merged,
        "combo_huge_labels": combo,
    }


@pytest.fixture(scope="module")
def real_labels(shared_bbbc038: Path) -> list[tuple[str, np.ndarray]]:
    """~30 real label images (<= 120 nuclei each, for the slow reference), spread over groups."""
    with (shared_bbbc038 / "manifest.csv").open(newline="") as f:
        manifest = {row["ImageId"]: row for row in csv.DictReader(f)}
    records = [
        r
        for r in list_images(shared_bbbc038 / "stage1_train")
        if int(manifest[r.image_id]["n_masks"]) <= 120
    ]
    out = []
    for record in records[:: max(1, len(records) // 30)][:30]:
        width, height = Image.open(record.mask_paths[0]).size
        out.append((record.image_id, read_masks(record.mask_paths, (height, width))[0]))
    return out


def test_agrees_with_independent_reference_on_real_masks(
    real_labels: list[tuple[str, np.ndarray]],
) -> None:
    assert len(real_labels) >= 25
    rng = np.random.default_rng(2018)
    n_compared = 0
    scores = set()
    for image_id, gt in real_labels:
        for kind, pred in _perturbations(gt, rng).items():
            m = match_image(gt, pred)
            tp, fp, fn = reference_counts(gt, pred)
            assert (m.tp.tolist(), m.fp.tolist(), m.fn.tolist()) == (tp, fp, fn), (image_id, kind)
            assert abs(m.score - reference_score(gt, pred)) <= 1e-12, (image_id, kind)
            scores.add(round(m.score, 6))
            n_compared += 1
    assert n_compared == 7 * len(real_labels)
    assert len(scores) > 50  # the perturbations really produce partial matches


def test_real_perfect_prediction_scores_1(real_labels: list[tuple[str, np.ndarray]]) -> None:
    table = score_images((i, gt, gt) for i, gt in real_labels[:5])
    assert table["score"].tolist() == [1.0] * 5


# ---------------------------------------------------------------- files


SOLUTION_HEADER = "ImageId,EncodedPixels,Height,Width,Usage"


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def stage1_files(tmp_path: Path) -> tuple[Path, Path]:
    """img1: two 3-px objects on 3x3; img2: one object; the submission gets img1 right."""
    solution = _write(
        tmp_path / "solution.csv",
        [
            SOLUTION_HEADER,
            "img1,1 3,3,3,Public",
            "img1,7 3,3,3,Public",
            "img2,4 2,2,3,Public",
        ],
    )
    submission = _write(tmp_path / "sub.csv", ["ImageId,EncodedPixels", "img1,7 3", "img1,1 3"])
    return solution, submission


def test_score_files_missing_image_scores_0_and_is_reported(
    stage1_files: tuple[Path, Path],
) -> None:
    table, summary = score_files(*stage1_files, groups={"img1": "fluo"})
    assert table["ImageId"].tolist() == ["img1", "img2"]
    assert table["score"].tolist() == [1.0, 0.0]
    assert table["fn_50"].tolist() == [0, 1]
    assert summary["missing"] == ["img2"]
    assert summary["score"] == 0.5 and summary["n_images"] == 2
    assert summary["groups"]["fluo"] == {"score": 1.0, "n_images": 1}
    assert summary["gt_contested_pixels"] == 0


def test_score_to_files_writes_table_and_json(
    stage1_files: tuple[Path, Path], tmp_path: Path
) -> None:
    groups = _write(tmp_path / "modalities.csv", ["ImageId,set,modality", "img1,test,he"])
    out = tmp_path / "out"
    summary = score_to_files(
        *stage1_files, out / "per_image.csv", out / "summary.json", groups_csv=groups
    )
    assert json.loads((out / "summary.json").read_text()) == summary
    assert summary["groups"] == {
        "he": {"score": 1.0, "n_images": 1},
        "unknown": {"score": 0.0, "n_images": 1},
    }
    lines = (out / "per_image.csv").read_text().splitlines()
    assert lines[0].startswith("ImageId,n_gt,n_pred,score,tp_50,") and len(lines) == 3
    assert (
        lines[0].endswith(",group") and lines[1].endswith(",he") and lines[2].endswith(",unknown")
    )
    # COCO AP: 2 exact detections of 3 GT objects (img2 is missing): precision 1 up to recall
    # 2/3, so 67 of the 101 COCO recall points (0, 0.01, ..., 0.66) have precision 1
    assert summary["ap"] == summary["ap50"] == summary["ap75"] == pytest.approx(67 / 101)
    with pytest.raises(NucleistyleError, match="expected columns ImageId and modality"):
        score_to_files(*stage1_files, out / "a.csv", out / "b.json", groups_csv=stage1_files[1])


@pytest.mark.parametrize(
    ("rows", "ap50"), [(["1 2", "13 2"], 51 / 101), (["13 2", "1 2"], 25.5 / 101)]
)
def test_ap_ranks_objects_by_submission_order(tmp_path: Path, rows: list[str], ap50: float) -> None:
    # 4x4 image, GT objects at pixels 1-2 and 9-10; prediction: the first GT object exactly and a
    # false positive at pixels 13-14. Listed first, the hit gives precision 1 up to recall 1/2
    # (51 recall points); listed second, precision 1/2 there.
    solution = _write(
        tmp_path / "sol.csv", [SOLUTION_HEADER, "a,1 2,4,4,Public", "a,9 2,4,4,Public"]
    )
    submission = _write(tmp_path / "sub.csv", ["ImageId,EncodedPixels", *(f"a,{r}" for r in rows)])
    _, summary = score_files(solution, submission, ap=True)
    assert summary["ap50"] == pytest.approx(ap50)
    assert summary["score"] == pytest.approx(1 / 3)  # the DSB score ignores the order


def test_ap_is_null_without_gt_objects(tmp_path: Path) -> None:
    solution = _write(tmp_path / "sol.csv", [SOLUTION_HEADER, "a,1 1,4,4,Public"])
    submission = _write(tmp_path / "sub.csv", ["ImageId,EncodedPixels", "a,3 2"])
    out = tmp_path / "summary.json"
    score_to_files(solution, submission, tmp_path / "per_image.csv", out)
    summary = json.loads(out.read_text())
    assert (summary["ap"], summary["ap50"], summary["ap75"]) == (None, None, None)
    assert "group" not in (tmp_path / "per_image.csv").read_text().splitlines()[0]


def test_rank_confidences_decrease_with_row_order() -> None:
    assert rank_confidences(4) == {1: 1.0, 2: 0.75, 3: 0.5, 4: 0.25}
    assert rank_confidences(0) == {}


def test_score_files_unknown_image_is_an_error(stage1_files: tuple[Path, Path]) -> None:
    solution, submission = stage1_files
    with submission.open("a") as f:
        f.write("ghost,1 1\n")
    with pytest.raises(NucleistyleError, match=r"sub.csv: ImageId ghost is not in the solution"):
        score_files(solution, submission)


def test_score_files_overlapping_predictions_name_file_line_and_image(
    stage1_files: tuple[Path, Path],
) -> None:
    solution, submission = stage1_files
    _write(submission, ["ImageId,EncodedPixels", "img1,1 3", "img2,1 1", "img1,3 2"])
    with pytest.raises(RLEError, match=r"sub.csv line 4, ImageId img1: overlaps row 1"):
        score_files(solution, submission)


def test_score_files_malformed_prediction_names_line(stage1_files: tuple[Path, Path]) -> None:
    solution, submission = stage1_files
    _write(submission, ["ImageId,EncodedPixels", "img2,1 2 3"])
    with pytest.raises(RLEError, match=r"sub.csv line 2, ImageId img2: odd number of values"):
        score_files(solution, submission)


def test_score_files_stage2_scores_only_private_images(tmp_path: Path) -> None:
    solution = _write(
        tmp_path / "stage2_solution.csv",
        [
            SOLUTION_HEADER,
            "decoy,1 1,4,4,Ignored",
            "p1,1 4,4,4,Private",
            "p1,9 2,4,4,Private",
            "p2,2 2,2,2,Private",
            "p2,1 2,2,2,Private",  # overlaps the row above at pixel 2: first row wins
        ],
    )
    submission = _write(
        tmp_path / "sub.csv",
        ["ImageId,EncodedPixels", "decoy,5 3", "p1,1 4", "p1,9 2", "p2,2 3"],
    )
    table, summary = score_files(solution, submission)
    assert table["ImageId"].tolist() == ["p1", "p2"]  # the decoy row is accepted, not scored
    assert summary["n_images"] == 2 and summary["missing"] == []
    assert summary["gt_contested_pixels"] == 1
    # p2: GT row 1 = pixels 2,3 ; row 2 keeps pixel 1 only; prediction 2,3,4: IoU 2/3
    p2 = table.set_index("ImageId").loc["p2"]
    assert (p2["n_gt"], p2["tp_60"], p2["tp_65"], p2["tp_70"]) == (2, 1, 1, 0)
    assert table["score"].tolist() == [1.0, pytest.approx(4 / 10 * 1 / 2)]


def test_score_files_equals_score_images_after_writing_csvs(tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    gts, preds = {}, {}
    for k in range(4):
        foreground = rng.random((40, 50)) < 0.35
        foreground[0, 0] = False  # a 1-px object there would encode as the `1 1` placeholder
        gt = ndi.label(foreground)[0]
        gts[f"im{k}"] = gt
        preds[f"im{k}"] = np.where(rng.random(gt.shape) < 0.15, 0, gt)
    preds["im3"] = np.zeros_like(gts["im3"])  # a row with an empty EncodedPixels
    write_solution(tmp_path / "sol.csv", gts)
    write_submission(tmp_path / "sub.csv", preds)
    table, summary = score_files(tmp_path / "sol.csv", tmp_path / "sub.csv")
    expected = score_images((k, gts[k], preds[k]) for k in gts)
    np.testing.assert_allclose(table["score"], expected["score"], rtol=0, atol=1e-15)
    assert table.drop(columns="score").equals(expected.drop(columns="score"))
    assert summary["missing"] == [] and table["score"].iloc[3] == 0.0


# ---------------------------------------------------------------- COCO


def test_coco_perfect_prediction_gives_ap_1() -> None:
    gt = np.zeros((20, 20), np.int32)
    gt[2:6, 2:6], gt[10:15, 3:9], gt[12:18, 12:19] = 1, 2, 3
    items = [("a", gt, gt * 5, None), ("b", gt.T.copy(), gt.T.copy(), {1: 0.9, 2: 0.8, 3: 0.7})]
    assert coco_ap(items) == {"AP": 1.0, "AP50": 1.0, "AP75": 1.0}


def test_coco_missing_and_false_detections() -> None:
    gt = np.zeros((20, 20), np.int32)
    gt[2:6, 2:6], gt[10:15, 3:9] = 1, 2
    assert coco_ap([("a", gt, np.zeros_like(gt), None)]) == {"AP": 0.0, "AP50": 0.0, "AP75": 0.0}
    only_one = np.where(gt == 1, 1, 0)
    result = coco_ap([("a", gt, only_one, [1.0])])
    assert 0.0 < result["AP50"] < 1.0  # recall stops at 1/2
    with pytest.raises(ValueError, match="2 scores for 1 predicted objects"):
        coco_ap([("a", gt, only_one, [1.0, 0.5])])
