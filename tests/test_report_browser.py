"""The Snakemake HTML report in a real browser.

A small report of this workflow (the synthetic data summary, its example figure and the provenance
page; a few seconds of work) is built with ``snakemake --report`` and opened in Debian's headless
Chromium: the screenshot must not be blank and the report's JavaScript must have built the menu of
result categories. Skipped, with the reason, where Chromium is not installed
(``apt-get install chromium``).
"""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nucleistyle.workflow import copy_workflow
from tests.conftest import REPO, TINY

TARGETS = (
    "results/report/dataset_summary.csv",
    "results/report/examples.png",
    "results/report/provenance.html",
)
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
WINDOW = (1280, 2000)
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="headless Chromium not installed (Debian: apt-get install chromium)"
)

pytestmark = pytest.mark.workflow


def _snakemake(cwd: Path, *args: str) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "snakemake", *TARGETS, "--profile", "profiles/demo",
         "--config", *TINY, *args],
        cwd=cwd, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]


@pytest.fixture(scope="module")
def small_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A self-contained ``snakemake --report`` of a few cheap outputs, in a copy of the workflow."""
    copy = copy_workflow(REPO, tmp_path_factory.mktemp("report") / "repo")
    _snakemake(copy)
    _snakemake(copy, "--report", "results/report.html")
    return copy / "results" / "report.html"


def _chromium(page: Path, profile: Path, *args: str) -> subprocess.CompletedProcess:
    """Run headless Chromium on ``page``, offline and without any first-run or sync traffic."""
    assert CHROMIUM is not None
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            f"--window-size={WINDOW[0]},{WINDOW[1]}",
            "--virtual-time-budget=5000",  # let the report's scripts and transitions finish
            *args,
            page.resolve().as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )


@needs_chromium
def test_report_renders_in_chromium_to_a_screenshot_that_is_not_blank(small_report, tmp_path):
    png = tmp_path / "report.png"
    run = _chromium(small_report, tmp_path / "profile", f"--screenshot={png}")
    assert run.returncode == 0 and png.is_file(), run.stderr[-3000:]
    grey = np.asarray(Image.open(png).convert("L"), dtype=float)
    assert grey.shape == (WINDOW[1], WINDOW[0])
    # a blank (or single-colour) page has no variance; the rendered menu and text have plenty
    assert grey.std() > 10
    assert len(np.unique(grey)) > 50


@needs_chromium
def test_report_javascript_builds_the_menu_of_result_categories(small_report, tmp_path):
    run = _chromium(small_report, tmp_path / "profile", "--dump-dom")
    assert run.returncode == 0, run.stderr[-3000:]
    dom = run.stdout
    assert re.search(r'<div id="loading-screen" style="display: none;?">', dom), "still loading"
    start = dom.index('<div id="app">')
    app = dom[start : dom.index("<script", start)]  # what React rendered, not the data
    for category in ("1. Data", "8. Provenance"):
        assert category in app, category
    assert "nucleistyle reproduces" in app  # the workflow description (workflow.rst)


def test_report_embeds_the_provenance_page_as_html(small_report):
    report = small_report.read_text()
    found = re.search(
        r"data:text/html;charset=utf8;filename=provenance\.html;base64,([A-Za-z0-9+/=]+)", report
    )
    assert found, "provenance.html is not embedded as text/html"
    page = base64.b64decode(found[1]).decode()
    assert "Provenance of this run" in page
    assert "data.synthetic.seed" in page and "n_train: 15" in page
