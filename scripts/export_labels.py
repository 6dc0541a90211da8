"""Rule export_labels: a model's predictions as label images (and overlays) per input image."""

from nucleistyle.data.folder import export_labels
from nucleistyle.utils import setup_logging

setup_logging(snakemake.log[0])
export_labels(
    snakemake.input.submission,
    snakemake.input.images,
    snakemake.output.labels,
    fmt=snakemake.params.fmt,
    overlays=snakemake.params.overlays,
)
