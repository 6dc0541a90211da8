"""Shared fixtures and the slow/gpu/workflow markers."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_BBBC038 = REPO.parent / "shared" / "bbbc038"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", help="run tests marked slow")
    parser.addoption("--gpu", action="store_true", help="run tests that need a CUDA device")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "slow" in item.keywords and not config.getoption("--runslow"):
            item.add_marker(pytest.mark.skip(reason="slow: run with --runslow"))
        if "gpu" in item.keywords and not config.getoption("--gpu"):
            item.add_marker(pytest.mark.skip(reason="needs a GPU: run with --gpu"))


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def shared_bbbc038() -> Path:
    """The 531 real BBBC038 training images in ../shared/bbbc038, or skip."""
    if not (SHARED_BBBC038 / "stage1_train").is_dir():
        pytest.skip(f"real BBBC038 sample not found at {SHARED_BBBC038}")
    return SHARED_BBBC038
