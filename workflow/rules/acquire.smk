# Stage 1 — acquire the images: BBBC038 from its site or a mirror (download, verify, safe unzip,
# community annotation fixes), the built-in synthetic multi-modality data set, or the user's own
# annotated folders (images/ + masks/, PNG or TIFF) imported into the same layout.


# Downloads run on the machine that runs Snakemake (cluster nodes often have no internet). They
# have no code inputs: a downloaded file is verified by its digest, and a library edit must not
# fetch gigabytes again.
localrules:
    download_bbbc038,
    download_annotation_fixes,


rule download_bbbc038:
    output:
        "resources/bbbc038/downloads/{bbbc_file}",
    log:
        "logs/download_bbbc038/{bbbc_file}.log",
    retries: 2
    localrule: True
    conda:
        "../../envs/data.yaml"
    resources:
        mem_mb=500,
        runtime=120,
    params:
        url=get_download_url,
        sha256=get_download_sha256,
    script:
        "../../scripts/download.py"


rule extract_bbbc038:
    input:
        archive="resources/bbbc038/downloads/{bbbc_set}.zip",
        code=code_of("extract_set.py"),
    output:
        images=directory("resources/bbbc038/raw/{bbbc_set}"),
        record="resources/bbbc038/raw/{bbbc_set}.json",
    log:
        "logs/extract_bbbc038/{bbbc_set}.log",
    localrule: True
    conda:
        "../../envs/data.yaml"
    resources:
        mem_mb=1000,
        runtime=60,
    params:
        digest=get_content_digest,
    script:
        "../../scripts/extract_set.py"


rule download_annotation_fixes:
    output:
        "resources/bbbc038/downloads/annotation_fixes.zip",
    log:
        "logs/download_annotation_fixes.log",
    retries: 2
    localrule: True
    conda:
        "../../envs/data.yaml"
    resources:
        mem_mb=500,
        runtime=60,
    params:
        url=config["data"]["bbbc038"]["fixes"]["url"],
        sha256=config["data"]["bbbc038"]["fixes"]["sha256"],
    script:
        "../../scripts/download.py"


rule apply_annotation_fixes:
    input:
        original="resources/bbbc038/raw/stage1_train",
        archive="resources/bbbc038/downloads/annotation_fixes.zip",
        code=code_of("apply_fixes.py"),
    output:
        images=directory("resources/bbbc038/fixed/stage1_train"),
        manifest=report(
            "results/acquire/annotation_fixes.tsv",
            caption="../report/annotation_fixes.rst",
            category="1. Data",
        ),
    log:
        "logs/apply_annotation_fixes.log",
    localrule: True
    conda:
        "../../envs/data.yaml"
    resources:
        mem_mb=2000,
        runtime=60,
    params:
        digest=config["data"]["bbbc038"]["fixes"]["content_digest"],
    script:
        "../../scripts/apply_fixes.py"


rule synthesize_dataset:
    input:
        code=code_of("synthesize_dataset.py"),
    output:
        train=directory("resources/synthetic/stage1_train"),
        test=directory("resources/synthetic/stage1_test"),
        solution="resources/synthetic/stage1_solution.csv",
        modalities="resources/synthetic/modalities.csv",
    log:
        "logs/synthesize_dataset.log",
    benchmark:
        "benchmarks/synthesize_dataset.tsv"
    conda:
        "../../envs/data.yaml"
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        synthetic=config["data"].get("synthetic", {}),
    script:
        "../../scripts/synthesize_dataset.py"


# data.source folder: each of the user's folders becomes a set in BBBC038 layout, its images
# mapped to 8-bit RGB once (data.folder.intensity); labelled test folders also give a solution.
rule import_training_folder:
    input:
        folder=get_user_folder,
        code=code_of("import_folder.py"),
    output:
        images=directory("resources/folder/{folder_set}"),
    log:
        "logs/import_folder/{folder_set}.log",
    wildcard_constraints:
        folder_set="stage1_train",
    conda:
        "../../envs/data.yaml"
    resources:
        mem_mb=2000,
        runtime=60,
    params:
        training=True,
        intensity=FOLDER["intensity"],
    script:
        "../../scripts/import_folder.py"


use rule import_training_folder as import_labelled_test_folder with:
    output:
        images=directory("resources/folder/{folder_set}"),
        solution="resources/folder/{folder_set}_solution.csv",
    wildcard_constraints:
        folder_set=regex_of(SCORED_SETS),
    params:
        training=False,
        intensity=FOLDER["intensity"],


use rule import_training_folder as import_unlabelled_test_folder with:
    wildcard_constraints:
        folder_set=regex_of(sorted(set(TEST_SETS) - set(SCORED_SETS))),
    params:
        training=False,
        intensity=FOLDER["intensity"],


rule make_holdout:
    input:
        train=get_holdout_source,
        code=code_of("make_holdout.py"),
    output:
        train=directory(f"{HOLDOUT}/stage1_train"),
        test=directory(f"{HOLDOUT}/stage1_test"),
        solution=f"{HOLDOUT}/stage1_solution.csv",
        table=f"{HOLDOUT}/holdout.csv",
    log:
        "logs/make_holdout.log",
    conda:
        "../../envs/data.yaml"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        holdout=config["data"]["holdout"],
        k=config["cluster"]["k"],
        seed=config["seed"],
    script:
        "../../scripts/make_holdout.py"
