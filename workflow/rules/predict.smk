# Stage 6 — prediction with each trained segmenter, single pass ("<baseline>-<arm>") or with
# test-time augmentation ("<baseline>-<arm>-tta"), then the baseline's post-processing. Large test
# sets are split into predict.shards jobs whose submissions are gathered before scoring.


rule predict_shard:
    input:
        model=get_predictor_model,
        images=get_test_images,
        code=code_of("predict.py"),
    output:
        submission=temp("results/predict/{model}/{testset}/shards/{shard}.csv"),
    log:
        "logs/predict/{model}/{testset}/{shard}.log",
    benchmark:
        "benchmarks/predict/{model}/{testset}/{shard}.tsv"
    wildcard_constraints:
        model=PREDICTOR_PATTERN,
        shard=r"\d+",
    conda:
        "../../envs/torch.yaml"
    threads: TORCH_THREADS
    resources:
        gpu=get_gpu,
        mem_mb=8000,
        runtime=240,
    params:
        device=SEGMENT["common"].get("device", "auto"),
        tta=get_predictor_tta,
        shards=config["predict"]["shards"],
    script:
        "../../scripts/predict.py"


rule gather_predictions:
    input:
        shards=get_predict_shards,
        code=code_of("gather_predictions.py"),
    output:
        submission="results/predict/{model}/{testset}/submission.csv",
    log:
        "logs/gather_predictions/{model}/{testset}.log",
    wildcard_constraints:
        model=PREDICTOR_PATTERN,
    conda:
        "../../envs/data.yaml"
    resources:
        mem_mb=2000,
        runtime=20,
    script:
        "../../scripts/gather_predictions.py"


# data.source folder: each model's predictions as one label image per input (what the user's
# tools open), with an overlay PNG per image for review (data.folder.overlays).
rule export_labels:
    input:
        submission="results/predict/{model}/{testset}/submission.csv",
        images=get_test_images,
        code=code_of("export_labels.py"),
    output:
        labels=directory("results/labels/{model}/{testset}"),
    log:
        "logs/export_labels/{model}/{testset}.log",
    conda:
        "../../envs/data.yaml"
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        fmt=FOLDER["label_format"],
        overlays=FOLDER["overlays"],
    script:
        "../../scripts/export_labels.py"
