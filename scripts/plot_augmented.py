"""Rule plot_augmented: a gallery of augmented samples with their (inherited) mask contours."""

from nucleistyle.report.gan import plot_augmented_gallery
from nucleistyle.utils import setup_logging

setup_logging(snakemake.log[0])
plot_augmented_gallery(snakemake.input.images, snakemake.input.manifest, snakemake.output.gallery)
