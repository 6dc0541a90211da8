"""Benchmark Mask R-CNN training and inference speed on 512 x 512 tiles (CPU or GPU).

Usage: ``python bench/bench_segment.py [--backbone resnet50] [--reps 2] [--threads 2]
[--device cpu]``

Measures, in one run on the same synthetic 512 x 512 fluorescence tiles (real-size nuclei),
with the Deep Retina configuration (600 ROIs per image, batch 2):

(a) training images/s (forward + backward + SGD step, batch 2) and inference images/s
    (batch 1, the model's full forward with mask pasting), each in fp32 and with bf16 autocast;
(b) the same with torchvision's default transform (short side resized to 800, long side capped
    at 1333: a 512 tile becomes 800 x 800) instead of sizing to the tile, and the ratio.

Speeds are medians over ``--reps`` timed repetitions after one warm-up. The load average is
printed before and after: on a shared machine other jobs distort the numbers (and PyTorch's
OpenMP threads spin when the cores are oversubscribed; ``--threads 1`` is then faster).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
import torchvision
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from nucleistyle.data.synthetic import synthesize
from nucleistyle.segment.configs import get_config
from nucleistyle.segment.model import build_model
from nucleistyle.segment.transforms import to_target

TILE = 512


def tiles(n: int) -> list[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
    """``n`` synthetic small-fluorescent 512 x 512 tiles (nuclei at real size) and targets."""
    out = []
    for i in range(n):
        rng = np.random.default_rng([7, i])
        image, labels = synthesize("small_fluorescent", rng, TILE, TILE, 1.0)
        out.append(to_target(image, labels, 256, rng))
    return out


def timed(step: Callable[[], None], reps: int) -> float:
    """Median seconds of ``step`` over ``reps`` runs after one warm-up."""
    step()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        step()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(
    model: torch.nn.Module,
    data: list,
    device: torch.device,
    dtype: torch.dtype | None,
    reps: int,
) -> tuple[float, float]:
    """(training images/s, inference images/s)."""
    images = [image.to(device) for image, _ in data]
    targets = [{k: v.to(device) for k, v in t.items()} for _, t in data]
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    autocast = torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)

    def train_step() -> None:
        model.train()
        with autocast:
            loss = sum(model(images[:2], targets[:2]).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    @torch.no_grad()
    def infer() -> None:
        model.eval()
        with autocast:
            model(images[2:3])

    return 2 / timed(train_step, reps), 1 / timed(infer, reps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(
        f"torch {torch.__version__}, torchvision {torchvision.__version__}, {platform.processor()}"
        f" {device}, threads {args.threads}, backbone {args.backbone}, tile {TILE}, reps "
        f"{args.reps}; load average before: {os.getloadavg()[0]:.2f}"
    )
    cfg = get_config("deep_retina", {"backbone": args.backbone, "iterations": 1})
    data = tiles(3)
    print(f"{sum(len(t['boxes']) for _, t in data) / 3:.0f} nuclei per tile")
    print(f"{'transform':<22}{'precision':<11}{'train img/s':>12}{'infer img/s':>13}")
    results = {}
    for transform in ("tile (512/512)", "default (800/1333)"):
        for precision, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
            torch.manual_seed(0)
            model = build_model(cfg, pretrained=False).to(device)
            if transform.startswith("default"):
                m = cfg.model
                model.transform = GeneralizedRCNNTransform(
                    800, 1333, list(m.image_mean), list(m.image_std)
                )
            train, infer = measure(model, data, device, dtype, args.reps)
            results[transform, precision] = train, infer
            print(f"{transform:<22}{precision:<11}{train:>12.3f}{infer:>13.3f}", flush=True)
    for precision in ("fp32", "bf16"):
        tile, default = (
            results["tile (512/512)", precision],
            results["default (800/1333)", precision],
        )
        print(
            f"tile vs default, {precision}: training x{tile[0] / default[0]:.2f}, "
            f"inference x{tile[1] / default[1]:.2f}"
        )
    for transform in ("tile (512/512)", "default (800/1333)"):
        fp32, bf16 = results[transform, "fp32"], results[transform, "bf16"]
        print(
            f"bf16 vs fp32, {transform}: training x{bf16[0] / fp32[0]:.2f}, "
            f"inference x{bf16[1] / fp32[1]:.2f}"
        )
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
