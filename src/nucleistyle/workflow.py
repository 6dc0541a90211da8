"""Configuration checks shared by the Snakemake workflow and the command line.

The schema (``nucleistyle/schemas/config.schema.yaml``, package data; see
:mod:`nucleistyle.schema`) is the single source of truth for keys, types, ranges, defaults and
descriptions. :func:`validate_config` fills
in defaults and turns the first violation into one line naming the key; :func:`check_config`
builds every section's settings, whose multi-key rules then hold too, so a bad value stops the
workflow before any job runs.
"""

from __future__ import annotations

import ast
import os
import shutil
import sys
from collections.abc import MutableMapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from nucleistyle.errors import NucleistyleError
from nucleistyle.paths import PathLike
from nucleistyle.schema import validate

__all__ = [
    "check_config",
    "check_pretrained",
    "copy_workflow",
    "export_library_path",
    "gan_settings",
    "load_config",
    "overlay_config",
    "pretrained_inputs",
    "script_imports",
    "segmenter_priority",
    "segmenter_settings",
    "validate_config",
]

# What a clean clone does not have: environments, outputs, downloads, caches.
_NOT_WORKFLOW = shutil.ignore_patterns(
    ".venv", ".git", "results", "resources", "logs", "benchmarks", ".snakemake", "__pycache__",
    "*.egg-info", ".pytest_cache", ".ruff_cache", ".hypothesis", ".mypy_cache",
)  # fmt: skip


def _parse_cli_strings(node: Any) -> Any:
    """Parse the YAML scalars that nested ``snakemake --config`` values leave as text.

    Snakemake reads nested ``--config`` values with YAML's BaseLoader, which keeps every scalar a
    string; numbers, booleans and null are restored here so that the schema sees their real types.
    """
    if isinstance(node, MutableMapping):
        for key, value in node.items():
            node[key] = _parse_cli_strings(value)
    elif isinstance(node, list):
        node[:] = [_parse_cli_strings(value) for value in node]
    elif isinstance(node, str):
        try:
            parsed = yaml.safe_load(node)
        except yaml.YAMLError:
            return node
        if parsed is None or isinstance(parsed, bool | int | float):
            return parsed
    return node


def validate_config(config: MutableMapping[str, Any]) -> None:
    """:func:`nucleistyle.schema.validate` (in place, defaults filled in) after restoring the
    types of nested ``--config`` values."""
    _parse_cli_strings(config)
    validate(config)


def export_library_path(basedir: PathLike) -> None:
    """Prepend ``<basedir>/src`` to ``PYTHONPATH``: every job imports this checkout's library.

    Jobs inherit the controller's environment (locally, and on SLURM through ``--export=ALL``),
    so rule scripts find ``nucleistyle`` in any environment without installing it there.
    """
    src = str(Path(basedir, "src").resolve())
    parts = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != src]
    os.environ["PYTHONPATH"] = os.pathsep.join([src, *parts])


def check_config(config: MutableMapping[str, Any]) -> None:
    """Checks that need more than the schema (run after :func:`validate_config`): the data
    folders, and the rules that involve several keys (GAN resize >= crop, segment iterations
    or epochs, the synthetic set's images per modality, ...), so they stop the run before any
    job starts.

    Raises:
        NucleistyleError: naming the key, e.g. a local source without ``data.local.path``.
    """
    data = config["data"]
    if data["source"] == "local":
        path = data["local"]["path"]
        if not path:
            raise NucleistyleError("config key data.local.path: required when data.source is local")
        if not Path(path, "stage1_train").is_dir():
            raise NucleistyleError(
                f"config key data.local.path: {path} has no stage1_train/ folder "
                "(expected an extracted BBBC038 copy: stage1_train/, stage1_test/, solution CSVs)"
            )
    if data["source"] == "folder":
        _check_folders(data["folder"])
    if data["source"] in ("synthetic", "holdout") and data["test_sets"] != ["stage1_test"]:
        raise NucleistyleError(
            f"config key data.test_sets: the {data['source']} source provides stage1_test only"
        )
    if data["source"] == "holdout":
        _check_holdout(data["holdout"])
    segment = config["segment"]
    if "style" in segment["arms"] and segment["inputs"] != "enhanced":
        raise NucleistyleError(
            "config key segment.inputs: must be enhanced with the style arm (its copies are "
            "rendered from the CLAHE-enhanced images the GAN trains on, so the none arm must see "
            "the same images)"
        )
    # The rules that involve several keys live in the sections' settings (single-key rules are
    # the schema's): build each one whose module imports fast (no torch, no scikit-*).
    from nucleistyle.data.synthetic import SyntheticConfig
    from nucleistyle.gan.configs import GanConfig
    from nucleistyle.segment.configs import get_config
    from nucleistyle.segment.weights import PRETRAINED_STARTS
    from nucleistyle.tta import TTAConfig

    if data["source"] == "synthetic":
        SyntheticConfig.from_config(data["synthetic"])
    GanConfig.from_config(gan_settings(config))
    for baseline in config["segment"]["baselines"]:
        cfg = get_config(baseline, segmenter_settings(config, baseline))
        TTAConfig.for_baseline(baseline, config["tta"])
        local = cfg.weights != "none" and cfg.weights not in PRETRAINED_STARTS
        if local and not Path(cfg.weights).is_file():
            raise NucleistyleError(
                f"config key segment.{baseline}.weights: weights file {cfg.weights} not found "
                "(coco, imagenet, none or the path of a local weights file)"
            )


def _check_holdout(holdout: MutableMapping[str, Any]) -> None:
    """data.source holdout: the training folder exists; a cluster with leave-cluster-out."""
    if holdout["train"] and not Path(holdout["train"]).is_dir():
        raise NucleistyleError(f"config key data.holdout.train: {holdout['train']} is not a folder")
    if (holdout["scheme"] == "leave-cluster-out") != (holdout["cluster"] is not None):
        raise NucleistyleError(
            "config key data.holdout.cluster: required with scheme leave-cluster-out, and only "
            "with it"
        )


def _check_folders(folder: MutableMapping[str, Any]) -> None:
    """data.source folder: the folders exist, in the paired layout, with labels where needed."""
    if not folder["train"]:
        raise NucleistyleError("config key data.folder.train: required when data.source is folder")
    if not folder["test"]:
        raise NucleistyleError(
            "config key data.folder.test: at least one test folder (name: path) is needed"
        )
    paths = {"data.folder.train": folder["train"]}
    paths.update({f"data.folder.test.{name}": path for name, path in folder["test"].items()})
    for key, path in paths.items():
        if not Path(path, "images").is_dir():
            raise NucleistyleError(
                f"config key {key}: {path} has no images/ folder (expected images/ and masks/)"
            )
    if not Path(folder["train"], "masks").is_dir():
        raise NucleistyleError(
            f"config key data.folder.train: {folder['train']} has no masks/ folder "
            "(a training folder needs a label image per image)"
        )
    if not any(Path(path, "masks").is_dir() for path in folder["test"].values()):
        raise NucleistyleError(
            "config key data.folder.test: no test folder has labels (masks/); the report "
            "scores on at least one"
        )
    from nucleistyle.data.images import IntensityRule

    IntensityRule.from_config(folder["intensity"])


def overlay_config(base: MutableMapping[str, Any], layer: MutableMapping[str, Any]) -> None:
    """Merge ``layer`` into ``base`` key by key, recursively (as Snakemake overlays configs)."""
    for key, value in layer.items():
        if isinstance(value, MutableMapping) and isinstance(base.get(key), MutableMapping):
            overlay_config(base[key], value)
        else:
            base[key] = value


def load_config(paths: Sequence[PathLike]) -> dict[str, Any]:
    """Read YAML config files, each overlaid on those before it (``snakemake --configfile a b``),
    validate the result and fill in defaults: the workflow's configuration, for the command line.

    Raises:
        NucleistyleError: an unreadable file or a bad value (one line naming the file or key).
    """
    config: dict[str, Any] = {}
    for path in paths:
        try:
            layer = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise NucleistyleError(f"cannot read config {path}: {exc}".replace("\n", " ")) from exc
        if not isinstance(layer, MutableMapping):
            raise NucleistyleError(f"config {path}: a mapping of keys expected")
        overlay_config(config, layer)
    validate_config(config)
    check_config(config)
    return config


def segmenter_settings(config: MutableMapping[str, Any], baseline: str) -> dict[str, Any]:
    """One baseline's settings: segment.common, then segment.<baseline>, then the global seed."""
    from nucleistyle.segment.configs import merge_overrides  # no torch: cheap

    segment = config["segment"]
    return merge_overrides(segment["common"], segment[baseline], {"seed": config["seed"]})


def pretrained_inputs(config: MutableMapping[str, Any]) -> dict[str, str]:
    """The weights file each baseline's training reads (rule train_segmenter's input
    ``weights``): torchvision's released file in ``resources/weights/`` for a ``coco`` or
    ``imagenet`` start, the file itself for a local one; a baseline trained from scratch has
    none."""
    from nucleistyle.segment.configs import get_config  # no torch: cheap
    from nucleistyle.segment.weights import WEIGHTS_DIR, released_file

    files = {}
    for baseline in config["segment"]["baselines"]:
        cfg = get_config(baseline, segmenter_settings(config, baseline))
        if cfg.weights != "none":
            name = released_file(cfg.weights, cfg.backbone)
            files[baseline] = f"{WEIGHTS_DIR}/{name}" if name else cfg.weights
    return files


def check_pretrained(
    config: MutableMapping[str, Any], *, probe: bool, names: Sequence[str] | None = None
) -> None:
    """Stop before any job when a released weights file is needed and cannot be had
    (:func:`~nucleistyle.segment.weights.check_downloadable`).

    Args:
        config: The validated configuration.
        probe: Ask the server for each missing file's first byte (a real run; while parsing,
            and in a dry run, only a ``file://`` mirror is checked, without network).
        names: The files to check (default: every released file the configuration uses).

    Raises:
        NucleistyleError: one line saying what to download and where to put it.
    """
    from nucleistyle.segment.weights import WEIGHTS_DIR, check_downloadable

    if names is None:
        prefix = f"{WEIGHTS_DIR}/"
        used = pretrained_inputs(config).values()
        names = sorted({path.removeprefix(prefix) for path in used if path.startswith(prefix)})
    check_downloadable(names, config["pretrained"]["base_url"], probe=probe)


def segmenter_priority(config: MutableMapping[str, Any], baseline: str, arm: str) -> int:
    """The scheduling priority of training ``baseline`` on ``arm`` (higher starts first).

    Every segmenter outranks the short jobs (5 and up), so a core never idles on a prediction
    while a long training waits. Among segmenters: the arms that need no GAN first, which fill
    the other cores while the GAN trains; within an arm, the baseline with the larger training
    batch (side of the network input squared times the batch size) first. On 2 cores this packs
    the real-image run as {GAN, augmentation, the smaller baseline's two arms} beside {the larger
    baseline's two arms}, instead of ending on the larger baseline's style arm alone.
    """
    from nucleistyle.segment.configs import get_config  # no torch: cheap

    def cost(name: str) -> int:
        cfg = get_config(name, segmenter_settings(config, name))
        return cfg.prep.size**2 * cfg.batch_size

    baselines = config["segment"]["baselines"]
    rank = sum(cost(baseline) > cost(other) for other in baselines)
    return 5 + rank + (len(baselines) if arm != "style" else 0)


def gan_settings(config: MutableMapping[str, Any], n_domains: int | None = None) -> dict[str, Any]:
    """The GAN's settings: section gan, the number of domains (default cluster.k), the seed."""
    n = config["cluster"]["k"] if n_domains is None else n_domains
    return {**config["gan"], "n_domains": n, "seed": config["seed"]}


def _imports(path: Path) -> set[str]:
    """Absolute module names a Python file imports (``from a import b``: ``a`` and ``a.b``)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def _module_file(src: Path, name: str) -> Path | None:
    base = src.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def script_imports(script: PathLike, src: PathLike) -> tuple[list[Path], set[str]]:
    """What a rule script needs: the library files it imports, directly or through other
    library modules (package ``__init__`` files included), and the third-party packages.

    The workflow lists the files as the rule's inputs, so that editing any of them reruns the
    rule; the tests check each rule's conda environment against the packages.

    Args:
        script: The script (``scripts/train_gan.py``).
        src: The folder holding the ``nucleistyle`` package.

    Returns:
        ``(files, packages)``: sorted library files; top-level third-party package names
        (standard library excluded).
    """
    src = Path(src)
    seen: set[Path] = set()
    todo = [Path(script)]
    packages: set[str] = set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in _imports(path):
            top = name.split(".")[0]
            if top == "nucleistyle":
                parts = name.split(".")
                for i in range(1, len(parts) + 1):  # parent packages run their __init__ too
                    module = _module_file(src, ".".join(parts[:i]))
                    if module is not None:
                        todo.append(module)
            elif top not in sys.stdlib_module_names and top != "__future__":
                packages.add(top)
    files = sorted(p for p in seen if p != Path(script))
    return files, packages


def copy_workflow(basedir: PathLike, dest: PathLike) -> Path:
    """Copy the workflow's files to a new folder ``dest``, as in a clean clone: no virtual
    environment, results, resources, logs, benchmarks or caches (for tests and benchmarks that
    run Snakemake from scratch).

    Returns:
        ``dest``.
    """
    shutil.copytree(basedir, dest, ignore=_NOT_WORKFLOW)
    return Path(dest)
