"""Rule tabulate_scores: one table and one per-modality chart of every model's scores."""

from nucleistyle.report.figures import plot_scores_by_group, tabulate_scores
from nucleistyle.utils import setup_logging

setup_logging(snakemake.log[0])
table = tabulate_scores(snakemake.input.summaries, snakemake.output.table)
plot_scores_by_group(table, snakemake.output.chart)
