# Stage 5 — two Mask R-CNN baselines (paper §2.4: "Deep Retina" and "Mirzaev") trained on the original
# training set ("none") and on it plus the style-augmented images ("style"); optional arms "jitter"
# (strong colour augmentation instead of the GAN) and "oversample" (minority clusters resampled).


# The pretrained starts (segment weights coco / imagenet): torchvision's released files, fetched
# on the machine that runs Snakemake (cluster nodes often have no internet), each verified against
# the SHA-256 prefix in its name. No code inputs: a library edit must not fetch them again.
localrules:
    fetch_pretrained,


# A real run stops before its first job when a file it would fetch cannot be downloaded (one
# line: what to download and where to put it); a dry run needs no network.
onstart:
    check_pretrained(config, probe=True, names=get_pretrained_fetches())


rule fetch_pretrained:
    output:
        "resources/weights/{weights_file}",
    log:
        "logs/fetch_pretrained/{weights_file}.log",
    wildcard_constraints:
        weights_file=regex_of(RELEASED_FILES),
    retries: 2
    localrule: True
    conda:
        "../../envs/data.yaml"
    resources:
        mem_mb=500,
        runtime=60,
    params:
        base_url=config["pretrained"]["base_url"],
    script:
        "../../scripts/fetch_pretrained.py"


rule train_segmenter:
    input:
        unpack(get_segmenter_extra_inputs),
        train_dirs=get_segmenter_train_images,
        code=code_of("train_segmenter.py"),
    output:
        model=protected("results/segment/{baseline}-{arm}/model.pt"),
        history="results/segment/{baseline}-{arm}/history.tsv",
    log:
        "logs/train_segmenter/{baseline}-{arm}.log",
    benchmark:
        "benchmarks/train_segmenter/{baseline}-{arm}.tsv"
    # before predictions and plots, which fill the gaps: on 2 cores a segmenter that waits
    # for a short job to finish first delays the end of the run by its whole length
    priority: get_priority_train
    conda:
        "../../envs/torch.yaml"
    threads: TORCH_THREADS
    resources:
        gpu=get_gpu,
        mem_mb=get_mem_mb_train,
        runtime=get_runtime_train,
    params:
        segment=get_segmenter_overrides,
        checkpoint=get_segmenter_checkpoint,
        inputs=SEGMENT["inputs"],
        clahe=config["clahe"],
    script:
        "../../scripts/train_segmenter.py"


rule plot_training:
    input:
        histories=get_segmenter_histories,
        code=code_of("plot_training.py"),
    output:
        curves=report(
            "results/report/segmenter_training.png",
            caption="../report/segmenter_training.rst",
            category="5. Segmentation training",
        ),
    log:
        "logs/plot_training.log",
    conda:
        "../../envs/report.yaml"
    resources:
        mem_mb=1000,
        runtime=10,
    script:
        "../../scripts/plot_training.py"
