"""Provenance of a run, as one self-contained HTML page for the Snakemake report.

It records what is needed to tell how a report's numbers were made: the effective configuration
(after schema defaults and ``--config`` overrides), every seed in it, the workflow's git commit and
whether the checkout had uncommitted changes, the versions of the Python packages the pipeline
uses, the pinned conda environments, the hardware and the date.

Everything is collected by the job that writes the page, so package versions and hardware are
those of that job's environment and machine (with ``--sdm conda`` each rule family has its own
environment, listed under "Conda environments"; on a cluster the node may differ from the GPU
nodes that trained the models). Nothing here fails for want of information: what cannot be found
is recorded as ``unknown`` (git), ``not installed`` (a package) or ``none detected`` (GPUs).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import html
import importlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from nucleistyle.outputs import atomic_path
from nucleistyle.paths import PathLike

__all__ = [
    "PACKAGES",
    "Provenance",
    "collect_provenance",
    "find_seeds",
    "git_state",
    "hardware",
    "package_versions",
    "render_provenance",
    "write_provenance",
]

log = logging.getLogger(__name__)
UNKNOWN = "unknown"
PACKAGES = (
    "snakemake",
    "snakemake-executor-plugin-slurm",
    "torch",
    "torchvision",
    "numpy",
    "scipy",
    "scikit-image",
    "scikit-learn",
    "pandas",
    "matplotlib",
    "pillow",
    "imageio",
    "pycocotools",
    "pyyaml",
    "jsonschema",
    "threadpoolctl",
    "tqdm",
)
"""Distributions whose versions are recorded (PyPI names)."""
GIT_TIMEOUT_S = 10


@dataclass(frozen=True)
class Provenance:
    """What :func:`collect_provenance` found.

    Attributes:
        date: When it was recorded (ISO 8601, UTC, seconds).
        config: The effective configuration (plain YAML-able types).
        seeds: ``{dotted config key: value}`` of every key named ``seed`` or ``*_seed``.
        git: ``commit``, ``dirty`` and ``basedir`` of the workflow (values may be ``unknown``).
        software: ``python``, ``platform``, ``executable`` and ``environment`` (its prefix).
        packages: ``{distribution: version}`` (``not installed`` when absent).
        hardware: ``cpu``, ``cores``, ``memory`` and ``gpus`` (human-readable strings).
        environments: ``{file name: text}`` of the workflow's ``envs/*.yaml``.
    """

    date: str
    config: dict[str, Any]
    seeds: dict[str, Any]
    git: dict[str, str]
    software: dict[str, str]
    packages: dict[str, str]
    hardware: dict[str, str]
    environments: dict[str, str]


def _plain(config: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of ``config`` made of JSON types (paths and other objects become strings)."""
    return json.loads(json.dumps(dict(config), default=str))


def find_seeds(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Every seed in a (nested) config: keys named ``seed`` or ending in ``_seed``.

    Args:
        config: The configuration mapping.
        prefix: Dotted path of ``config`` inside the whole configuration (for recursion).

    Returns:
        ``{dotted key: value}`` in config order.

    Example:
        >>> find_seeds({"seed": 0, "data": {"synthetic": {"seed": 3}}, "gan": {"lr": 1}})
        {'seed': 0, 'data.synthetic.seed': 3}
    """
    seeds: dict[str, Any] = {}
    for key, value in config.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            seeds.update(find_seeds(value, f"{path}."))
        elif str(key) == "seed" or str(key).endswith("_seed"):
            seeds[path] = value
    return seeds


def _git(basedir: Path, *args: str) -> str | None:
    """Output of ``git -C basedir <args>``, or None when git is missing or fails."""
    git = shutil.which("git")
    if git is None:
        return None
    try:
        done = subprocess.run(
            [git, "-C", str(basedir), *args],
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("git %s in %s failed: %s", " ".join(args), basedir, exc)
        return None
    if done.returncode != 0:
        log.info("git %s in %s: %s", " ".join(args), basedir, done.stderr.strip())
        return None
    return done.stdout.strip()


def git_state(basedir: PathLike) -> dict[str, str]:
    """The git commit of the workflow and whether tracked files have uncommitted changes.

    Args:
        basedir: The workflow's base directory (``workflow.basedir``).

    Returns:
        ``{"basedir", "commit", "dirty"}``: ``commit`` the full hash, ``dirty`` ``"no"`` or
        ``"yes (<n> files changed)"``; both ``"unknown"`` when ``basedir`` is not in a git
        repository or git is unavailable. Untracked files are not counted.
    """
    basedir = Path(basedir).resolve()
    state = {"basedir": str(basedir), "commit": UNKNOWN, "dirty": UNKNOWN}
    commit = _git(basedir, "rev-parse", "--verify", "HEAD")
    if commit is None:
        return state
    state["commit"] = commit
    status = _git(basedir, "status", "--porcelain", "--untracked-files=no")
    if status is not None:
        changed = len(status.splitlines())
        state["dirty"] = f"yes ({changed} files changed)" if changed else "no"
    return state


def package_versions(names: Sequence[str] = PACKAGES) -> dict[str, str]:
    """Installed version of each distribution (``not installed`` when absent); imports nothing.

    Example:
        >>> package_versions(["no-such-distribution-here"])
        {'no-such-distribution-here': 'not installed'}
    """
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or UNKNOWN


def _memory() -> str:
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return UNKNOWN
    return f"{total / 2**30:.1f} GiB"


def _gpus() -> str:
    """CUDA devices through PyTorch when it is installed, else through ``nvidia-smi``."""
    if importlib.util.find_spec("torch") is not None:
        # imported by name: torch is optional here (the report environment does not ship it)
        torch = importlib.import_module("torch")
        if not torch.cuda.is_available():
            return f"none detected (torch {torch.__version__}, CUDA unavailable)"
        devices = []
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            devices.append(f"cuda:{i} {props.name}, {props.total_memory / 2**30:.1f} GiB")
        return f"{'; '.join(devices)} (CUDA {torch.version.cuda})"
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return "none detected (no torch, no nvidia-smi)"
    try:
        done = subprocess.run(
            [smi, "--query-gpu=name,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return UNKNOWN
    names = [line.strip() for line in done.stdout.splitlines() if line.strip()]
    return "; ".join(names) if done.returncode == 0 and names else "none detected"


def hardware() -> dict[str, str]:
    """The machine running this process: CPU model, cores, memory, GPUs.

    Returns:
        ``{"cpu", "cores", "memory", "gpus", "cuda_visible_devices"}`` as readable strings;
        ``cores`` gives the logical CPUs and how many this process may use.
    """
    logical = os.cpu_count()
    try:
        usable: int | None = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = None
    cores = f"{logical if logical else UNKNOWN} logical"
    if usable is not None:
        cores += f", {usable} usable by this job"
    return {
        "cpu": _cpu_model(),
        "cores": cores,
        "memory": _memory(),
        "gpus": _gpus(),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", "(not set)"),
    }


def _environments(basedir: Path) -> dict[str, str]:
    envs = basedir / "envs"
    if not envs.is_dir():
        return {}
    return {path.name: path.read_text() for path in sorted(envs.glob("*.yaml"))}


def collect_provenance(
    config: Mapping[str, Any], basedir: PathLike, now: dt.datetime | None = None
) -> Provenance:
    """Gather the provenance of a run (see the module docstring).

    Args:
        config: The effective configuration (Snakemake's ``config``).
        basedir: The workflow's base directory (git repository, ``envs/``).
        now: The recording time (default: the current time); naive values are taken as UTC.

    Returns:
        :class:`Provenance`.

    Raises:
        TypeError: ``config`` is not a mapping (missing information never raises).
    """
    if not isinstance(config, Mapping):
        raise TypeError(f"config must be a mapping, got {type(config).__name__}")
    now = now or dt.datetime.now(dt.UTC)
    if now.tzinfo is None:
        now = now.replace(tzinfo=dt.UTC)
    basedir = Path(basedir)
    plain = _plain(config)
    return Provenance(
        date=now.astimezone(dt.UTC).isoformat(timespec="seconds"),
        config=plain,
        seeds=find_seeds(plain),
        git=git_state(basedir),
        software={
            "python": f"{platform.python_implementation()} {platform.python_version()}",
            "platform": platform.platform(),
            "executable": sys.executable,
            "environment": sys.prefix,
        },
        packages=package_versions(),
        hardware=hardware(),
        environments=_environments(basedir),
    )


STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; max-width: 60em; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.5em; } h3 { font-size: 1em; }
table { border-collapse: collapse; margin: 0.5em 0; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; font-weight: 600; }
pre { background: #f7f7f7; border: 1px solid #ddd; padding: 0.6em; overflow-x: auto; }
.dirty { color: #b00; font-weight: 600; }
"""


def _table(rows: Mapping[str, Any], header: tuple[str, str], classes: Mapping[str, str]) -> str:
    head = f"<tr><th>{html.escape(header[0])}</th><th>{html.escape(header[1])}</th></tr>"
    body = "".join(
        f'<tr><td>{html.escape(str(key))}</td><td class="{classes.get(key, "")}">'
        f"{html.escape(str(value))}</td></tr>"
        for key, value in rows.items()
    )
    return f"<table>{head}{body}</table>"


def render_provenance(prov: Provenance) -> str:
    """The provenance as a self-contained HTML page (no scripts, no external resources)."""
    dirty = {"dirty": "dirty"} if prov.git["dirty"].startswith("yes") else {}
    seeds = prov.seeds or {"(none)": ""}
    config_yaml = yaml.safe_dump(prov.config, sort_keys=False, default_flow_style=False)
    envs = "".join(
        f"<h3>{html.escape(name)}</h3><pre>{html.escape(text)}</pre>"
        for name, text in prov.environments.items()
    )
    sections = [
        "<h1>Provenance of this run</h1>",
        f"<p>Recorded {html.escape(prov.date)} (UTC) by rule <code>record_provenance</code>.</p>",
        "<h2>Workflow</h2>",
        _table(prov.git, ("", "git"), dirty),
        "<h2>Seeds</h2>",
        _table(seeds, ("config key", "seed"), {}),
        "<h2>Software</h2>",
        _table(prov.software, ("", "this job's environment"), {}),
        _table(prov.packages, ("package", "version"), {}),
        "<h2>Hardware</h2>",
        _table(prov.hardware, ("", "this job's machine"), {}),
        "<h2>Effective configuration</h2>",
        f"<pre>{html.escape(config_yaml)}</pre>",
        "<h2>Conda environments</h2>",
        envs or "<p>none found</p>",
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>nucleistyle provenance</title><style>{STYLE}</style></head>\n<body>\n"
        + "\n".join(sections)
        + "\n</body></html>\n"
    )


def write_provenance(
    config: Mapping[str, Any],
    basedir: PathLike,
    out_html: PathLike,
    now: dt.datetime | None = None,
    out_json: PathLike | None = None,
) -> Provenance:
    """Collect the provenance (:func:`collect_provenance`) and write it as HTML, atomically.

    Args:
        config: The effective configuration.
        basedir: The workflow's base directory.
        out_html: Output file.
        now: Recording time (default: now).
        out_json: Also write it as JSON here (read by :mod:`nucleistyle.report.results`).

    Returns:
        What was written.
    """
    prov = collect_provenance(config, basedir, now)
    with atomic_path(out_html) as tmp:
        tmp.write_text(render_provenance(prov), encoding="utf-8")
    if out_json is not None:
        with atomic_path(out_json) as tmp:
            tmp.write_text(json.dumps(dataclasses.asdict(prov), indent=1), encoding="utf-8")
    log.info(
        "provenance: commit %s (dirty: %s), seeds %s, GPUs: %s",
        prov.git["commit"],
        prov.git["dirty"],
        prov.seeds,
        prov.hardware["gpus"],
    )
    return prov
