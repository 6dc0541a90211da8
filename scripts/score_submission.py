"""Rule score_submission: official DSB metric of one submission, per image and per modality."""

from nucleistyle.metrics import score_to_files
from nucleistyle.utils import setup_logging

setup_logging(snakemake.log[0])
score_to_files(
    snakemake.input.solution,
    snakemake.input.submission,
    snakemake.output.per_image,
    snakemake.output.summary,
    groups_csv=snakemake.input.groups,
    group_column=snakemake.params.group_column,
)
