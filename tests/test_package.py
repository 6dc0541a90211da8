"""The library stands alone: a built wheel holds the config schema and validates with it."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel of the library, built offline from a copy of the project (the checkout is left
    as it is: no build/ folder in it)."""
    root = tmp_path_factory.mktemp("project")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, root / name)
    shutil.copytree(
        REPO / "src", root / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
    )
    out = root / "dist"
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    built = subprocess.run(
        [*command, "--quiet", "--wheel-dir", str(out), str(root)], capture_output=True, text=True
    )
    assert built.returncode == 0, built.stderr[-2000:]
    (found,) = out.glob("nucleistyle-*.whl")
    return found


def test_the_wheel_ships_the_config_schema(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert "nucleistyle/schemas/config.schema.yaml" in names
    assert "nucleistyle/py.typed" in names
    assert not [name for name in names if name.startswith(("tests/", "workflow/"))]


def test_a_config_validates_through_the_installed_wheel(wheel: Path) -> None:
    # The wheel on sys.path as a zip (nothing of the checkout importable): the schema is read
    # through importlib.resources, wherever the package lies.
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(wheel)!r})
        import nucleistyle
        assert nucleistyle.__file__.startswith({str(wheel)!r}), nucleistyle.__file__
        from nucleistyle.schema import validate
        from nucleistyle.errors import NucleistyleError
        config = {{"seed": 3}}
        validate(config)
        assert config["seed"] == 3 and config["data"]["source"] == "synthetic", config
        try:
            validate({{"seed": -1}})
        except NucleistyleError as exc:
            print(exc)
    """)
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=wheel.parent
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "config key seed: -1 is less than the minimum of 0"
