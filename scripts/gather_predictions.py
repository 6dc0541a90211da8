"""Rule gather_predictions: the shards' submissions of one model and test set, as one."""

from nucleistyle.data.csvio import gather_submissions
from nucleistyle.utils import setup_logging

setup_logging(snakemake.log[0])
gather_submissions(snakemake.input.shards, snakemake.output.submission)
