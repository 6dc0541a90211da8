"""Rule plot_gan: Figure 3 (every domain to every domain) and the loss curves (on synthetic
data with what a perfect transfer scores beside the learning curve)."""

import logging

from nucleistyle.gan.evaluate import perfect_transfer
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
reference = None
if snakemake.params.synthetic is not None:
    table = perfect_transfer(
        snakemake.params.synthetic, snakemake.params.clahe, seed=snakemake.params.seed
    )
    reference = table[["fg_iou", "fg_iou_unrelated", "edge_corr", "seg_score"]].mean().to_dict()
    logging.getLogger("plot_gan").info("a perfect transfer scores %s", reference)
plot_losses(snakemake.input.history, snakemake.output.losses, reference)
