"""Rule train_gan: train the style-transfer GAN (resumes from its checkpoint after a kill)."""

from nucleistyle.gan.trainer import GanConfig, train_gan
from nucleistyle.utils import setup_logging

setup_logging(snakemake.log[0])
train_gan(
    snakemake.input.images,
    snakemake.input.assignments,
    snakemake.output.model,
    GanConfig.from_config(snakemake.params.gan),
    checkpoint=snakemake.params.checkpoint,
    history_tsv=snakemake.output.history,
)
