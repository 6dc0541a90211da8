# Stage 6 — prediction with each trained segmenter and its baseline's post-processing; Kaggle-format
# submissions and 16-bit label images.


rule predict:
    input:
        model="results/segment/{baseline}-{arm}/model.pt",
        images=get_test_images,
        code=lib("segment/predict.py", "segment/postprocess.py", "segment/model.py"),
    output:
        submission="results/predict/{baseline}-{arm}/{testset}/submission.csv",
        labels=directory("results/predict/{baseline}-{arm}/{testset}/labels"),
    log:
        "logs/predict/{baseline}-{arm}/{testset}.log",
    benchmark:
        "benchmarks/predict/{baseline}-{arm}/{testset}.tsv"
    conda:
        "../../envs/torch.yaml"
    threads: 2
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=240,
    params:
        device=config["segment"]["common"].get("device", "auto"),
    script:
        "../../scripts/predict.py"
