# Stage 4 — the style-augmented training set: augment.copies restyled copies of every training
# image, each in a random other domain with a random attribute; content fixed, masks inherited.
# Training shows a copy instead of the original in a share of the draws (segment augment.style_p).


rule augment_dataset:
    input:
        images="results/cluster/enhanced/stage1_train",
        assignments="results/cluster/assignments.csv",
        model="results/gan/model.pt",
        code=code_of("augment_dataset.py"),
    output:
        images=directory("results/augment/stage1_train"),
        manifest="results/augment/manifest.csv",
    log:
        "logs/augment_dataset.log",
    benchmark:
        "benchmarks/augment_dataset.tsv"
    priority: 10  # on the critical path: every style arm waits for it
    conda:
        "../../envs/torch.yaml"
    threads: TORCH_THREADS
    resources:
        gpu=get_gpu,
        mem_mb=8000,
        runtime=120,
    params:
        augment=config["augment"],
        seed=config["seed"],
    script:
        "../../scripts/augment_dataset.py"


rule plot_augmented:
    input:
        images="results/augment/stage1_train",
        manifest="results/augment/manifest.csv",
        code=code_of("plot_augmented.py"),
    output:
        gallery=report(
            "results/report/augmented_gallery.png",
            caption="../report/augmented_gallery.rst",
            category="4. Augmented training set",
        ),
    log:
        "logs/plot_augmented.log",
    conda:
        "../../envs/torch.yaml"
    resources:
        mem_mb=2000,
        runtime=20,
    script:
        "../../scripts/plot_augmented.py"
