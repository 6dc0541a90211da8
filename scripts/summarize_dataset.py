"""Rule summarize_dataset: image counts per modality and an example grid for the report."""

from nucleistyle.report.figures import plot_examples, summarize_dataset
from nucleistyle.utils import setup_logging

setup_logging(snakemake.log[0])
summary = summarize_dataset(
    snakemake.input.train, snakemake.input.get("groups"), snakemake.output.table
)
plot_examples(
    snakemake.input.train,
    summary,
    snakemake.output.examples,
    groups_csv=snakemake.input.get("groups"),
)
