"""Benchmark Mask R-CNN training on this CPU against torchvision's stock Mask R-CNN, same run.

Usage: ``python bench/bench_segment.py [--configs demo cpu] [--baselines deep_retina mirzaev]
[--threads 1 2] [--workers 0 1] [--warmup N] [--iterations N] [--stock-warmup N]
[--stock-iterations N] [--no-contention] [--learning demo cpu] [--learning-iterations N]
[--budgets 0.5 1 2]``

0. ROI Align: seconds per demo Deep Retina training step (one thread, bf16 where the CPU has it)
   with torchvision's ``MultiScaleRoIAlign`` poolers (the baseline) and with ours
   (``GatherRoIAlign``), swapped in one model every 8 steps, 6 rounds, the order alternated;
   ours as a ratio to it. (Timed alone, forward and backward of the two poolers take about as
   long as torchvision's; the gain shows in training only.)
1. Throughput: images/s of a training step as the engine runs it (``train_iterations``: the
   batch from the engine's DataLoader, forward, backward, gradient clipping, optimiser step) of
   each baseline with the settings of ``config.demo.yaml`` (128 px, ResNet-18, narrow heads)
   and ``config.cpu.yaml`` (256 / 384 px), each over ``config.small.yaml``, on synthetic
   images of the size each one trains on,
   for every combination of precision (fp32; bf16 only where the CPU has bf16 units), torch
   threads (``--threads``) and DataLoader worker processes (``--workers``, the engine's
   ``workers``). The reference, trained on the same batches by the same loop in the same run:
   torchvision's ``maskrcnn_resnet50_fpn`` built the default way (``weights=None``, 91
   classes, images resized to 800-1333 px), fp32, no workers, at each thread count; each of
   ours is printed as a ratio to it, and, per baseline, 2 threads as a ratio to 1 and workers
   as a ratio to none. Every setting runs in its own process: ``--warmup`` iterations, then
   the median of ``--iterations``. The stock model takes about a minute an iteration here, so
   by default its first iteration is timed (``--stock-warmup`` 0, ``--stock-iterations`` 1):
   its one-time set-up is in that figure, which flatters ours by a few per cent;
   ``--stock-warmup 1`` excludes it. The fastest combination of each configuration is
   printed.
2. Threads under contention: the first baseline of the first configuration (fp32, no workers)
   at 1 and at 2 threads while a busy process occupies one of the two cores; 2 threads as a
   ratio to 1 (``--no-contention``: skipped).
3. Learning per CPU-minute (``--learning demo``, off by default: the demo's full schedules
   take about ten minutes per baseline): ``train_segmenter`` on the configuration's synthetic
   data set with its own schedule (or ``--learning-iterations``), in the fastest combination
   measured (fp32, 1 thread, no workers when its throughput was not measured), scoring the
   held-out images (DSB score) six times along the way; prints the score, the CPU time and
   the iterations per CPU-second at each, and the score reached within each of ``--budgets``
   CPU-minutes (the training process's CPU time: DataLoader workers' time is not in it).

The default (throughput and contention) takes about 8 minutes on a 2-core CPU. The machine may
be shared: the load average is printed; ratios within one run are what count.
"""

from __future__ import annotations

import argparse
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
# Synthetic images like each configuration's data: the demo's own 128-px set; for the CPU
# configuration (real BBBC038 images) the most common real size, 256 x 320.
DATA_SIZES = {"demo": (128, 128), "cpu": (256, 320)}
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


def stock_model():
    """torchvision's Mask R-CNN built the default way: ResNet-50-FPN, 91 classes, 800-1333 px."""
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    return maskrcnn_resnet50_fpn(weights=None, weights_backbone=None)


def _child_throughput(spec: dict[str, Any]) -> dict[str, Any]:
    """Seconds per training iteration of one setting, through the engine's own step."""
    import torch

    from nucleistyle.segment import engine
    from nucleistyle.segment.configs import get_config
    from nucleistyle.segment.dataset import DrawDataset, list_training_records, load_items
    from nucleistyle.segment.model import build_model
    from nucleistyle.segment.transforms import training_pipeline
    from nucleistyle.torchutils import keep_freed_memory, resolve_precision

    torch.set_num_threads(spec["threads"])
    keep_freed_memory()  # as train_segmenter does
    total = spec["warmup"] + spec["iterations"]
    overrides = {
        **segment_overrides(spec["config"], spec["baseline"]),
        "device": "cpu",
        "precision": spec["precision"],
        "workers": spec["workers"],
        "iterations": total,
        "log_every": 1,
    }
    cfg = get_config(spec["baseline"], overrides)
    device = torch.device("cpu")
    items = load_items(list_training_records([Path(spec["data"], "stage1_train")]), False)
    pipeline = training_pipeline(cfg)
    dataset = DrawDataset(items, pipeline, total * cfg.batch_size, 0, cfg.prep.max_instances)
    torch.manual_seed(0)
    model = stock_model() if spec["model"] == "stock" else build_model(cfg, pretrained=False)
    optimizer = engine.make_optimizer(model, cfg)
    batches = engine._batches(dataset, 0, cfg.batch_size, cfg.workers)
    dtype = resolve_precision(cfg.precision, device)
    step = engine.TrainStep(model, optimizer, batches, device, dtype, cfg, total)
    seconds = []
    for iteration in range(total):
        tic = time.perf_counter()
        step(iteration)
        seconds.append(time.perf_counter() - tic)
    seconds = seconds[spec["warmup"] :]
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


def stock_line(name: str, threads: int, s: Mapping[str, float], warmup: int) -> str:
    """The reference's images/s at one thread count (``warmup``: its untimed iterations)."""
    first = ", its first iteration (one-time set-up included)" if not warmup else ""
    return (
        f"{name}: torchvision stock maskrcnn_resnet50_fpn, fp32, {threads} thread(s), 0 workers"
        f"{first}: {s['images_per_s']:.3f} images/s (the 1.0x of the lines below); peak RSS "
        f"{s['peak_rss_gib']:.2f} GiB"
    )


def setting_line(name: str, key: tuple, s: Mapping[str, float], stock: float) -> str:
    """One of ours (``key`` = baseline, precision, threads, workers) as a ratio to the stock
    model at the same thread count."""
    baseline, precision, threads, workers = key
    return (
        f"{name}: {baseline:<11} {precision}, {threads} thread(s), {workers} worker(s): "
        f"{s['images_per_s']:7.2f} images/s = {s['images_per_s'] / stock:5.1f}x stock; peak RSS "
        f"{s['peak_rss_gib']:.2f} GiB"
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


def _throughput(args: argparse.Namespace, name: str, data: Path, precisions: list[str]) -> dict:
    """Every combination of one configuration; prints a line each, returns images/s by key."""
    results = {}
    base = {"config": name, "data": str(data)}
    for threads in args.threads:
        stock = _run_child(
            "throughput",
            {**base, "model": "stock", "baseline": args.baselines[0], "threads": threads,
             "workers": 0, "precision": "fp32", "warmup": args.stock_warmup,
             "iterations": args.stock_iterations},
        )  # fmt: skip
        print(stock_line(name, threads, stock, args.stock_warmup), flush=True)
        for baseline in args.baselines:
            for precision in precisions:
                for workers in args.workers:
                    spec = {
                        **base, "model": "ours", "baseline": baseline, "threads": threads,
                        "workers": workers, "precision": precision, "warmup": args.warmup,
                        "iterations": args.iterations,
                    }  # fmt: skip
                    s = _run_child("throughput", spec)
                    key = (baseline, precision, threads, workers)
                    results[key] = s["images_per_s"]
                    print(setting_line(name, key, s, stock["images_per_s"]), flush=True)
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
                "config": name, "data": str(data), "model": "ours", "baseline": args.baselines[0],
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
    """Mean seconds per demo Deep Retina training step (``train_iterations``, one thread, bf16
    where the CPU has it) with torchvision's ROI poolers (``stock``) and with ours (``ours``):
    one model trained on, the poolers swapped every ``iterations`` steps, the order alternated
    each round (the steps get slower as training goes on)."""
    import torch
    from torchvision.ops import MultiScaleRoIAlign

    from nucleistyle.segment import engine
    from nucleistyle.segment.configs import get_config
    from nucleistyle.segment.dataset import DrawDataset, list_training_records, load_items
    from nucleistyle.segment.model import build_model
    from nucleistyle.segment.transforms import training_pipeline
    from nucleistyle.torchutils import cpu_has_bf16

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    total = 2 + 2 * rounds * iterations
    overrides = {**segment_overrides("demo", "deep_retina"), "device": "cpu", "workers": 0,
                 "iterations": total, "log_every": 1}  # fmt: skip
    cfg = get_config("deep_retina", overrides)
    items = load_items(list_training_records([data / "stage1_train"]), False)
    dataset = DrawDataset(items, training_pipeline(cfg), total * cfg.batch_size, 0, 10**6)
    torch.manual_seed(0)
    model = build_model(cfg, pretrained=False)
    heads = model.roi_heads
    pools = {
        "ours": (heads.box_roi_pool, heads.mask_roi_pool),
        "stock": (MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2),
                  MultiScaleRoIAlign(["0", "1", "2", "3"], 14, 2)),
    }  # fmt: skip
    dtype = torch.bfloat16 if cpu_has_bf16() else None
    step = engine.TrainStep(
        model, engine.make_optimizer(model, cfg), engine._batches(dataset, 0, cfg.batch_size, 0),
        torch.device("cpu"), dtype, cfg, total,
    )  # fmt: skip
    for iteration in range(2):
        step(iteration)
    seconds: dict[str, float] = dict.fromkeys(pools, 0.0)
    done = 2
    for n in range(rounds):
        for kind in ("ours", "stock") if n % 2 == 0 else ("stock", "ours"):
            heads.box_roi_pool, heads.mask_roi_pool = pools[kind]
            tic = time.perf_counter()
            for iteration in range(done, done + iterations):
                step(iteration)
            seconds[kind] += (time.perf_counter() - tic) / (rounds * iterations)
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
    parser.add_argument("--configs", nargs="*", default=list(CPU_CONFIGS), choices=CPU_CONFIGS)
    parser.add_argument("--baselines", nargs="+", default=["deep_retina", "mirzaev"])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--warmup", type=int, default=2, help="untimed iterations per setting")
    parser.add_argument("--iterations", type=int, default=4, help="timed iterations (median)")
    parser.add_argument("--stock-warmup", type=int, default=0, help="untimed, stock model")
    parser.add_argument("--stock-iterations", type=int, default=1, help="timed, stock model")
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
        child = _child_throughput if kind == "throughput" else _child_learning
        print(json.dumps(child(spec)))
        return 0

    import torch
    import torchvision

    from nucleistyle.torchutils import cpu_has_bf16

    print(
        f"torch {torch.__version__}, torchvision {torchvision.__version__}, {os.cpu_count()} "
        f"cores, load average before: {os.getloadavg()[0]:.2f}; threads {args.threads}, "
        f"workers {args.workers}, median of {args.iterations} iterations after {args.warmup}",
        flush=True,
    )
    precisions = ["fp32"]
    if cpu_has_bf16():
        precisions.append("bf16")
    else:
        print(
            "no bf16 on this CPU (no avx512_bf16 or amx_bf16 flag, bf16 would only be "
            "emulated): fp32 only, bf16 not measured",
            flush=True,
        )
    with tempfile.TemporaryDirectory() as tmp:
        data = make_data(Path(tmp) / "data", DATA_SIZES["demo"], THROUGHPUT_IMAGES)
        print(roi_align_line(roi_align_seconds(data)), flush=True)
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
