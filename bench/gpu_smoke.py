"""GPU smoke check: the paper-size GAN and both baselines train and predict in bf16 on CUDA.

Usage: ``python bench/gpu_smoke.py [--device cuda] [--tiny] [--gan-iterations N]
[--segment-iterations N] [--images N]``

On a CUDA machine, in a few minutes (well inside 5), on a small synthetic data set
(:mod:`nucleistyle.data.synthetic`, clustered into the configured number of domains):

1. the GAN at the paper's size (``config.yaml``: 6 domains, crop 216, batch 2, width 64) for
   ``--gan-iterations`` training iterations (2 content-D updates and a full update each);
2. each baseline at the paper's size (``config.yaml``: ResNet-50, 512 px) from its pretrained
   start (Deep Retina: torchvision's COCO Mask R-CNN, Mirzaev: its ImageNet ResNet-50) with
   ``train_segmenter`` for ``--segment-iterations`` iterations;
3. each trained baseline predicting ``--images`` test images with its test-time augmentation.

The start's released file is taken from ``resources/weights/`` when it is there (no download),
else fetched as the workflow's rule ``fetch_pretrained`` does (a torch hub cache, then
torchvision's server); where that fails (a GPU node without network) a stand-in with the
released file's keys and shapes and random values is used, and the line says so: the loader's
renames and checks and the timings are the same.

All in bf16. Printed per stage: iterations/s or images/s (after a warm-up), the peak GPU memory
(``torch.cuda.max_memory_allocated``), and the projected wall time of the paper's schedule:
the configured 120k GAN iterations; each baseline's 75 epochs over the 670 stage1_train images
left after its validation split, at batch 2 (``SegmenterConfig.total_iterations``), without
the validation passes.

Without CUDA it prints one line and exits 0. ``--device cpu --tiny`` runs the same code at tiny
sizes in seconds (a 4-wide GAN at crop 36, the demo's segmenters at 64 px from a stand-in
ImageNet ResNet-18 start, 2 iterations each; in fp32 where the CPU has no bf16 units,
``--precision bf16`` forces the bf16 autocast path): the tests do.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from bench_segment import load_config, make_data, segment_overrides

REPO = Path(__file__).resolve().parents[1]
STAGE1_TRAIN = 670  # images in BBBC038 stage1_train: the paper's training set
BASELINES = ("deep_retina", "mirzaev")
WARMUP = 3  # untimed iterations (cuDNN autotuning, allocator growth); 1 with --tiny
TINY_GAN = {"n_domains": 2, "crop": 36, "resize": 40, "base_channels": 4}
TINY_PREP = {"size": 64, "crop": 32}  # --tiny: the demo's segmenters (config.demo.yaml) at 64 px


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak(device: torch.device) -> str:
    if device.type != "cuda":
        return "peak GPU memory n/a (not CUDA)"
    return f"peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB"


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 360 else f"{seconds:.0f} s"


def _rate(step: Callable[[], object], n: int, warmup: int, device: torch.device) -> float:
    """Calls of ``step`` per second over ``n`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(n):
        step()
    _sync(device)
    return n / (time.perf_counter() - start)


def smoke_gan(config: dict, data: Path, device: torch.device, args: argparse.Namespace) -> None:
    """Train the GAN for ``args.gan_iterations`` iterations; print it/s, memory, projection."""
    from nucleistyle.gan.configs import GanConfig
    from nucleistyle.gan.data import DomainSampler, load_domain_set
    from nucleistyle.gan.engine import GanTrainer
    from nucleistyle.torchutils import resolve_precision, seed_everything

    mapping = {**config["gan"], "n_domains": config["cluster"]["k"], "device": str(device)}
    mapping |= {"precision": args.precision, **(TINY_GAN if args.tiny else {})}
    cfg = GanConfig.from_config(mapping)
    domains = load_domain_set(
        data / "stage1_train", data / "assignments.csv", cfg.n_domains, cfg.resize, cfg.crop
    )
    seed_everything(cfg.seed)
    _reset_peak(device)
    trainer = GanTrainer(cfg, device, resolve_precision(cfg.precision, device))
    sampler = DomainSampler(domains, cfg.batch_size, cfg.crop, cfg.flip, cfg.seed)
    step = lambda: trainer.train_iteration(sampler)  # noqa: E731
    rate = _rate(step, args.gan_iterations, args.warmup, device)
    print(
        f"GAN ({cfg.n_domains} domains, crop {cfg.crop}, batch {cfg.batch_size}, width "
        f"{cfg.base_channels}, {args.precision}): {rate:.2f} iterations/s, {_peak(device)}; "
        f"{cfg.iterations:,} iterations: {_hours(cfg.iterations / rate)}",
        flush=True,
    )


def _overrides(baseline: str, tiny: bool) -> dict:
    """The paper's segmenter settings, or with ``tiny`` the demo's at 64 px from an ImageNet
    start (the demo trains from scratch; torchvision has no COCO Mask R-CNN for ResNet-18)."""
    if not tiny:
        return segment_overrides("paper", baseline)
    overrides = segment_overrides("demo", baseline)
    return overrides | {"prep": {**overrides.get("prep", {}), **TINY_PREP}, "weights": "imagenet"}


def pretrained_start(cfg, tmp: Path, tiny: bool) -> tuple[Path | None, str]:
    """The weights file of ``cfg``'s start and how it was had (see the module's docstring):
    ``resources/weights/<released name>`` (present: used as it is, after its hash check;
    otherwise fetched), or with ``tiny`` or where it cannot be had a stand-in in ``tmp``."""
    from nucleistyle.errors import NucleistyleError, first_line
    from nucleistyle.segment.model import released_standin
    from nucleistyle.segment.weights import WEIGHTS_DIR, fetch_weights, released_file

    name = released_file(cfg.weights, cfg.backbone)
    if name is None:
        return None, f"start {cfg.weights}"
    why = "--tiny"
    if not tiny:
        dest = REPO / WEIGHTS_DIR / name
        present = dest.is_file()
        try:
            path = fetch_weights(name, dest, timeout=10)
            return path, f"{cfg.weights} start {name} ({'present' if present else 'fetched'})"
        except NucleistyleError as exc:
            why = first_line(exc).split(". Download ")[0]
    path = tmp / name
    torch.save(released_standin(cfg.weights, cfg.backbone), path)
    return path, f"{cfg.weights} start: a stand-in in {name}'s layout, random values ({why})"


def smoke_segmenter(
    config: dict, data: Path, out: Path, baseline: str, device: torch.device, args
) -> None:
    """Train one baseline with ``train_segmenter``, then predict with TTA; print the figures."""
    from nucleistyle.data.bbbc038 import list_images, read_image
    from nucleistyle.segment.configs import get_config
    from nucleistyle.segment.engine import train_segmenter
    from nucleistyle.segment.modelfile import load_segmenter
    from nucleistyle.tta import TTAConfig

    n = args.segment_iterations + args.warmup
    run = {"device": str(device), "precision": args.precision, "iterations": n, "epochs": None}
    run |= {"log_every": 1, "val_every": n, "checkpoint_every": n}
    cfg = get_config(baseline, _overrides(baseline, args.tiny) | run)
    weights_file, start = pretrained_start(cfg, out, args.tiny)
    print(f"{baseline}: {start}", flush=True)
    _reset_peak(device)
    history_tsv = out / f"{baseline}.tsv"
    train_segmenter(
        [data / "stage1_train"],
        out / f"{baseline}.pt",
        cfg,
        history_tsv=history_tsv,
        weights_file=weights_file,
    )
    seconds = _seconds_per_iteration(history_tsv, args.warmup)
    paper = get_config(baseline, segment_overrides("paper", baseline))  # the schedule to project
    n_train = STAGE1_TRAIN - math.ceil(paper.val_fraction * STAGE1_TRAIN)
    total = paper.total_iterations(n_train)
    print(
        f"{baseline} ({cfg.backbone}, {cfg.prep.size} px, batch {cfg.batch_size}, "
        f"{args.precision}): "
        f"{1 / seconds:.2f} iterations/s = {cfg.batch_size / seconds:.2f} images/s, "
        f"{_peak(device)}; {total:,} iterations ({paper.epochs:g} epochs of {n_train} images): "
        f"{_hours(total * seconds * paper.batch_size / cfg.batch_size)}",  # at this image rate
        flush=True,
    )
    segmenter = load_segmenter(out / f"{baseline}.pt", str(device))
    tta = TTAConfig.for_baseline(baseline, config.get("tta"))
    images = [read_image(r.image_path)[0] for r in list_images(data / "stage1_test")]
    images = (images * args.images)[: args.images]
    segmenter.segment(images[:1], tta)  # warm-up
    _reset_peak(device)
    _sync(device)
    start = time.perf_counter()
    labels = [segmenter.segment([image], tta)[0] for image in images]
    _sync(device)
    rate = len(images) / (time.perf_counter() - start)
    print(
        f"{baseline} prediction with TTA ({len(tta.transforms)} variants, merge {tta.merge}): "
        f"{rate:.2f} images/s, {_peak(device)}, {sum(int(x.max()) for x in labels)} nuclei found",
        flush=True,
    )


def _seconds_per_iteration(history_tsv: Path, warmup: int) -> float:
    """Median seconds per training iteration after the warm-up, from the history's rows."""
    import pandas as pd

    frame = pd.read_csv(history_tsv, sep="\t")
    seconds = frame["sec_per_it"].dropna().to_numpy()[warmup:]
    return float(statistics.median(seconds))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes (a CPU test)")
    parser.add_argument("--gan-iterations", type=int, help="timed GAN iterations (30; tiny 2)")
    parser.add_argument("--segment-iterations", type=int, help="timed, per baseline (40; 2)")
    parser.add_argument("--images", type=int, help="images predicted per baseline (4; 1)")
    parser.add_argument(
        "--precision",
        choices=("auto", "bf16", "fp32"),
        default="auto",
        help="auto: bf16 on CUDA and on CPUs with bf16 units, else fp32",
    )
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_smoke: no CUDA device here (torch.cuda.is_available() is False): skipped")
        return 0
    from nucleistyle.cluster import ClusterConfig, cluster_dataset
    from nucleistyle.torchutils import cpu_has_bf16

    defaults = {"gan_iterations": 30, "segment_iterations": 40, "images": 4, "warmup": WARMUP}
    if args.tiny:
        defaults = {"gan_iterations": 2, "segment_iterations": 2, "images": 1, "warmup": 1}
    for key, value in defaults.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    device = torch.device(args.device)
    # bf16 everywhere it has hardware support (every CUDA device this targets; a CPU without
    # bf16 units would only emulate it, minutes for the tiny run instead of seconds)
    if args.precision == "auto":
        args.precision = "bf16" if device.type == "cuda" or cpu_has_bf16() else "fp32"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(
        f"gpu_smoke on {device} ({name}), torch {torch.__version__}, {args.precision}, "
        f"tiny: {args.tiny}"
    )

    config = load_config("paper")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        data = make_data(Path(tmp) / "data", (64, 64) if args.tiny else (256, 256), 12)
        k = TINY_GAN["n_domains"] if args.tiny else config["cluster"]["k"]
        config["cluster"]["k"] = k
        cluster_dataset(data / "stage1_train", data / "assignments.csv", ClusterConfig(k=k))
        elapsed = time.perf_counter() - start
        print(f"data: 12 synthetic training images in {k} domains ({elapsed:.0f} s)")
        smoke_gan(config, data, device, args)
        for baseline in BASELINES:
            smoke_segmenter(config, data, Path(tmp), baseline, device, args)
    print(f"gpu_smoke: done in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
