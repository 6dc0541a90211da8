"""The ``nucleistyle`` command line: the pipeline's library functions for users' own data.

Every subcommand reports bad input as one line (``error: ...``) on stderr and exits with status 2
(130 when interrupted, 128 + N when terminated by signal N). Status lines go to stderr too:
stdout carries only the data asked for. Before any work, options that need each other are
checked together, inputs are checked (they exist, are of the right kind and readable), outputs
are checked (writable, of the right kind) and kept apart from the inputs: no output may be,
contain or lie inside an input. Numeric options take their bounds from the config schema, the
same bounds the workflow enforces.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import logging
import os
import signal
import sys
import threading
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nucleistyle import __version__
from nucleistyle.errors import NucleistyleError
from nucleistyle.outputs import describe_os_error, user_paths
from nucleistyle.paths import check_input, check_output, check_separate
from nucleistyle.schema import bounds as schema_bounds
from nucleistyle.schema import choices as schema_choices
from nucleistyle.utils import setup_logging

log = logging.getLogger("nucleistyle")

MAX_WORKERS = 1024  # --workers and --threads: 1..MAX_WORKERS

# (description, path, is a folder) of a command's inputs and outputs
_Paths = list[tuple[str, Any, bool]]


def _available_cores() -> int:
    """The cores this process may run on (its affinity mask, e.g. a SLURM or taskset limit)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# ------------------------------------------------------------------------------------------------
# the table of commands


def _status(text: str) -> None:
    """A status line ("wrote ... -> PATH"): on stderr, so that stdout carries only data the user
    asked for (a score, or an output sent to /dev/stdout)."""
    print(text, file=sys.stderr)


def _number(kind: type, key: str | None = None, **bounds: float) -> Callable[[str], int | float]:
    """An argparse type: an int or finite float within the bounds of config ``key`` (or the
    given ``minimum`` / ``maximum`` / ``exclusiveMinimum`` / ``exclusiveMaximum``)."""

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            noun = "an integer" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"expected {noun}, got {text!r}") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        limits = {**(schema_bounds(key) if key else {}), **bounds}
        source = f" (config key {key})" if key else ""
        for name, test, words in (
            ("minimum", lambda v, b: v >= b, "at least"),
            ("exclusiveMinimum", lambda v, b: v > b, "greater than"),
            ("maximum", lambda v, b: v <= b, "at most"),
            ("exclusiveMaximum", lambda v, b: v < b, "less than"),
        ):
            if name in limits and not test(value, limits[name]):
                raise argparse.ArgumentTypeError(
                    f"must be {words} {limits[name]}{source}, got {text}"
                )
        return value

    parse.__name__ = "integer" if kind is int else "number"  # argparse names it in errors
    return parse


# One ``add_argument`` call: its flags and its keyword arguments.
_Arg = tuple[tuple[str, ...], dict[str, Any]]


def _arg(*flags: str, **options: Any) -> _Arg:
    return flags, options


@dataclass(frozen=True)
class Command:
    """One subcommand, all in one place.

    Attributes:
        name: The subcommand (``nucleistyle NAME``).
        help: Its line in ``nucleistyle --help``.
        arguments: Its ``add_argument`` calls, in order.
        run: Does the work; returns the exit status.
        inputs, outputs: The paths it reads and writes, from its parsed arguments, checked
            before any work (:func:`check_paths`).
        needs: ``(option, the option it needs, why)``: an option refused without the other.
    """

    name: str
    help: str
    arguments: tuple[_Arg, ...]
    run: Callable[[argparse.Namespace], int]
    inputs: Callable[[argparse.Namespace], _Paths] = lambda args: []
    outputs: Callable[[argparse.Namespace], _Paths] = lambda args: []
    needs: tuple[tuple[str, str, str], ...] = ()


COMMANDS: dict[str, Command] = {}  # in the order of ``nucleistyle --help``


def _command(
    name: str,
    help: str,
    *arguments: _Arg,
    inputs: Callable[[argparse.Namespace], _Paths] = lambda args: [],
    outputs: Callable[[argparse.Namespace], _Paths] = lambda args: [],
    needs: tuple[tuple[str, str, str], ...] = (),
) -> Callable[[Callable[[argparse.Namespace], int]], Callable[[argparse.Namespace], int]]:
    """Register the decorated function as the command ``name`` (see :class:`Command`)."""

    def register(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        COMMANDS[name] = Command(name, help, arguments, run, inputs, outputs, needs)
        return run

    return register


# Arguments shared by several commands.
_WORKERS = _number(int, minimum=1, maximum=MAX_WORKERS)
_SEED = _number(int, "seed")
_IMAGES = _arg(
    "images_dir", help="BBBC038-layout folder (<id>/images/<id>.png) or a flat folder of images"
)
_OVERWRITE = _arg(
    "--overwrite",
    action="store_true",
    help="replace OUT_DIR if it is a non-empty folder written by this command before",
)
_DEVICE = _arg(
    "--device", default="auto", help="auto (default: CUDA if available), cpu, cuda, cuda:N"
)
_TRAINING_DEVICE = _arg("--device", help="auto, cpu, cuda, cuda:N (default: the config's)")
_ITERATIONS = _arg(
    "--iterations", type=_number(int, minimum=1), help="training length (overrides config)"
)
_CONFIG = _arg(
    "--config",
    nargs="+",
    metavar="YAML",
    help="config YAML like config.yaml (several: each overlays those before; default: the "
    "schema's defaults, the paper's settings)",
)


def _threads() -> _Arg:
    return _arg(
        "--threads",
        type=_WORKERS,
        default=None,
        metavar="N",
        help=f"PyTorch CPU threads (default: the cores available to this process, "
        f"{_available_cores()})",
    )


def _model_inputs(a: argparse.Namespace) -> _Paths:
    return [("model file", a.model, False), ("image folder", a.images_dir, True)]


def _model_outputs(a: argparse.Namespace) -> _Paths:
    submission = getattr(a, "submission", None)  # stylize has none
    return [("output folder", a.out_dir, True), ("submission file", submission, False)]


def _config_paths(a: argparse.Namespace) -> _Paths:
    return [("config file", path, False) for path in a.config or []]


def _training_outputs(a: argparse.Namespace) -> _Paths:
    """The files a training command writes into OUT_DIR (each checked, not just the folder)."""
    out = Path(a.out_dir)
    return [
        ("model file", out / "model.pt", False),
        ("checkpoint", out / "checkpoint.pt", False),
        ("history", out / "history.tsv", False),
    ]


def _config(args: argparse.Namespace) -> dict[str, Any]:
    """The workflow's configuration from ``--config`` files (schema defaults without any)."""
    from nucleistyle.workflow import load_config

    return load_config(args.config or [])


# Each command imports what it runs when it runs: ``nucleistyle --help`` and the quick commands
# do not wait for torch.


@_command(
    "score",
    "official DSB 2018 score of a submission against a solution file",
    _arg(
        "solution",
        help="solution CSV (ImageId,EncodedPixels,Height,Width,Usage), e.g. stage1_solution.csv",
    ),
    _arg("submission", help="submission CSV (ImageId,EncodedPixels)"),
    _arg(
        "--per-image", metavar="OUT.csv", help="write the per-image table (TP/FP/FN per threshold)"
    ),
    _arg("--groups", metavar="GROUPS.csv", help="ImageId -> group table for per-group scores"),
    _arg("--group-column", default="modality", help="group column of --groups (default: modality)"),
    _arg(
        "--json",
        action="store_true",
        help="print one JSON object (score, n_images, groups, missing)",
    ),
    inputs=lambda a: [
        ("solution file", a.solution, False),
        ("submission file", a.submission, False),
        ("groups file", a.groups, False),
    ],
    outputs=lambda a: [("per-image table", a.per_image, False)],
)
def _score(args: argparse.Namespace) -> int:
    from nucleistyle.metrics import read_groups, score_files
    from nucleistyle.outputs import atomic_path

    groups = None if not args.groups else read_groups(args.groups, column=args.group_column)
    per_image, summary = score_files(args.solution, args.submission, groups=groups)
    if args.per_image:
        with atomic_path(args.per_image) as tmp:
            per_image.to_csv(tmp, index=False)
    if args.json:
        print(json.dumps(summary, sort_keys=True))
    else:
        print(f"DSB score {summary['score']:.4f} over {summary['n_images']} images")
        for group, values in sorted(summary.get("groups", {}).items()):
            print(f"  {group:<24} {values['score']:.4f}  ({values['n_images']} images)")
        if summary.get("missing"):
            print(f"  {len(summary['missing'])} images missing from the submission scored 0")
    return 0


@_command(
    "synthesize",
    "write the synthetic multi-modality data set in BBBC038 layout",
    _arg("out_dir", help="new (or empty) folder"),
    _arg("--seed", type=_number(int, "data.synthetic.seed"), default=0),
    _arg("--n-train", type=_number(int, "data.synthetic.n_train"), default=120),
    _arg(
        "--n-test-per-modality", type=_number(int, "data.synthetic.n_test_per_modality"), default=6
    ),
    _arg(
        "--size",
        type=_number(int, "data.synthetic.height"),
        default=128,
        help="image height and width (px)",
    ),
    _OVERWRITE,
    outputs=lambda a: [("output folder", a.out_dir, True)],
)
def _synthesize(args: argparse.Namespace) -> int:
    from nucleistyle.data.synthetic import SyntheticConfig, generate

    cfg = SyntheticConfig.from_config(
        {
            "seed": args.seed,
            "n_train": args.n_train,
            "n_test_per_modality": args.n_test_per_modality,
            "height": args.size,
            "width": args.size,
        }
    )
    table = generate(cfg, Path(args.out_dir), overwrite=args.overwrite)
    _status(f"wrote {len(table)} images to {args.out_dir}")
    return 0


@_command(
    "cluster",
    "group images into modalities: K-means on HSV features",
    _arg("images_dir", help="BBBC038-layout folder (<id>/images/<id>.png) or a flat folder"),
    _arg("--k", type=_number(int, "cluster.k"), default=6, help="number of clusters (default: 6)"),
    _arg("--out", required=True, metavar="ASSIGNMENTS.csv", help="ImageId, cluster, ..."),
    _arg("--model", metavar="MODEL.json", help="also save the model (to assign new images)"),
    _arg("--seed", type=_SEED, default=0),
    _arg(
        "--n-init",
        type=_number(int, "cluster.n_init"),
        default=20,
        help="K-means restarts (default: 20)",
    ),
    _arg("--workers", type=_WORKERS, default=2),
    inputs=lambda a: [("image folder", a.images_dir, True)],
    outputs=lambda a: [("assignment table", a.out, False), ("model file", a.model, False)],
)
def _cluster(args: argparse.Namespace) -> int:
    from nucleistyle.cluster import ClusterConfig, cluster_dataset

    cfg = ClusterConfig(k=args.k, seed=args.seed, n_init=args.n_init)
    table = cluster_dataset(
        args.images_dir, args.out, cfg, workers=args.workers, model_json=args.model
    )
    sizes = table.groupby(["cluster", "name"]).size()
    _status(f"{len(table)} images in {cfg.k} clusters -> {args.out}")
    for (cluster, name), n in sizes.items():
        _status(f"  {cluster} {name:<16} {n:>6}  ({n / len(table):.1%})")
    return 0


@_command(
    "classical",
    "segment a folder with the classical threshold + watershed baseline",
    _IMAGES,
    _arg("submission", help="output submission CSV"),
    _arg("--labels-dir", help="also write 16-bit label PNGs here"),
    _arg("--workers", type=_WORKERS, default=2),
    inputs=lambda a: [("image folder", a.images_dir, True)],
    outputs=lambda a: [
        ("submission file", a.submission, False),
        ("label folder", a.labels_dir, True),
    ],
)
def _classical(args: argparse.Namespace) -> int:
    from nucleistyle.classical import ClassicalConfig, segment_folder

    n = segment_folder(
        Path(args.images_dir),
        Path(args.submission),
        ClassicalConfig(),
        workers=args.workers,
        labels_dir=Path(args.labels_dir) if args.labels_dir else None,
    )
    _status(f"segmented {n} images -> {args.submission}")
    return 0


@_command(
    "segment",
    "segment a folder with a trained Mask R-CNN (single pass or --tta)",
    _arg(
        "model",
        help="model file written by the pipeline: results/segment/<baseline>-<arm>/model.pt",
    ),
    _IMAGES,
    _arg(
        "out_dir", help="write <ImageId>.png (or .tif) here: 16-bit label images (0 = background)"
    ),
    _arg("--submission", metavar="OUT.csv", help="also write a Kaggle submission CSV"),
    _arg(
        "--format", choices=("png", "tif"), default="png", help="label image format (default png)"
    ),
    _arg(
        "--overlays",
        action="store_true",
        help="also write OUT_DIR/overlays/<ImageId>.png: each nucleus outlined in yellow",
    ),
    _arg(
        "--tta",
        action="store_true",
        help="the baseline's own test-time augmentation (Deep Retina: 15 variants and a "
        "5-of-15 pixel vote; Mirzaev: identity + horizontal flip, union merge)",
    ),
    _DEVICE,
    _threads(),
    inputs=_model_inputs,
    outputs=_model_outputs,
)
def _segment(args: argparse.Namespace) -> int:
    from nucleistyle.segment.predict import predict_folder
    from nucleistyle.torchutils import set_torch_threads

    set_torch_threads(args.threads)
    n = predict_folder(
        args.model,
        args.images_dir,
        args.submission,
        labels_dir=args.out_dir,
        device=args.device,
        tta=bool(args.tta),
        label_format=args.format,
        overlays=args.overlays,
    )
    extra = f" and {args.submission}" if args.submission else ""
    _status(f"segmented {n} images -> {args.out_dir}{extra}")
    return 0


@_command(
    "stylize",
    "render a folder of images in another domain with the trained style GAN",
    _arg("model", help="GAN model file written by the pipeline: results/gan/model.pt"),
    _IMAGES,
    _arg("out_dir", help="write <ImageId>.png here: RGB, the size of each input"),
    _arg("--domain", type=int, required=True, help="target domain (cluster index, 0..C-1)"),
    _arg(
        "--source-domain",
        type=int,
        help="the images' own domain (cluster index); needed by a GAN trained with "
        "gan.polarity: canonical",
    ),
    _arg(
        "--seed",
        type=_SEED,
        default=0,
        help="seed of the attribute draws; each image's draw also depends on its ImageId",
    ),
    _arg(
        "--attribute",
        choices=("prior", "domain_stats"),
        help="attribute sampling: N(0, I) or the target domain's statistics (default: the model's)",
    ),
    _DEVICE,
    _threads(),
    inputs=_model_inputs,
    outputs=_model_outputs,
)
def _stylize(args: argparse.Namespace) -> int:
    from nucleistyle.gan.stylize import stylize_folder
    from nucleistyle.torchutils import set_torch_threads

    set_torch_threads(args.threads)
    n = stylize_folder(
        args.model,
        args.images_dir,
        args.out_dir,
        domain=args.domain,
        seed=args.seed,
        attribute_source=args.attribute,
        device=args.device,
        source_domain=args.source_domain,
    )
    _status(f"stylized {n} images into domain {args.domain} -> {args.out_dir}")
    return 0


@_command(
    "holdout",
    "split a training folder into train + held-out test (data.source local layout)",
    _arg("train_dir", help="BBBC038-layout training folder (<id>/images, <id>/masks)"),
    _arg("out_dir", help="new (or empty) folder: stage1_train/, stage1_test/, stage1_solution.csv"),
    _arg(
        "--fraction",
        type=_number(float, exclusiveMinimum=0, exclusiveMaximum=1),
        default=0.2,
        help="share held out per cluster, in (0, 1) (minority: at most this share of the largest)",
    ),
    _arg(
        "--scheme",
        choices=schema_choices("data.holdout.scheme"),
        default="stratified",
        help="stratified: the training mix; minority: half of every cluster but the largest, as "
        "many of the largest; leave-cluster-out: --cluster entirely, the rest stratified",
    ),
    _arg("--cluster", help="leave-cluster-out: the cluster held out (name or id)"),
    _arg("--k", type=_number(int, "cluster.k"), default=6, help="HSV clusters used as strata"),
    _arg("--seed", type=_SEED, default=0),
    _OVERWRITE,
    inputs=lambda a: [("training folder", a.train_dir, True)],
    outputs=lambda a: [("output folder", a.out_dir, True)],
)
def _holdout(args: argparse.Namespace) -> int:
    from nucleistyle.holdout import make_holdout

    table = make_holdout(
        args.train_dir,
        args.out_dir,
        fraction=args.fraction,
        seed=args.seed,
        k=args.k,
        scheme=args.scheme,
        held_cluster=args.cluster,
        overwrite=args.overwrite,
    )
    counts = table.groupby(["name", "set"]).size().unstack(fill_value=0)
    n_test = int((table["set"] == "stage1_test").sum())
    _status(f"held out {n_test} of {len(table)} images -> {args.out_dir}")
    _status(counts.to_string())
    return 0


@_command(
    "import-folder",
    "your own annotated images (images/ + masks/, PNG or TIFF) into BBBC038 layout",
    _arg(
        "folder",
        help="folder with images/NAME.tif and masks/NAME.tif (label images), any of "
        ".tif/.tiff/.png",
    ),
    _arg("out_dir", help="new (or empty) folder: NAME/images/NAME.png, NAME/masks/*.png"),
    _arg(
        "--test",
        action="store_true",
        help="a test folder: images only; its labels (if any) go to --solution",
    ),
    _arg("--solution", metavar="OUT.csv", help="with --test and labels: the Kaggle solution CSV"),
    _arg(
        "--channels",
        type=_number(int, minimum=0),
        nargs="+",
        metavar="C",
        help="channel indices shown as red, green, blue (one: grey; default: 1 channel grey, "
        "2 as red and green, 3+ the first three)",
    ),
    _arg(
        "--percentiles",
        type=_number(float, minimum=0, maximum=100),
        nargs=2,
        default=(0.0, 100.0),
        metavar=("LOW", "HIGH"),
        help="deeper than 8-bit data: these percentiles become 0 and 255 (default 0 100: zero "
        "and the maximum; StarDist's usual 1 99.8)",
    ),
    _arg("--per-channel", action="store_true", help="scale each channel on its own"),
    _arg(
        "--channel-axis",
        type=_number(int, minimum=0),
        metavar="AXIS",
        help="TIFFs whose metadata do not say which axis holds the channels (e.g. channels saved "
        "page by page): that axis of the stored array (0 for the pages)",
    ),
    _OVERWRITE,
    inputs=lambda a: [("image folder", a.folder, True)],
    outputs=lambda a: [("output folder", a.out_dir, True), ("solution file", a.solution, False)],
    needs=(("solution", "test", "a training folder's labels become its masks"),),
)
def _import_folder(args: argparse.Namespace) -> int:
    from nucleistyle.data.folder import import_folder
    from nucleistyle.data.images import IntensityRule

    low, high = args.percentiles
    rule = IntensityRule(
        channels=tuple(args.channels) if args.channels else None,
        low=low,
        high=high,
        per_channel=args.per_channel,
        channel_axis=args.channel_axis,
    )
    n = import_folder(
        args.folder,
        args.out_dir,
        training=not args.test,
        solution_csv=args.solution,
        rule=rule,
        overwrite=args.overwrite,
    )
    extra = f" and {args.solution}" if args.solution else ""
    _status(f"imported {n} images -> {args.out_dir}{extra}")
    return 0


@_command(
    "train-segmenter",
    "train a Mask R-CNN baseline (the pipeline's train_segmenter rule); resumes",
    _arg("train_dir", help="BBBC038-layout training folder (e.g. from import-folder)"),
    _arg("out_dir", help="writes model.pt, history.tsv and checkpoint.pt here"),
    _arg("--baseline", choices=("deep_retina", "mirzaev"), required=True),
    _CONFIG,
    _ITERATIONS,
    _arg("--style-dir", help="restyled copies (style arm), from the augment stage"),
    _arg("--style-manifest", help="their manifest.csv (needed with --style-dir)"),
    _TRAINING_DEVICE,
    _threads(),
    inputs=lambda a: [
        ("training folder", a.train_dir, True),
        *_config_paths(a),
        ("style folder", a.style_dir, True),
        ("style manifest", a.style_manifest, False),
    ],
    outputs=_training_outputs,
    needs=(
        ("style_dir", "style_manifest", "which original each copy restyles"),
        ("style_manifest", "style_dir", "the restyled copies it lists"),
    ),
)
def _train_segmenter(args: argparse.Namespace) -> int:
    from nucleistyle.segment.configs import get_config
    from nucleistyle.segment.engine import train_segmenter
    from nucleistyle.torchutils import set_torch_threads
    from nucleistyle.workflow import segmenter_settings

    settings = segmenter_settings(_config(args), args.baseline)
    if args.iterations is not None:
        settings.update(iterations=args.iterations, epochs=None)
    if args.device is not None:
        settings["device"] = args.device
    cfg = get_config(args.baseline, settings)
    set_torch_threads(args.threads)
    out = Path(args.out_dir)
    train_segmenter(
        [args.train_dir],
        out / "model.pt",
        cfg,
        checkpoint=out / "checkpoint.pt",
        history_tsv=out / "history.tsv",
        arm="style" if args.style_dir else "none",
        style_dirs=[args.style_dir] if args.style_dir else [],
        style_manifests=[args.style_manifest] if args.style_manifest else [],
    )
    _status(f"trained {args.baseline} -> {out / 'model.pt'} (history: {out / 'history.tsv'})")
    return 0


@_command(
    "train-gan",
    "train the style-transfer GAN on clustered images (the pipeline's train_gan rule)",
    _arg("images_dir", help="training images (BBBC038 layout or a flat folder)"),
    _arg("assignments", help="cluster assignment table from `nucleistyle cluster`"),
    _arg("out_dir", help="writes model.pt, history.tsv and checkpoint.pt here"),
    _CONFIG,
    _ITERATIONS,
    _arg(
        "--cluster-model",
        metavar="MODEL.json",
        help="the cluster model (`nucleistyle cluster --model`): adds transfer-quality curves",
    ),
    _TRAINING_DEVICE,
    _threads(),
    inputs=lambda a: [
        ("image folder", a.images_dir, True),
        ("assignment table", a.assignments, False),
        ("cluster model", a.cluster_model, False),
        *_config_paths(a),
    ],
    outputs=_training_outputs,
)
def _train_gan(args: argparse.Namespace) -> int:
    from nucleistyle.gan.configs import GanConfig
    from nucleistyle.gan.data import read_assignments
    from nucleistyle.gan.engine import train_gan
    from nucleistyle.gan.evaluate import TransferMonitor
    from nucleistyle.torchutils import set_torch_threads
    from nucleistyle.workflow import gan_settings

    config = _config(args)
    n_domains = int(read_assignments(args.assignments)["cluster"].max()) + 1
    settings = gan_settings(config, n_domains)
    if args.iterations is not None:
        settings["iterations"] = args.iterations
    if args.device is not None:
        settings["device"] = args.device
    cfg = GanConfig.from_config(settings)
    set_torch_threads(args.threads)
    monitor = None
    if args.cluster_model:
        monitor = TransferMonitor(
            args.cluster_model, args.images_dir, seed=config["seed"], device=cfg.device
        )
    out = Path(args.out_dir)
    train_gan(
        args.images_dir,
        args.assignments,
        out / "model.pt",
        cfg,
        checkpoint=out / "checkpoint.pt",
        history_tsv=out / "history.tsv",
        monitor=monitor,
    )
    _status(f"trained the GAN ({n_domains} domains) -> {out / 'model.pt'}")
    return 0


# ------------------------------------------------------------------------------------------------
# the parser and the checks before any work


class _UsageError(Exception):
    """A bad command line (argparse's error, reported as one line by :func:`main`)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:
        raise _UsageError(f"{message} (see {self.prog} --help)")


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command in :data:`COMMANDS`."""
    parser = _Parser(prog="nucleistyle", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS.values():
        p = sub.add_parser(command.name, help=command.help)
        for flags, options in command.arguments:
            p.add_argument(*flags, **options)
    return parser


def _check_together(command: Command, args: argparse.Namespace) -> None:
    """Refuse an option given without the one it needs (before any work, never ignored).

    Raises:
        _UsageError: naming both options.
    """
    for option, needed, why in command.needs:
        if getattr(args, option) and not getattr(args, needed):
            flag, other = (f"--{name.replace('_', '-')}" for name in (option, needed))
            raise _UsageError(
                f"{command.name} {flag} needs {other} ({why}; see nucleistyle {command.name} "
                "--help)"
            )


def check_paths(inputs: _Paths, outputs: _Paths) -> None:
    """Check a command's paths before it starts: inputs usable, outputs writable and apart.

    Raises:
        NucleistyleError: the first problem, naming the path.
    """
    for what, path, folder in inputs:
        if path is not None:
            check_input(path, what, folder=folder)
    check_separate(
        {what: path for what, path, _ in inputs}, {what: path for what, path, _ in outputs}
    )
    for what, path, folder in outputs:
        if path is not None:
            check_output(path, what, folder=folder)


# ------------------------------------------------------------------------------------------------
# errors as one line


def _one_line(text: str) -> str:
    """``text`` with line breaks and other control characters escaped: one line, always."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


# Parse errors of the file formats read by the commands (pandas' are matched by module).
_PARSE_ERRORS = (csv.Error, UnicodeError, json.JSONDecodeError, zipfile.BadZipFile)


def _message(exc: BaseException) -> str | None:
    """The one-line report of an expected failure; None for a bug (its traceback is kept)."""
    if isinstance(exc, NucleistyleError):
        return str(exc)
    if isinstance(exc, OSError):
        return describe_os_error(exc)
    if isinstance(exc, _PARSE_ERRORS) or type(exc).__module__.startswith(("pandas", "yaml")):
        return f"cannot parse an input file: {exc}"
    return None


class _Warnings(logging.Handler):
    """Holds the library's warnings of a run: printed after a success, dropped after a
    failure, whose one line then says all."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"warning: {_one_line(record.getMessage())}")


class _Terminated(BaseException):
    """SIGTERM or SIGHUP reached the command: it stops as after Ctrl-C (staging removed)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _stop_message(signum: int) -> str:
    if signum == signal.SIGINT:
        return "error: interrupted"
    return f"error: terminated by {signal.Signals(signum).name}"


def _exit_now(signum: int, frame: object) -> None:
    """A second signal while the first one's clean-up runs: end at once. What is left (the
    staging) is removed by the next run into the same place; workers die with this process."""
    print(_stop_message(signum), file=sys.stderr, flush=True)
    os._exit(128 + signum)


def _quiet_thread_error(args: threading.ExceptHookArgs) -> None:
    """After a stop signal, helper threads (a worker pool's manager) may fail as the pool's
    processes are killed; the command's one line already says what happened."""


def _stop(signum: int, frame: object) -> None:
    for other in _STOP_SIGNALS:
        if signal.getsignal(other) not in (signal.SIG_IGN, None):
            signal.signal(other, _exit_now)
    threading.excepthook = _quiet_thread_error
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise _Terminated(signum)


@contextlib.contextmanager
def _stop_signals() -> Iterator[None]:
    """Ctrl-C, SIGTERM and SIGHUP stop the command cleanly (one line, its staging removed, its
    workers killed); a second one ends it at once. Signals ignored at start (``nohup``, a
    background job's SIGINT) stay ignored; handlers are restored afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {signum: signal.getsignal(signum) for signum in _STOP_SIGNALS}
    thread_errors = threading.excepthook
    for signum, handler in saved.items():
        if handler not in (signal.SIG_IGN, None):
            signal.signal(signum, _stop)
    try:
        yield
    finally:
        threading.excepthook = thread_errors
        for signum, handler in saved.items():
            if handler is not None:
                signal.signal(signum, handler)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit status (0, 2 for bad input, 130 when interrupted, 128 +
    the signal number when terminated)."""
    with _stop_signals():
        return _main(argv)


def _main(argv: Sequence[str] | None) -> int:
    warnings = _Warnings()
    root = logging.getLogger()
    try:
        args = build_parser().parse_args(argv)
        if args.verbose:
            setup_logging()
        else:
            root.addHandler(warnings)
        if getattr(args, "threads", "") is None:
            args.threads = _available_cores()
        command = COMMANDS[args.command]
        _check_together(command, args)
        check_paths(command.inputs(args), command.outputs(args))
        status = command.run(args)
        for line in warnings.lines:
            print(line, file=sys.stderr)
        return status
    except SystemExit as exc:  # --help, --version
        return exc.code if isinstance(exc.code, int) else 0
    except KeyboardInterrupt:
        print(_stop_message(signal.SIGINT), file=sys.stderr)
        return 128 + signal.SIGINT
    except _Terminated as exc:
        print(_stop_message(exc.signum), file=sys.stderr)
        return 128 + exc.signum
    except _UsageError as exc:
        message = str(exc)
    except Exception as exc:
        found = _message(exc)
        if found is None:
            raise
        message = found
    finally:
        root.removeHandler(warnings)
    print(f"error: {_one_line(user_paths(message))}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
