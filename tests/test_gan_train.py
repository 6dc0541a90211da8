"""GAN training on files: resume after SIGKILL, checkpoints, divergence, bad input."""

from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from nucleistyle.cluster import ClusterConfig, cluster_dataset
from nucleistyle.data.synthetic import SyntheticConfig, generate
from nucleistyle.errors import NucleistyleError
from nucleistyle.gan import losses
from nucleistyle.gan.configs import GanConfig
from nucleistyle.gan.engine import train_gan
from nucleistyle.report.gan import plot_losses
from nucleistyle.torchutils import TrainingDiverged
from tests.conftest import read_history

TINY = {
    "n_domains": 3,
    "crop": 36,
    "resize": 40,
    "base_channels": 4,
    "iterations": 6,
    "checkpoint_every": 2,
    "log_every": 2,
    "precision": "fp32",
    "device": "cpu",
    "workers": 1,
    "stats_images": 4,
}

RUN = """
import json, sys, torch
torch.set_num_threads(1)
from nucleistyle.gan.configs import GanConfig
from nucleistyle.gan.engine import train_gan
images, assignments, model, checkpoint, history, cfg = sys.argv[1:]
train_gan(images, assignments, model, GanConfig(**json.loads(cfg)), checkpoint, history)
"""


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("gan_data")
    generate(SyntheticConfig(n_train=12, n_test_per_modality=1, height=48, width=48), root / "d")
    images = root / "d" / "stage1_train"
    cluster_dataset(images, root / "assignments.csv", ClusterConfig(k=3, n_init=2))
    return images, root / "assignments.csv"


def _run(data: tuple[Path, Path], out: Path, cfg: dict) -> subprocess.Popen:
    images, assignments = data
    args = [out / "model.pt", out / "checkpoint.pt", out / "history.tsv"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            RUN,
            str(images),
            str(assignments),
            *map(str, args),
            json.dumps(cfg),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _tensors_equal(a: dict, b: dict) -> bool:
    if a.keys() != b.keys():
        return False
    for key in a:
        x, y = a[key], b[key]
        if isinstance(x, dict):
            if not _tensors_equal(x, y):
                return False
        elif isinstance(x, torch.Tensor):
            if not torch.equal(x, y):
                return False
    return True


@pytest.mark.kill
def test_run_killed_with_sigkill_resumes_to_identical_weights(
    data: tuple[Path, Path], tmp_path: Path
) -> None:
    cfg = {**TINY, "iterations": 24, "checkpoint_every": 4}
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    proc = _run(data, straight, cfg)
    assert proc.wait(timeout=300) == 0, proc.stderr.read().decode()

    proc = _run(data, resumed, cfg)
    checkpoint = resumed / "checkpoint.pt"
    deadline = time.monotonic() + 300
    while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    assert not (resumed / "model.pt").exists()
    killed_at = torch.load(checkpoint, weights_only=True)["iteration"]
    assert 4 <= killed_at < 24

    proc = _run(data, resumed, cfg)
    assert proc.wait(timeout=300) == 0, proc.stderr.read().decode()
    a = torch.load(straight / "checkpoint.pt", weights_only=True)
    b = torch.load(checkpoint, weights_only=True)
    assert a["iteration"] == b["iteration"] == 24
    assert _tensors_equal(a["nets"], b["nets"])
    assert _tensors_equal(a["optimizers"], b["optimizers"])
    model_a = torch.load(straight / "model.pt", weights_only=True)
    model_b = torch.load(resumed / "model.pt", weights_only=True)
    assert _tensors_equal(model_a["nets"], model_b["nets"])
    assert torch.equal(model_a["attribute_mean"], model_b["attribute_mean"])
    pd.testing.assert_frame_equal(
        read_history(straight / "history.tsv"), read_history(resumed / "history.tsv")
    )


def test_training_writes_a_weights_only_model_history_and_loss_figure(
    data: tuple[Path, Path], tmp_path: Path
) -> None:
    images, assignments = data
    cfg = GanConfig(**TINY)
    out = train_gan(
        images, assignments, tmp_path / "m.pt", cfg, tmp_path / "ck.pt", tmp_path / "h.tsv"
    )
    model = torch.load(out, weights_only=True)
    assert set(model["nets"]) == {"enc_c", "enc_a", "gen"}
    assert model["iteration"] == 6
    assert model["attribute_mean"].shape == model["attribute_std"].shape == (3, 8)
    assert torch.all(model["attribute_std"] > 0)
    assert len(model["domain_names"]) == 3 and model["cluster_ids"] == [0, 1, 2]
    history = pd.read_csv(tmp_path / "h.tsv", sep="\t")
    assert history["iteration"].tolist() == [2, 4, 6]
    assert {"g_total", "cross_cycle", "d1_adv", "d_content"} <= set(history.columns)
    plot_losses(tmp_path / "h.tsv", tmp_path / "losses.png")
    assert (tmp_path / "losses.png").stat().st_size > 1000
    monitored = history.assign(
        eval_style_hit=0.4, eval_fg_iou=0.3, eval_edge_corr=0.1, eval_fg_iou_original=0.8
    )
    monitored.to_csv(tmp_path / "m.tsv", sep="\t", index=False)
    reference = {"fg_iou": 0.7, "fg_iou_unrelated": 0.2, "edge_corr": 0.4}
    plot_losses(tmp_path / "m.tsv", tmp_path / "curve.png", reference)
    assert (tmp_path / "curve.png").stat().st_size > (tmp_path / "losses.png").stat().st_size

    # a larger budget resumes from the checkpoint and trains only the new iterations
    grown = GanConfig(**{**TINY, "iterations": 8})
    train_gan(images, assignments, tmp_path / "m.pt", grown, tmp_path / "ck.pt", tmp_path / "h.tsv")
    assert torch.load(tmp_path / "m.pt", weights_only=True)["iteration"] == 8
    assert pd.read_csv(tmp_path / "h.tsv", sep="\t")["iteration"].tolist() == [2, 4, 6, 8]


def test_canonical_polarity_records_the_domains_it_inverted(
    data: tuple[Path, Path], tmp_path: Path
) -> None:
    """Trained with gan.polarity canonical, the model file names the domains the GAN saw
    inverted: those whose nuclei are bright in their training images."""
    from nucleistyle.gan.data import load_domain_set
    from nucleistyle.gan.quality import domain_looks

    images, assignments = data
    cfg = GanConfig(**{**TINY, "iterations": 2, "polarity": "canonical"})
    model = torch.load(train_gan(images, assignments, tmp_path / "m.pt", cfg), weights_only=True)
    domains = load_domain_set(images, assignments, 3, 40, 36, 1, with_labels=True)
    labels = domains.labels
    assert labels is not None
    looks = domain_looks(
        ((domains.images[i], labels[i], d) for d, m in enumerate(domains.members) for i in m), 3
    )
    bright = [d for d, look in enumerate(looks) if look is not None and look.polarity > 0]
    assert model["inverted_domains"] == bright and 0 < len(bright) < 3
    as_is = GanConfig(**{**TINY, "iterations": 2})
    plain = torch.load(train_gan(images, assignments, tmp_path / "p.pt", as_is), weights_only=True)
    assert plain["inverted_domains"] == []


def test_a_checkpoint_beyond_the_budget_writes_its_model_with_a_warning(
    data: tuple[Path, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    images, assignments = data
    checkpoint = tmp_path / "ck.pt"
    train_gan(images, assignments, tmp_path / "a.pt", GanConfig(**TINY), checkpoint)
    shorter = GanConfig(**{**TINY, "iterations": 4})
    with caplog.at_level("WARNING"):
        train_gan(images, assignments, tmp_path / "b.pt", shorter, checkpoint, tmp_path / "h.tsv")
    assert "beyond the budget of 4 iterations (gan.iterations): not training" in caplog.text
    a = torch.load(tmp_path / "a.pt", weights_only=True)
    b = torch.load(tmp_path / "b.pt", weights_only=True)
    assert b["iteration"] == 6 and _tensors_equal(a["nets"], b["nets"])
    assert torch.load(checkpoint, weights_only=True)["iteration"] == 6
    assert pd.read_csv(tmp_path / "h.tsv", sep="\t")["iteration"].tolist() == [2, 4, 6]


def test_monitoring_a_run_does_not_change_its_weights(
    data: tuple[Path, Path], tmp_path: Path
) -> None:
    """The monitor builds networks and draws noise (global generators); the weights must be
    those of an unmonitored run, whatever ``monitor_every`` is."""
    images, assignments = data

    def monitor(state: dict, domains: object) -> dict[str, float]:
        torch.nn.Linear(8, 8)  # as the monitor's Stylizer: initialised from the global generator
        return {"eval_noise": float(torch.randn(1)) + float(np.random.rand())}  # noqa: NPY002

    plain = train_gan(images, assignments, tmp_path / "a.pt", GanConfig(**TINY))
    watched = train_gan(
        images,
        assignments,
        tmp_path / "b.pt",
        GanConfig(**{**TINY, "monitor_every": 2}),
        history_tsv=tmp_path / "b.tsv",
        monitor=monitor,
    )
    assert pd.read_csv(tmp_path / "b.tsv", sep="\t")["eval_noise"].notna().sum() == 3
    a, b = torch.load(plain, weights_only=True), torch.load(watched, weights_only=True)
    assert _tensors_equal(a["nets"], b["nets"])


def test_checkpoint_of_another_configuration_is_rejected_naming_the_file(
    data: tuple[Path, Path], tmp_path: Path
) -> None:
    images, assignments = data
    checkpoint = tmp_path / "ck.pt"
    train_gan(
        images, assignments, tmp_path / "m.pt", GanConfig(**{**TINY, "iterations": 2}), checkpoint
    )
    other = GanConfig(**{**TINY, "lr": 2e-4})
    with pytest.raises(NucleistyleError, match=rf"{checkpoint}.*lr"):
        train_gan(images, assignments, tmp_path / "m2.pt", other, checkpoint)


def test_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(
    data: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    images, assignments = data
    real_l2, calls = losses.content_l2, {"n": 0}

    def l2_then_nan(content: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1  # once per iteration: NaN from the 5th iteration on
        return real_l2(content) * (float("nan") if calls["n"] > 4 else 1.0)

    monkeypatch.setattr(losses, "content_l2", l2_then_nan)
    checkpoint = tmp_path / "ck.pt"
    with pytest.raises(TrainingDiverged, match=rf"iteration 5.*{checkpoint} is kept"):
        train_gan(
            images,
            assignments,
            tmp_path / "m.pt",
            GanConfig(**TINY),
            checkpoint,
            tmp_path / "h.tsv",
        )
    state = torch.load(checkpoint, weights_only=True)
    assert state["iteration"] == 4
    assert all(torch.isfinite(v).all() for v in state["nets"].values() if v.is_floating_point())
    assert not (tmp_path / "m.pt").exists()
    assert pd.read_csv(tmp_path / "h.tsv", sep="\t")["iteration"].tolist() == [2, 4]


def test_empty_training_folder_is_rejected(data: tuple[Path, Path], tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(NucleistyleError, match=r"no images found in .*empty"):
        train_gan(tmp_path / "empty", data[1], tmp_path / "m.pt", GanConfig(**TINY))


def test_image_missing_from_assignments_is_rejected_naming_the_table(
    data: tuple[Path, Path], tmp_path: Path
) -> None:
    images, assignments = data
    table = pd.read_csv(assignments)
    table.iloc[1:].to_csv(tmp_path / "partial.csv", index=False)
    with pytest.raises(
        NucleistyleError, match=rf"partial.csv: no row for ImageId {table.ImageId[0]}"
    ):
        train_gan(images, tmp_path / "partial.csv", tmp_path / "m.pt", GanConfig(**TINY))


def test_domain_without_images_is_rejected(data: tuple[Path, Path], tmp_path: Path) -> None:
    images, assignments = data
    with pytest.raises(NucleistyleError, match="domain 3 has no image"):
        train_gan(images, assignments, tmp_path / "m.pt", GanConfig(**{**TINY, "n_domains": 4}))


FAULTS = """
import resource, sys, torch
from nucleistyle.torchutils import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
def step():  # a training step's worth of a large activation: allocated, used, freed
    torch.empty(64 * 2**20, dtype=torch.uint8).fill_(1)
for _ in range(5):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="a glibc allocator setting")
def test_keep_freed_memory_stops_page_faulting_the_same_memory_every_step() -> None:
    faults = {
        mode: int(
            subprocess.run(
                [sys.executable, "-c", FAULTS, mode], check=True, capture_output=True, text=True
            ).stdout
        )
        for mode in ("default", "keep")
    }
    print("minor page faults over 20 steps of 64 MiB:", faults)
    assert faults["default"] > 20 * 8000  # glibc hands the 64 MiB back and faults it in again
    assert faults["keep"] < faults["default"] / 5
