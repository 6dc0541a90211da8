"""The workflow through a real single-node SLURM (`snakemake --profile profiles/slurm`).

The fixture starts SLURM with .ci/slurm-up.sh when it is not running and this machine allows it
(root, Debian packages reachable — as in CI); otherwise the tests skip and say why. The node has no
GPU: the demo config's resources.gpu 0 is what lets the GPU rules run there.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch

from tests.conftest import DEMO_CONFIG, REPO, SNAKEMAKE, TINY, read_history, workflow_copy

pytestmark = pytest.mark.workflow


def _slurm_idle() -> bool:
    if shutil.which("sinfo") is None:
        return False
    result = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
    return result.returncode == 0 and any(
        s in result.stdout for s in ("idle", "mixed", "completing")
    )


@pytest.fixture(scope="session")
def slurm() -> None:
    if _slurm_idle():
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip("no SLURM running, and starting one needs root and apt-get")
    result = subprocess.run(
        ["bash", str(REPO / ".ci" / "slurm-up.sh")], capture_output=True, text=True, timeout=300
    )
    if result.returncode != 0 or not _slurm_idle():
        pytest.skip(
            f"could not start SLURM: {(result.stderr or result.stdout).strip().splitlines()[-1:]}"
        )


# The profile's first status query comes 10 s after a submission, and each query that finds
# nothing finished waits 10 s longer than the last: right for real jobs, but most of a tiny job's
# time. The tests query after 2 s (the same code path, sooner).
FAST_STATUS = ("--slurm-init-seconds-before-status-checks", "2")


def slurm_command(timeout: int = 900) -> list[str]:
    # SIGINT, not SIGTERM: the SLURM executor only stops waiting on SIGINT
    command = ["timeout", "-s", "INT", "-k", "30", str(timeout), *SNAKEMAKE]
    return [*command, "--profile", "profiles/slurm", *FAST_STATUS]


def run_slurm(copy: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*slurm_command(timeout), *DEMO_CONFIG, *args], cwd=copy, capture_output=True, text=True
    )


# One arm's chain, data to score: every kind of job (the data rules, the GAN, the augmentation,
# a segmenter, sharded TTA prediction, scoring) without the whole tiny DAG's 30-odd jobs.
STYLE_ARM_SCORE = "results/score/deep_retina-style-tta/stage1_test/summary.json"


def test_one_arm_of_the_tiny_demo_runs_through_slurm_jobs(slurm, tmp_path):
    copy = workflow_copy(tmp_path)
    result = run_slurm(copy, "--config", *TINY, "--", STYLE_ARM_SCORE)
    assert result.returncode == 0, result.stderr[-3000:]

    output = result.stdout + result.stderr
    submitted = re.findall(r"submitted with SLURM jobid (\d+)", output)
    planned = re.search(r"^total\s+(\d+)$", output, re.M)
    assert planned and len(submitted) == int(planned[1]) >= 9  # every job: none is local
    slurm_logs = list((copy / ".snakemake" / "slurm_logs").rglob("*.log"))
    logs = {p.stem for p in slurm_logs}
    rules = {p.relative_to(copy / ".snakemake" / "slurm_logs").parts[0] for p in slurm_logs}
    assert {"rule_train_gan", "rule_augment_dataset", "rule_train_segmenter"} <= rules
    assert set(submitted) <= logs  # each job's SLURM log, named by its job id
    summary = json.loads((copy / STYLE_ARM_SCORE).read_text())
    assert 0 <= summary["score"] <= 1
    states = subprocess.run(
        ["squeue", "--states=all", "-h", "-o", "%i %T"], capture_output=True, text=True
    )
    done = {line.split()[0] for line in states.stdout.splitlines() if line.endswith("COMPLETED")}
    assert set(submitted) <= done


# A GAN long enough to be cancelled between checkpoints (fp32: bit-reproducible on the CPU).
GAN_ITERATIONS = 60
LONG_GAN = (
    f"gan={{crop: 40, base_channels: 4, iterations: {GAN_ITERATIONS}, checkpoint_every: 10, "
    "stats_images: 2, precision: fp32}"
)


def _tensors(obj: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor in a nested dict/list (a loaded model file), keyed by its path."""
    if isinstance(obj, torch.Tensor):
        return {prefix: obj}
    items = (
        obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else []
    )
    found: dict[str, torch.Tensor] = {}
    for key, value in items:
        found.update(_tensors(value, f"{prefix}/{key}"))
    return found


def _running_job(copy: Path, rule: str) -> str | None:
    """SLURM id of this copy's running job of ``rule`` (other runs may share the cluster)."""
    result = subprocess.run(
        ["squeue", "-h", "-t", "RUNNING", "-o", "%i|%k|%Z"], capture_output=True, text=True
    )
    for line in result.stdout.splitlines():
        job_id, comment, workdir = line.split("|", 2)
        if comment == f"rule_{rule}" and Path(workdir) == copy:
            return job_id
    return None


def test_a_cancelled_training_job_is_retried_and_resumes_to_the_same_weights(slurm, tmp_path):
    config = [*DEMO_CONFIG, "--config", *TINY, LONG_GAN]
    target = "results/gan/model.pt"

    # the reference: the same configuration, uninterrupted (locally, with the job's 2 threads),
    # run while the SLURM run below mostly waits on the queue
    reference = workflow_copy(tmp_path / "reference")
    reference_log = tmp_path / "reference.out"
    with reference_log.open("w") as out:
        plain = subprocess.Popen(
            [*SNAKEMAKE, target, "--cores", "2", *config],
            cwd=reference,
            stdout=out,
            stderr=subprocess.STDOUT,
        )

    copy = workflow_copy(tmp_path / "slurm")
    output = tmp_path / "snakemake.out"
    with output.open("w") as out:
        run = subprocess.Popen(
            [*slurm_command(), target, "--verbose", *config],
            cwd=copy,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            # cancel the training job once its first checkpoint is on disk
            checkpoints = copy / "results" / "gan" / "checkpoints"
            deadline = time.monotonic() + 600
            while not list(checkpoints.glob("*.pt")):
                assert run.poll() is None, output.read_text()[-3000:]
                assert time.monotonic() < deadline, "no GAN checkpoint within 600 s"
                time.sleep(0.5)
            cancelled = _running_job(copy, "train_gan")
            assert cancelled is not None, "the GAN checkpoint exists but its job is not running"
            subprocess.run(["scancel", cancelled], check=True)
            returncode = run.wait(timeout=900)
        finally:
            if run.poll() is None:  # stop Snakemake (it cancels its SLURM jobs) on a failure
                run.send_signal(signal.SIGINT)
                run.wait(timeout=120)
                plain.kill()
    log = output.read_text()
    assert returncode == 0, log[-3000:]
    assert plain.wait(timeout=900) == 0, reference_log.read_text()[-3000:]

    # SLURM saw the job cancelled; Snakemake resubmitted it (attempt 2: twice the memory) ...
    state = subprocess.run(
        ["squeue", "-h", "-t", "all", "-j", cancelled, "-o", "%T"], capture_output=True, text=True
    )
    assert state.stdout.strip() == "CANCELLED"
    gan_jobs = {p.stem for p in (copy / ".snakemake/slurm_logs/rule_train_gan").glob("*.log")}
    assert len(gan_jobs) == 2 and cancelled in gan_jobs
    calls = re.findall(r"sbatch call: (.*--comment rule_train_gan .*)", log)
    assert [re.search(r"--mem (\d+)", call)[1] for call in calls] == ["4000", "8000"]
    assert not [call for call in calls if "--gpus" in call or "--gres" in call]  # resources.gpu 0
    # ... which resumed from the checkpoint instead of starting again ...
    resumed = re.search(
        r"resumed from \S+ at iteration (\d+)", (copy / "logs/train_gan.log").read_text()
    )
    assert resumed is not None
    assert 0 < int(resumed[1]) < GAN_ITERATIONS
    # ... and ended with bit-identical weights and loss history to the uninterrupted run
    ours = torch.load(copy / target, weights_only=True)
    theirs = torch.load(reference / target, weights_only=True)
    assert ours["iteration"] == theirs["iteration"] == GAN_ITERATIONS
    ours_t, theirs_t = _tensors(ours), _tensors(theirs)
    assert ours_t.keys() == theirs_t.keys() and len(ours_t) > 10
    assert [k for k in ours_t if not torch.equal(ours_t[k], theirs_t[k])] == []
    history = "results/gan/history.tsv"
    pd.testing.assert_frame_equal(read_history(copy / history), read_history(reference / history))
