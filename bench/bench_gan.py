"""Benchmark one full GAN training update against a plain implementation run in the same run.

Usage: ``python bench/bench_gan.py [--repeats N] [--threads 1 2] [--crop PX]
[--stability-iterations N] [--contention-crop PX] [--channels-last]``

1. Speed: seconds per full update (dis1/dis2 step + E_c/E_a/G step) for 6 domains, crop 216
   (``--crop``), batch 2, the paper's widths, on random images, at each ``--threads`` count, of
   (a) the baseline, :class:`tests.gan_reference.PlainTrainer`: the same architecture,
   losses and update written the straightforward way (the forms the tests check the rewrites
   against), and (b) :class:`~nucleistyle.gan.engine.GanTrainer`, ours; each in fp32 and, when
   the CPU has bf16 units, in bf16 autocast. Ours is reported as a ratio to the plain update in
   the same precision (the implementation ratio); ours in bf16 against ours in fp32 is
   reported apart, as the precision factor. Each runs in its own worker process (its peak RSS,
   from getrusage, and its allocator settings are its own), warmed up by one update (which,
   for ours at the first thread count, also counts the update's FLOPs with FlopCounterMode);
   then ``--repeats`` rounds time one update of each worker in turn, so a change in the
   machine's load hits all alike, and the best and median are kept. A content-D update is
   timed too. Beside ours, the roofline: FLOPs per second of the best update, as a share of
   this CPU's matrix-product rate in the same precision.
2. Threads under contention: our update (crop ``--contention-crop``, same architecture, best
   of 2 timed updates after the warm-up) with 1 and with 2 threads while a busy process
   occupies one of the cores (OpenMP threads spin when a core is taken, which is why every
   job sets its thread count); 2 threads as a ratio to 1.
3. Stability (bf16 CPUs only): 30 iterations at crop 64 on a small synthetic data set, fp32
   and bf16 from the same seed; every loss must stay finite and the mean of the key terms over
   the last 10 iterations must agree within 15 %.

The default (1 timed round at 1 and 2 threads) takes about 7 minutes on a 2-core AVX2 CPU;
``--repeats 3`` gives best-of-3 figures.

PASS/FAIL (exit status 1 on FAIL), only for the targets that apply to this CPU: peak RSS of
ours < 4 GiB; ours at least ``TARGET_SPEEDUP`` x the plain update in the same precision, at
every thread count and precision measured; with bf16 units, bf16 stable. On a CPU without bf16
units (no ``avx512_bf16`` or ``amx_bf16`` CPU flag; bf16 would be emulated) the bench says so in
one line and measures fp32 only. The machine may be shared: the load average is printed, the
best of the repeats is the figure of merit, and ratios within one run count.
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
from collections.abc import Mapping
from pathlib import Path

import numpy as np

# Ours against the plain update in the same precision: not slower, within the run-to-run noise
# (the rewrites were made for bf16 CPUs; in fp32 on an AVX2 CPU the two updates run level).
TARGET_SPEEDUP = 0.95
TARGET_RSS_GIB = 4.0
STABILITY_TERMS = ("g_total", "cross_cycle", "self_recon", "d1_adv", "d2_adv", "latent")
STABILITY_TOLERANCE = 0.15
# the timed implementations: plain or ours, each in one precision
IMPLEMENTATIONS = {
    "plain-fp32": "plain fp32", "ours-fp32": "our fp32",
    "plain-bf16": "plain bf16", "ours-bf16": "our bf16",
}  # fmt: skip


def kinds_for(precisions: list[str]) -> list[str]:
    """The implementations timed for ``precisions``: plain and ours in each."""
    return [f"{impl}-{precision}" for precision in precisions for impl in ("plain", "ours")]


BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # what nucleistyle.torchutils.cpu_has_bf16 looks for
# The repository root: the baseline, tests/gan_reference.py, is imported as tests.gan_reference.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


# -- what this CPU has ---------------------------------------------------------------------------


def cpu_info(text: str | None = None) -> tuple[str, set[str]]:
    """The model name and the flags of the first CPU in ``/proc/cpuinfo`` (or ``text``)."""
    if text is None:
        try:
            text = Path("/proc/cpuinfo").read_text()
        except OSError:
            return "unknown CPU", set()
    model, flags = "unknown CPU", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and model == "unknown CPU":
            model = value.strip()
        elif key.strip() == "flags" and not flags:
            flags = set(value.split())
    return model, flags


def no_bf16_line(model: str, flags: set[str]) -> str:
    """The one line the bench prints on a CPU without bf16 units."""
    simd = [f for f in ("avx512f", "avx2") if f in flags][:1]
    has = f"{simd[0]}, " if simd else ""
    return (
        f"no bf16 on this CPU ({model}: {has}no {' or '.join(BF16_FLAGS)} flag, so bf16 would "
        "only be emulated): fp32 only, bf16 not measured"
    )


# -- the report ----------------------------------------------------------------------------------


def speed_line(threads: int, kind: str, s: Mapping[str, float]) -> str:
    """One implementation's timings at one thread count."""
    line = (
        f"{threads} thread(s), {IMPLEMENTATIONS[kind]}: full update {s['full_best']:.2f} s"
        f" (median {s['full_median']:.2f}), content-D update {s['content_best']:.2f} s,"
        f" peak RSS {s['peak_rss_gib']:.2f} GiB"
    )
    if s.get("gflop"):
        rate, precision = s["gflop"] / s["full_best"], kind.partition("-")[2]
        line += (
            f"; {s['gflop']:.0f} GFLOP per update = {rate:.0f} GFLOP/s, {rate / s['matmul']:.0%}"
            f" of this CPU's {precision} 2048^3 matmul rate ({s['matmul']:.0f} GFLOP/s)"
        )
    return line


def ratio_line(threads: int, best: Mapping[str, float]) -> str:
    """Ours as speed ratios to the plain update in the same precision, and the precision factor
    of ours (``best``: seconds per update by kind)."""
    parts = [
        f"{precision}: ours {best[f'plain-{precision}'] / best[f'ours-{precision}']:.2f}x the "
        f"plain update ({best[f'plain-{precision}']:.2f} s)"
        for precision in ("fp32", "bf16")
        if f"ours-{precision}" in best
    ]
    line = f"{threads} thread(s), implementation, like for like: " + "; ".join(parts)
    if "ours-bf16" in best:
        factor = best["ours-fp32"] / best["ours-bf16"]
        line += f"; precision factor of ours: bf16 {factor:.2f}x the speed of fp32"
    return line


def contention_line(kind: str, crop: int, seconds: Mapping[int, float]) -> str:
    """1 vs 2 threads with a busy process on the other core; 2 threads as a ratio to 1."""
    return (
        f"with a busy process on the other core, {IMPLEMENTATIONS[kind]} at crop {crop}: "
        f"1 thread {seconds[1]:.2f} s, 2 threads {seconds[2]:.2f} s per update "
        f"(2 threads {seconds[1] / seconds[2]:.2f}x the speed of 1)"
    )


def target_checks(
    speed: Mapping[tuple[str, int], Mapping[str, float]],
    threads: list[int],
    stability: tuple[bool, float] | None,
    stability_iterations: int = 30,
) -> dict[str, bool]:
    """The targets that apply: peak RSS of ours; ours >= ``TARGET_SPEEDUP`` x the plain update
    in the same precision, for every precision in ``speed`` and thread count; bf16 ``stability``
    (None: not measured)."""
    rss = max(s["peak_rss_gib"] for (kind, _), s in speed.items() if kind.startswith("ours"))
    checks = {f"peak RSS {rss:.2f} GiB (target < {TARGET_RSS_GIB} GiB)": rss < TARGET_RSS_GIB}
    precisions = dict.fromkeys(kind.partition("-")[2] for kind, _ in speed)
    for precision in precisions:
        for n in threads:
            plain = speed[f"plain-{precision}", n]["full_best"]
            ratio = plain / speed[f"ours-{precision}", n]["full_best"]
            text = f"{n} thread(s): our {precision} update {ratio:.2f}x the plain {precision} one"
            checks[f"{text} (target >= {TARGET_SPEEDUP}x)"] = ratio >= TARGET_SPEEDUP
    if stability is not None:
        stable, worst = stability
        text = f"bf16 stable over {stability_iterations} iterations (finite, worst rel. diff"
        checks[f"{text} {worst:.1%} <= {STABILITY_TOLERANCE:.0%})"] = stable
    return checks


# -- the worker processes ------------------------------------------------------------------------


def _trainer(kind: str, crop: int, channels_last: bool):
    """A trainer of the paper's size: ``plain-<precision>`` or ``ours-<precision>``."""
    import torch

    from nucleistyle.gan.configs import GanConfig
    from nucleistyle.gan.engine import GanTrainer
    from nucleistyle.torchutils import keep_freed_memory, resolve_precision
    from tests.gan_reference import PlainTrainer  # the test oracle, from the repository root

    impl, _, precision = kind.partition("-")
    cfg = GanConfig(
        n_domains=6, crop=crop, batch_size=2, precision=precision, device="cpu",
        channels_last=channels_last and impl == "ours",
    )  # fmt: skip
    device = torch.device("cpu")
    dtype = resolve_precision(precision, device)
    torch.manual_seed(0)
    if impl == "plain":
        return PlainTrainer(cfg, device, dtype)  # glibc's default allocator behaviour
    keep_freed_memory()  # as train_gan does
    return GanTrainer(cfg, device, dtype)


def _worker(kind: str, crop: int, channels_last: bool, flops: bool) -> None:
    """A timing worker: builds one trainer, warms it up (counting the FLOPs of that update when
    ``flops``), then serves commands from stdin, one JSON line on stdout for each.

    ``step``: time one full update and one content-D update; ``quit``: report the peak RSS and
    exit.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    trainer = _trainer(kind, crop, channels_last)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, crop, crop, 3), dtype=np.uint8)
    domains = np.array([0, 3])
    ready: dict = {"ready": True}
    if flops:  # the warm-up (oneDNN primitive creation, first touch of memory) counts too
        with FlopCounterMode(display=False) as counter:
            trainer.full_step(images, domains)
        dtype = torch.bfloat16 if kind.endswith("bf16") else torch.float32
        ready |= {"gflop": counter.get_total_flops() / 1e9, "matmul": _matmul_rate(dtype)}
    else:
        trainer.full_step(images, domains)
    trainer.content_step(images, domains)
    print(json.dumps(ready), flush=True)
    for command in sys.stdin:
        if command.strip() == "step":
            start = time.perf_counter()
            trainer.full_step(images, domains)
            middle = time.perf_counter()
            trainer.content_step(images, domains)
            answer = {"full": middle - start, "content": time.perf_counter() - middle}
            print(json.dumps(answer), flush=True)
        else:
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
            print(json.dumps({"peak_rss_gib": rss}), flush=True)
            return


class _Worker:
    """The parent's handle on a :func:`_worker` subprocess (started and warmed up on creation;
    :attr:`ready` is its first answer)."""

    def __init__(
        self, kind: str, crop: int, threads: int, channels_last: bool = False, flops: bool = False
    ) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        child = ["--child", "worker", kind, str(crop), str(int(channels_last)), str(int(flops))]
        self.process = subprocess.Popen(
            [sys.executable, __file__, *child, "--threads", str(threads)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
        self.ready = self._read()

    def _read(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"bench worker exited with status {self.process.wait()}")
        return json.loads(line)

    def ask(self, command: str) -> dict:
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        return self._read()

    def close(self) -> float:
        """Stop the worker; returns its peak RSS in GiB."""
        rss = self.ask("quit")["peak_rss_gib"]
        self.process.wait()
        return rss

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def _matmul_rate(dtype, n: int = 2048) -> float:
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

    from nucleistyle.gan.configs import GanConfig
    from nucleistyle.gan.data import DomainSampler, load_domain_set
    from nucleistyle.gan.engine import GanTrainer
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


# -- the parts of the bench ----------------------------------------------------------------------


def _timed(workers: Mapping[str, _Worker], repeats: int) -> dict[str, dict]:
    """``repeats`` rounds of one update per worker, in turn (so load changes hit all alike)."""
    times: dict[str, dict[str, list[float]]] = {k: {"full": [], "content": []} for k in workers}
    for _ in range(repeats):
        for kind, worker in workers.items():
            answer = worker.ask("step")
            for key, value in answer.items():
                times[kind][key].append(value)
    return {
        kind: {
            "full_best": min(t["full"]),
            "full_median": float(np.median(t["full"])),
            "content_best": min(t["content"]),
        }
        for kind, t in times.items()
    }


def _speed(args: argparse.Namespace, kinds: list[str]) -> dict[tuple[str, int], dict]:
    """Time every implementation at every thread count; prints a line each and the ratios."""
    speed = {}
    for threads in args.threads:
        first = threads == args.threads[0]
        workers: dict[str, _Worker] = {}
        try:
            for kind in kinds:  # one at a time: the warm-ups do not overlap
                flops = first and kind.startswith("ours")
                workers[kind] = _Worker(kind, args.crop, threads, args.channels_last, flops)
            results = _timed(workers, args.repeats)
            rss = {k: w.close() for k, w in workers.items()}
        finally:
            for worker in workers.values():
                worker.kill()
        for kind in kinds:
            ready = {k: v for k, v in workers[kind].ready.items() if k != "ready"}
            speed[kind, threads] = {**results[kind], "peak_rss_gib": rss[kind], **ready}
            print(speed_line(threads, kind, speed[kind, threads]), flush=True)
        best = {kind: speed[kind, threads]["full_best"] for kind in kinds}
        print(ratio_line(threads, best), flush=True)
    return speed


def _contention(args: argparse.Namespace, kind: str) -> None:
    """Our update with 1 and 2 threads while a busy process takes one of the two cores."""
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    seconds = {}
    try:
        for threads in (1, 2):
            worker = _Worker(kind, args.contention_crop, threads)
            try:
                seconds[threads] = min(worker.ask("step")["full"] for _ in range(2))
                worker.close()
            finally:
                worker.kill()
    finally:
        busy.kill()
        busy.wait()
    print(contention_line(kind, args.contention_crop, seconds), flush=True)


def _stability(args: argparse.Namespace) -> tuple[bool, float]:
    """fp32 and bf16 loss curves from the same seed; returns (stable, worst relative diff)."""
    with tempfile.TemporaryDirectory() as tmp:
        _make_data(Path(tmp) / "data")
        curves = {
            p: _run_child(
                ["stability", p, str(args.stability_iterations), str(Path(tmp) / "data")],
                args.threads[-1],
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
    return finite and worst <= STABILITY_TOLERANCE, worst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1, help="timed rounds (best, median)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch threads")
    parser.add_argument("--crop", type=int, default=216, help="crop of the speed runs")
    parser.add_argument("--stability-iterations", type=int, default=30)
    parser.add_argument("--contention-crop", type=int, default=64, help="0: skip that line")
    parser.add_argument("--channels-last", action="store_true", help="channels-last convs")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        import torch

        torch.set_num_threads(args.threads[0])
        kind, name, *rest = args.child
        if kind == "worker":
            _worker(name, int(rest[0]), rest[1] == "1", rest[2] == "1")
        else:
            print(json.dumps(_child_stability(name, int(rest[0]), rest[1])))
        return 0

    from nucleistyle.torchutils import cpu_has_bf16

    bf16 = cpu_has_bf16()
    model, flags = cpu_info()
    print(
        f"{model}, {os.cpu_count()} cores, load average before: {os.getloadavg()[0]:.2f}; "
        f"crop {args.crop}, 6 domains, batch 2, {args.repeats} timed round(s)",
        flush=True,
    )
    if not bf16:
        print(no_bf16_line(model, flags), flush=True)
    kinds = kinds_for(["fp32", *(["bf16"] if bf16 else [])])
    speed = _speed(args, kinds)
    if args.contention_crop:
        _contention(args, kinds[-1])
    stability = _stability(args) if bf16 else None
    checks = target_checks(speed, args.threads, stability, args.stability_iterations)
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    for text, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}: {text}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
