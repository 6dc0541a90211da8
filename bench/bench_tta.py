"""Benchmark batched against one-variant-at-a-time test-time augmentation on CPU.

Usage: ``python bench/bench_tta.py [--images N] [--size PX] [--repeats R] [--data DIR]``

The prediction path of the pipeline (:meth:`nucleistyle.segment.inference.Segmenter.segment`
with a :class:`nucleistyle.tta.TTAConfig`: network pass, binary masks, inversion, vote, then
Deep Retina's post-processing) on a Deep Retina Mask R-CNN with a ResNet-18-FPN backbone,
randomly initialised (seed 0; speed, not accuracy, is measured), with ``box_score_thresh = 0``
(so every image yields 20 detections to merge), predicts ``--images`` 256 x 256 images (centre
crops of real BBBC038 images from ../shared/bbbc038, or synthetic ones from
:mod:`nucleistyle.data.synthetic` when those are absent) under the 8 dihedral transforms, with
2 torch threads:

(a) batched: ``batch_size=8`` (an image's 8 variants in one network pass);
(b) one variant per pass: ``batch_size=1``.

Same inputs, same run: image by image, (a) and (b) alternate and each keeps its best wall time
of ``--repeats`` runs (the machine may be shared). Prints the totals, the ratio (b) / (a), and
whether the label images agree (batched and single convolutions may round differently in
float32, which can flip a mask pixel at the threshold). The merge keeps every cluster
(``min_votes=0``): a random-init model hardly agrees with itself across views, so the default
``min_votes=0.5`` would leave nothing to compare. Exit status 1 if the label images differ.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from nucleistyle.data.bbbc038 import list_images, read_image
from nucleistyle.data.synthetic import MODALITIES, synthesize
from nucleistyle.segment.configs import get_config
from nucleistyle.segment.inference import Segmenter
from nucleistyle.segment.model import build_model
from nucleistyle.tta import TTAConfig

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "bbbc038"
DETECTIONS = 20  # instances per image (torchvision default 100)
PROPOSALS = 200  # RPN proposals per image after NMS (torchvision default 1000)


def load_images(root: Path, n: int, size: int) -> tuple[list[np.ndarray], str]:
    """``n`` uint8 RGB ``size`` x ``size`` images: real centre crops if possible, else synthetic."""
    if (root / "stage1_train").is_dir():
        images = []
        for record in list_images(root / "stage1_train"):
            image, _ = read_image(record.image_path)
            h, w = image.shape[:2]
            if min(h, w) >= size:
                top, left = (h - size) // 2, (w - size) // 2
                images.append(image[top : top + size, left : left + size].copy())
            if len(images) == n:
                return images, f"real BBBC038 crops from {root}"
    rng = np.random.default_rng(0)
    images = [synthesize(MODALITIES[i % len(MODALITIES)], rng, size, size)[0] for i in range(n)]
    return images, "synthetic (nucleistyle.data.synthetic)"


def build_segmenter(size: int) -> Segmenter:
    """Random-init Deep Retina segmenter, ResNet-18-FPN, CPU fp32, every detection kept.

    20 detections and 200 RPN proposals per image (Deep Retina: 512 and 2000) keep the run
    short on 2 CPU cores.
    """
    torch.manual_seed(0)
    overrides = {
        "backbone": "resnet18",
        "weights": "none",
        "prep": {"size": size},
        "model": {
            "box_score_thresh": 0.0,
            "box_detections_per_img": DETECTIONS,
            "rpn_post_nms_top_n_test": PROPOSALS,
        },
    }
    cfg = get_config("deep_retina", overrides)
    return Segmenter(build_model(cfg, pretrained=False), cfg, torch.device("cpu"), None)


def wall_time(fn: Callable[[], list[np.ndarray]]) -> tuple[float, list[np.ndarray]]:
    """Wall time (s) of one call (torch runs 2 threads, so CPU time would count both) and its
    result."""
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4, help="number of images")
    parser.add_argument("--size", type=int, default=256, help="image side (px)")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per mode and image")
    parser.add_argument("--data", type=Path, default=DATA, help="BBBC038 sample folder")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)

    start = time.perf_counter()
    images, source = load_images(args.data, args.images, args.size)
    segmenter = build_segmenter(args.size)
    batched_cfg = TTAConfig(batch_size=8, min_votes=0.0)
    single_cfg = TTAConfig(batch_size=1, min_votes=0.0)
    n_variants = len(batched_cfg.transforms)
    segmenter.raw(images[:1])  # warm-up: first-call allocations and kernel selection, both
    segmenter.raw(images[:1] * n_variants)  # batch sizes
    print(
        f"{len(images)} images {args.size}x{args.size}, {source}; {n_variants} dihedral "
        f"variants each; torch {torch.__version__}, {torch.get_num_threads()} threads"
    )

    # Image by image, the two modes alternate (ABBA over repeats) and each keeps its best time,
    # so that the load of other processes sharing the machine hits both alike.
    times = {"batched": np.full(len(images), np.inf), "single": np.full(len(images), np.inf)}
    results: dict[str, list[np.ndarray]] = {"batched": [], "single": []}
    modes = [("batched", batched_cfg), ("single", single_cfg)]
    for n, image in enumerate(images):
        for r in range(args.repeats):
            for name, cfg in modes if (n + r) % 2 == 0 else modes[::-1]:
                elapsed, out = wall_time(lambda c=cfg, x=image: segmenter.segment([x], c))
                times[name][n] = min(times[name][n], elapsed)
                if r == 0:
                    results[name].extend(out)

    total = {name: float(t.sum()) for name, t in times.items()}
    ratio = total["single"] / total["batched"]
    calls = len(images) * n_variants
    for name, label in (
        ("batched", "(a) batched, 8 variants per pass"),
        ("single", "(b) one variant per pass"),
    ):
        print(f"{label:33}: {total[name]:6.2f} s ({total[name] / calls:.3f} s per variant)")
    print(f"    ratio (b) / (a): {ratio:.2f}x")

    same = [
        np.array_equal(a, b) for a, b in zip(results["batched"], results["single"], strict=True)
    ]
    objects = [int(labels.max()) for labels in results["batched"]]
    print(f"    objects per image after the merge and post-processing: {objects}")
    print(f"    label images identical: {sum(same)} of {len(same)}")
    print(f"total {time.perf_counter() - start:.1f} s")
    return 0 if all(same) else 1


if __name__ == "__main__":
    sys.exit(main())
