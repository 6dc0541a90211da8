"""Benchmark one full GAN training iteration on this CPU, fp32 vs bf16, and bf16 stability.

Usage: ``python bench/bench_gan.py [--repeats N] [--threads T] [--stability-iterations N]``

1. Speed: seconds per full update (dis1/dis2 step + E_c/E_a/G step, the unit the HistAuGAN
   reference was timed in) for 6 domains, crop 216, batch 2, the paper's widths, on random
   images; each precision runs in its own subprocess (so its peak RSS, from getrusage, is its
   own), warm-up first, then the best and median of ``--repeats`` updates. A content-D update
   (2 of them per MDMM iteration) is timed too. The roofline beside it: the FLOPs of one
   update (torch's FlopCounterMode) per second, as a share of this CPU's matmul rate in the
   same precision (a 4096^3 product), which says how much faster the same arithmetic can go.
2. Stability: 30 iterations at crop 64 (same architecture) on a small synthetic data set, fp32
   and bf16 from the same seed; every loss must stay finite and the mean of the key terms over
   the last 10 iterations must agree within 15 % (GAN trajectories diverge; the levels must not).

PASS/FAIL (exit status 1 on FAIL): bf16 at least 2.5x faster than the 9.8 s that the public
HistAuGAN implementation takes here in fp32, peak RSS < 4 GiB, bf16 stable. The CPU is shared:
the load average is printed, and the best of the repeats is the figure of merit.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HISTAUGAN_FP32_S = 9.8
TARGET_SPEEDUP = 2.5
TARGET_RSS_GIB = 4.0
STABILITY_TERMS = ("g_total", "cross_cycle", "self_recon", "d1_adv", "d2_adv", "latent")
STABILITY_TOLERANCE = 0.15


def _child_speed(precision: str, repeats: int, channels_last: bool) -> dict:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from nucleistyle.gan.trainer import GanConfig, GanTrainer
    from nucleistyle.torchutils import keep_freed_memory, resolve_precision

    keep_freed_memory()  # as train_gan does
    cfg = GanConfig(
        n_domains=6, crop=216, batch_size=2, precision=precision, device="cpu",
        channels_last=channels_last,
    )  # fmt: skip
    device = torch.device("cpu")
    torch.manual_seed(0)
    trainer = GanTrainer(cfg, device, resolve_precision(precision, device))
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 216, 216, 3), dtype=np.uint8)
    domains = np.array([0, 3])
    trainer.full_step(images, domains)  # warm-up: oneDNN primitive creation
    trainer.content_step(images, domains)
    full, content = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        trainer.full_step(images, domains)
        full.append(time.perf_counter() - start)
        start = time.perf_counter()
        trainer.content_step(images, domains)
        content.append(time.perf_counter() - start)
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    with FlopCounterMode(display=False) as flops:
        trainer.full_step(images, domains)
    return {
        "full_best": min(full),
        "full_median": float(np.median(full)),
        "content_best": min(content),
        "peak_rss_gib": peak_rss,
        "gflop": flops.get_total_flops() / 1e9,
        "matmul_gflops": _matmul_rate(torch.bfloat16 if precision == "bf16" else torch.float32),
    }


def _matmul_rate(dtype, n: int = 4096) -> float:
    """This CPU's dense matrix-product rate in GFLOP/s for ``dtype`` (best of 3): the roofline."""
    import torch

    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    best = math.inf
    for _ in range(3):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def _child_stability(precision: str, iterations: int, data: str) -> dict:
    import torch

    from nucleistyle.gan.data import DomainSampler, load_domain_set
    from nucleistyle.gan.trainer import GanConfig, GanTrainer
    from nucleistyle.torchutils import resolve_precision, seed_everything

    cfg = GanConfig(n_domains=4, crop=64, resize=96, precision=precision, device="cpu")
    device = torch.device("cpu")
    root = Path(data)
    domain_set = load_domain_set(root / "stage1_train", root / "assignments.csv", 4, 96, 64)
    seed_everything(0)
    trainer = GanTrainer(cfg, device, resolve_precision(precision, device))
    sampler = DomainSampler(domain_set, cfg.batch_size, cfg.crop, seed=0)
    return {"history": [trainer.train_iteration(sampler) for _ in range(iterations)]}


def _run_child(args: list[str], threads: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    out = subprocess.run(
        [sys.executable, __file__, "--child", *args, "--threads", str(threads)],
        check=True, capture_output=True, text=True, env=env,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def _make_data(root: Path) -> None:
    from nucleistyle.cluster import ClusterConfig, cluster_dataset
    from nucleistyle.data.synthetic import SyntheticConfig, generate

    generate(SyntheticConfig(n_train=24, n_test_per_modality=1, height=96, width=96), root)
    cluster_dataset(root / "stage1_train", root / "assignments.csv", ClusterConfig(k=4))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed full updates per setting")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--stability-iterations", type=int, default=30)
    parser.add_argument("--channels-last", action="store_true", help="channels-last convs")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        import torch

        torch.set_num_threads(args.threads)
        kind, precision, *rest = args.child
        if kind == "speed":
            result = _child_speed(precision, int(rest[0]), rest[1] == "1")
        else:
            result = _child_stability(precision, int(rest[0]), rest[1])
        print(json.dumps(result))
        return 0

    print(f"load average before: {os.getloadavg()[0]:.2f} (2 cores; other jobs slow this down)")
    speed = {}
    for precision in ("fp32", "bf16"):
        speed[precision] = _run_child(
            ["speed", precision, str(args.repeats), str(int(args.channels_last))], args.threads
        )
        s = speed[precision]
        print(
            f"{precision}: full update {s['full_best']:.2f} s (median {s['full_median']:.2f}), "
            f"content-D update {s['content_best']:.2f} s, peak RSS {s['peak_rss_gib']:.2f} GiB; "
            f"{s['gflop']:.0f} GFLOP per update = {s['gflop'] / s['full_best']:.0f} GFLOP/s, "
            f"{s['gflop'] / s['full_best'] / s['matmul_gflops']:.0%} of this CPU's {precision} "
            f"4096^3 matmul rate ({s['matmul_gflops']:.0f} GFLOP/s)"
        )
    with tempfile.TemporaryDirectory() as tmp:
        _make_data(Path(tmp) / "data")
        curves = {
            p: _run_child(
                ["stability", p, str(args.stability_iterations), str(Path(tmp) / "data")],
                args.threads,
            )["history"]
            for p in ("fp32", "bf16")
        }
    finite = all(np.isfinite(v) for p in curves.values() for row in p for v in row.values())
    tail = max(1, args.stability_iterations // 3)
    worst = 0.0
    for term in STABILITY_TERMS:
        a = float(np.mean([row[term] for row in curves["fp32"][-tail:]]))
        b = float(np.mean([row[term] for row in curves["bf16"][-tail:]]))
        diff = abs(b - a) / max(abs(a), 0.05)
        worst = max(worst, diff)
        print(f"stability {term:12s} fp32 {a:8.4f}  bf16 {b:8.4f}  rel. diff {diff:6.1%}")
    stable = finite and worst <= STABILITY_TOLERANCE
    print(f"load average after: {os.getloadavg()[0]:.2f}")

    best = speed["bf16"]["full_best"]
    speedup = HISTAUGAN_FP32_S / best
    rss = max(s["peak_rss_gib"] for s in speed.values())
    checks = {
        f"bf16 {best:.2f} s/it = {speedup:.2f}x HistAuGAN fp32 {HISTAUGAN_FP32_S} s "
        f"(target >= {TARGET_SPEEDUP}x)": speedup >= TARGET_SPEEDUP,
        f"peak RSS {rss:.2f} GiB (target < {TARGET_RSS_GIB} GiB)": rss < TARGET_RSS_GIB,
        f"bf16 stable over {args.stability_iterations} iterations (finite, worst rel. diff "
        f"{worst:.1%} <= {STABILITY_TOLERANCE:.0%})": stable,
    }
    print(f"bf16 vs our fp32: {speed['fp32']['full_best'] / best:.2f}x")
    for text, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}: {text}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
