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
    columns = ["fg_iou", "fg_iou_unrelated", "visibility_ratio", "phantoms_per_100"]
    reference = table[columns].mean().to_dict()
    reference["phantoms_per_nucleus"] = reference.pop("phantoms_per_100") / 100
    logging.getLogger("plot_gan").info("a perfect transfer scores %s", reference)
plot_losses(snakemake.input.history, snakemake.output.losses, reference)
