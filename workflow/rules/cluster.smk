# Stage 2 — modality discovery (paper §2.2): K-means on HSV features of the training images,
# PCA for Figure 2, and CLAHE on the dark, low-contrast (fluorescence) images.


rule cluster_images:
    input:
        images=get_train_images,
        code=code_of("cluster_images.py"),
    output:
        assignments="results/cluster/assignments.csv",
        model="results/cluster/model.json",
        silhouette="results/cluster/silhouette.csv",
    log:
        "logs/cluster_images.log",
    benchmark:
        "benchmarks/cluster_images.tsv"
    priority: 10  # on the critical path: the GAN, augmentation and every style arm wait for it
    conda:
        "../../envs/data.yaml"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        cluster=get_cluster_config,
    script:
        "../../scripts/cluster_images.py"


rule assign_clusters:
    input:
        images=get_test_images,
        model="results/cluster/model.json",
        code=code_of("assign_clusters.py"),
    output:
        assignments="results/cluster/{testset}_assignments.csv",
    log:
        "logs/assign_clusters/{testset}.log",
    conda:
        "../../envs/data.yaml"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=30,
    script:
        "../../scripts/assign_clusters.py"


rule enhance_images:
    input:
        images=get_train_images,
        assignments="results/cluster/assignments.csv",
        code=code_of("enhance_images.py"),
    output:
        images=directory("results/cluster/enhanced/stage1_train"),
        table="results/cluster/clahe.csv",
    log:
        "logs/enhance_images.log",
    benchmark:
        "benchmarks/enhance_images.tsv"
    priority: 10  # on the critical path: the GAN, augmentation and every style arm wait for it
    conda:
        "../../envs/data.yaml"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        clahe=config["clahe"],
    script:
        "../../scripts/enhance_images.py"


rule plot_clusters:
    input:
        unpack(get_cluster_truth),
        images=get_train_images,
        enhanced="results/cluster/enhanced/stage1_train",
        assignments="results/cluster/assignments.csv",
        silhouette="results/cluster/silhouette.csv",
        clahe="results/cluster/clahe.csv",
        code=code_of("plot_clusters.py"),
    output:
        pca=report(
            "results/report/fig2a_clusters_pca.png",
            caption="../report/fig2a.rst",
            category="2. Modalities",
        ),
        examples=report(
            "results/report/fig2b_cluster_examples.png",
            caption="../report/fig2b.rst",
            category="2. Modalities",
        ),
        silhouette=report(
            "results/report/cluster_silhouette.png",
            caption="../report/silhouette.rst",
            category="2. Modalities",
        ),
        clahe=report(
            "results/report/clahe_examples.png",
            caption="../report/clahe.rst",
            category="2. Modalities",
        ),
        sizes=report(
            "results/report/cluster_sizes.csv",
            caption="../report/cluster_sizes.rst",
            category="2. Modalities",
        ),
        quality=report(
            "results/report/cluster_quality.csv",
            caption="../report/cluster_quality.rst",
            category="2. Modalities",
        ),
    log:
        "logs/plot_clusters.log",
    conda:
        "../../envs/report.yaml"
    resources:
        mem_mb=2000,
        runtime=20,
    params:
        k=config["cluster"]["k"],
    script:
        "../../scripts/plot_clusters.py"
