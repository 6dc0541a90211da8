"""Rule plot_figure4: test-image contours without / with style augmentation and ground truth."""

from nucleistyle.report.segment import group_predictions, plot_figure4
from nucleistyle.utils import setup_logging

setup_logging(snakemake.log[0])
plot_figure4(
    snakemake.input.images,
    snakemake.input.solution,
    snakemake.input.groups,
    snakemake.params.group_column,
    group_predictions(dict(snakemake.input.items())),
    snakemake.output.figure,
    per_group=snakemake.params.per_group,
)
