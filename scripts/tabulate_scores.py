"""Rule tabulate_scores: score tables with bootstrap CIs, Table 1, paired differences, chart."""

from nucleistyle.report.table1 import tabulate_scores
from nucleistyle.utils import setup_logging

setup_logging(snakemake.log[0])
tabulate_scores(
    snakemake.input.per_image,
    snakemake.input.summaries,
    scores_csv=snakemake.output.table,
    table1_csv=snakemake.output.table1,
    paired_csv=snakemake.output.paired,
    chart_png=snakemake.output.chart,
    paired_png=snakemake.output.paired_chart,
    seed=snakemake.params.seed,
)
