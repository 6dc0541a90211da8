"""The workflow through a real single-node SLURM (`snakemake --profile profiles/slurm`).

The fixture starts SLURM with .ci/slurm-up.sh when it is not running and this machine allows it
(root, Debian packages reachable — as in CI); otherwise the tests skip and say why.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from tests.test_workflow import SNAKEMAKE, TINY, workflow_copy

REPO = Path(__file__).resolve().parents[1]
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


def run_slurm(copy: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    # SIGINT, not SIGTERM: the SLURM executor only stops waiting on SIGINT
    command = ["timeout", "-s", "INT", "-k", "30", str(timeout), *SNAKEMAKE]
    return subprocess.run(
        [*command, "--profile", "profiles/slurm", "--configfile", "config.demo.yaml", *args],
        cwd=copy,
        capture_output=True,
        text=True,
    )


def test_tiny_demo_runs_through_slurm_jobs(slurm, tmp_path):
    copy = workflow_copy(tmp_path)
    result = run_slurm(copy, "--config", *TINY)
    assert result.returncode == 0, result.stderr[-3000:]

    submitted = re.findall(r"submitted with SLURM jobid (\d+)", result.stdout + result.stderr)
    logs = {p.stem for p in (copy / ".snakemake" / "slurm_logs").rglob("*.log")}
    assert len(submitted) >= 8  # every job but the local target rule
    assert set(submitted) <= logs  # each job's SLURM log, named by its job id
    scores = pd.read_csv(copy / "results/score/scores.csv")
    assert scores["score"].between(0, 1).all()
    states = subprocess.run(
        ["squeue", "--states=all", "-h", "-o", "%i %T"], capture_output=True, text=True
    )
    done = {line.split()[0] for line in states.stdout.splitlines() if line.endswith("COMPLETED")}
    assert set(submitted) <= done
