"""Rule augment_dataset: restyled copies of every training image; masks inherited."""

from nucleistyle.gan.augment import AugmentConfig, augment_dataset
from nucleistyle.torchutils import set_torch_threads
from nucleistyle.utils import setup_logging

setup_logging(snakemake.log[0])
set_torch_threads(snakemake.threads)
augment_dataset(
    snakemake.input.images,
    snakemake.input.assignments,
    snakemake.input.model,
    snakemake.output.images,
    snakemake.output.manifest,
    AugmentConfig.from_config(snakemake.params.augment),
    seed=snakemake.params.seed,
)
