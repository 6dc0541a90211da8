# Helpers shared by all stages: config validation, data-source wiring, input functions.
# No rules here (snakemake --lint forbids mixing functions and rules).

import os
import sys
from pathlib import Path
from types import SimpleNamespace

# Rule scripts import the library from this checkout's src/, whatever environment (venv,
# per-stage conda env, SLURM job) runs them, since jobs inherit the PYTHONPATH set here.
sys.path.insert(0, os.path.join(workflow.basedir, "src"))
from nucleistyle.data.acquire import BBBC038_FILES, SOLUTION_FILES
from nucleistyle.gan.configs import RESUME_IGNORES as GAN_RESUME_IGNORES
from nucleistyle.naming import CLASSICAL, ModelName
from nucleistyle.segment.configs import RESUME_IGNORES as SEGMENTER_RESUME_IGNORES
from nucleistyle.segment.weights import RELEASED
from nucleistyle.workflow import (
    check_config,
    check_pretrained,
    export_library_path,
    gan_settings,
    pretrained_inputs,
    script_imports,
    segmenter_priority,
    segmenter_settings,
    validate_config,
)

export_library_path(workflow.basedir)

validate_config(config)
check_config(config)  # includes checking the segmenter settings: errors before any job

# The pretrained start each baseline's training reads (a file in resources/weights/, fetched
# by rule fetch_pretrained, or a local file); a missing file that no mirror can give stops the
# run here, and one that cannot be downloaded stops a real run before its first job (onstart).
PRETRAINED = pretrained_inputs(config)
RELEASED_FILES = sorted(RELEASED.values())
check_pretrained(config, probe=False)

SEGMENT = config["segment"]
# torch's thread count in every torch job (one per process on a shared small machine)
TORCH_THREADS = config["resources"]["threads"]
# Trained segmenters are named "<baseline>-<arm>"; each predicts once ("deep_retina-style") and,
# with predict.tta, also with test-time augmentation ("deep_retina-style-tta").
TRAINED = [ModelName(b, a) for b in SEGMENT["baselines"] for a in SEGMENT["arms"]]
SEGMENTERS = [str(m) for m in TRAINED]
PREDICTORS = SEGMENTERS + (
    [str(ModelName(m.baseline, m.arm, tta=True)) for m in TRAINED]
    if config["predict"]["tta"]
    else []
)
# Every scored model; the classical reference segmenter always is.
MODELS = [CLASSICAL, *PREDICTORS]
PREDICTOR_PATTERN = "({})-({})(-tta)?".format(
    "|".join(SEGMENT["baselines"]), "|".join(SEGMENT["arms"])
)
SOURCE = config["data"]["source"]
FOLDER = config["data"]["folder"]
# Test sets: BBBC038's (or the synthetic stage1_test), or the named folders of data.folder.test,
# of which those with labels (masks/) are scored and the others only predicted.
if SOURCE == "folder":
    TEST_SETS = list(FOLDER["test"])
    SCORED_SETS = [n for n, p in FOLDER["test"].items() if Path(p, "masks").is_dir()]
else:
    TEST_SETS = list(config["data"]["test_sets"])
    SCORED_SETS = TEST_SETS
# BBBC038's sets and files, and the solution CSV of each test set: defined once, in the library.
BBBC038_SETS = list(SOLUTION_FILES)
SOLUTIONS = {name: csv for name, csv in SOLUTION_FILES.items() if csv}
SYNTHETIC = "resources/synthetic"
IMPORTED = "resources/folder"
RAW = "resources/bbbc038/raw"
HOLDOUT = "resources/holdout"
DOWNLOADS = "resources/bbbc038/downloads"


def code_of(script):
    """The library files a rule's script imports (directly or through other library modules),
    as inputs: editing any of them reruns the rule."""
    files, _ = script_imports(
        os.path.join(workflow.basedir, "scripts", script),
        os.path.join(workflow.basedir, "src"),
    )
    return [str(path) for path in files]


def local_path(*parts):
    return str(Path(config["data"]["local"]["path"], *parts))


def get_train_images(wildcards=None):
    """The training set in BBBC038 layout (community-fixed when configured)."""
    if SOURCE == "synthetic":
        return f"{SYNTHETIC}/stage1_train"
    if SOURCE == "folder":
        return f"{IMPORTED}/stage1_train"
    if SOURCE == "local":
        return local_path("stage1_train")
    if SOURCE == "holdout":
        return f"{HOLDOUT}/stage1_train"
    return get_bbbc038_train()


def get_bbbc038_train(wildcards=None):
    """BBBC038's stage1_train as downloaded (community-fixed when configured)."""
    if config["data"]["bbbc038"]["fixes"]["apply"]:
        return "resources/bbbc038/fixed/stage1_train"
    return f"{RAW}/stage1_train"


def get_holdout_source(wildcards):
    """The annotated images data.source holdout splits."""
    return config["data"]["holdout"]["train"] or get_bbbc038_train()


def get_test_images(wildcards):
    if SOURCE == "synthetic":
        return f"{SYNTHETIC}/{wildcards.testset}"
    if SOURCE == "folder":
        return f"{IMPORTED}/{wildcards.testset}"
    if SOURCE == "local":
        return local_path(wildcards.testset)
    if SOURCE == "holdout":
        return f"{HOLDOUT}/{wildcards.testset}"
    return f"{RAW}/{wildcards.testset}"


def get_segmenter_train_images(wildcards):
    """What the segmenters train on (segment.inputs): the training set or its CLAHE copy
    (the model file records the CLAHE, and prediction applies it to each test image)."""
    if SEGMENT["inputs"] == "enhanced":
        return "results/cluster/enhanced/stage1_train"
    return get_train_images()


def get_solution(wildcards):
    name = SOLUTIONS.get(wildcards.testset)
    if SOURCE == "synthetic":
        return f"{SYNTHETIC}/{name}"
    if SOURCE == "folder":
        return f"{IMPORTED}/{wildcards.testset}_solution.csv"
    if SOURCE == "local":
        return local_path(name)
    if SOURCE == "holdout":
        return f"{HOLDOUT}/{name}"
    return f"{DOWNLOADS}/{name}"


def get_groups(wildcards):
    """ImageId -> group table for per-modality scores: the true modality of synthetic images,
    otherwise the training cluster nearest to each test image."""
    if SOURCE == "synthetic":
        return {"groups": f"{SYNTHETIC}/modalities.csv"}
    return {"groups": f"results/cluster/{wildcards.testset}_assignments.csv"}


def get_group_column(wildcards):
    return "modality" if SOURCE == "synthetic" else "name"


def get_cluster_truth(wildcards):
    """Known modalities (synthetic data) to measure the clustering against."""
    if SOURCE == "synthetic":
        return {"truth": f"{SYNTHETIC}/modalities.csv"}
    return {}


def get_cluster_config(wildcards):
    return {**config["cluster"], "seed": config["seed"]}


def get_download_url(wildcards):
    return config["data"]["bbbc038"]["base_url"] + wildcards.bbbc_file


def get_download_sha256(wildcards):
    return config["data"]["bbbc038"]["sha256"].get(wildcards.bbbc_file)


def get_content_digest(wildcards):
    return config["data"]["bbbc038"]["content_digest"].get(wildcards.bbbc_set)


def get_dataset_summary_inputs(wildcards):
    inputs = {"train": get_train_images()}
    if SOURCE == "synthetic":
        inputs["groups"] = f"{SYNTHETIC}/modalities.csv"
    return inputs


def get_all_scores(wildcards):
    return expand(
        "results/score/{model}/{testset}/summary.json",
        model=MODELS,
        testset=SCORED_SETS,
    )


def get_final_outputs():
    outputs = [
        "results/report/dataset_summary.csv",
        "results/report/fig2a_clusters_pca.png",
        "results/report/examples.png",
        "results/gan/transfer_quality.csv",
        "results/report/fig3_style_transfer.png",
        "results/report/gan_losses.png",
        "results/report/augmented_gallery.png",
        "results/report/segmenter_training.png",
        "results/score/scores.csv",
        "results/score/table1.csv",
        "results/score/paired_differences.csv",
        "results/score/scores_by_modality.png",
        "results/report/provenance.html",
    ]
    if {"none", "style"} <= set(SEGMENT["arms"]):
        outputs.append("results/report/fig4_predictions.png")
    if SOURCE == "bbbc038" and config["data"]["bbbc038"]["fixes"]["apply"]:
        outputs.append("results/acquire/annotation_fixes.tsv")
    if SOURCE == "folder":  # label images (and overlays) for the user's tools
        outputs += expand(
            "results/labels/{model}/{testset}", model=MODELS, testset=TEST_SETS
        )
    return outputs


def get_user_folder(wildcards):
    """The user's folder behind an imported set (data.source folder)."""
    if wildcards.folder_set == "stage1_train":
        return FOLDER["train"]
    return FOLDER["test"][wildcards.folder_set]


def regex_of(names):
    """A wildcard constraint matching exactly these names (nothing when there are none)."""
    import re

    return "|".join(re.escape(n) for n in names) or "(?!)"


def config_hash(section, ignore=()):
    """Short hash of a config section: a checkpoint is only resumed under the same settings."""
    import hashlib
    import json

    kept = {k: v for k, v in section.items() if k not in ignore}
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()[:12]


def get_gan_config(wildcards):
    return gan_settings(config)


def get_gan_checkpoint(wildcards):
    """Per-configuration checkpoint; a larger iteration budget resumes the same one."""
    key = config_hash(get_gan_config(wildcards), ignore=GAN_RESUME_IGNORES)
    return f"results/gan/checkpoints/{key}.pt"


def get_gpu(wildcards):
    """GPUs a GPU rule asks for (resources.gpu); 0 makes no GPU request at all."""
    return config["resources"]["gpu"]


def get_mem_mb_train(wildcards, attempt):
    """MB; a job killed for memory is retried with more and resumes from its checkpoint."""
    return config["resources"]["train_mem_mb"] * attempt


def get_runtime_train(wildcards, attempt):
    """Minutes; a job killed at its wall time resumes from its checkpoint with more time."""
    return 720 * attempt


def get_priority_train(wildcards):
    """The arms without a GAN first, then the costlier baseline (see segmenter_priority)."""
    return segmenter_priority(config, wildcards.baseline, wildcards.arm)


def get_segmenter_overrides(wildcards):
    """segment.common, then segment.<baseline>, then the global seed (see segment/configs.py)."""
    return segmenter_settings(config, wildcards.baseline)


def get_segmenter_checkpoint(wildcards):
    """Per-configuration checkpoint; a larger iteration/epoch budget resumes the same one."""
    key = config_hash(
        {**get_segmenter_overrides(wildcards), "arm": wildcards.arm},
        ignore=SEGMENTER_RESUME_IGNORES,
    )
    return f"results/segment/{wildcards.baseline}-{wildcards.arm}/checkpoints/{key}.pt"


def get_segmenter_extra_inputs(wildcards):
    """The pretrained start's weights file, the restyled copies for the "style" arm, the
    clusters for "oversample"."""
    inputs = {}
    if wildcards.baseline in PRETRAINED:
        inputs["weights"] = PRETRAINED[wildcards.baseline]
    if wildcards.arm == "style":
        inputs["style_images"] = "results/augment/stage1_train"
        inputs["style_manifest"] = "results/augment/manifest.csv"
    if wildcards.arm == "oversample":
        inputs["assignments"] = "results/cluster/assignments.csv"
    return inputs


def get_pretrained_fetches():
    """The released weights files this run is about to fetch (for the onstart check)."""
    return [
        Path(job.output[0]).name
        for job in workflow.dag.needrun_jobs()
        if job.rule.name == "fetch_pretrained"
    ]


def get_segmenter_histories(wildcards):
    return [f"results/segment/{model}/history.tsv" for model in SEGMENTERS]


def get_all_per_image(wildcards):
    return expand(
        "results/score/{model}/{testset}/per_image.csv",
        model=MODELS,
        testset=SCORED_SETS,
    )


def get_predictor_model(wildcards):
    """The trained segmenter behind a predictor name ("deep_retina-style-tta")."""
    name = ModelName.parse(wildcards.model).trained
    return f"results/segment/{name}/model.pt"


def get_predictor_tta(wildcards):
    """The TTA settings of a predictor, or None for a single pass."""
    return config["tta"] if ModelName.parse(wildcards.model).tta else None


def get_predict_shards(wildcards):
    return expand(
        "results/predict/{model}/{testset}/shards/{shard}.csv",
        model=wildcards.model,
        testset=wildcards.testset,
        shard=range(config["predict"]["shards"]),
    )


def get_figure4_inputs(wildcards):
    """Figure 4: ground truth and each baseline's predictions without and with style
    augmentation (TTA predictions when predict.tta is on), on the first test set."""
    first = SimpleNamespace(testset=SCORED_SETS[0])
    inputs = {
        "images": get_test_images(first),
        "solution": get_solution(first),
        **get_groups(first),
    }
    for baseline in SEGMENT["baselines"]:
        for arm in ("none", "style"):
            if arm in SEGMENT["arms"]:
                model = ModelName(baseline, arm, tta=config["predict"]["tta"])
                path = f"results/predict/{model}/{first.testset}/submission.csv"
                inputs[f"{baseline}_{arm}"] = path
    return inputs
