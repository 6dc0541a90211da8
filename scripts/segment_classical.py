"""Rule segment_classical: threshold + watershed segmentation of a test set -> submission CSV."""

from nucleistyle.classical import ClassicalConfig, segment_folder
from nucleistyle.utils import setup_logging

setup_logging(snakemake.log[0])
segment_folder(
    snakemake.input.images,
    snakemake.output.submission,
    ClassicalConfig.from_config(snakemake.params.classical),
    workers=snakemake.threads,
)
