# Stage 3 — the multi-domain disentangled style-transfer GAN (paper §2.3), trained on the
# CLAHE-enhanced training images with the K-means clusters as domains.


rule train_gan:
    input:
        images="results/cluster/enhanced/stage1_train",
        assignments="results/cluster/assignments.csv",
        cluster_model="results/cluster/model.json",
        code=code_of("train_gan.py"),
    output:
        model=protected("results/gan/model.pt"),
        history="results/gan/history.tsv",
    log:
        "logs/train_gan.log",
    benchmark:
        "benchmarks/train_gan.tsv"
    priority: 10  # on the critical path: augmentation and every style arm wait for it
    conda:
        "../../envs/torch.yaml"
    threads: TORCH_THREADS
    resources:
        gpu=get_gpu,
        mem_mb=get_mem_mb_train,
        runtime=get_runtime_train,
    params:
        gan=get_gan_config,
        checkpoint=get_gan_checkpoint,
    script:
        "../../scripts/train_gan.py"


rule evaluate_gan:
    input:
        images="results/cluster/enhanced/stage1_train",
        assignments="results/cluster/assignments.csv",
        cluster_model="results/cluster/model.json",
        model="results/gan/model.pt",
        code=code_of("evaluate_gan.py"),
    output:
        table=report(
            "results/gan/transfer_quality.csv",
            caption="../report/transfer_quality.rst",
            category="3. Style transfer",
        ),
    log:
        "logs/evaluate_gan.log",
    conda:
        "../../envs/torch.yaml"
    threads: TORCH_THREADS
    resources:
        gpu=get_gpu,
        mem_mb=4000,
        runtime=60,
    params:
        seed=config["seed"],
    script:
        "../../scripts/evaluate_gan.py"


rule plot_gan:
    input:
        images="results/cluster/enhanced/stage1_train",
        assignments="results/cluster/assignments.csv",
        model="results/gan/model.pt",
        history="results/gan/history.tsv",
        code=code_of("plot_gan.py"),
    output:
        figure3=report(
            "results/report/fig3_style_transfer.png",
            caption="../report/fig3.rst",
            category="3. Style transfer",
        ),
        losses=report(
            "results/report/gan_losses.png",
            caption="../report/gan_losses.rst",
            category="3. Style transfer",
        ),
    log:
        "logs/plot_gan.log",
    conda:
        "../../envs/torch.yaml"
    threads: TORCH_THREADS
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        seed=config["seed"],
        synthetic=config["data"].get("synthetic", {}) if SOURCE == "synthetic" else None,
        clahe=config["clahe"],
    script:
        "../../scripts/plot_gan.py"
