"""Shared fixtures and the slow/gpu/workflow markers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_BBBC038 = REPO.parent / "shared" / "bbbc038"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", help="run tests marked slow")
    parser.addoption("--gpu", action="store_true", help="run tests that need a CUDA device")


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # two workers share two cores: one torch thread each (two would spin-wait on each other)
        import torch

        torch.set_num_threads(1)


# Files whose tests take minutes (the learning checks, runs through SLURM and of the workflow),
# collected first: with the tests spread over two processes by file (`make test`), these start
# at once and the short ones fill in around them.
LONGEST_FIRST = ("test_learning.py", "test_slurm.py", "test_workflow.py")


def _file_rank(item: pytest.Item) -> int:
    name = item.path.name
    return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    items.sort(key=_file_rank)  # stable: the order within each file is kept
    for item in items:
        if "slow" in item.keywords and not config.getoption("--runslow"):
            item.add_marker(pytest.mark.skip(reason="slow: run with --runslow"))
        if "gpu" in item.keywords and not config.getoption("--gpu"):
            item.add_marker(pytest.mark.skip(reason="needs a GPU: run with --gpu"))


# Mask R-CNN settings small enough for a CPU test (about 0.3 s per iteration at 64 px), same code
# paths as the real settings.
TINY_SEGMENTER = {
    "backbone": "resnet18",
    "weights": "none",
    "iterations": 2,
    "checkpoint_every": 1,
    "log_every": 1,
    "prep": {"size": 64, "crop": 32},
    "model": {
        "rpn_pre_nms_top_n_train": 200,
        "rpn_pre_nms_top_n_test": 200,
        "rpn_post_nms_top_n_train": 100,
        "rpn_post_nms_top_n_test": 100,
        "box_batch_size_per_image": 32,
        "box_detections_per_img": 50,
        "fpn_channels": 32,
        "representation_size": 64,
    },
}


@pytest.fixture(scope="session")
def shared_bbbc038() -> Path:
    """The 531 real BBBC038 training images in ../shared/bbbc038, or skip."""
    if not (SHARED_BBBC038 / "stage1_train").is_dir():
        pytest.skip(f"real BBBC038 sample not found at {SHARED_BBBC038}")
    return SHARED_BBBC038


@pytest.fixture(scope="session")
def tiny_segmenter(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A Mask R-CNN (Deep Retina, ResNet-18, narrow heads) trained for 2 iterations by the engine
    on a 64 px synthetic set, every detection kept (``box_score_thresh = 0``) so that even this
    barely trained model finds objects. Keys: ``model`` (the model file), ``test`` (5 images in
    BBBC038 layout), ``solution`` (their ground truth)."""
    import torch

    from nucleistyle.data.synthetic import SyntheticConfig, generate
    from nucleistyle.segment.configs import get_config
    from nucleistyle.segment.engine import train_segmenter

    root = tmp_path_factory.mktemp("tiny_segmenter")
    generate(SyntheticConfig(n_train=10, n_test_per_modality=1, height=64, width=64), root / "data")
    model = {**TINY_SEGMENTER["model"], "box_score_thresh": 0.0}
    settings = {**TINY_SEGMENTER, "model": model}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_segmenter(
            [root / "data" / "stage1_train"],
            root / "model.pt",
            get_config("deep_retina", settings),
        )
    finally:
        torch.set_num_threads(threads)
    return {
        "model": root / "model.pt",
        "test": root / "data" / "stage1_test",
        "solution": root / "data" / "stage1_solution.csv",
    }


@pytest.fixture(scope="session")
def tiny_gan(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 3-domain style GAN (base width 4, 4 iterations, fp32 on the CPU) trained by
    ``train_gan`` on 12 synthetic 48 px images clustered with K = 3 (a few seconds).
    Keys: ``images`` (the training set, BBBC038 layout), ``assignments`` (cluster table),
    ``clusters`` (cluster model JSON), ``model`` (the GAN model file), ``root``."""
    import torch

    from nucleistyle.cluster import ClusterConfig, cluster_dataset
    from nucleistyle.data.synthetic import SyntheticConfig, generate
    from nucleistyle.gan.configs import GanConfig
    from nucleistyle.gan.engine import train_gan

    cfg = GanConfig(
        n_domains=3,
        crop=36,
        resize=40,
        base_channels=4,
        iterations=4,
        checkpoint_every=4,
        log_every=2,
        precision="fp32",
        device="cpu",
        workers=1,
    )
    root = tmp_path_factory.mktemp("tiny_gan")
    generate(SyntheticConfig(n_train=12, n_test_per_modality=1, height=48, width=48), root / "d")
    images = root / "d" / "stage1_train"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cluster_dataset(
            images, root / "assignments.csv", ClusterConfig(k=3, n_init=2),
            model_json=root / "cm.json",
        )  # fmt: skip
        train_gan(images, root / "assignments.csv", root / "model.pt", cfg)
    finally:
        torch.set_num_threads(threads)
    return {
        "images": images,
        "assignments": root / "assignments.csv",
        "clusters": root / "cm.json",
        "model": root / "model.pt",
        "root": root,
    }


def small_real_records(root: Path, n: int) -> list:
    """The first ``n`` images of a BBBC038-layout folder that are at most 256 x 320 px (the real
    sample's small images: fast to train and predict on)."""
    from PIL import Image

    from nucleistyle.data.bbbc038 import list_images

    small = []
    for record in list_images(root):
        with Image.open(record.image_path) as im:
            if im.width * im.height <= 256 * 320:
                small.append(record)
        if len(small) == n:
            break
    return small


def write_paired_tiffs(root: Path, samples, labels: bool = True) -> Path:
    """A folder in the StarDist/Cellpose layout made from ``(name, image, labels)`` samples:
    ``images/<name>.tif`` 16-bit with two channels (ImageJ CYX: the image's grey level as the
    nuclei channel, its inverse as a second one) and, with ``labels``, ``masks/<name>.tif``."""
    import numpy as np
    import tifffile

    (root / "images").mkdir(parents=True)
    if labels:
        (root / "masks").mkdir()
    for name, image, lab in samples:
        grey = image.astype(np.float64).mean(axis=2)
        data = np.stack([grey * 40 + 300, (255 - grey) * 20]).astype(np.uint16)
        tifffile.imwrite(
            root / "images" / f"{name}.tif", data, imagej=True, metadata={"axes": "CYX"}
        )
        if labels:
            tifffile.imwrite(root / "masks" / f"{name}.tif", lab.astype(np.uint16))
    return root


# ------------------------------------------------------------------------------------------------
# running the workflow

SNAKEMAKE = [sys.executable, "-m", "snakemake"]
# The demo's config files over config.yaml, as profiles/demo lists them.
DEMO_CONFIG = ("--configfile", "config.small.yaml", "config.demo.yaml")
# The demo, shrunk to seconds per stage: same rules and code paths, toy sizes.
TINY = [
    "data={synthetic: {n_train: 15, n_test_per_modality: 2}}",
    "gan={crop: 40, base_channels: 4, iterations: 4, checkpoint_every: 2, stats_images: 2}",
    "segment={common: {iterations: 3, checkpoint_every: 2, model: {fpn_channels: 16, "
    "representation_size: 32, rpn_pre_nms_top_n_test: 100, rpn_post_nms_top_n_test: 50}}, "
    "mirzaev: {prep: {size: 64, crop: 48}}, deep_retina: {prep: {size: 64}}}",
    "tta={transforms: [identity, hflip]}",
    "augment={copies: 2}",
]


def snakemake(*args: str, cwd: Path = REPO, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*SNAKEMAKE, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


TIMINGS = ["sec_per_it", "wall_s", "cpu_s"]


def read_history(path: Path) -> pd.DataFrame:
    """A training history (history.tsv) without its timing columns, which differ between runs."""
    return pd.read_csv(path, sep="\t").drop(columns=TIMINGS, errors="ignore")


def workflow_copy(tmp_path: Path) -> Path:
    """The workflow's files in a fresh folder, as in a clean clone (no results, no resources)."""
    from nucleistyle.workflow import copy_workflow

    return copy_workflow(REPO, tmp_path / "repo")
