# Scoring with the official DSB 2018 metric (mean over IoU thresholds 0.50:0.95 of TP/(TP+FP+FN)),
# overall and per modality, plus COCO mask AP; Table 1 with bootstrap CIs over images.


rule score_submission:
    input:
        unpack(get_groups),
        solution=get_solution,
        submission="results/predict/{model}/{testset}/submission.csv",
        code=code_of("score_submission.py"),
    output:
        per_image="results/score/{model}/{testset}/per_image.csv",
        summary="results/score/{model}/{testset}/summary.json",
    log:
        "logs/score_submission/{model}/{testset}.log",
    benchmark:
        "benchmarks/score_submission/{model}/{testset}.tsv"
    conda:
        "../../envs/data.yaml"
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        group_column=get_group_column,
    script:
        "../../scripts/score_submission.py"


rule tabulate_scores:
    input:
        per_image=get_all_per_image,
        summaries=get_all_scores,
        code=code_of("tabulate_scores.py"),
    output:
        table=report(
            "results/score/scores.csv",
            caption="../report/scores.rst",
            category="6. Scores",
        ),
        table1=report(
            "results/score/table1.csv",
            caption="../report/table1.rst",
            category="6. Scores",
        ),
        paired=report(
            "results/score/paired_differences.csv",
            caption="../report/paired_differences.rst",
            category="6. Scores",
        ),
        chart=report(
            "results/score/scores_by_modality.png",
            caption="../report/scores_by_modality.rst",
            category="6. Scores",
        ),
        paired_chart=report(
            "results/score/paired_by_modality.png",
            caption="../report/paired_by_modality.rst",
            category="6. Scores",
        ),
    log:
        "logs/tabulate_scores.log",
    conda:
        "../../envs/report.yaml"
    resources:
        mem_mb=2000,
        runtime=15,
    params:
        seed=config["seed"],
    script:
        "../../scripts/tabulate_scores.py"
