"""Benchmark Mask R-CNN training on this CPU: ours against torchvision's own Mask R-CNN of the same
size, and our settings and precision against each other, each ratio measured in one run.

Usage: ``python bench/bench_segment.py [--compare demo paper] [--compare-warmup N]
[--compare-iterations N] [--configs demo cpu] [--baselines deep_retina mirzaev] [--threads 1 2]
[--workers 0 1] [--warmup N] [--iterations N] [--no-contention] [--learning demo cpu]
[--learning-iterations N] [--budgets 0.5 1 2]``

0. ROI Align: seconds per demo Deep Retina training step (one thread, bf16 where the CPU has it)
   with torchvision's ``MultiScaleRoIAlign`` poolers (the baseline) and with ours
   (``GatherRoIAlign``), swapped in one model every 8 steps, 6 rounds, the order alternated;
   ours as a ratio to it. (Timed alone, forward and backward of the two poolers take about as
   long as torchvision's; the gain shows in training only.)
1. Implementation, like for like (``--compare``: the demo's settings, ``config.demo.yaml`` over
   ``config.small.yaml``: ResNet-18, 32-wide FPN, 128 px; and the paper's, ``config.yaml``:
   ResNet-50, 256-wide FPN, 512 px; ``cpu`` can be added): per baseline, on that baseline's own
   training batches, our model (:func:`nucleistyle.segment.model.build_model`) and its
   torchvision twin (:func:`torchvision_twin`: torchvision's ``MaskRCNN`` with its own
   transform, ROI poolers and ROI heads, built with our hyper-parameters: backbone, FPN width,
   ``min_size = max_size`` = the training size, padding, anchors, RPN and ROI sample counts,
   thresholds, head widths; our initial weights) are trained side by side in one process, one
   thread, by the engine's own step (``TrainStep``: forward, backward, gradient
   clipping, fused optimiser step) on the same pre-drawn batches, the order of the sides
   alternated every iteration so that a change in the machine's load hits both alike. Each
   side is timed in fp32 and, where the CPU has bf16 units, in bf16 (autocast): ours is
   printed as a ratio to the twin in the same precision, after ``--compare-warmup`` untimed
   iterations the median of ``--compare-iterations``. Separate factors of ours, not
   implementation ratios: precision (bf16 against fp32, same settings) and model size (the
   paper's settings against the demo's, seconds per image, fp32).
2. Settings of ours: images/s of a training step as the engine runs it (the batch from the
   engine's DataLoader included) of each baseline with the settings of ``config.demo.yaml``
   and ``config.cpu.yaml`` (256 / 384 px) (``--configs``), on synthetic images of the size each
   one trains on, for every combination of precision (fp32; bf16 only where the CPU has bf16
   units), torch threads (``--threads``) and DataLoader worker processes (``--workers``, the
   engine's ``workers``); per baseline, 2 threads as a ratio to 1 and workers as a ratio to
   none. Every setting runs in its own process: ``--warmup`` iterations, then the median of
   ``--iterations``. The fastest combination of each configuration is printed.
3. Threads under contention: the first baseline of the first configuration (fp32, no workers)
   at 1 and at 2 threads while a busy process occupies one of the two cores; 2 threads as a
   ratio to 1 (``--no-contention``: skipped).
4. Learning per CPU-minute (``--learning demo``, off by default: the demo's full schedules
   take about ten minutes per baseline): ``train_segmenter`` on the configuration's synthetic
   data set with its own schedule (or ``--learning-iterations``), in the fastest combination
   measured (fp32, 1 thread, no workers when its throughput was not measured), scoring the
   held-out images (DSB score) six times along the way; prints the score, the CPU time and
   the iterations per CPU-second at each, and the score reached within each of ``--budgets``
   CPU-minutes (the training process's CPU time: DataLoader workers' time is not in it).

On a CPU without bf16 units (no ``avx512_bf16`` or ``amx_bf16`` flag; bf16 would only be
emulated) the bench says so in one line and measures fp32 only. The machine may be shared: the
load average is printed; ratios within one run are what count.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
CONFIG_FILES = {
    "paper": (),
    "demo": ("config.small.yaml", "config.demo.yaml"),
    "cpu": ("config.small.yaml", "config.cpu.yaml"),
}
CPU_CONFIGS = ("demo", "cpu")
COMPARE_CONFIGS = ("demo", "cpu", "paper")
# Synthetic images like each configuration's data: the demo's own 128-px set; for the CPU and the
# paper's configurations (real BBBC038 images) the most common real size, 256 x 320.
DATA_SIZES = {"demo": (128, 128), "cpu": (256, 320), "paper": (256, 320)}
THROUGHPUT_IMAGES = 16
LEARNING_VALIDATIONS = 6


def load_config(name: str) -> dict[str, Any]:
    """``config.yaml`` (``paper``), or it with the overlays of ``demo`` or ``cpu``, merged as
    Snakemake merges config files (not validated: the CPU run's data folder need not exist)."""
    from nucleistyle.workflow import overlay_config

    config = yaml.safe_load((REPO / "config.yaml").read_text())
    for path in CONFIG_FILES[name]:
        overlay_config(config, yaml.safe_load((REPO / path).read_text()))
    return config


def segment_overrides(name: str, baseline: str) -> dict[str, Any]:
    """The overrides the workflow hands to ``get_config`` for ``baseline`` under ``name``
    (``paper``, ``demo`` or ``cpu``)."""
    from nucleistyle.segment.configs import merge_overrides

    segment = load_config(name)["segment"]
    return merge_overrides(segment["common"], segment.get(baseline) or {})


def torchvision_twin(cfg: Any, ours: Any) -> Any:
    """torchvision's own ``MaskRCNN`` with the hyper-parameters and the initial weights of
    ``ours`` (``build_model(cfg)``): the baseline of the implementation ratio.

    Built with the same options (:func:`nucleistyle.segment.model.maskrcnn_options`: the
    training size as ``min_size = max_size``, padding, normalisation, anchors, RPN and ROI
    counts and thresholds), the same backbone (torchvision's ResNet and FPN at our FPN width,
    the same layers trained, the same norm layer) and head widths. What it keeps of torchvision
    is what our model replaces: the transform (which resizes to the training size, a no-op on
    the prepared batches; ours does not call it), the ``MultiScaleRoIAlign`` poolers (ours:
    ``GatherRoIAlign``), the ``RoIHeads`` (ours: pixel-edge mask targets) and no fp32 hooks on
    the box geometry. torchvision has no box head with batch norm: with ``model.head_norm``
    the twin gets a copy of ours (and torchvision's mask head with ``BatchNorm2d``).
    """
    from torch import nn
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
    from torchvision.ops import MultiScaleRoIAlign

    from nucleistyle.segment.model import _resnet_fpn, maskrcnn_options

    m = cfg.model
    c, rep = m.fpn_channels, m.representation_size
    backbone = _resnet_fpn(cfg.backbone, type(ours.backbone.body.bn1), 5, c)
    if m.head_norm:
        box_head = copy.deepcopy(ours.roi_heads.box_head)
        mask_head = MaskRCNNHeads(c, [c] * 4, 1, norm_layer=nn.BatchNorm2d)
    else:
        box_head, mask_head = TwoMLPHead(c * 7 * 7, rep), MaskRCNNHeads(c, [c] * 4, 1)
    levels = ["0", "1", "2", "3"]
    twin = MaskRCNN(
        backbone, **maskrcnn_options(cfg),
        box_roi_pool=MultiScaleRoIAlign(levels, 7, 2), box_head=box_head,
        box_predictor=FastRCNNPredictor(rep, 2),
        mask_roi_pool=MultiScaleRoIAlign(levels, 14, 2), mask_head=mask_head,
        mask_predictor=MaskRCNNPredictor(c, c, 2),
    )  # fmt: skip
    twin.load_state_dict(ours.state_dict())  # strict: every tensor has its counterpart
    trained = {name: p.requires_grad for name, p in ours.named_parameters()}
    for name, parameter in twin.named_parameters():
        parameter.requires_grad_(trained[name])
    if hyper_parameters(twin) != hyper_parameters(ours):
        raise RuntimeError("the torchvision twin differs from our model in a hyper-parameter")
    return twin


def hyper_parameters(model: Any) -> dict[str, Any]:
    """What a like-for-like comparison holds equal, read off a built Mask R-CNN: every tensor's
    shape (backbone depth, FPN and head widths, classes), which parameters train, the
    backbone's norm layer, padding and normalisation, anchors, RPN and ROI sampling,
    thresholds and pooler geometry. (Not the transform's resize sizes: ours does not resize.)"""
    rpn, heads, transform = model.rpn, model.roi_heads, model.transform

    def pool(p: Any) -> tuple:
        return tuple(p.featmap_names), tuple(p.output_size), p.sampling_ratio

    def sampling(module: Any) -> tuple:
        matcher, sampler = module.proposal_matcher, module.fg_bg_sampler
        return (matcher.high_threshold, matcher.low_threshold, sampler.batch_size_per_image,
                sampler.positive_fraction)  # fmt: skip

    return {
        "shapes": {k: tuple(v.shape) for k, v in model.state_dict().items()},
        "trained": sorted(n for n, p in model.named_parameters() if p.requires_grad),
        "backbone norm": type(model.backbone.body.bn1).__name__,
        "transform": (transform.size_divisible, *transform.image_mean, *transform.image_std),
        "anchors": (rpn.anchor_generator.sizes, rpn.anchor_generator.aspect_ratios),
        "rpn": (
            rpn._pre_nms_top_n,
            rpn._post_nms_top_n,
            rpn.nms_thresh,
            rpn.score_thresh,
            rpn.min_size,
            *sampling(rpn),
        ),
        "roi": (
            *sampling(heads),
            heads.box_coder.weights,
            heads.score_thresh,
            heads.nms_thresh,
            heads.detections_per_img,
        ),
        "poolers": (pool(heads.box_roi_pool), pool(heads.mask_roi_pool)),
    }


def _training_config(spec: Mapping[str, Any], total: int, **overrides: Any) -> Any:
    """The baseline's configuration under ``spec["config"]`` on the CPU for ``total``
    iterations (more ``overrides`` on top)."""
    from nucleistyle.segment.configs import get_config

    return get_config(spec["baseline"], {
        **segment_overrides(spec["config"], spec["baseline"]), "device": "cpu",
        "iterations": total, "epochs": None, **overrides,
    })  # fmt: skip


def _draw_dataset(cfg: Any, data: str, total: int) -> Any:
    """The engine's training draws of ``cfg`` for ``total`` iterations from ``data``."""
    from nucleistyle.segment.dataset import DrawDataset, list_training_records, load_items
    from nucleistyle.segment.transforms import training_pipeline

    items = load_items(list_training_records([Path(data, "stage1_train")]), False)
    return DrawDataset(
        items, training_pipeline(cfg), total * cfg.batch_size, 0, cfg.prep.max_instances
    )


def _training_run(model: Any, cfg: Any, dtype: Any, total: int, batches: Any) -> Any:
    """An ``engine.TrainStep`` of ``model`` with the engine's optimiser, on the CPU."""
    import torch

    from nucleistyle.segment import engine

    return engine.TrainStep(
        model, engine.make_optimizer(model, cfg), batches, torch.device("cpu"), dtype, cfg, total
    )


def _train_iterations(step: Any, start: int, stop: int) -> list[float]:
    """Run iterations ``start`` to ``stop`` of ``step``; the seconds each took."""
    seconds = []
    for iteration in range(start, stop):
        tic = time.perf_counter()
        step(iteration)
        seconds.append(time.perf_counter() - tic)
    return seconds


def _child_compare(spec: dict[str, Any]) -> dict[str, Any]:
    """Seconds per training iteration of ours and of its torchvision twin in each of
    ``spec["precisions"]``, all trained in this process on the same batches, one iteration of
    each side in turn, the order reversed every iteration; the median after the warm-up."""
    import torch

    from nucleistyle.segment import engine
    from nucleistyle.segment.model import build_model
    from nucleistyle.torchutils import keep_freed_memory, resolve_precision

    torch.set_num_threads(spec["threads"])
    keep_freed_memory()  # as train_segmenter does
    total = spec["warmup"] + spec["iterations"]
    cfg = _training_config(spec, total, workers=0, log_every=total)
    dataset = _draw_dataset(cfg, spec["data"], total)
    batches = list(itertools.islice(engine._batches(dataset, 0, cfg.batch_size, 0), total))
    runs = {}
    for precision in spec["precisions"]:
        dtype = resolve_precision(precision, torch.device("cpu"))
        torch.manual_seed(0)
        ours = build_model(cfg, pretrained=False)
        for side, model in (("ours", ours), ("torchvision", torchvision_twin(cfg, ours))):
            runs[f"{side} {precision}"] = _training_run(model, cfg, dtype, total, iter(()))
    seconds: dict[str, list[float]] = {key: [] for key in runs}
    order = list(runs)
    for i, batch in enumerate(batches):
        for key in order if i % 2 == 0 else order[::-1]:
            run = runs[key]
            run.batches = iter([copy.deepcopy(batch)])  # the same inputs, untouched, each side
            seconds[key] += _train_iterations(run, i, i + 1)
    return {
        "batch_size": cfg.batch_size,
        "backbone": cfg.backbone,
        "size": cfg.prep.size,
        "seconds": {key: statistics.median(v[spec["warmup"] :]) for key, v in seconds.items()},
    }


def _child_throughput(spec: dict[str, Any]) -> dict[str, Any]:
    """Seconds per training iteration of one setting of ours, through the engine's own loop
    (the batch from its DataLoader included)."""
    import torch

    from nucleistyle.segment import engine
    from nucleistyle.segment.model import build_model
    from nucleistyle.torchutils import keep_freed_memory, resolve_precision

    torch.set_num_threads(spec["threads"])
    keep_freed_memory()  # as train_segmenter does
    total = spec["warmup"] + spec["iterations"]
    cfg = _training_config(
        spec, total, precision=spec["precision"], workers=spec["workers"], log_every=1
    )
    dataset = _draw_dataset(cfg, spec["data"], total)
    torch.manual_seed(0)
    model = build_model(cfg, pretrained=False)
    batches = engine._batches(dataset, 0, cfg.batch_size, cfg.workers)
    run = _training_run(model, cfg, resolve_precision(cfg.precision, torch.device("cpu")), total,
                        batches)  # fmt: skip
    seconds = _train_iterations(run, 0, total)[spec["warmup"] :]
    return {
        "images_per_s": cfg.batch_size / statistics.median(seconds),
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }


def _child_learning(spec: dict[str, Any]) -> dict[str, Any]:
    """``train_segmenter`` with the configuration's schedule; its history rows."""
    import pandas as pd
    import torch

    from nucleistyle.segment.configs import get_config
    from nucleistyle.segment.engine import train_segmenter

    torch.set_num_threads(spec["threads"])
    overrides = segment_overrides(spec["config"], spec["baseline"])
    if spec["iterations"]:
        overrides |= {"iterations": spec["iterations"], "epochs": None}
    probe = get_config(spec["baseline"], overrides)
    total = probe.total_iterations(spec["n_train"])
    overrides |= {
        "device": "cpu",
        "precision": spec["precision"],
        "workers": spec["workers"],
        "val_fraction": probe.val_fraction or 0.1,  # a held-out set to score
        "val_every": max(1, total // LEARNING_VALIDATIONS),
    }
    cfg = get_config(spec["baseline"], overrides)
    out = Path(spec["out"])
    train_dirs = [Path(spec["data"], "stage1_train")]
    train_segmenter(train_dirs, out / "model.pt", cfg, history_tsv=out / "history.tsv")
    frame = pd.read_csv(out / "history.tsv", sep="\t")
    return {"rows": json.loads(frame.to_json(orient="records"))}


def _run_child(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": str(spec["threads"])}
    out = subprocess.run(
        [sys.executable, __file__, "--child", kind, json.dumps(spec)],
        check=True, capture_output=True, text=True, env=env,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def make_data(root: Path, size: tuple[int, int], n_train: int) -> Path:
    """A synthetic BBBC038-layout set of (height, width) images at ``root`` (one test image per
    modality); returns ``root``."""
    from nucleistyle.data.synthetic import SyntheticConfig, generate

    height, width = size
    cfg = SyntheticConfig(n_train=n_train, n_test_per_modality=1, height=height, width=width)
    generate(cfg, root)
    return root


def compare_line(name: str, baseline: str, precision: str, result: Mapping[str, Any]) -> str:
    """Ours against its torchvision twin in one precision: seconds per iteration and ours as a
    speed ratio to it (``result``: what :func:`_child_compare` returned)."""
    ours, twin = (result["seconds"][f"{side} {precision}"] for side in ("ours", "torchvision"))
    return (
        f"{name}: {baseline:<11} {precision}: ours {ours:.3f} s, torchvision's MaskRCNN of the "
        f"same hyper-parameters {twin:.3f} s per iteration of {result['batch_size']} images "
        f"({result['backbone']}, {result['size']} px): implementation {twin / ours:.2f}x"
    )


def factor_rows(
    compared: Mapping[str, Mapping[str, Mapping[str, Any]]], baselines: list[str]
) -> list[str]:
    """The summary: implementation ratios (ours against the twin, per configuration and
    precision) and, as separate factors of ours, precision (bf16 against fp32) and model size
    (the paper's settings against the demo's, per image, fp32). ``compared``: results by
    configuration and baseline. Every figure is a speed ratio: > 1 means the first is faster."""

    def seconds(name: str, baseline: str, key: str) -> float | None:
        return compared.get(name, {}).get(baseline, {}).get("seconds", {}).get(key)

    def row(label: str, ratio: Any) -> str:
        values = [(b, ratio(b)) for b in baselines]
        cells = ", ".join(f"{b} {v:.2f}x" for b, v in values if v is not None)
        return f"{label}: {cells}" if cells else ""

    def implementation(name: str, precision: str) -> Any:
        def ratio(b: str) -> float | None:
            ours, twin = (
                seconds(name, b, f"{side} {precision}") for side in ("ours", "torchvision")
            )
            return twin / ours if ours and twin else None

        return ratio

    def precision_factor(name: str) -> Any:
        def ratio(b: str) -> float | None:
            fp32, bf16 = seconds(name, b, "ours fp32"), seconds(name, b, "ours bf16")
            return fp32 / bf16 if fp32 and bf16 else None

        return ratio

    def size_factor(b: str) -> float | None:
        demo, paper = seconds("demo", b, "ours fp32"), seconds("paper", b, "ours fp32")
        if not (demo and paper):
            return None
        per_image = {n: compared[n][b]["batch_size"] for n in ("demo", "paper")}
        return (paper / per_image["paper"]) / (demo / per_image["demo"])

    rows = []
    for name in compared:
        for precision in ("fp32", "bf16"):
            label = f"implementation, {name}, {precision}: ours vs torchvision's MaskRCNN"
            rows.append(row(label, implementation(name, precision)))
    for name in compared:
        rows.append(row(f"precision factor of ours, {name}: bf16 vs fp32", precision_factor(name)))
    rows.append(
        row(
            "model-size factor of ours, fp32: time per image, paper's settings vs the demo's",
            size_factor,
        )
    )
    return [r for r in rows if r]


def setting_line(name: str, key: tuple, s: Mapping[str, float]) -> str:
    """One setting of ours (``key`` = baseline, precision, threads, workers)."""
    baseline, precision, threads, workers = key
    return (
        f"{name}: {baseline:<11} {precision}, {threads} thread(s), {workers} worker(s): "
        f"{s['images_per_s']:7.2f} images/s; peak RSS {s['peak_rss_gib']:.2f} GiB"
    )


def comparison_lines(name: str, results: Mapping[tuple, float]) -> list[str]:
    """Per baseline and precision: each thread count as a ratio to the first, each worker
    count as a ratio to the first (``results``: images/s by baseline, precision, threads,
    workers)."""
    lines = []
    for baseline, precision in dict.fromkeys(key[:2] for key in results):
        own = {key[2:]: v for key, v in results.items() if key[:2] == (baseline, precision)}
        threads = sorted({t for t, _ in own})
        workers = sorted({w for _, w in own})
        parts = []
        for t in threads[1:]:
            ratios = "/".join(f"{own[t, w] / own[threads[0], w]:.2f}x" for w in workers)
            parts.append(f"{t} threads vs {threads[0]}: {ratios}")
        for w in workers[1:]:
            ratios = "/".join(f"{own[t, w] / own[t, workers[0]]:.2f}x" for t in threads)
            parts.append(f"{w} worker(s) vs {workers[0]}: {ratios}")
        if parts:
            t_list = "/".join(map(str, threads))
            w_list = "/".join(map(str, workers))
            lines.append(
                f"{name}: {baseline} {precision}: " + "; ".join(parts)
                + f" (at {w_list} workers / {t_list} threads)"
            )  # fmt: skip
    return lines


def contention_line(name: str, baseline: str, rates: Mapping[int, float]) -> str:
    """1 vs 2 threads with a busy process on the other core; 2 threads as a ratio to 1."""
    return (
        f"{name}: with a busy process on the other core, {baseline} fp32, 0 workers: 1 thread "
        f"{rates[1]:.2f} images/s, 2 threads {rates[2]:.2f} images/s (2 threads "
        f"{rates[2] / rates[1]:.2f}x the speed of 1)"
    )


def _compare(args: argparse.Namespace, precisions: list[str]) -> dict[str, dict[str, Any]]:
    """Ours against its torchvision twin, per configuration of ``--compare`` and baseline;
    prints a line each and the summary rows, returns the results by configuration, baseline."""
    compared: dict[str, dict[str, Any]] = {}
    for name in args.compare:
        with tempfile.TemporaryDirectory() as tmp:
            data = make_data(Path(tmp) / "data", DATA_SIZES[name], THROUGHPUT_IMAGES)
            compared[name] = {}
            for baseline in args.baselines:
                spec = {
                    "config": name, "data": str(data), "baseline": baseline, "threads": 1,
                    "precisions": precisions, "warmup": args.compare_warmup,
                    "iterations": args.compare_iterations,
                }  # fmt: skip
                result = _run_child("compare", spec)
                compared[name][baseline] = result
                for precision in precisions:
                    print(compare_line(name, baseline, precision, result), flush=True)
    print("summary (speed ratios, > 1: the first named is faster):")
    for line in factor_rows(compared, args.baselines):
        print(f"  {line}", flush=True)
    return compared


def _throughput(args: argparse.Namespace, name: str, data: Path, precisions: list[str]) -> dict:
    """Every combination of one configuration; prints a line each, returns images/s by key."""
    results = {}
    base = {"config": name, "data": str(data)}
    for threads in args.threads:
        for baseline in args.baselines:
            for precision in precisions:
                for workers in args.workers:
                    spec = {
                        **base, "baseline": baseline, "threads": threads, "workers": workers,
                        "precision": precision, "warmup": args.warmup,
                        "iterations": args.iterations,
                    }  # fmt: skip
                    s = _run_child("throughput", spec)
                    key = (baseline, precision, threads, workers)
                    results[key] = s["images_per_s"]
                    print(setting_line(name, key, s), flush=True)
    for line in comparison_lines(name, results):
        print(line, flush=True)
    return results


def _contention(args: argparse.Namespace, name: str, data: Path) -> None:
    """Ours (first baseline, fp32, no workers) at 1 and 2 threads beside a busy process."""
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    rates = {}
    try:
        for threads in (1, 2):
            spec = {
                "config": name, "data": str(data), "baseline": args.baselines[0],
                "threads": threads, "workers": 0, "precision": "fp32", "warmup": args.warmup,
                "iterations": args.iterations,
            }  # fmt: skip
            rates[threads] = _run_child("throughput", spec)["images_per_s"]
    finally:
        busy.kill()
        busy.wait()
    print(contention_line(name, args.baselines[0], rates), flush=True)


def _fastest(name: str, results: dict, baselines: list[str]) -> tuple[str, int, int]:
    """The (precision, threads, workers) with the best geometric mean over the baselines."""
    settings = {key[1:] for key in results}

    def score(setting: tuple) -> float:
        return statistics.geometric_mean(results[(b, *setting)] for b in baselines)

    best = max(sorted(settings), key=score)
    for baseline in baselines:
        own = max(sorted(settings), key=lambda s, b=baseline: results[(b, *s)])
        print(f"{name}: fastest for {baseline}: {own[0]}, {own[1]} thread(s), {own[2]} worker(s)")
    print(
        f"{name}: fastest overall (geometric mean over {', '.join(baselines)}): {best[0]}, "
        f"{best[1]} thread(s), {best[2]} worker(s)",
        flush=True,
    )
    return best


def _learning(args: argparse.Namespace, name: str, setting: tuple[str, int, int]) -> None:
    """Score and CPU time along the configuration's schedule, per baseline."""
    precision, threads, workers = setting
    n_train = int(load_config(name)["data"].get("synthetic", {}).get("n_train", 120))
    with tempfile.TemporaryDirectory() as tmp:
        data = make_data(Path(tmp) / "data", DATA_SIZES[name], n_train)
        for baseline in args.baselines:
            out = Path(tmp) / baseline
            out.mkdir()
            spec = {
                "config": name, "baseline": baseline, "data": str(data), "out": str(out),
                "threads": threads, "workers": workers, "precision": precision,
                "n_train": n_train, "iterations": args.learning_iterations,
            }  # fmt: skip
            rows = _run_child("learning", spec)["rows"]
            _print_learning(name, baseline, rows, args.budgets)


def _number(value: Any) -> float:
    """A history cell as a float: NaN where the row has no value (None, NaN, missing)."""
    return float(value) if isinstance(value, int | float) else math.nan


def _print_learning(name: str, baseline: str, rows: list[dict], budgets: list[float]) -> None:
    scored = [r for r in rows if not math.isnan(_number(r.get("cpu_s")))]
    keys = ("val_score", "train_score")
    key = next((k for k in keys if any(not math.isnan(_number(r.get(k))) for r in scored)), None)
    if key is None:
        print(f"{name}: {baseline}: the engine records no score and CPU time: iterations/s only")
        timed = [_number(r.get("sec_per_it")) for r in rows]
        rate = 1 / statistics.median(t for t in timed if not math.isnan(t))
        print(f"{name}: {baseline}: {rate:.2f} iterations/s")
        return
    for row in scored:
        print(
            f"{name}: {baseline}: iteration {int(row['iteration']):4d}, "
            f"{row['cpu_s'] / 60:5.2f} CPU-min, {row['iteration'] / row['cpu_s']:.2f} it/CPU-s, "
            f"{key} {row[key]:.3f}"
        )
    reached = []
    for budget in budgets:
        within = [r[key] for r in scored if r["cpu_s"] <= budget * 60]
        reached.append(f"{budget:g} CPU-min: " + (f"{within[-1]:.3f}" if within else "-"))
    print(f"{name}: {baseline}: {key} within " + ", ".join(reached), flush=True)


def roi_align_seconds(data: Path, rounds: int = 6, iterations: int = 8) -> dict[str, float]:
    """Mean seconds per demo Deep Retina training step (``TrainStep``, one thread, bf16
    where the CPU has it) with torchvision's ROI poolers (``stock``) and with ours (``ours``):
    one model trained on, the poolers swapped every ``iterations`` steps, the order alternated
    each round (the steps get slower as training goes on)."""
    import torch
    from torchvision.ops import MultiScaleRoIAlign

    from nucleistyle.segment import engine
    from nucleistyle.segment.model import build_model
    from nucleistyle.torchutils import cpu_has_bf16

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    total = 2 + 2 * rounds * iterations
    cfg = _training_config(
        {"config": "demo", "baseline": "deep_retina"}, total, workers=0, log_every=1
    )
    dataset = _draw_dataset(cfg, str(data), total)
    torch.manual_seed(0)
    model = build_model(cfg, pretrained=False)
    heads = model.roi_heads
    pools = {
        "ours": (heads.box_roi_pool, heads.mask_roi_pool),
        "stock": (MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2),
                  MultiScaleRoIAlign(["0", "1", "2", "3"], 14, 2)),
    }  # fmt: skip
    dtype = torch.bfloat16 if cpu_has_bf16() else None
    batches = engine._batches(dataset, 0, cfg.batch_size, 0)
    run = _training_run(model, cfg, dtype, total, batches)
    _train_iterations(run, 0, 2)
    seconds: dict[str, float] = dict.fromkeys(pools, 0.0)
    done = 2
    for n in range(rounds):
        for kind in ("ours", "stock") if n % 2 == 0 else ("stock", "ours"):
            heads.box_roi_pool, heads.mask_roi_pool = pools[kind]
            seconds[kind] += sum(_train_iterations(run, done, done + iterations)) / (
                rounds * iterations
            )
            done += iterations
    torch.set_num_threads(threads)
    return seconds


def roi_align_line(seconds: Mapping[str, float]) -> str:
    return (
        f"ROI Align, a demo Deep Retina training step, 1 thread: torchvision's poolers "
        f"{seconds['stock']:.3f} s (the 1.0x baseline), ours {seconds['ours']:.3f} s "
        f"({seconds['stock'] / seconds['ours']:.2f}x)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--compare", nargs="*", default=["demo", "paper"], choices=COMPARE_CONFIGS,
        help="configurations of the like-for-like implementation ratio",
    )  # fmt: skip
    parser.add_argument("--compare-warmup", type=int, default=2, help="untimed, each side")
    parser.add_argument("--compare-iterations", type=int, default=5, help="timed, each side")
    parser.add_argument("--configs", nargs="*", default=list(CPU_CONFIGS), choices=CPU_CONFIGS)
    parser.add_argument("--baselines", nargs="+", default=["deep_retina", "mirzaev"])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--warmup", type=int, default=2, help="untimed iterations per setting")
    parser.add_argument("--iterations", type=int, default=4, help="timed iterations (median)")
    parser.add_argument(
        "--no-contention", dest="contention", action="store_false", help="skip that line"
    )
    parser.add_argument("--learning", nargs="*", default=[], choices=CPU_CONFIGS)
    parser.add_argument(
        "--learning-iterations", type=int, default=0, help="0: the configuration's schedule"
    )
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.5, 1.0, 2.0])
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        kind, spec = args.child[0], json.loads(args.child[1])
        children = {
            "compare": _child_compare, "throughput": _child_throughput,
            "learning": _child_learning,
        }  # fmt: skip
        print(json.dumps(children[kind](spec)))
        return 0

    import torch
    import torchvision
    from bench_gan import cpu_info, no_bf16_line

    from nucleistyle.torchutils import cpu_has_bf16

    model, flags = cpu_info()
    print(
        f"{model}, {os.cpu_count()} cores; torch {torch.__version__}, torchvision "
        f"{torchvision.__version__}; load average before: {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    precisions = ["fp32", *(["bf16"] if cpu_has_bf16() else [])]
    if len(precisions) == 1:
        print(no_bf16_line(model, flags), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        data = make_data(Path(tmp) / "data", DATA_SIZES["demo"], THROUGHPUT_IMAGES)
        print(roi_align_line(roi_align_seconds(data)), flush=True)
    if args.compare:
        print(
            f"implementation, like for like: per baseline on its own batches, ours and "
            f"torchvision's MaskRCNN of the same hyper-parameters and initial weights trained side "
            f"by side in one process, 1 thread, the order alternated; median of "
            f"{args.compare_iterations} iterations after {args.compare_warmup}",
            flush=True,
        )
        _compare(args, precisions)
    if args.configs:
        print(
            f"settings of ours: threads {args.threads}, workers {args.workers}, median of "
            f"{args.iterations} iterations after {args.warmup}",
            flush=True,
        )
    fastest = {}
    for n, name in enumerate(args.configs):
        with tempfile.TemporaryDirectory() as tmp:
            data = make_data(Path(tmp) / "data", DATA_SIZES[name], THROUGHPUT_IMAGES)
            results = _throughput(args, name, data, precisions)
            if args.contention and n == 0:
                _contention(args, name, data)
        fastest[name] = _fastest(name, results, args.baselines)
    for name in args.learning:
        _learning(args, name, fastest.get(name, ("fp32", 1, 0)))
    if not args.learning:
        print("learning per CPU-minute: not measured (--learning demo, about 10 min a baseline)")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
