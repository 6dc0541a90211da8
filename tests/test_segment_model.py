"""Mask R-CNN baselines with a network: build, train, resume, predict (tiny CPU settings)."""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision
from PIL import Image
from scipy import ndimage as ndi
from torchvision.models.detection import roi_heads as tv_roi_heads
from torchvision.models.detection.roi_heads import paste_masks_in_image, project_masks_on_boxes
from torchvision.ops.misc import FrozenBatchNorm2d

from nucleistyle import training
from nucleistyle.data.bbbc038 import list_images, read_image, write_sample
from nucleistyle.data.csvio import gather_submissions, read_submission
from nucleistyle.data.rle import rle_decode_labels
from nucleistyle.data.synthetic import SyntheticConfig, generate
from nucleistyle.enhance import ClaheConfig, enhance_image
from nucleistyle.errors import NucleistyleError
from nucleistyle.metrics import score_files
from nucleistyle.segment import model as model_module
from nucleistyle.segment.calibration import calibrate
from nucleistyle.segment.configs import flatten, get_config
from nucleistyle.segment.engine import train_segmenter
from nucleistyle.segment.inference import Detections, Segmenter
from nucleistyle.segment.model import GatherRoIAlign, PreparedTransform, build_model, project_masks
from nucleistyle.segment.modelfile import MODEL_FORMAT, load_segmenter
from nucleistyle.segment.predict import predict_folder
from nucleistyle.segment.transforms import mask_boxes, to_target
from nucleistyle.torchutils import save_checkpoint
from nucleistyle.tta import DIHEDRAL, TTAConfig
from tests.conftest import REPO, TINY_SEGMENTER, read_history

# One thread: on the shared 2-core machine two OpenMP threads per process spin against other
# jobs (this file took 268 s with 2 threads vs 72 s with 1 at load average 5).
torch.set_num_threads(1)

TINY = TINY_SEGMENTER


def tiny(baseline: str = "deep_retina", **overrides: object):
    return get_config(baseline, {**TINY, **overrides})


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("segment") / "demo"
    generate(SyntheticConfig(n_train=10, n_test_per_modality=1, height=64, width=64), root)
    return root


@pytest.fixture(scope="module")
def trained(demo: Path) -> dict[str, Path]:
    """Deep Retina trained for 2 iterations, with checkpoint and history."""
    out = demo.parent / "dr"
    paths = {"model": out / "model.pt", "checkpoint": out / "ckpt.pt", "history": out / "h.tsv"}
    train_segmenter(
        [demo / "stage1_train"],
        paths["model"],
        tiny(),
        checkpoint=paths["checkpoint"],
        history_tsv=paths["history"],
    )
    return paths


@pytest.mark.parametrize("backbone", ["resnet18", "resnet34", "resnet50", "resnet101"])
def test_model_builds_for_each_backbone_with_the_baseline_settings(backbone: str) -> None:
    cfg = get_config("mirzaev", {"backbone": backbone, "weights": "none"})
    model = build_model(cfg)
    heads, rpn = model.roi_heads, model.rpn
    assert (heads.score_thresh, heads.nms_thresh, heads.detections_per_img) == (0.75, 0.3, 400)
    assert heads.fg_bg_sampler.batch_size_per_image == 512
    assert heads.fg_bg_sampler.positive_fraction == 0.33
    assert rpn.fg_bg_sampler.batch_size_per_image == 320
    assert rpn._post_nms_top_n == {"training": 2048, "testing": 2048}
    assert rpn.anchor_generator.sizes == ((8,), (16,), (32,), (64,), (128,))
    assert rpn.anchor_generator.num_anchors_per_location() == [3] * 5
    assert isinstance(model.transform, PreparedTransform) and model.transform.size_divisible == 512
    assert isinstance(model.backbone.body.bn1, torch.nn.BatchNorm2d)  # from scratch: trainable
    if backbone == "resnet18":
        with torch.no_grad():
            out = model.eval()([torch.rand(3, 48, 80)])
        assert set(out[0]) == {"boxes", "labels", "scores", "masks"}


def test_training_writes_a_loadable_model_and_a_finite_history(trained: dict[str, Path]) -> None:
    state = torch.load(trained["model"], weights_only=True)
    assert state["format"] == MODEL_FORMAT and state["iterations"] == 2
    assert state["config"]["model.box_score_thresh"] == 0.9
    history = pd.read_csv(trained["history"], sep="\t")
    losses = history.dropna(subset="loss")
    assert losses["iteration"].tolist() == [1, 2]
    losses = losses[["loss", "loss_mask", "loss_classifier", "loss_objectness"]].to_numpy()
    assert np.isfinite(losses).all() and (losses > 0).all()
    # the learning curve: the DSB score of the monitored training images (no validation split)
    scored = history.dropna(subset="train_score")
    assert scored["iteration"].tolist() == [2]
    assert 0 <= scored["train_score"].iloc[0] <= 1 and (scored["cpu_s"] > 0).all()
    assert torch.load(trained["checkpoint"], weights_only=True)["iteration"] == 2


def test_a_model_trained_on_enhanced_images_enhances_what_it_segments(
    trained: dict[str, Path], demo: Path, tmp_path: Path
) -> None:
    assert torch.load(trained["model"], weights_only=True)["input_clahe"] is None
    clahe = ClaheConfig()  # select dark: median V under 0.4
    train_segmenter([demo / "stage1_train"], tmp_path / "m.pt", tiny(), input_clahe=clahe)
    segmenter = load_segmenter(tmp_path / "m.pt", "cpu")
    assert segmenter.clahe == clahe
    rng = np.random.default_rng(0)
    dark = rng.integers(0, 60, (48, 48, 3), dtype=np.uint8)
    bright = rng.integers(150, 255, (48, 48, 3), dtype=np.uint8)
    assert np.array_equal(segmenter.enhance(dark), enhance_image(dark, clahe))
    assert segmenter.enhance(bright) is bright
    seen: list[np.ndarray] = []  # what reaches the network (single pass and TTA alike)

    def network(images, tta):
        seen.extend(images)
        return [np.ones(image.shape[:2], np.int32) for image in images]

    segmenter._segment = network  # type: ignore[method-assign]
    segmenter.segment([dark, bright], TTAConfig.for_baseline("mirzaev"))
    assert np.array_equal(seen[0], enhance_image(dark, clahe)) and seen[1] is bright
    assert load_segmenter(trained["model"], "cpu").clahe is None
    with pytest.raises(NucleistyleError, match=r"clahe\.select"):
        train_segmenter(
            [demo / "stage1_train"], tmp_path / "c.pt", tiny(),
            input_clahe=ClaheConfig(select="clusters", clusters=(1,)),
        )  # fmt: skip
    assert not (tmp_path / "c.pt").exists()


def test_a_checkpoint_from_another_configuration_names_file_and_key(
    trained: dict[str, Path], demo: Path, tmp_path: Path
) -> None:
    other = tiny(model={**TINY["model"], "box_score_thresh": 0.8})
    with pytest.raises(NucleistyleError, match=r"ckpt\.pt .*model\.box_score_thresh = 0\.9"):
        train_segmenter(
            [demo / "stage1_train"], tmp_path / "m.pt", other, checkpoint=trained["checkpoint"]
        )
    with pytest.raises(NucleistyleError, match=r"ckpt\.pt .*data\.arm = 'none'"):
        train_segmenter(
            [demo / "stage1_train"],
            tmp_path / "m.pt",
            tiny(),
            checkpoint=trained["checkpoint"],
            arm="jitter",
        )
    assert not (tmp_path / "m.pt").exists()


def test_a_checkpoint_beyond_the_budget_writes_its_model_with_a_warning(
    trained: dict[str, Path], demo: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    checkpoint = tmp_path / "ckpt.pt"
    shutil.copy2(trained["checkpoint"], checkpoint)  # at iteration 2
    with caplog.at_level("WARNING"):
        train_segmenter(
            [demo / "stage1_train"], tmp_path / "m.pt", tiny(iterations=1), checkpoint=checkpoint
        )
    assert "at iteration 2, beyond the budget of 1 iterations" in caplog.text
    model = torch.load(tmp_path / "m.pt", weights_only=True)
    before = torch.load(trained["model"], weights_only=True)
    assert model["selected_iteration"] == 2
    for key, value in before["model"].items():
        torch.testing.assert_close(model["model"][key], value, rtol=0, atol=0, msg=key)


def test_a_checkpoint_is_not_a_model(trained: dict[str, Path]) -> None:
    with pytest.raises(NucleistyleError, match=r"ckpt\.pt is not a segmenter model file"):
        load_segmenter(trained["checkpoint"], device="cpu")


def test_resume_after_a_crash_gives_the_uninterrupted_result(
    demo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tiny(iterations=3)
    train_segmenter(
        [demo / "stage1_train"],
        tmp_path / "straight.pt",
        cfg,
        history_tsv=tmp_path / "straight.tsv",
    )
    real_save = training.save_checkpoint

    def crash_after_second(path, state) -> None:
        real_save(path, state)
        if state.get("iteration") == 2:
            raise RuntimeError("simulated crash")

    monkeypatch.setattr(training, "save_checkpoint", crash_after_second)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_segmenter(
            [demo / "stage1_train"],
            tmp_path / "resumed.pt",
            cfg,
            checkpoint=tmp_path / "ckpt.pt",
            history_tsv=tmp_path / "resumed.tsv",
        )
    monkeypatch.setattr(training, "save_checkpoint", real_save)
    train_segmenter(
        [demo / "stage1_train"],
        tmp_path / "resumed.pt",
        cfg,
        checkpoint=tmp_path / "ckpt.pt",
        history_tsv=tmp_path / "resumed.tsv",
    )
    straight = torch.load(tmp_path / "straight.pt", weights_only=True)["model"]
    resumed = torch.load(tmp_path / "resumed.pt", weights_only=True)["model"]
    for key, value in straight.items():
        torch.testing.assert_close(resumed[key], value, rtol=0, atol=0, msg=key)
    pd.testing.assert_frame_equal(
        read_history(tmp_path / "straight.tsv"), read_history(tmp_path / "resumed.tsv")
    )


@pytest.mark.kill
def test_sigkill_then_rerun_continues_from_the_checkpoint(demo: Path, tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt.pt"
    script = textwrap.dedent(f"""
        import torch
        torch.set_num_threads(1)
        from nucleistyle.segment.configs import get_config
        from nucleistyle.segment.engine import train_segmenter
        cfg = get_config("deep_retina", {{**{TINY!r}, "iterations": 1000}})
        train_segmenter([{str(demo / "stage1_train")!r}], {str(tmp_path / "m.pt")!r}, cfg,
                        checkpoint={str(ckpt)!r})
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    child = subprocess.Popen([sys.executable, "-c", script], env=env, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while not ckpt.exists():
            assert child.poll() is None, child.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "no checkpoint within 240 s"
            time.sleep(0.2)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stderr.close()
    assert child.returncode == -signal.SIGKILL
    done = torch.load(ckpt, weights_only=True)["iteration"]
    assert 1 <= done < 1000 and not (tmp_path / "m.pt").exists()
    train_segmenter(
        [demo / "stage1_train"],
        tmp_path / "m.pt",
        tiny(iterations=done + 1),
        checkpoint=ckpt,
        history_tsv=tmp_path / "h.tsv",
    )
    history = pd.read_csv(tmp_path / "h.tsv", sep="\t")
    assert history.dropna(subset="loss")["iteration"].tolist() == list(range(1, done + 2))
    assert torch.load(ckpt, weights_only=True)["iteration"] == done + 1


def _write_odd_sizes(root: Path) -> dict[str, tuple[int, int]]:
    sizes = {"wide": (40, 72), "tall": (90, 50)}
    rng = np.random.default_rng(0)
    for image_id, (h, w) in sizes.items():
        write_sample(root, image_id, rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
    return sizes


@pytest.mark.parametrize("baseline", ["deep_retina", "mirzaev"])
def test_predict_folder_writes_a_submission_and_label_pngs_of_the_input_size(
    baseline: str, trained: dict[str, Path], demo: Path, tmp_path: Path
) -> None:
    if baseline == "deep_retina":
        model = trained["model"]
    else:  # 1 iteration, 10 % validation split, best-val selection, calibrated thresholds
        model = train_segmenter(
            [demo / "stage1_train"],
            tmp_path / "mz.pt",
            tiny("mirzaev", iterations=1, calibrate=True),
            history_tsv=tmp_path / "mz.tsv",
        )
        assert "val_loss" in pd.read_csv(tmp_path / "mz.tsv", sep="\t").columns
        calibration = torch.load(model, weights_only=True)["calibration"]
        assert calibration["n_images"] == 1 and len(calibration["grid"]) >= 25
        history = pd.read_csv(tmp_path / "mz.tsv", sep="\t")  # the learning curve's star
        assert history["val_score_calibrated"].dropna().tolist() == pytest.approx(
            [calibration["score"]], rel=1e-5
        )  # the history keeps 6 significant digits
        loaded = load_segmenter(model, "cpu")
        assert loaded.cfg.post.mask_threshold == calibration["mask_threshold"]
        assert loaded.cfg.model.box_score_thresh == calibration["box_score_thresh"]
        assert loaded.model.roi_heads.score_thresh == calibration["box_score_thresh"]
    n = predict_folder(
        model, demo / "stage1_test", tmp_path / "sub.csv", tmp_path / "labels", device="cpu"
    )
    test_ids = [r.image_id for r in list_images(demo / "stage1_test")]
    assert n == len(test_ids) == 5
    assert sorted(read_submission(tmp_path / "sub.csv")) == sorted(test_ids)
    _, summary = score_files(demo / "stage1_solution.csv", tmp_path / "sub.csv")
    assert 0.0 <= summary["score"] <= 1.0 and summary["missing"] == []
    sizes = _write_odd_sizes(tmp_path / "odd")
    predict_folder(
        model, tmp_path / "odd", tmp_path / "odd.csv", tmp_path / "odd_labels", device="cpu"
    )
    for image_id, size in sizes.items():
        with Image.open(tmp_path / "odd_labels" / f"{image_id}.png") as im:
            assert im.mode == "I;16" and (im.height, im.width) == size


def test_calibration_picks_the_thresholds_that_score_best_on_the_validation_images(
    trained: dict[str, Path],
) -> None:
    """Three true nuclei detected with confident masks at probability 0.58 and three
    background detections scored 0.45: the configured pair (0.3, 0.6) keeps the false ones and
    loses the true masks (score 0); calibration finds a pair that scores 1.0."""
    truth = np.zeros((64, 64), np.int32)
    boxes = []
    for n, (y, x) in enumerate([(4, 4), (4, 36), (36, 20)], start=1):
        truth[y : y + 20, x : x + 20] = n
        boxes.append([x, y, x + 20, y + 20])
    for y, x in [(36, 2), (36, 44), (2, 24)]:  # background: false detections
        boxes.append([x, y, x + 8, y + 8])
    probs = np.full((6, 28, 28), 0.58, np.float32)
    probs[3:] = 0.9
    detections = Detections(
        np.array(boxes, np.float32), np.array([0.95] * 3 + [0.45] * 3, np.float32), probs, (64, 64)
    )
    segmenter = load_segmenter(trained["model"], "cpu")
    segmenter.cfg = tiny(model={"box_score_thresh": 0.3}, post={"mask_threshold": 0.6})
    heads = segmenter.model.roi_heads
    seen = []

    def raw(images):
        seen.append(heads.score_thresh)
        return [detections.above(heads.score_thresh)]

    segmenter.raw = raw  # type: ignore[method-assign]
    found = calibrate(segmenter, [np.zeros((64, 64, 3), np.uint8)], [truth])
    assert seen == [0.3] and heads.score_thresh == 0.9  # lowest threshold, then restored
    assert found.configured_score == 0.0 and found.score == 1.0
    assert 0.45 < found.box_score_thresh and found.mask_threshold < 0.58
    assert (0.3, 0.6, 0.0) in found.grid and max(g[2] for g in found.grid) == 1.0
    with pytest.raises(NucleistyleError, match=r"segment\.calibrate"):
        calibrate(segmenter, [], [])
    with pytest.raises(NucleistyleError, match=r"segment\.calibrate"):
        tiny(calibrate=True)  # Deep Retina: no validation split


@pytest.mark.parametrize("baseline", ["deep_retina", "mirzaev"])
def test_raw_detections_are_in_input_coordinates(
    baseline: str, trained: dict[str, Path], tmp_path: Path
) -> None:
    cfg = tiny(baseline)
    path = tmp_path / "m.pt"
    save_checkpoint(
        path,
        {
            "format": MODEL_FORMAT,
            "config": flatten(cfg),
            "model": build_model(cfg).state_dict(),
        },
    )
    seg = load_segmenter(path, device="cpu")
    seg.model.roi_heads.score_thresh = 0.0  # an untrained model: keep every detection
    images = [np.full((40, 72, 3), 90, np.uint8), np.full((90, 50, 3), 30, np.uint8)]
    dets = seg.raw(images)
    for image, det in zip(images, dets, strict=True):
        h, w = image.shape[:2]
        assert det.image_size == (h, w) and len(det) > 0
        assert det.boxes[:, [0, 2]].max() <= w + 1e-3 and det.boxes[:, [1, 3]].max() <= h + 1e-3
        assert det.soft_masks().shape == (len(det), h, w)
        assert (np.diff(det.scores) <= 0).all()
        labels = seg.postprocess(det.instances(0.5))
        assert labels.shape == (h, w) and labels.dtype == np.int32
    assert seg.predict(images[1]).shape == (90, 50)  # with Mirzaev's fallback canvas too


def test_an_images_detections_do_not_depend_on_what_it_is_batched_with(tmp_path: Path) -> None:
    cfg = tiny("deep_retina")
    path = tmp_path / "m.pt"
    model = {"format": MODEL_FORMAT, "config": flatten(cfg)}
    save_checkpoint(path, {**model, "model": build_model(cfg).state_dict()})
    seg = load_segmenter(path, device="cpu")
    seg.model.roi_heads.score_thresh = 0.0  # an untrained model: keep every detection
    rng = np.random.default_rng(0)
    small, large = (rng.integers(0, 255, (s, s, 3), dtype=np.uint8) for s in (48, 96))
    alone = seg.raw([small])[0]
    mixed = seg.raw([large, small, large])[1]  # a padded batch would see small at 96 x 96
    assert len(alone) > 0
    np.testing.assert_array_equal(mixed.boxes, alone.boxes)
    np.testing.assert_array_equal(mixed.soft_masks(), alone.soft_masks())


def test_soft_masks_sample_the_mask_at_pixel_centres() -> None:
    rng = np.random.default_rng(0)
    probs = rng.random((4, 28, 28)).astype(np.float32)
    boxes = np.array(
        [[3.2, 4.7, 20.1, 15.5], [0, 0, 5, 5], [30.5, 10, 49.9, 39.0], [-3, 2, 10, 44]], np.float32
    )
    det = Detections(boxes, np.linspace(1, 0.5, 4).astype(np.float32), probs, (40, 50))
    # reference: grid_sample at every pixel centre, box in pixel edges, zero outside the mask
    ys, xs = torch.meshgrid(torch.arange(40) + 0.5, torch.arange(50) + 0.5, indexing="ij")
    for i, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
        grid = torch.stack(((xs - x0) / (x1 - x0) * 2 - 1, (ys - y0) / (y1 - y0) * 2 - 1), -1)
        expected = torch.nn.functional.grid_sample(
            torch.from_numpy(probs[i])[None, None], grid[None].float(), align_corners=False
        )[0, 0]
        np.testing.assert_allclose(det.soft_masks()[i], expected.numpy(), atol=1e-5)


def _blob_labels(seed: int, size: int = 96) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    labels = np.zeros((size, size), np.int32)
    for k in range(1, 16):
        cy, cx, ry, rx = *rng.uniform(0, size, 2), *rng.uniform(2, 12, 2)
        labels[(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1) & (labels == 0)] = k
    return labels


def test_a_perfect_mask_head_reproduces_every_nucleus() -> None:
    """Training targets (pixel-edge ROI Align) pasted back at pixel centres give the true
    masks; torchvision's targets and paste grow them by about a pixel."""
    ious_ours, ious_torchvision = [], []
    for seed in range(3):
        labels = _blob_labels(seed)
        ids = np.unique(labels[labels > 0])
        masks = labels[None] == ids[:, None, None]
        boxes = mask_boxes(masks)
        targets = project_masks(
            torch.from_numpy(masks), torch.from_numpy(boxes), torch.arange(len(ids)), 28
        )
        det = Detections(boxes, np.ones(len(ids), np.float32), targets.numpy(), labels.shape)
        theirs = paste_masks_in_image(
            project_masks_on_boxes(
                torch.from_numpy(masks), torch.from_numpy(boxes), torch.arange(len(ids)), 28
            )[:, None],
            torch.from_numpy(boxes),
            labels.shape,
            padding=1,
        )[:, 0].numpy()
        for found, pasted, true in zip(det.soft_masks(), theirs, masks, strict=True):
            ious_ours.append(((found > 0.5) & true).sum() / ((found > 0.5) | true).sum())
            ious_torchvision.append(((pasted > 0.5) & true).sum() / ((pasted > 0.5) | true).sum())
    assert min(ious_ours) >= 0.97 and np.mean(ious_ours) >= 0.995
    assert np.mean(ious_torchvision) < 0.85


def test_training_uses_the_pixel_edge_mask_targets(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def spy(*args: torch.Tensor) -> torch.Tensor:
        calls.append(args[1].shape[0])
        return project_masks(*args)

    monkeypatch.setattr(model_module, "project_masks", spy)
    torch.manual_seed(0)
    model = build_model(tiny(), pretrained=False).train()
    labels = _blob_labels(0, 64)
    image = torch.rand(3, 64, 64)
    _, target = to_target(np.zeros((64, 64, 3), np.uint8), labels, 256, np.random.default_rng(0))
    losses = model([image], [target])
    assert calls and torch.isfinite(losses["loss_mask"])
    assert tv_roi_heads.project_masks_on_boxes is project_masks_on_boxes  # put back


# -- pretrained starts -------------------------------------------------------------------------

CLASS_SPECIFIC = {
    f"roi_heads.{layer}.{kind}"
    for layer in (
        "box_predictor.cls_score",
        "box_predictor.bbox_pred",
        "mask_predictor.mask_fcn_logits",
    )
    for kind in ("weight", "bias")
}
# The groups of tensors a COCO start covers, each of which must arrive whole.
GROUPS = (
    "backbone.body.", "backbone.fpn.", "rpn.head.", "roi_heads.box_head.",
    "roi_heads.mask_head.", "roi_heads.mask_predictor.conv5_mask.",
)  # fmt: skip


def _distinct(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every floating tensor shifted by its own small random amount: a tensor that lands in
    another layer's place (or stays random) cannot compare equal by accident."""
    torch.manual_seed(1)
    return {
        k: v + torch.rand_like(v) * 0.01 if v.is_floating_point() else v for k, v in state.items()
    }


@pytest.fixture(scope="module")
def released_coco(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A COCO file in the released key layout (random tensors), and its state dict."""
    state = _distinct(model_module.released_standin("coco", "resnet50"))
    path = tmp_path_factory.mktemp("coco") / "maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth"
    torch.save(state, path)
    return path, state


def test_the_stand_in_has_the_released_files_legacy_key_layout(released_coco) -> None:
    """The layout torchvision's own loader renames (RPN conv, FPN convs, mask head): what the
    2019 COCO file uses; and our renames give exactly torchvision's current names."""
    _, legacy = released_coco
    for key in (
        "rpn.head.conv.weight", "backbone.fpn.inner_blocks.0.weight",
        "backbone.fpn.layer_blocks.3.bias", "roi_heads.mask_head.mask_fcn1.weight",
        "roi_heads.mask_head.mask_fcn4.bias", "roi_heads.box_predictor.cls_score.weight",
    ):  # fmt: skip
        assert key in legacy, key
    assert not any(".0.0." in k or "mask_head.0." in k or "blocks.0.0" in k for k in legacy)
    assert legacy["roi_heads.box_predictor.cls_score.weight"].shape == (91, 1024)
    reference = torchvision.models.detection.maskrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=91
    )
    result = reference.load_state_dict(dict(legacy), strict=False)  # torchvision's renames
    assert not result.unexpected_keys
    assert all(k.endswith("num_batches_tracked") for k in result.missing_keys)
    current = {k for k in reference.state_dict() if not k.endswith("num_batches_tracked")}
    assert set(model_module.modern_key_names(legacy)) == current


def test_a_coco_start_loads_every_tensor_of_the_released_layout(released_coco) -> None:
    path, legacy = released_coco
    model = build_model(get_config("deep_retina"), weights_file=path)
    expected = model_module.modern_key_names(legacy)
    own = model.state_dict()
    assert set(own) == set(expected)
    compared = dict.fromkeys(GROUPS, 0)
    for key, value in own.items():
        if key in CLASS_SPECIFIC:  # 91 COCO classes there, 2 here: left to training
            assert value.shape != expected[key].shape, key
            continue
        assert torch.equal(value, expected[key]), key
        group = next((g for g in GROUPS if key.startswith(g)), None)
        if group:
            compared[group] += 1
    assert compared == {
        "backbone.body.": 265, "backbone.fpn.": 16, "rpn.head.": 6, "roi_heads.box_head.": 4,
        "roi_heads.mask_head.": 8, "roi_heads.mask_predictor.conv5_mask.": 2,
    }  # fmt: skip
    assert isinstance(model.backbone.body.bn1, FrozenBatchNorm2d)  # pretrained: frozen BN


@pytest.mark.parametrize(
    ("dropped", "legacy_key", "current_key"),
    [
        ("rpn", "rpn.head.conv.weight", "rpn.head.conv.0.0.weight"),
        ("fpn", "backbone.fpn.inner_blocks.0.weight", "backbone.fpn.inner_blocks.0.0.weight"),
        ("mask_fcn", "roi_heads.mask_head.mask_fcn1.weight", "roi_heads.mask_head.0.0.weight"),
    ],
)
def test_the_loader_fails_loudly_without_a_legacy_rename(
    released_coco, monkeypatch: pytest.MonkeyPatch, dropped: str, legacy_key: str, current_key: str
) -> None:
    """Remove one rename: the tensors it covers would stay random, and loading says so."""
    kept = {k: v for k, v in model_module._LEGACY_KEYS.items() if dropped not in k}
    assert 0 < len(kept) < len(model_module._LEGACY_KEYS)
    monkeypatch.setattr(model_module, "_LEGACY_KEYS", kept)
    with pytest.raises(NucleistyleError) as info:
        build_model(get_config("deep_retina"), weights_file=released_coco[0])
    message = str(info.value)
    assert "\n" not in message and "not every pretrained tensor would arrive" in message
    missing, unexpected = message.split("; unexpected ")
    assert current_key in missing.split("(missing ")[1] and legacy_key in unexpected


def test_an_imagenet_start_loads_every_backbone_tensor(tmp_path: Path) -> None:
    state = _distinct(model_module.released_standin("imagenet", "resnet50"))
    assert "fc.weight" in state and "bn1.num_batches_tracked" in state  # a classifier's file
    torch.save(state, tmp_path / "resnet50-0676ba61.pth")
    model = build_model(get_config("mirzaev"), weights_file=tmp_path / "resnet50-0676ba61.pth")
    body = {k: v for k, v in model.state_dict().items() if k.startswith("backbone.body.")}
    assert len(body) == 265
    for key, value in body.items():
        assert torch.equal(value, state[key.removeprefix("backbone.body.")]), key
    # a file that lacks a stage, or is another network's, fails naming what would not arrive
    partial = {k: v for k, v in state.items() if not k.startswith("layer4.")}
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(NucleistyleError, match=r"missing backbone\.body\.layer4\.0\.bn1\.bias"):
        build_model(get_config("mirzaev", {"weights": str(tmp_path / "partial.pth")}))
    torch.save(model_module.released_standin("imagenet", "resnet18"), tmp_path / "r18.pth")
    with pytest.raises(
        NucleistyleError, match=r"missing backbone\.body\.layer1\.0\.bn3\..*; of another shape"
    ):
        build_model(get_config("mirzaev", {"weights": str(tmp_path / "r18.pth")}))
    with pytest.raises(NucleistyleError, match=r"weights file not found: .*nope\.pth"):
        build_model(get_config("mirzaev", {"weights": str(tmp_path / "nope.pth")}))


def test_offline_pretrained_weights_fail_in_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """No file anywhere and no network: one line naming the file to download and where."""
    import socket

    from nucleistyle.segment import weights as weights_module

    with socket.socket() as sock:  # a loopback port that nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(weights_module, "TORCHVISION_MODELS", f"http://127.0.0.1:{port}/")
    for weights, backbone in (("imagenet", "resnet18"), ("coco", "resnet50")):
        cfg = get_config("deep_retina", {"weights": weights, "backbone": backbone})
        with pytest.raises(NucleistyleError) as info:
            build_model(cfg)
        message = str(info.value)
        name = weights_module.RELEASED[weights, backbone]
        assert "\n" not in message and "Connection refused" in message
        assert f"Download http://127.0.0.1:{port}/{name}" in message
        assert str(tmp_path / "torch" / "hub" / "checkpoints") in message
    assert not list(tmp_path.rglob("*.pth*"))  # nothing partial left behind
    with pytest.raises(NucleistyleError, match="publishes coco weights for resnet50 only"):
        get_config("deep_retina", {"weights": "coco", "backbone": "resnet18"})


def test_a_start_in_resources_or_the_torch_hub_cache_is_used_without_network(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from nucleistyle.segment import weights as weights_module

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(weights_module, "TORCHVISION_MODELS", "http://127.0.0.1:9/")
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    state = _distinct(model_module.released_standin("imagenet", "resnet18"))
    torch.save(state, cache / "resnet18-f37072fd.pth")
    cfg = get_config("mirzaev", {"backbone": "resnet18", "weights": "imagenet"})
    model = build_model(cfg)
    torch.testing.assert_close(model.backbone.body.conv1.weight, state["conv1.weight"])
    # the workflow's copy in resources/weights/ comes first
    ours = model_module.released_standin("imagenet", "resnet18", seed=5)
    (tmp_path / "resources" / "weights").mkdir(parents=True)
    torch.save(ours, tmp_path / "resources" / "weights" / "resnet18-f37072fd.pth")
    monkeypatch.chdir(tmp_path)
    torch.testing.assert_close(build_model(cfg).backbone.body.conv1.weight, ours["conv1.weight"])


def test_the_released_file_names_are_torchvisions() -> None:
    from torchvision.models import resnet
    from torchvision.models.detection.mask_rcnn import MaskRCNN_ResNet50_FPN_Weights

    from nucleistyle.segment.weights import RELEASED, TORCHVISION_MODELS, hash_prefix

    urls = {("coco", "resnet50"): MaskRCNN_ResNet50_FPN_Weights.COCO_V1.url}
    for depth in (18, 34, 50, 101):
        enum = getattr(resnet, f"ResNet{depth}_Weights")
        urls["imagenet", f"resnet{depth}"] = enum.IMAGENET1K_V1.url
    assert {key: TORCHVISION_MODELS + name for key, name in RELEASED.items()} == urls
    assert hash_prefix(RELEASED["coco", "resnet50"]) == "bf2d0c1e"


def test_bad_training_data_fails_before_training(demo: Path, tmp_path: Path) -> None:
    write_sample(tmp_path / "gan", "unlabelled", np.zeros((64, 64, 3), np.uint8))
    with pytest.raises(NucleistyleError, match=r"unlabelled\.png has no masks"):
        train_segmenter(
            [demo / "stage1_train", tmp_path / "gan"], tmp_path / "m.pt", tiny(), arm="style"
        )
    with pytest.raises(NucleistyleError, match="needs the cluster assignments"):
        train_segmenter([demo / "stage1_train"], tmp_path / "m.pt", tiny(), arm="oversample")
    image, _ = read_image(next((demo / "stage1_test").glob("*/images/*.png")))
    assert image.shape == (64, 64, 3)


def test_box_geometry_stays_float32_under_bf16_autocast() -> None:
    model = build_model(tiny(model={**TINY["model"], "box_score_thresh": 0.0})).eval()
    images = [torch.rand(3, 96, 96)]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        batch, _ = model.transform(images)
        features = model.backbone(batch.tensors)
        anchors = model.rpn.anchor_generator(batch, list(features.values()))
        out = model(images)
    # torchvision would build anchors and decode boxes in bf16 (4-px steps near 500 px)
    assert anchors[0].dtype == torch.float32 and features["0"].dtype == torch.float32
    assert out[0]["boxes"].dtype == torch.float32 and out[0]["masks"].dtype == torch.float32


@pytest.mark.parametrize("output_size", [7, 14])
def test_gather_roi_align_gives_torchvisions_values_and_gradients(output_size: int) -> None:
    # boxes partly or wholly outside the maps (both border rules), tiny and large ones, and an
    # image without any box, over four FPN levels
    gen = torch.Generator().manual_seed(0)
    shapes = [(32, 40), (16, 20), (8, 10), (4, 5)]
    ours_in = {str(i): torch.randn(3, 8, h, w, generator=gen) for i, (h, w) in enumerate(shapes)}
    ref_in = {k: v.clone().requires_grad_() for k, v in ours_in.items()}
    ours_in = {k: v.requires_grad_() for k, v in ours_in.items()}
    boxes = []
    for n in (60, 0, 40):
        corner = torch.rand(n, 2, generator=gen) * torch.tensor([180.0, 150.0]) - 12
        size = torch.rand(n, 2, generator=gen) * 100 + 0.2
        boxes.append(torch.cat([corner, corner + size], 1))
    names = ["0", "1", "2", "3"]
    ref = torchvision.ops.MultiScaleRoIAlign(names, output_size, 2)(ref_in, boxes, [(128, 160)] * 3)
    ours = GatherRoIAlign(names, output_size, 2)(ours_in, boxes, [(128, 160)] * 3)
    assert ours.shape == ref.shape == (100, 8, output_size, output_size)
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)
    weights = torch.randn(ref.shape, generator=gen)
    (ref * weights).sum().backward()
    (ours * weights).sum().backward()
    for name in names:
        torch.testing.assert_close(ours_in[name].grad, ref_in[name].grad, atol=1e-4, rtol=1e-4)


def test_plain_heads_have_the_layout_of_torchvisions_coco_model() -> None:
    cfg = get_config("deep_retina", {"weights": "none", "model": {"head_norm": False}})
    ours = build_model(cfg).state_dict()
    reference = torchvision.models.detection.maskrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=2
    ).state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in reference.items()}


def test_narrow_heads_follow_the_configured_widths() -> None:
    cfg = tiny(model={**TINY["model"], "fpn_channels": 16, "representation_size": 64})
    model = build_model(cfg).eval()
    assert model.backbone.out_channels == 16
    assert model.roi_heads.box_head.fc7.out_features == 64
    assert model.roi_heads.mask_predictor.conv5_mask.in_channels == 16
    with torch.no_grad():
        assert set(model([torch.rand(3, 64, 64)])[0]) == {"boxes", "labels", "scores", "masks"}


# -- prediction with test-time augmentation, shards -------------------------------------------


def _eager_model(baseline: str, path: Path) -> Path:
    """A randomly initialised tiny model file that keeps every detection (score >= 0), so that
    it finds plenty of objects without training."""
    torch.manual_seed(0)
    cfg = tiny(baseline, model={**TINY["model"], "box_score_thresh": 0.0})
    state = {"format": MODEL_FORMAT, "config": flatten(cfg)}
    save_checkpoint(path, {**state, "model": build_model(cfg).state_dict()})
    return path


def _test_images(demo: Path) -> list[np.ndarray]:
    images = [read_image(r.image_path)[0] for r in list_images(demo / "stage1_test")]
    rng = np.random.default_rng(1)
    return [*images, rng.integers(0, 255, (40, 72, 3), np.uint8)]  # and an odd size


def _record_raw_calls(monkeypatch: pytest.MonkeyPatch) -> list[list[tuple[int, ...]]]:
    """Make Segmenter.raw record the image shapes of every call."""
    calls: list[list[tuple[int, ...]]] = []
    real_raw = Segmenter.raw

    def raw(self: Segmenter, images: list[np.ndarray]) -> list[Detections]:
        calls.append([image.shape[:2] for image in images])
        return real_raw(self, images)

    monkeypatch.setattr(Segmenter, "raw", raw)
    return calls


@pytest.mark.parametrize("baseline", ["deep_retina", "mirzaev"])
def test_identity_only_tta_reproduces_the_single_pass_exactly(
    baseline: str, demo: Path, tmp_path: Path
) -> None:
    seg = load_segmenter(_eager_model(baseline, tmp_path / "m.pt"), device="cpu")
    images = _test_images(demo)
    single = [seg.predict(image) for image in images]
    identity = seg.segment(images, TTAConfig(transforms=("identity",), batch_size=1))
    assert sum(int(labels.max()) for labels in single) > 20  # a real comparison, not all empty
    for a, b in zip(single, identity, strict=True):
        np.testing.assert_array_equal(a, b)
    # the identity twice: every object is matched to its copy, votes 2 of 2, same labels
    for merge in ("vote", "union"):
        twice = seg.segment(images, TTAConfig(("identity", "identity"), merge=merge, batch_size=1))
        for a, b in zip(single, twice, strict=True):
            np.testing.assert_array_equal(a, b)


def test_predict_folder_with_identity_tta_writes_the_single_pass_submission(
    demo: Path, tmp_path: Path
) -> None:
    model = _eager_model("mirzaev", tmp_path / "m.pt")
    predict_folder(model, demo / "stage1_test", tmp_path / "single.csv", device="cpu")
    tta = {"transforms": ["identity"], "batch_size": 1}
    predict_folder(model, demo / "stage1_test", tmp_path / "tta.csv", device="cpu", tta=tta)
    text = (tmp_path / "single.csv").read_text()
    assert text.count("\n") > 20 and (tmp_path / "tta.csv").read_text() == text


def test_tta_batches_every_variant_of_several_images_through_one_network_pass(
    demo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _eager_model("deep_retina", tmp_path / "m.pt")
    calls = _record_raw_calls(monkeypatch)
    tta = {"batch_size": 16, "deep_retina": {"transforms": list(DIHEDRAL)}}
    predict_folder(model, demo / "stage1_test", tmp_path / "a.csv", tta=tta)
    # 5 images of 64 x 64, 8 dihedral variants: 2 images (16 variants) per pass
    assert [len(c) for c in calls] == [16, 16, 8]
    calls.clear()
    predict_folder(model, demo / "stage1_test", tmp_path / "b.csv", tta={"batch_size": 30})
    # Deep Retina's own TTA: 15 variants, 2 images (30 variants) per pass
    assert [len(c) for c in calls] == [30, 30, 15]
    calls.clear()
    seg = load_segmenter(model, device="cpu")
    labels = seg.segment([np.zeros((40, 72, 3), np.uint8)], TTAConfig(batch_size=3))
    assert [len(c) for c in calls] == [3, 3, 2] and labels[0].shape == (40, 72)
    shapes = [s for c in calls for s in c]
    assert shapes.count((40, 72)) == 4 and shapes.count((72, 40)) == 4  # rotations, transposes


def test_mirzaev_fallback_canvas_runs_the_same_tta(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seg = load_segmenter(_eager_model("mirzaev", tmp_path / "m.pt"), device="cpu")
    assert seg.cfg.post.fallback_canvas == 4
    seg.model.roi_heads.score_thresh = 1.1  # finds nothing: every image falls back
    calls = _record_raw_calls(monkeypatch)
    images = [np.full((40, 72, 3), 50, np.uint8), np.full((30, 30, 3), 90, np.uint8)]
    labels = seg.segment(images, TTAConfig(transforms=("identity", "hflip")))
    assert calls == [
        [(40, 72), (40, 72), (30, 30), (30, 30)],  # both images, both variants: one pass
        [(160, 288), (160, 288)],  # each canvas (4 H x 4 W) with both variants
        [(120, 120), (120, 120)],
    ]
    assert [lab.shape for lab in labels] == [(40, 72), (30, 30)]
    assert not any(lab.any() for lab in labels)


def _bright_squares(self: Segmenter, images: list[np.ndarray]) -> list[Detections]:
    """A stand-in network that is exactly equivariant: one detection per bright square (its
    box, an all-ones mask), confidence = the square's brightness / 255."""
    out = []
    for image in images:
        grey = image[..., 0]
        boxes, scores = [], []
        for rows, cols in ndi.find_objects(ndi.label(grey > 0)[0]):
            boxes.append([cols.start, rows.start, cols.stop, rows.stop])
            scores.append(grey[rows, cols].mean() / 255)
        order = np.argsort(-np.array(scores), kind="stable")
        out.append(
            Detections(
                np.array(boxes, np.float32).reshape(-1, 4)[order],
                np.array(scores, np.float32)[order],
                np.ones((len(boxes), 28, 28), np.float32),
                (int(image.shape[0]), int(image.shape[1])),
            )
        )
    return out


def test_submission_rows_and_labels_follow_descending_confidence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = np.zeros((48, 64, 3), np.uint8)
    centres = {100: (8, 8), 250: (24, 30), 180: (38, 52)}  # brightness -> square centre
    for value, (y, x) in centres.items():
        image[y - 5 : y + 5, x - 5 : x + 5] = value
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.fromarray(image).save(flat / "squares.png")
    model = _eager_model("deep_retina", tmp_path / "m.pt")
    monkeypatch.setattr(Segmenter, "raw", _bright_squares)
    for name, tta in (("single", None), ("tta", {"transforms": list(DIHEDRAL)})):
        out = tmp_path / f"{name}.csv"
        predict_folder(model, flat, out, labels_dir=tmp_path / name, tta=tta)
        with Image.open(tmp_path / name / "squares.png") as im:
            labels = np.asarray(im).astype(np.int32)
        # most confident (brightest) first: label 1, and the first row of the submission
        assert [labels[centres[v]] for v in (250, 180, 100)] == [1, 2, 3]
        rles = read_submission(out)["squares"]
        np.testing.assert_array_equal(rle_decode_labels(rles, labels.shape)[0], labels)
    single = np.asarray(Image.open(tmp_path / "single" / "squares.png"))
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "tta" / "squares.png")), single)


def test_shards_split_by_imageid_and_gather_to_the_whole(
    tiny_segmenter: dict[str, Path], tmp_path: Path
) -> None:
    model, images = tiny_segmenter["model"], tiny_segmenter["test"]
    ids = [r.image_id for r in list_images(images)]
    predict_folder(model, images, tmp_path / "whole.csv", device="cpu")
    shards = [tmp_path / f"{i}.csv" for i in range(3)]
    counts = [predict_folder(model, images, s, shard=(i, 3)) for i, s in enumerate(shards)]
    assert counts == [2, 2, 1]
    for i, path in enumerate(shards):
        assert list(read_submission(path)) == ids[i::3]
    gather_submissions(shards[::-1], tmp_path / "gathered.csv")
    whole = (tmp_path / "whole.csv").read_text()
    assert whole.count("\n") > 6 and (tmp_path / "gathered.csv").read_text() == whole


def test_an_empty_shard_writes_a_header_only_submission(
    tiny_segmenter: dict[str, Path], tmp_path: Path
) -> None:
    n = predict_folder(
        tiny_segmenter["model"], tiny_segmenter["test"], tmp_path / "s.csv",
        labels_dir=tmp_path / "labels", shard=(5, 6),
    )  # fmt: skip
    assert n == 0 and (tmp_path / "s.csv").read_text() == "ImageId,EncodedPixels\n"
    assert list((tmp_path / "labels").iterdir()) == []


@pytest.mark.parametrize(
    ("shard", "message"),
    [
        ((2, 2), r"shard: index must be in \[0, 2\), got 2"),
        ((-1, 2), r"shard: index must be in \[0, 2\), got -1"),
        ((0, 0), r"shard: n_shards must be >= 1, got 0"),
        (("0", 2), r"shard must be \(index, n_shards\)"),
    ],
)
def test_an_invalid_shard_is_an_error_naming_the_argument(
    shard: tuple, message: str, tmp_path: Path
) -> None:
    with pytest.raises(NucleistyleError, match=message):
        predict_folder(tmp_path / "m.pt", tmp_path, tmp_path / "s.csv", shard=shard)
    assert list(tmp_path.iterdir()) == []


def test_bad_tta_settings_and_no_output_are_errors(tmp_path: Path) -> None:
    with pytest.raises(NucleistyleError, match=r"unknown config key tta\.flips"):
        predict_folder(tmp_path / "m.pt", tmp_path, tmp_path / "s.csv", tta={"flips": True})
    with pytest.raises(NucleistyleError, match=r"config key tta\.merge: .max. is not one of"):
        predict_folder(tmp_path / "m.pt", tmp_path, tmp_path / "s.csv", tta={"merge": "max"})
    with pytest.raises(NucleistyleError, match="nothing to write"):
        predict_folder(tmp_path / "m.pt", tmp_path, None)
    with pytest.raises(NucleistyleError, match=r"model file not found: .*m\.pt"):
        predict_folder(tmp_path / "m.pt", tmp_path, tmp_path / "s.csv")
    assert list(tmp_path.iterdir()) == []


def _restyled_copies(train: Path, out: Path, copies: int = 2) -> tuple[Path, Path]:
    """Copies of every training image in BBBC038 layout with a manifest, as
    :func:`nucleistyle.gan.augment.augment_dataset` writes them (inverted colours stand in for
    the GAN; masks linked)."""
    from nucleistyle.data.bbbc038 import write_sample

    rows = []
    for record in list_images(train):
        for k in range(copies):
            new_id = f"{record.image_id}-copy{k}"
            folder = write_sample(out / "style", new_id, 255 - read_image(record.image_path)[0])
            (folder / "masks").mkdir()
            for mask in record.mask_paths:
                (folder / "masks" / mask.name).hardlink_to(mask)
            rows.append((new_id, record.image_id))
    pd.DataFrame(rows, columns=["ImageId", "source_ImageId"]).to_csv(out / "m.csv", index=False)
    return out / "style", out / "m.csv"


def test_the_style_arm_trains_as_long_as_none_and_never_on_copies_of_validation_images(
    demo: Path, tmp_path: Path
) -> None:
    style, manifest = _restyled_copies(demo / "stage1_train", tmp_path)
    cfg = tiny("mirzaev", iterations=2)  # Mirzaev: a 10 % validation split
    train = [demo / "stage1_train"]
    train_segmenter(train, tmp_path / "none.pt", cfg)
    train_segmenter(
        train,
        tmp_path / "style.pt",
        cfg,
        arm="style",
        style_dirs=[style],
        style_manifests=[manifest],
    )
    none, styled = (torch.load(tmp_path / f, weights_only=True) for f in ("none.pt", "style.pt"))
    assert none["iterations"] == styled["iterations"] == 2
    assert none["train_images"] == styled["train_images"] and len(styled["val_images"]) == 1
    assert none["val_images"] == styled["val_images"]
    assert (
        styled["restyled_copies"] == 2 * len(styled["train_images"]) and not none["restyled_copies"]
    )
    with pytest.raises(NucleistyleError, match="only arm style"):
        train_segmenter(
            train, tmp_path / "x.pt", cfg, style_dirs=[style], style_manifests=[manifest]
        )


def test_a_draw_shows_a_restyled_copy_with_probability_style_p_else_the_none_arms_sample(
    demo: Path,
) -> None:
    from nucleistyle.segment.dataset import DrawDataset, list_training_records, load_items
    from nucleistyle.segment.transforms import training_pipeline

    cfg = tiny()
    items = load_items(list_training_records([demo / "stage1_train"]), False)
    restyled = [dataclasses.replace(it, variants=(255 - it.image,)) for it in items]
    pipeline = training_pipeline(cfg)
    plain = DrawDataset(items, pipeline, 200, 0, 256)
    styled = DrawDataset(restyled, pipeline, 200, 0, 256, style_p=0.5)
    same = 0
    for draw in range(200):
        (a, target_a), (b, target_b) = plain[draw], styled[draw]
        same += bool(torch.equal(a, b))
        for key in ("boxes", "masks", "labels"):  # labels are inherited: always the same target
            assert torch.equal(target_a[key], target_b[key])
    assert 70 <= same <= 130  # about half the draws show the original, augmented identically
    assert all(torch.equal(plain[j][0], DrawDataset(restyled, pipeline, 200, 0, 256)[j][0])
               for j in range(20))  # style_p 0: never a copy  # fmt: skip
