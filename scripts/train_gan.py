"""Rule train_gan: train the style-transfer GAN (resumes from its checkpoint after a kill)."""

from nucleistyle.gan.configs import GanConfig
from nucleistyle.gan.engine import train_gan
from nucleistyle.gan.evaluate import TransferMonitor
from nucleistyle.torchutils import set_torch_threads
from nucleistyle.utils import setup_logging

setup_logging(snakemake.log[0])
set_torch_threads(snakemake.threads)
train_gan(
    snakemake.input.images,
    snakemake.input.assignments,
    snakemake.output.model,
    GanConfig.from_config(snakemake.params.gan),
    checkpoint=snakemake.params.checkpoint,
    history_tsv=snakemake.output.history,
    monitor=TransferMonitor(
        snakemake.input.cluster_model,
        snakemake.input.images,
        seed=snakemake.params.gan.get("seed", 0),
        device=snakemake.params.gan.get("device", "auto"),
    ),
)
