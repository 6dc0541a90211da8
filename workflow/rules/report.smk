# The report: data summary and figures; `snakemake --report results/report.html` assembles them.


rule summarize_dataset:
    input:
        unpack(get_dataset_summary_inputs),
        code=code_of("summarize_dataset.py"),
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


rule plot_figure4:
    input:
        unpack(get_figure4_inputs),
        code=code_of("plot_figure4.py"),
    output:
        figure=report(
            "results/report/fig4_predictions.png",
            caption="../report/fig4.rst",
            category="7. Predictions",
        ),
    log:
        "logs/plot_figure4.log",
    conda:
        "../../envs/report.yaml"
    resources:
        mem_mb=4000,
        runtime=20,
    params:
        group_column=get_group_column,
        per_group=1,
    script:
        "../../scripts/plot_figure4.py"


rule record_provenance:
    input:
        code=code_of("record_provenance.py"),
    output:
        page=report(
            "results/report/provenance.html",
            caption="../report/provenance.rst",
            category="8. Provenance",
        ),
        record="results/report/provenance.json",
    log:
        "logs/record_provenance.log",
    conda:
        "../../envs/report.yaml"
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        # the configuration's fingerprint reruns this (cheap) rule whenever the configuration changes
        config_sha256=config_hash(config),
    script:
        "../../scripts/record_provenance.py"
