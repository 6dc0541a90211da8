"""The Snakemake workflow: format, lint, dry-runs of every configuration and profile, config errors,
and tiny end-to-end runs (synthetic data; BBBC038 through a file:// mirror of the real sample)."""

from __future__ import annotations

import json
import re
import resource
import shutil
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from nucleistyle.report.results import results_section
from nucleistyle.workflow import overlay_config, segmenter_priority, validate_config
from tests.conftest import (
    DEMO_CONFIG,
    REPO,
    TINY,
    small_real_records,
    snakemake,
    workflow_copy,
    write_paired_tiffs,
)

pytestmark = pytest.mark.workflow


def test_snakefmt_leaves_the_workflow_unchanged():
    result = subprocess.run(
        [Path(sys.executable).with_name("snakefmt"), "--check", "Snakefile", "workflow/rules"],
        cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


def test_ruff_finds_nothing_in_the_python_code():
    result = subprocess.run(
        [Path(sys.executable).with_name("ruff"), "check", "src", "tests", "scripts", "bench"],
        cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize(
    "configfiles", [("config.yaml",), ("config.small.yaml", "config.demo.yaml")], ids=str
)
def test_snakemake_lint_finds_nothing(configfiles):
    result = snakemake("--lint", "--configfile", *configfiles)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Congratulations" in result.stdout + result.stderr


def test_dry_run_of_the_real_experiment_downloads_fixes_and_scores_both_stages(tmp_path):
    result = snakemake("-n", cwd=workflow_copy(tmp_path))
    assert result.returncode == 0, result.stderr
    rules = ["download_bbbc038", "extract_bbbc038", "download_annotation_fixes"]
    rules += ["apply_annotation_fixes", "segment_classical", "score_submission", "tabulate_scores"]
    for rule in rules:
        assert rule in result.stdout, rule
    assert "stage2_test_final" in result.stdout
    assert "synthesize_dataset" not in result.stdout


def _closed_port_url() -> str:
    with socket.socket() as sock:  # a loopback port that nobody listens on
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}/"


COCO_FILE = "resources/weights/maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth"
IMAGENET_FILE = "resources/weights/resnet50-0676ba61.pth"


def test_dry_run_of_the_real_experiment_plans_the_pretrained_starts_without_network(
    tmp_path, monkeypatch
):
    """config.yaml: Deep Retina from torchvision's COCO Mask R-CNN, Mirzaev from its ImageNet
    ResNet-50, each fetched once by the local rule; planning needs no network (the download
    URL here is a closed port)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    copy = workflow_copy(tmp_path)
    offline = f"pretrained={{base_url: '{_closed_port_url()}'}}"
    result = snakemake("-n", "--config", offline, cwd=copy)
    assert result.returncode == 0, result.stderr
    jobs = planned_job_texts(result.stdout)
    fetches = {job.split("output: ")[1].split()[0] for job in jobs["fetch_pretrained"]}
    assert fetches == {COCO_FILE, IMAGENET_FILE}
    for baseline, weights in (("deep_retina", COCO_FILE), ("mirzaev", IMAGENET_FILE)):
        train = [job for job in jobs["train_segmenter"] if f"baseline={baseline}," in job]
        assert len(train) == 4 and all(f"input: {weights}," in job for job in train), baseline
    # a file already in place (or in a torch hub cache) is not fetched again
    (copy / "resources" / "weights").mkdir(parents=True)
    (copy / COCO_FILE).write_bytes(b"a local copy")
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    (cache / Path(IMAGENET_FILE).name).write_bytes(b"a cached copy")
    again = snakemake("-n", "--config", offline, cwd=copy)
    assert again.returncode == 0, again.stderr
    assert planned_jobs(again.stdout)["fetch_pretrained"] == 1
    assert f"output: {IMAGENET_FILE}" in again.stdout and f"output: {COCO_FILE}" not in again.stdout


@pytest.mark.parametrize("dry_run", [True, False], ids=["dry-run", "run"])
def test_a_pretrained_start_that_cannot_be_had_stops_the_run_before_any_job(
    tmp_path, monkeypatch, dry_run
):
    """No file, no torch hub copy, no network: a real run stops before its first job with one
    line saying what to download and where; a dry run plans the download. A file:// mirror
    without the file stops both, without any network."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    copy = workflow_copy(tmp_path)
    coco = "segment={deep_retina: {weights: coco, backbone: resnet50}}"
    flags = ("-n",) if dry_run else ()
    offline = f"pretrained={{base_url: '{_closed_port_url()}'}}"
    result = snakemake(*flags, "--profile", "profiles/demo", "--config", coco, offline, cwd=copy)
    hint = (
        "Download https://download.pytorch.org/models/maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth "
        "on a machine with internet and put it into resources/weights/"
    )
    if dry_run:
        assert result.returncode == 0, result.stderr
        assert planned_jobs(result.stdout)["fetch_pretrained"] == 1
    else:
        assert result.returncode != 0
        assert "Connection refused" in result.stderr and hint in result.stderr
        assert "Connection refused" not in result.stdout
    mirror = f"pretrained={{base_url: '{(tmp_path / 'mirror').as_uri()}/'}}"
    missing = snakemake(*flags, "--profile", "profiles/demo", "--config", coco, mirror, cwd=copy)
    said = missing.stdout + missing.stderr
    assert missing.returncode != 0 and hint in said and "no such file" in said
    assert not (copy / "results").exists() and not (copy / "resources").exists()
    assert not (copy / "logs").exists()


def test_the_fetch_rule_verifies_a_torch_hub_copy_against_the_hash_in_its_name(
    tmp_path, monkeypatch
):
    """The rule runs (a copy in the torch hub cache, so no network); a copy whose bytes do
    not match the SHA-256 prefix in its name fails the job and leaves no file."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    (cache / Path(COCO_FILE).name).write_bytes(b"not the released file")
    copy = workflow_copy(tmp_path)
    offline = f"pretrained={{base_url: '{_closed_port_url()}'}}"
    result = snakemake(COCO_FILE, "--cores", "1", "--config", offline, cwd=copy)
    assert result.returncode != 0
    log = (copy / "logs/fetch_pretrained/maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth.log").read_text()
    assert "checksum mismatch" in log and "expected sha256 bf2d0c1e" in log
    assert not (copy / "resources" / "weights").exists() or not any(
        (copy / "resources" / "weights").iterdir()
    )


def test_dry_run_of_the_demo_profile_synthesizes_instead_of_downloading(tmp_path):
    result = snakemake("-n", "--profile", "profiles/demo", cwd=workflow_copy(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "synthesize_dataset" in result.stdout
    assert "download_bbbc038" not in result.stdout


def test_dry_run_of_the_slurm_profile_parses_profile_and_resources(tmp_path):
    copy = workflow_copy(tmp_path)
    result = snakemake("-n", "--profile", "profiles/slurm", *DEMO_CONFIG, cwd=copy)
    assert result.returncode == 0, result.stderr
    assert "segment_classical" in result.stdout


def test_dry_run_of_a_local_copy_needs_no_download(tmp_path):
    local = tmp_path / "bbbc038"
    for name in ("stage1_train", "stage1_test"):
        (local / name).mkdir(parents=True)
    (local / "stage1_solution.csv").write_text("ImageId,EncodedPixels,Height,Width,Usage\n")
    result = snakemake(
        "-n",
        "--config",
        f"data={{source: local, local: {{path: {local}}}, test_sets: [stage1_test]}}",
        cwd=workflow_copy(tmp_path),
    )
    assert result.returncode == 0, result.stderr
    assert "download_bbbc038" not in result.stdout
    assert "segment_classical" in result.stdout


def test_dry_run_with_enhanced_inputs_trains_the_segmenters_on_the_clahe_copies(tmp_path):
    copy = workflow_copy(tmp_path)
    result = snakemake(
        "-n", "--profile", "profiles/demo", "--config", "segment={inputs: enhanced}", cwd=copy
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    train = [job for job in result.stdout.split("\n\n") if "rule train_segmenter:" in job]
    assert train and all("results/cluster/enhanced/stage1_train" in job for job in train)


def test_two_cores_train_the_arms_without_a_gan_first_then_the_costlier_baseline():
    config: dict = {}
    for name in ("config.yaml", "config.small.yaml", "config.cpu.yaml"):
        overlay_config(config, yaml.safe_load((REPO / name).read_text()))
    validate_config(config)
    priority = {
        (baseline, arm): segmenter_priority(config, baseline, arm)
        for baseline in ("deep_retina", "mirzaev")
        for arm in ("none", "style")
    }
    # Mirzaev trains 384-px inputs, Deep Retina 256-px ones, both in batches of 8
    assert sorted(priority, key=priority.get, reverse=True) == [
        ("mirzaev", "none"),
        ("deep_retina", "none"),
        ("mirzaev", "style"),
        ("deep_retina", "style"),
    ]
    # above the predictions and plots (0), below the GAN's chain (10)
    assert all(0 < value < 10 for value in priority.values())


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("data={synthetic: {n_train: 3}}", "data.synthetic.n_train"),
        ("data={source: kaggle}", "data.source"),
        ("classical={sigma: -1}", "classical.sigma"),
        ("data={bbbc038: {base_url: ftp://x/}}", "data.bbbc038.base_url"),
        ("data={sorce: synthetic}", "data"),
        ("data={source: local}", "data.local.path"),
        ("data={source: holdout, holdout: {scheme: leave-cluster-out}}", "data.holdout.cluster"),
        ("segment={inputs: original}", "segment.inputs"),
        ("augment={gate: true, tries: 0}", "augment.tries"),
        ("seed=-4", "seed"),
        ("segment={mirzaev: {weights: /nonexistent/r50.pth}}", "segment.mirzaev.weights"),
        ("segment={deep_retina: {weights: coco}}", "segment.weights"),  # ResNet-18: no COCO
    ],
)
def test_an_invalid_config_value_stops_before_any_job_naming_the_key(tmp_path, override, key):
    copy = workflow_copy(tmp_path)
    result = snakemake("--cores", "1", *DEMO_CONFIG, "--config", override, cwd=copy)
    assert result.returncode != 0
    assert f"config key {key}" in result.stderr
    assert not (copy / "results").exists()
    assert not (copy / "resources").exists()


@pytest.fixture(scope="module")
def tiny_demo(tmp_path_factory) -> Path:
    """A finished tiny demo run (synthetic data) in a fresh copy of the workflow."""
    copy = workflow_copy(tmp_path_factory.mktemp("tiny"))
    run = snakemake("--profile", "profiles/demo", "--config", *TINY, cwd=copy)
    assert run.returncode == 0, run.stderr[-3000:]
    return copy


def planned_job_texts(output: str) -> dict[str, list[str]]:
    """Rule -> the text of each job a dry run prints (from its "rule <name>:" line on)."""
    jobs: dict[str, list[str]] = {}
    for block in re.split(r"^(?=rule \w+:$)", output, flags=re.MULTILINE)[1:]:
        name = block.split(":", 1)[0].removeprefix("rule ")
        jobs.setdefault(name, []).append(block.split("\n[", 1)[0])
    return jobs


def planned_jobs(output: str) -> dict[str, int]:
    """Rule -> job count from the job-stats table a dry-run prints (empty if nothing to do)."""
    lines = output.splitlines()
    starts = [i for i, line in enumerate(lines) if line.split() == ["job", "count"]]
    jobs: dict[str, int] = {}
    for line in lines[starts[0] + 1 :] if starts else []:
        name, count = line.split()
        if name == "total":
            break
        if count.isdigit():  # skip the ----- rule under the header
            jobs[name] = int(count)
    return jobs


def test_tiny_demo_runs_end_to_end_and_reports_per_modality_scores(tiny_demo):
    copy = tiny_demo

    scores = pd.read_csv(copy / "results/score/scores.csv")
    modalities = pd.read_csv(copy / "resources/synthetic/modalities.csv")
    test_modalities = set(modalities.loc[modalities["set"] == "stage1_test", "modality"])
    assert set(scores["group"]) == test_modalities | {"all"}
    assert scores["score"].between(0, 1).all()
    overall = json.loads((copy / "results/score/classical/stage1_test/summary.json").read_text())
    per_image = pd.read_csv(copy / "results/score/classical/stage1_test/per_image.csv")
    assert overall["n_images"] == len(per_image) == 2 * len(test_modalities)
    assert overall["score"] == pytest.approx(per_image["score"].mean())

    quality = pd.read_csv(copy / "results/report/cluster_quality.csv").set_index("metric")["value"]
    assert quality["k"] == 6 and quality["largest_cluster_share"] > 0.5
    assert {"ari_vs_true_modality", "silhouette"} <= set(quality.index)
    enhanced = pd.read_csv(copy / "results/cluster/clahe.csv")
    assert enhanced["enhanced"].any() and not enhanced["enhanced"].all()

    report = snakemake("--profile", "profiles/demo", "--config", *TINY,
                       "--report", "results/report.html", cwd=copy)  # fmt: skip
    assert report.returncode == 0, report.stderr[-3000:]
    html = (copy / "results/report.html").read_text()
    for name in (
        "scores_by_modality.png", "dataset_summary.csv", "fig2a_clusters_pca.png",
        "fig3_style_transfer.png", "gan_losses.png", "augmented_gallery.png",
        "segmenter_training.png", "table1.csv", "paired_differences.csv",
        "paired_by_modality.png", "fig4_predictions.png", "provenance.html",
    ):  # fmt: skip
        assert name in html, name


def test_tiny_demo_trains_every_model_and_scores_it_in_table1(tiny_demo):
    copy = tiny_demo
    manifest = pd.read_csv(copy / "results/augment/manifest.csv")
    # augment.copies of every training image at most: the gate leaves out those that fail
    assert (manifest["source_ImageId"].value_counts() <= 2).all()
    assert manifest["draws"].between(1, 4).all()
    assert (manifest["target_domain"] != manifest["source_cluster"]).all()
    for augmented in manifest["ImageId"]:
        assert (copy / "results/augment/stage1_train" / augmented / "masks").is_dir()
    table = pd.read_csv(copy / "results/score/table1.csv")
    ours = table[table["source"] == "this run"]
    expected = {"classical"} | {
        f"{b}-{a}{t}" for b in ("deep_retina", "mirzaev") for a in ("none", "style")
        for t in ("", "-tta")
    }  # fmt: skip
    assert set(ours["model"]) == expected
    assert (ours["ci_low"] <= ours["score"]).all() and (ours["score"] <= ours["ci_high"]).all()
    assert set(table.loc[table["source"] == "paper Table 1", "paper_score"]) == {
        0.570, 0.532, 0.609, 0.599, 0.613
    }  # fmt: skip
    paired = pd.read_csv(copy / "results/score/paired_differences.csv")
    overall = paired[paired["group"] == "all"]
    assert len(overall) == 4  # 2 baselines x (single pass, TTA), style minus none
    assert set(paired["group"]) > {"all"}  # and per modality
    assert {"visibility_ratio", "phantoms_per_100", "draws"} <= set(manifest.columns)
    for model in expected - {"classical"}:
        submission = copy / f"results/predict/{model}/stage1_test/submission.csv"
        assert submission.read_text().startswith("ImageId,EncodedPixels")

    # the results page's section of this run, from its outputs alone
    section = results_section(copy / "results", "tiny")
    assert section.startswith("## tiny\n") and "commit `" in section
    assert "deep_retina-style − deep_retina-none" in section and "Wall time" in section

    # nothing to do on a second run: outputs are complete and up to date
    again = snakemake("-n", "--profile", "profiles/demo", "--config", *TINY, cwd=copy)
    assert "Nothing to be done" in again.stdout + again.stderr


def test_changing_a_stage_config_reruns_that_stage_and_what_follows_only(tiny_demo):
    result = snakemake(
        "-n",
        "--profile",
        "profiles/demo",
        "--config",
        *TINY,
        "classical={sigma: 1.5}",
        cwd=tiny_demo,
    )
    assert planned_jobs(result.stdout) == {
        "segment_classical": 1, "score_submission": 1, "tabulate_scores": 1,
        "record_provenance": 1, "all": 1,
    }  # fmt: skip


def test_changing_a_stage_code_reruns_that_stage_and_what_follows_only(tiny_demo):
    module = tiny_demo / "src" / "nucleistyle" / "cluster.py"
    original = module.read_text()
    try:
        module.write_text(original + "\n# a change\n")
        result = snakemake("-n", "--profile", "profiles/demo", "--config", *TINY, cwd=tiny_demo)
    finally:
        module.write_text(original)
    jobs = planned_jobs(result.stdout)
    assert {"cluster_images", "assign_clusters", "enhance_images", "plot_clusters"} & set(jobs)
    assert "synthesize_dataset" not in jobs and "segment_classical" not in jobs


@pytest.fixture(scope="module")
def demo_rules(tiny_demo) -> set[str]:
    """Every rule in the tiny demo's DAG."""
    everything = snakemake("-n", "-F", "--profile", "profiles/demo", "--config", *TINY,
                           cwd=tiny_demo)  # fmt: skip
    return set(planned_jobs(everything.stdout))


@pytest.mark.parametrize("module", ["torchutils.py", "naming.py", "data/images.py"])
def test_editing_a_library_module_reruns_every_rule_whose_script_imports_it(
    tiny_demo, demo_rules, module
):
    """Each rule's code inputs are computed from its script's imports (transitively): an edit
    anywhere in what a script runs marks the rule for rerun (torchutils.py holds checkpointing)."""
    from nucleistyle.workflow import script_imports
    from tests.test_envs import RULES

    path = tiny_demo / "src" / "nucleistyle" / module
    src = REPO / "src"
    importers = {
        rule for rule, _, _, script in RULES
        if src / "nucleistyle" / module in script_imports(script, src)[0]
    }  # fmt: skip
    original = path.read_text()
    try:
        path.write_text(original + "\n# a change\n")
        result = snakemake("-n", "--profile", "profiles/demo", "--config", *TINY, cwd=tiny_demo)
    finally:
        path.write_text(original)
    in_demo = importers & demo_rules
    assert in_demo, module
    assert in_demo <= set(planned_jobs(result.stdout)), result.stdout[-2000:]


def test_forcerun_reruns_the_named_rule_and_its_dependents(tiny_demo):
    dry_run = ("-n", "--profile", "profiles/demo", "--config", *TINY)
    jobs = planned_jobs(snakemake(*dry_run, "-R", "cluster_images", cwd=tiny_demo).stdout)
    assert jobs["cluster_images"] == jobs["enhance_images"] == jobs["plot_clusters"] == 1
    assert "synthesize_dataset" not in jobs and "segment_classical" not in jobs
    only = snakemake(*dry_run, "--forcerun", "segment_classical", cwd=tiny_demo)
    expected = {"segment_classical", "score_submission", "tabulate_scores", "all"}
    assert set(planned_jobs(only.stdout)) == expected


def test_bbbc038_source_runs_through_a_file_mirror_with_fixes(tmp_path, shared_bbbc038):
    """Download, safe unzip, digest record, annotation fixes, classical segmentation and scoring
    of real BBBC038 images served from a file:// mirror."""
    from nucleistyle.data.bbbc038 import list_images, load_sample
    from nucleistyle.data.csvio import write_solution

    copy = workflow_copy(tmp_path)
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    fixed_root = shared_bbbc038 / "stage1_train"
    original_root = shared_bbbc038 / "stage1_train_original"
    pre_fix = sorted(p.name for p in original_root.iterdir())
    others = sorted(p.name for p in fixed_root.iterdir() if p.name not in pre_fix)[:4]
    test_ids = sorted(p.name for p in fixed_root.iterdir())[-3:]

    # original release: the two pre-fix images plus four unchanged ones, at the zip's top level
    with zipfile.ZipFile(mirror / "stage1_train.zip", "w") as archive:
        for image_id in pre_fix:
            for file in sorted((original_root / image_id).rglob("*.png")):
                archive.write(file, str(file.relative_to(original_root)))
        for image_id in others:
            for file in sorted((fixed_root / image_id).rglob("*.png")):
                archive.write(file, str(file.relative_to(fixed_root)))
    # the fixes repository archive, GitHub layout
    with zipfile.ZipFile(tmp_path / "fixes.zip", "w") as archive:
        for image_id in pre_fix + others:
            for file in sorted((fixed_root / image_id).rglob("*.png")):
                archive.write(
                    file,
                    f"kaggle-dsbowl-2018-dataset-fixes-abc/stage1_train/{file.relative_to(fixed_root)}",
                )
    # a test set (images only) and its solution
    with zipfile.ZipFile(mirror / "stage1_test.zip", "w") as archive:
        for image_id in test_ids:
            image = fixed_root / image_id / "images" / f"{image_id}.png"
            archive.write(image, f"{image_id}/images/{image_id}.png")
    truth = {
        r.image_id: load_sample(r).labels for r in list_images(fixed_root) if r.image_id in test_ids
    }
    write_solution(mirror / "stage1_solution.csv", truth)

    overlay = {
        "data": {
            "source": "bbbc038",
            "test_sets": ["stage1_test"],
            "bbbc038": {
                "base_url": f"file://{mirror}/",
                "content_digest": {"stage1_train": None},
                "fixes": {"url": f"file://{tmp_path / 'fixes.zip'}", "content_digest": None},
            },
        }
    }
    (copy / "mirror.yaml").write_text(yaml.safe_dump(overlay))
    targets = ["results/score/classical/stage1_test/summary.json"]
    targets += ["results/acquire/annotation_fixes.tsv"]
    run = snakemake(*targets, "--cores", "2", "--configfile", "mirror.yaml", cwd=copy)
    assert run.returncode == 0, run.stderr[-3000:]

    manifest = pd.read_csv(copy / "results/acquire/annotation_fixes.tsv", sep="\t")
    assert sorted(manifest["ImageId"]) == pre_fix
    assert (manifest["masks_added"] == 1).all()
    record = json.loads((copy / "resources/bbbc038/raw/stage1_train.json").read_text())
    assert record["n_images"] == 6
    summary = json.loads((copy / "results/score/classical/stage1_test/summary.json").read_text())
    assert summary["n_images"] == 3 and 0 < summary["score"] <= 1
    fixed_masks = {
        p.name
        for p in (copy / "resources/bbbc038/fixed/stage1_train" / pre_fix[0] / "masks").iterdir()
    }
    assert fixed_masks == {p.name for p in (fixed_root / pre_fix[0] / "masks").iterdir()}
    assert np.isfinite(summary["score"])


def test_changing_the_gan_reruns_the_style_arm_and_nothing_else(tiny_demo):
    """A GAN change (config, code, or -R train_gan) reruns the GAN, the style-augmented set, the
    style-arm segmenters and their predictions and scores; not the `none` arm, not the classical."""
    dry_run = ("-n", "--profile", "profiles/demo", "--config", *TINY)
    gan = next(item for item in TINY if item.startswith("gan="))
    module = tiny_demo / "src" / "nucleistyle" / "gan" / "engine.py"
    original = module.read_text()
    try:
        module.write_text(original + "\n# a change\n")
        by_code = snakemake(*dry_run, cwd=tiny_demo)
    finally:
        module.write_text(original)
    runs = {
        "config": snakemake(*dry_run, gan.removesuffix("}") + ", w_cc: 5.0}", cwd=tiny_demo),
        "code": by_code,
        "forcerun": snakemake(*dry_run, "--forcerun", "train_gan", cwd=tiny_demo),
    }
    style = {"deep_retina-style", "mirzaev-style"}
    for how, result in runs.items():
        assert result.returncode == 0, f"{how}: {result.stderr[-2000:]}"
        outputs = {
            path
            for line in result.stdout.splitlines()
            if line.strip().startswith("output: ")
            for path in line.strip().removeprefix("output: ").split(", ")
        }
        per_model = [p.split("/") for p in outputs if p.count("/") >= 3]  # results/<stage>/<model>/
        trained = {parts[2] for parts in per_model if parts[1] == "segment"}
        scored = {parts[2] for parts in per_model if parts[1] == "score"}
        assert trained == style, how
        assert scored == style | {f"{m}-tta" for m in style}, how
        jobs = planned_jobs(result.stdout)
        assert jobs["train_gan"] == jobs["augment_dataset"] == 1, how
        assert not {"synthesize_dataset", "cluster_images", "segment_classical"} & set(jobs), how


def test_your_own_16bit_two_channel_tiffs_run_through_every_stage(tmp_path, shared_bbbc038):
    """data.source folder: a small annotated TIFF set (16-bit, two channels, uint16 label
    images) made from the real sample, a labelled and an unlabelled test folder; the whole DAG
    runs (one baseline: the other's jobs are the same rules), every labelled set is scored and
    every model's label images and overlays are written."""
    import tifffile

    from nucleistyle.data.bbbc038 import load_sample

    small = small_real_records(shared_bbbc038 / "stage1_train", 16)
    samples = [(f"s{i:02d}", s.image, s.labels) for i, s in enumerate(map(load_sample, small))]
    write_paired_tiffs(tmp_path / "train", samples[:11])
    write_paired_tiffs(tmp_path / "lab", samples[11:14])
    write_paired_tiffs(tmp_path / "unl", samples[14:], labels=False)
    copy = workflow_copy(tmp_path)
    overlay = {
        "data": {
            "source": "folder",
            "folder": {
                "train": str(tmp_path / "train"),
                "test": {"lab": str(tmp_path / "lab"), "unl": str(tmp_path / "unl")},
                "intensity": {"channels": [0], "percentiles": [1, 99.8]},
            },
        },
        "segment": {"baselines": ["deep_retina"]},
    }
    (copy / "mine.yaml").write_text(yaml.safe_dump(overlay))
    tiny = [item for item in TINY if not item.startswith("data=")]
    args = ["--profile", "profiles/demo", *DEMO_CONFIG, "mine.yaml"]
    run = snakemake(*args, "--config", *tiny, cwd=copy)
    assert run.returncode == 0, run.stderr[-3000:]

    scores = pd.read_csv(copy / "results/score/scores.csv")
    arms = ("none", "style")
    models = {"classical"} | {f"deep_retina-{a}{t}" for a in arms for t in ("", "-tta")}
    overall = scores[scores["group"] == "all"]
    assert set(overall["model"]) == models and set(overall["testset"]) == {"lab"}
    assert (overall["n_images"] == 3).all() and overall["score"].between(0, 1).all()
    assert overall.set_index("model").loc["classical", "score"] > 0
    assert (copy / "resources/folder/lab_solution.csv").is_file()
    assert not (copy / "resources/folder/unl_solution.csv").exists()
    for model in models:
        for testset, n in (("lab", 3), ("unl", 2)):
            folder = copy / "results/labels" / model / testset
            assert len(list(folder.glob("*.tif"))) == n, folder
            assert len(list((folder / "overlays").glob("*.png"))) == n, folder
    labels = tifffile.imread(copy / "results/labels/classical/unl/s14.tif")
    assert labels.shape == load_sample(small[14]).labels.shape and labels.max() > 0
    for stage in ("results/gan/model.pt", "results/augment/manifest.csv",
                  "results/report/fig4_predictions.png", "results/score/table1.csv"):  # fmt: skip
        assert (copy / stage).is_file(), stage


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("data={source: folder}", "data.folder.train"),
        ("data={source: folder, folder: {train: /nonexistent}}", "data.folder.test"),
        ("data={source: folder, folder: {test: {stage1_train: x}}}", "data.folder.test"),
    ],
)
def test_a_bad_folder_source_stops_before_any_job_naming_the_key(tmp_path, override, key):
    copy = workflow_copy(tmp_path)
    result = snakemake("-n", *DEMO_CONFIG, "--config", override, cwd=copy)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert f"config key {key}" in output and "Traceback" not in output, output[-2000:]


@pytest.mark.slow
def test_the_paper_configuration_runs_end_to_end_on_a_few_real_images(tmp_path, shared_bbbc038):
    """config.yaml as it stands, before anyone spends GPU hours on it: both baselines at
    ResNet-50 FPN and 512 px from their pretrained starts (files in the released key layouts,
    random values: torchvision's cannot be downloaded here), the GAN at crop 216 with 6 domains
    and its full width, Deep Retina's 15-variant TTA, every arm. Changed: the data (9 real
    training images and 1 test image as a local copy), the budgets (2 GAN updates, 1 iteration
    of each segmenter) and the machine (the CPU, one thread per job). 17 CPU minutes, fp32 (32.5
    min on 2 cores that other work kept at a load of about 10)."""
    import torch

    from nucleistyle.data.bbbc038 import list_images, load_sample
    from nucleistyle.data.csvio import write_solution
    from nucleistyle.segment.model import released_standin

    manifest = pd.read_csv(shared_bbbc038 / "manifest.csv")
    small = manifest[manifest.height == 256]
    picks = {"Default": 4, "Purple": 3, "PinkAndPurple": 3}  # colours for 6 domains
    chosen = [i for group, n in picks.items() for i in small[small.group == group].ImageId[:n]]
    test_id, train_ids = chosen[0], chosen[1:]
    data = tmp_path / "data"
    for image_id in train_ids:
        shutil.copytree(
            shared_bbbc038 / "stage1_train" / image_id, data / "stage1_train" / image_id
        )
    source = shared_bbbc038 / "stage1_train" / test_id
    shutil.copytree(source / "images", data / "stage1_test" / test_id / "images")
    (sample,) = [load_sample(r) for r in list_images(shared_bbbc038 / "stage1_train")
                 if r.image_id == test_id]  # fmt: skip
    write_solution(data / "stage1_solution.csv", {test_id: sample.labels})

    copy = workflow_copy(tmp_path)
    weights = copy / "resources" / "weights"
    weights.mkdir(parents=True)
    for start, name in (("coco", COCO_FILE), ("imagenet", IMAGENET_FILE)):
        torch.save(released_standin(start, "resnet50"), copy / name)
    overlay = {
        "data": {"source": "local", "local": {"path": str(data)}, "test_sets": ["stage1_test"]},
        "gan": {"iterations": 2, "checkpoint_every": 2},
        "segment": {"common": {"iterations": 1, "epochs": None, "checkpoint_every": 1}},
        "resources": {"threads": 1, "gpu": 0},
    }
    (copy / "budget.yaml").write_text(yaml.safe_dump(overlay))
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    plan = snakemake("-n", "--configfile", "budget.yaml", cwd=copy)
    assert plan.returncode == 0, plan.stderr[-3000:]
    assert "fetch_pretrained" not in planned_jobs(plan.stdout)  # the files are in place

    start, cpu = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    # one thread per job: clustering and CLAHE ask for 2, and on 2 cores they would wait behind
    # the 1-thread segmenters, and with them the GAN, the augmentation and both style arms
    threads = ("--cores", "2", "--max-threads", "1")
    run = snakemake(*threads, "--configfile", "budget.yaml", cwd=copy, timeout=5400)
    minutes = (time.perf_counter() - start) / 60
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_minutes = (after.ru_utime + after.ru_stime - cpu.ru_utime - cpu.ru_stime) / 60
    assert run.returncode == 0, run.stderr[-5000:]
    print(f"the paper configuration, {len(train_ids)} + 1 images: {minutes:.1f} min, "
          f"{cpu_minutes:.1f} CPU min")  # fmt: skip

    arms, baselines = config["segment"]["arms"], config["segment"]["baselines"]
    assert len(arms) == 4 and len(baselines) == 2  # every arm of config.yaml
    scores = pd.read_csv(copy / "results/score/table1.csv")
    ours = set(scores.loc[scores["source"] == "this run", "model"])
    trained = {f"{b}-{a}" for b in baselines for a in arms}
    assert ours == {"classical"} | trained | {f"{m}-tta" for m in trained}
    for model in trained:
        state = torch.load(copy / f"results/segment/{model}/model.pt", weights_only=True)
        stored = state["config"]
        assert (stored["backbone"], stored["prep.size"], stored["model.fpn_channels"]) == (
            "resnet50",
            512,
            256,
        )
        assert stored["weights"] == ("coco" if model.startswith("deep_retina") else "imagenet")
        log = (copy / f"logs/train_segmenter/{model}.log").read_text()
        start_file = COCO_FILE if model.startswith("deep_retina") else IMAGENET_FILE
        kind = "whole-model" if model.startswith("deep_retina") else "backbone"
        assert f"from {start_file} ({kind} start" in log, model
    gan = torch.load(copy / "results/gan/model.pt", weights_only=True)
    assert (gan["config"]["crop"], gan["config"]["n_domains"]) == (216, 6)
    assert gan["config"]["base_channels"] == 64
    tta_log = (copy / "logs/predict/deep_retina-none-tta/stage1_test/0.log").read_text()
    assert "1 images of" in tta_log and "15 variants each" in tta_log
