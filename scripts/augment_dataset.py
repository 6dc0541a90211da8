"""Rule augment_dataset: restyle a random fraction of the training images; masks inherited."""

from nucleistyle.gan.augment import augment_dataset
from nucleistyle.utils import setup_logging

setup_logging(snakemake.log[0])
augment_dataset(
    snakemake.input.images,
    snakemake.input.assignments,
    snakemake.input.model,
    snakemake.output.images,
    snakemake.output.manifest,
    fraction=snakemake.params.fraction,
    seed=snakemake.params.seed,
)
