"""Rule enhance_images: CLAHE on the selected (dark) training images; masks untouched."""

import pandas as pd

from nucleistyle.enhance import ClaheConfig, enhance_dataset
from nucleistyle.utils import setup_logging

setup_logging(snakemake.log[0])
enhance_dataset(
    snakemake.input.images,
    pd.read_csv(snakemake.input.assignments),
    snakemake.output.images,
    ClaheConfig.from_config(snakemake.params.clahe),
    workers=snakemake.threads,
    table_csv=snakemake.output.table,
)
