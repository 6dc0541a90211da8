# The report: data summary and figures; `snakemake --report results/report.html` assembles them.


rule summarize_dataset:
    input:
        unpack(get_dataset_summary_inputs),
        code=lib("report/figures.py"),
    output:
        table=report(
            "results/report/dataset_summary.csv",
            caption="../report/dataset_summary.rst",
            category="1. Data",
        ),
        examples=report(
            "results/report/examples.png",
            caption="../report/examples.rst",
            category="1. Data",
        ),
    log:
        "logs/summarize_dataset.log",
    conda:
        "../../envs/report.yaml"
    resources:
        mem_mb=2000,
        runtime=30,
    script:
        "../../scripts/summarize_dataset.py"
