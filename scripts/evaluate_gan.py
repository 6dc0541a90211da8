"""Rule evaluate_gan: structure preservation and style accuracy per source/target domain pair."""

from nucleistyle.gan.evaluate import evaluate_transfer
from nucleistyle.torchutils import set_torch_threads
from nucleistyle.utils import setup_logging

setup_logging(snakemake.log[0])
set_torch_threads(snakemake.threads)
evaluate_transfer(
    snakemake.input.images,
    snakemake.input.assignments,
    snakemake.input.model,
    snakemake.input.cluster_model,
    snakemake.output.table,
    seed=snakemake.params.seed,
)
