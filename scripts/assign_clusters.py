"""Rule assign_clusters: each test image joins its nearest training cluster."""

from nucleistyle.cluster import assign_dataset
from nucleistyle.utils import setup_logging

setup_logging(snakemake.log[0])
assign_dataset(
    snakemake.input.images, snakemake.input.model, snakemake.output.assignments, snakemake.threads
)
