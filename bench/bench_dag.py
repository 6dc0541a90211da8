"""Benchmark building the workflow's DAG (``snakemake -n``) for the full BBBC038 experiment.

Usage: ``python bench/bench_dag.py [--shards N ...] [--repeats N]``

In a temporary copy of the workflow without results or downloads (as a fresh clone), times the
dry-run of config.yaml (both BBBC038 test sets, 2 baselines x 4 arms, with and without TTA) with
predict.shards = 1 and = 32 (stage 2 has 3,019 images), and, as the baseline measured in the same
run, the dry-run of the classical-only targets (the classical segmenter scored on both test sets).
Prints the best of ``--repeats`` timings, the planned jobs, the ratio to the baseline and the cost
per job, and checks that each extra shard adds exactly one predict_shard job per predictor and
test set (exit status 1 otherwise, or when a dry-run fails).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from nucleistyle.workflow import copy_workflow

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def dry_run(copy: Path, *args: str) -> int:
    """Planned jobs of ``snakemake -n <args>`` in ``copy`` (the job-stats table's total)."""
    result = subprocess.run(
        [*SNAKEMAKE, "-n", "--cores", "1", *args], cwd=copy, capture_output=True, text=True
    )
    if result.returncode != 0:
        raise RuntimeError(f"snakemake -n {' '.join(args)} failed: {result.stderr[-500:]}")
    total = re.search(r"^total\s+(\d+)\s*$", result.stdout, flags=re.MULTILINE)
    if total is None:
        raise RuntimeError(f"snakemake -n {' '.join(args)} printed no job-stats table")
    return int(total[1])


def best_time(copy: Path, args: list[str], repeats: int) -> tuple[float, int]:
    """Fastest of ``repeats`` dry-runs (s), and the number of planned jobs."""
    best, jobs = float("inf"), 0
    for _ in range(repeats):
        start = time.perf_counter()
        jobs = dry_run(copy, *args)
        best = min(best, time.perf_counter() - start)
    return best, jobs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, nargs="+", default=[1, 32], help="predict.shards")
    parser.add_argument("--repeats", type=int, default=2, help="timings per setting (best kept)")
    args = parser.parse_args()
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    test_sets = config["data"]["test_sets"]
    segment = config["segment"]
    tta = 2 if config["predict"].get("tta", True) else 1
    predictors = len(segment["baselines"]) * len(segment["arms"]) * tta
    baseline_targets = [f"results/score/classical/{t}/summary.json" for t in test_sets]

    with tempfile.TemporaryDirectory() as tmp:
        copy = copy_workflow(REPO, Path(tmp) / "repo")
        dry_run(copy, *baseline_targets)  # warm the file cache and Snakemake's source cache
        base_s, base_jobs = best_time(copy, baseline_targets, args.repeats)
        print(f"config.yaml: test sets {', '.join(test_sets)}; {predictors} predictors")
        print(
            f"baseline (classical-only targets): {base_s:6.2f} s  {base_jobs:5d} jobs  "
            f"{1000 * base_s / base_jobs:6.1f} ms/job"
        )
        results = {}
        for shards in args.shards:
            seconds, jobs = best_time(
                copy, ["--config", f"predict={{shards: {shards}}}"], args.repeats
            )
            results[shards] = jobs
            print(
                f"full DAG, predict.shards={shards:3d}: {seconds:6.2f} s  {jobs:5d} jobs  "
                f"{1000 * seconds / jobs:6.1f} ms/job  ratio to baseline {seconds / base_s:5.2f}x"
            )

    lowest = min(results)
    ok = True
    for shards, jobs in results.items():
        expected = results[lowest] + (shards - lowest) * predictors * len(test_sets)
        if jobs != expected:
            print(f"FAIL: predict.shards={shards} planned {jobs} jobs, expected {expected}")
            ok = False
    if ok:
        print(f"PASS: each extra shard adds {predictors * len(test_sets)} predict_shard jobs")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
