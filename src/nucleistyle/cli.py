"""The ``nucleistyle`` command line: the pipeline's library functions for users' own data.

Every subcommand reports bad input as one line (``error: ...``) on stderr and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from nucleistyle import __version__
from nucleistyle.utils import NucleistyleError, setup_logging

log = logging.getLogger("nucleistyle")


def _score(args: argparse.Namespace) -> int:
    from nucleistyle.metrics import score_files

    groups = None
    if args.groups:
        from nucleistyle.metrics import read_groups

        groups = read_groups(args.groups, column=args.group_column)
    per_image, summary = score_files(args.solution, args.submission, groups=groups)
    if args.per_image:
        from nucleistyle.utils import atomic_path

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
    table = generate(cfg, Path(args.out_dir))
    print(f"wrote {len(table)} images to {args.out_dir}")
    return 0


def _classical(args: argparse.Namespace) -> int:
    from nucleistyle.classical import ClassicalConfig, segment_folder

    n = segment_folder(
        Path(args.images_dir),
        Path(args.submission),
        ClassicalConfig(),
        workers=args.workers,
        labels_dir=Path(args.labels_dir) if args.labels_dir else None,
    )
    print(f"segmented {n} images -> {args.submission}")
    return 0


def _cluster(args: argparse.Namespace) -> int:
    from nucleistyle.cluster import ClusterConfig, cluster_dataset

    cfg = ClusterConfig(k=args.k, seed=args.seed, n_init=args.n_init)
    table = cluster_dataset(
        args.images_dir, args.out, cfg, workers=args.workers, model_json=args.model
    )
    sizes = table.groupby(["cluster", "name"]).size()
    print(f"{len(table)} images in {cfg.k} clusters -> {args.out}")
    for (cluster, name), n in sizes.items():
        print(f"  {cluster} {name:<16} {n:>6}  ({n / len(table):.1%})")
    return 0


def _segment(args: argparse.Namespace) -> int:
    from nucleistyle.segment.predict import predict_folder
    from nucleistyle.tta import TTAConfig

    n = predict_folder(
        args.model,
        args.images_dir,
        args.submission,
        labels_dir=args.out_dir,
        device=args.device,
        tta=TTAConfig() if args.tta else None,
    )
    extra = f" and {args.submission}" if args.submission else ""
    print(f"segmented {n} images -> {args.out_dir}{extra}")
    return 0


def _stylize(args: argparse.Namespace) -> int:
    from nucleistyle.gan.stylize import stylize_folder

    n = stylize_folder(
        args.model,
        args.images_dir,
        args.out_dir,
        domain=args.domain,
        seed=args.seed,
        attribute_source=args.attribute,
        device=args.device,
    )
    print(f"stylized {n} images into domain {args.domain} -> {args.out_dir}")
    return 0


def _holdout(args: argparse.Namespace) -> int:
    from nucleistyle.data.holdout import make_holdout

    table = make_holdout(
        args.train_dir, args.out_dir, fraction=args.fraction, seed=args.seed, k=args.k
    )
    counts = table.groupby(["name", "set"]).size().unstack(fill_value=0)
    n_test = int((table["set"] == "stage1_test").sum())
    print(f"held out {n_test} of {len(table)} images -> {args.out_dir}")
    print(counts.to_string())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nucleistyle", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "score", help="official DSB 2018 score of a submission against a solution file"
    )
    p.add_argument(
        "solution",
        help="solution CSV (ImageId,EncodedPixels,Height,Width,Usage), e.g. stage1_solution.csv",
    )
    p.add_argument("submission", help="submission CSV (ImageId,EncodedPixels)")
    p.add_argument(
        "--per-image", metavar="OUT.csv", help="write the per-image table (TP/FP/FN per threshold)"
    )
    p.add_argument(
        "--groups", metavar="GROUPS.csv", help="ImageId -> group table for per-group scores"
    )
    p.add_argument(
        "--group-column", default="modality", help="group column of --groups (default: modality)"
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object (score, n_images, groups, missing)",
    )
    p.set_defaults(func=_score)

    p = sub.add_parser(
        "synthesize", help="write the synthetic multi-modality data set in BBBC038 layout"
    )
    p.add_argument("out_dir")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-train", type=int, default=120)
    p.add_argument("--n-test-per-modality", type=int, default=6)
    p.add_argument("--size", type=int, default=128, help="image height and width (px)")
    p.set_defaults(func=_synthesize)

    p = sub.add_parser("cluster", help="group images into modalities: K-means on HSV features")
    p.add_argument(
        "images_dir", help="BBBC038-layout folder (<id>/images/<id>.png) or a flat folder"
    )
    p.add_argument("--k", type=int, default=6, help="number of clusters (default: 6)")
    p.add_argument("--out", required=True, metavar="ASSIGNMENTS.csv", help="ImageId, cluster, ...")
    p.add_argument(
        "--model", metavar="MODEL.json", help="also save the model (to assign new images)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-init", type=int, default=20, help="K-means restarts (default: 20)")
    p.add_argument("--workers", type=int, default=2)
    p.set_defaults(func=_cluster)

    p = sub.add_parser(
        "classical", help="segment a folder with the classical threshold + watershed baseline"
    )
    p.add_argument(
        "images_dir", help="BBBC038-layout folder (<id>/images/<id>.png) or a flat folder of images"
    )
    p.add_argument("submission", help="output submission CSV")
    p.add_argument("--labels-dir", help="also write 16-bit label PNGs here")
    p.add_argument("--workers", type=int, default=2)
    p.set_defaults(func=_classical)

    p = sub.add_parser(
        "segment", help="segment a folder with a trained Mask R-CNN (single pass or --tta)"
    )
    p.add_argument(
        "model",
        help="model file written by the pipeline: results/segment/<baseline>-<arm>/model.pt",
    )
    p.add_argument(
        "images_dir", help="BBBC038-layout folder (<id>/images/<id>.png) or a flat folder of images"
    )
    p.add_argument("out_dir", help="write <ImageId>.png here: 16-bit label images (0 = background)")
    p.add_argument("--submission", metavar="OUT.csv", help="also write a Kaggle submission CSV")
    p.add_argument(
        "--tta",
        action="store_true",
        help="test-time augmentation: the 8 dihedral variants, merged by voting",
    )
    p.add_argument(
        "--device", default="auto", help="auto (default: CUDA if available), cpu, cuda, cuda:N"
    )
    p.set_defaults(func=_segment)

    p = sub.add_parser(
        "stylize", help="render a folder of images in another domain with the trained style GAN"
    )
    p.add_argument("model", help="GAN model file written by the pipeline: results/gan/model.pt")
    p.add_argument(
        "images_dir", help="BBBC038-layout folder (<id>/images/<id>.png) or a flat folder of images"
    )
    p.add_argument("out_dir", help="write <ImageId>.png here: RGB, the size of each input")
    p.add_argument(
        "--domain", type=int, required=True, help="target domain (cluster index, 0..C-1)"
    )
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the attribute draws; each image's draw also depends on its ImageId",
    )
    p.add_argument(
        "--attribute",
        choices=("prior", "domain_stats"),
        help="attribute sampling: N(0, I) or the target domain's statistics (default: the model's)",
    )
    p.add_argument(
        "--device", default="auto", help="auto (default: CUDA if available), cpu, cuda, cuda:N"
    )
    p.set_defaults(func=_stylize)

    p = sub.add_parser(
        "holdout",
        help="split a training folder into train + held-out test (data.source local layout)",
    )
    p.add_argument("train_dir", help="BBBC038-layout training folder (<id>/images, <id>/masks)")
    p.add_argument("out_dir", help="new folder: stage1_train/, stage1_test/, stage1_solution.csv")
    p.add_argument("--fraction", type=float, default=0.2, help="share held out per cluster")
    p.add_argument("--k", type=int, default=6, help="HSV clusters used as strata")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_holdout)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.verbose:
        setup_logging()
    try:
        return args.func(args)
    except (NucleistyleError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
