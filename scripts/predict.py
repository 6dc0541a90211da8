"""Rule predict: single pass + the baseline's post-processing -> submission and label PNGs."""

from nucleistyle.segment.predict import predict_folder
from nucleistyle.utils import setup_logging

setup_logging(snakemake.log[0])
predict_folder(
    snakemake.input.model,
    snakemake.input.images,
    snakemake.output.submission,
    labels_dir=snakemake.output.labels,
    device=snakemake.params.device,
)
