"""Benchmark HSV feature extraction (modality discovery) on the real BBBC038 training images.

Usage: ``python bench/bench_cluster.py [--data DIR] [--repeats N]``

Measures, in one run on the same images (file cache warmed first), the best of ``--repeats``
timings of :func:`nucleistyle.cluster.compute_features` with workers=1 (serial baseline) and
workers=2, checks both give identical features, and prints images/s, the parallel/serial ratio,
the time extrapolated to the 664 images of the full (community-fixed) stage1_train and
PASS/FAIL against the 30 s target for workers=2 (exit status 1 on FAIL). Also times the K-means
fit (k=6, n_init=20). Exits 0 with a message when the real data are absent.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd

from nucleistyle.cluster import ClusterConfig, compute_features, fit_clusters
from nucleistyle.data.bbbc038 import list_images

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "bbbc038"
FULL_SET = 664
TARGET_S = 30.0


def best_time(images: Path, workers: int, repeats: int) -> tuple[float, pd.DataFrame]:
    """Fastest of ``repeats`` runs of compute_features, and its table."""
    best, table = float("inf"), pd.DataFrame()
    for _ in range(repeats):
        start = time.perf_counter()
        table = compute_features(images, workers=workers)
        best = min(best, time.perf_counter() - start)
    return best, table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA, help="folder holding stage1_train/")
    parser.add_argument("--repeats", type=int, default=2, help="timings per setting (best kept)")
    args = parser.parse_args()
    images = args.data / "stage1_train"
    if not images.is_dir():
        print(f"SKIP: real BBBC038 images not found at {images}")
        return 0
    records = list_images(images)
    for record in records:  # warm the file cache so that the first timing is not penalised
        record.image_path.read_bytes()
    n = len(records)
    serial, table1 = best_time(images, 1, args.repeats)
    parallel, table2 = best_time(images, 2, args.repeats)
    pd.testing.assert_frame_equal(table1, table2)
    start = time.perf_counter()
    fit_clusters(table2, ClusterConfig())
    fit = time.perf_counter() - start
    full = parallel * FULL_SET / n
    print(f"images: {n} ({images})")
    print(f"workers=1: {serial:6.2f} s  {n / serial:7.1f} images/s")
    print(f"workers=2: {parallel:6.2f} s  {n / parallel:7.1f} images/s")
    print(f"speed-up workers=2 / workers=1: {serial / parallel:.2f}x")
    print(f"K-means fit (k=6, n_init=20): {fit:.2f} s")
    verdict = "PASS" if full < TARGET_S else "FAIL"
    print(
        f"extrapolated to {FULL_SET} images (workers=2): {full:.1f} s -> {verdict} "
        f"(target < {TARGET_S:.0f} s)"
    )
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
