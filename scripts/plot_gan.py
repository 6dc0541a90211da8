"""Rule plot_gan: Figure 3 (every domain to every domain) and the loss curves."""

from nucleistyle.report.gan import plot_figure3, plot_losses
from nucleistyle.utils import setup_logging

setup_logging(snakemake.log[0])
plot_figure3(
    snakemake.input.images,
    snakemake.input.assignments,
    snakemake.input.model,
    snakemake.output.figure3,
    seed=snakemake.params.seed,
)
plot_losses(snakemake.input.history, snakemake.output.losses)
