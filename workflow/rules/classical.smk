# The classical reference segmenter (threshold + distance-transform watershed): the floor every
# learned model must beat (the DSB paper's CellProfiler baseline scored 0.528 on stage 2).


rule segment_classical:
    input:
        images=get_test_images,
        code=code_of("segment_classical.py"),
    output:
        submission="results/predict/classical/{testset}/submission.csv",
    log:
        "logs/segment_classical/{testset}.log",
    benchmark:
        "benchmarks/segment_classical/{testset}.tsv"
    conda:
        "../../envs/data.yaml"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=120,
    params:
        classical=config["classical"],
    script:
        "../../scripts/segment_classical.py"
