"""The measured-results page (docs/results.md), regenerated from a finished run's outputs.

One section per configuration (``demo``, ``cpu``, ``paper``, ...), headed once by the run's date,
commit and machine (from ``results/report/provenance.json``) and its wall time (the last
complete Snakemake log), then: Table 1 (every model's score with its 95 % interval, per
modality), the paired comparisons (every arm minus ``none``, ``style`` minus ``jitter``; overall
and per modality), the GAN's copy quality (``results/gan/transfer_quality.csv``) and the copies
the segmenters trained on (``results/augment/manifest.csv``), and each job's time. Regenerating a
section replaces it and keeps the others:

    python -m nucleistyle.report.results results --name demo   (``make results-page``)
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from nucleistyle.errors import NucleistyleError
from nucleistyle.outputs import atomic_path
from nucleistyle.paths import PathLike

__all__ = ["main", "results_section", "update_page"]

log = logging.getLogger(__name__)
PAGE_HEADER = """# Measured results

Generated from finished runs by `make results-page NAME=<configuration>` (which runs
`python -m nucleistyle.report.results results --name <configuration>`); do not edit by hand. Each
section says which commit, machine and date produced it. What the measures mean: docs/gan.md
(copy quality), docs/baselines.md (segmenters, Table 1), the report's captions.
"""
SECTION = re.compile(r"^## (\S+).*?(?=^## |\Z)", re.M | re.S)


def _interval(mean: float, low: float, high: float, signed: bool = False) -> str:
    fmt = "{:+.3f}" if signed else "{:.3f}"
    return f"{fmt.format(mean)} [{fmt.format(low)}, {fmt.format(high)}]"


def _markdown(table: pd.DataFrame) -> str:
    head = "| " + " | ".join(map(str, table.columns)) + " |"
    rule = "|" + "|".join("---" for _ in table.columns) + "|"
    rows = ["| " + " | ".join(map(str, row)) + " |" for row in table.itertuples(index=False)]
    return "\n".join([head, rule, *rows])


def _header(results: Path, name: str, snakemake_log: Path | None) -> str:
    path = results / "report" / "provenance.json"
    try:
        prov = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise NucleistyleError(f"{path}: cannot read the run's provenance ({err})") from err
    git, hw = prov["git"], prov["hardware"]
    dirty = " (with uncommitted changes)" if git.get("dirty") == "yes" else ""
    wall = _wall_time(snakemake_log) if snakemake_log else None
    lines = [
        f"## {name}",
        "",
        f"Run of {prov['date'][:10]}, commit `{git['commit'][:12]}`{dirty}; {hw['cpu']}, "
        f"{hw['cores']}, GPUs: {hw['gpus']}."
        + (f" Wall time {wall} (Snakemake log)." if wall else ""),
    ]
    return "\n".join(lines)


def _wall_time(snakemake_log: Path) -> str | None:
    match = re.search(r"^Elapsed time: (\d+):(\d\d):(\d\d)", snakemake_log.read_text(), re.M)
    if not match:
        return None
    h, m, s = map(int, match.groups())
    return f"{h * 60 + m} min {s} s"


def latest_complete_log(workdir: Path) -> Path | None:
    """The newest Snakemake log under ``workdir/.snakemake/log`` that reached 100 %."""
    logs = sorted((workdir / ".snakemake" / "log").glob("*.snakemake.log"), reverse=True)
    for path in logs:
        if "steps (100%) done" in path.read_text():
            return path
    return None


def _table1(results: Path) -> str:
    table = pd.read_csv(results / "score" / "table1.csv")
    ours = table[table["source"] == "this run"]
    groups = [c.removeprefix("score_") for c in ours.columns if c.startswith("score_")]
    rows = []
    for row in ours.itertuples(index=False):
        cells = {
            "model": row.model,
            "test set": row.testset,
            "images": int(row.n_images),
            "DSB score [95 % CI]": _interval(row.score, row.ci_low, row.ci_high),
        }
        for group in groups:
            cells[group] = f"{getattr(row, 'score_' + group):.3f}"
        rows.append(cells)
    return "### Table 1 (DSB score over the test images; per modality)\n\n" + _markdown(
        pd.DataFrame(rows)
    )


def _paired(results: Path) -> str:
    paired = pd.read_csv(results / "score" / "paired_differences.csv")
    if paired.empty:
        return "### Paired comparisons\n\nNo augmentation arm to compare."
    groups = ["all", *sorted(set(paired["group"]) - {"all"})]
    rows = []
    for (model, reference, testset), part in paired.groupby(
        ["model", "reference", "testset"], sort=False
    ):
        part = part.set_index("group")
        cells = {"model − reference": f"{model} − {reference}", "test set": testset}
        for group in groups:
            if group in part.index:
                r = part.loc[group]
                cells[group] = (
                    f"{_interval(r.mean_diff, r.ci_low, r.ci_high, True)} "
                    f"({int(r.wins)}/{int(r.losses)})"
                )
            else:
                cells[group] = ""
        rows.append(cells)
    return (
        "### Paired comparisons (mean difference [95 % CI] (images won/lost), overall and per "
        "modality)\n\n" + _markdown(pd.DataFrame(rows))
    )


def _copies(results: Path) -> str:
    quality = pd.read_csv(results / "gan" / "transfer_quality.csv")
    off = quality[quality.source_domain != quality.target_domain]
    diagonal = quality[quality.source_domain == quality.target_domain]
    rows = [
        ("GAN copies", off.visibility_ratio, off.phantoms_per_100, off.style_hit, off.fg_iou),
        ("an unrelated image of the target domain", off.visibility_ratio_unrelated,
         off.phantoms_per_100_unrelated, None, None),
        ("real images of the target domain", None, off.phantoms_per_100_real, None, None),
    ]  # fmt: skip
    table = pd.DataFrame(
        [
            {
                "": label,
                "visibility vs target domain": "1" if vis is None else f"{vis.mean():.2f}",
                "phantoms per 100 nuclei": f"{phantoms.mean():.1f}",
                "style_hit": "" if hit is None else f"{hit.mean():.2f}",
                "fg_iou": "" if iou is None else f"{iou.mean():.2f}",
            }
            for label, vis, phantoms, hit, iou in rows
        ]
    )
    lines = [
        "### Style transfer (training images, off-diagonal means over domain pairs)",
        "",
        _markdown(table),
        "",
        f"Self-reconstruction keeps {diagonal.visibility_kept.mean():.2f} of the originals' "
        f"visibility; style_hit chance {1 / quality.source_domain.nunique():.2f}.",
    ]
    manifest_csv = results / "augment" / "manifest.csv"
    if manifest_csv.is_file():
        manifest = pd.read_csv(manifest_csv)
        lines += [
            "",
            f"Training copies: {len(manifest)} written, mean visibility "
            f"{manifest.visibility_ratio.mean():.2f} of the target domain's, "
            f"{manifest.phantoms_per_100.mean():.1f} phantoms per 100 nuclei, "
            f"{manifest.draws.mean():.2f} draws per copy.",
        ]
    return "\n".join(lines)


def _times(workdir: Path) -> str:
    rows = []
    for path in sorted((workdir / "benchmarks").rglob("*.tsv")):
        try:
            seconds = float(pd.read_csv(path, sep="\t")["s"].iloc[0])
        except (OSError, ValueError, KeyError, IndexError, pd.errors.ParserError):
            continue
        if seconds >= 30:
            rows.append({"job": str(path.relative_to(workdir / "benchmarks").with_suffix("")),
                         "seconds": round(seconds)})  # fmt: skip
    if not rows:
        return ""
    return "### Jobs of 30 s or more\n\n" + _markdown(pd.DataFrame(rows))


def results_section(results_dir: PathLike, name: str, workdir: PathLike | None = None) -> str:
    """The markdown section of one configuration's finished run.

    Args:
        results_dir: The run's ``results/`` folder.
        name: The configuration's name (the section heading).
        workdir: The folder the run ran in (``.snakemake/log``, ``benchmarks/``; default: the
            parent of ``results_dir``).

    Raises:
        NucleistyleError: a missing or unreadable output of the run (named).
    """
    results = Path(results_dir)
    work = Path(workdir) if workdir is not None else results.parent
    try:
        parts = [
            _header(results, name, latest_complete_log(work)),
            _table1(results),
            _paired(results),
            _copies(results),
            _times(work),
        ]
    except (OSError, KeyError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise NucleistyleError(f"{results}: not a finished run's results ({err})") from err
    return "\n\n".join(p for p in parts if p) + "\n"


def update_page(page: PathLike, name: str, section: str) -> None:
    """Replace (or add) the section ``## name`` of the results page, keeping the others."""
    path = Path(page)
    text = path.read_text() if path.is_file() else PAGE_HEADER
    sections = {m.group(1): m.group(0).rstrip() + "\n" for m in SECTION.finditer(text)}
    head = SECTION.split(text, maxsplit=1)[0] if sections else text
    sections[name] = section.rstrip() + "\n"
    body = "\n".join(sections[k] for k in sorted(sections))
    with atomic_path(path) as tmp:
        tmp.write_text(head.rstrip() + "\n\n" + body)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m nucleistyle.report.results", description=__doc__.splitlines()[0]
    )
    parser.add_argument("results_dir", help="a finished run's results/ folder")
    parser.add_argument("--name", required=True, help="configuration name: demo, cpu, paper, ...")
    parser.add_argument("--page", default="docs/results.md", help="the page to update")
    args = parser.parse_args(argv)
    try:
        update_page(args.page, args.name, results_section(args.results_dir, args.name))
    except NucleistyleError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"updated section {args.name} of {args.page}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
