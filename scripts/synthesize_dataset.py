"""Rule synthesize_dataset: the built-in synthetic multi-modality data set in BBBC038 layout."""

from pathlib import Path

from nucleistyle.data.synthetic import SyntheticConfig, generate
from nucleistyle.utils import setup_logging

setup_logging(snakemake.log[0])
generate(
    SyntheticConfig.from_config(snakemake.params.synthetic),
    Path(snakemake.output.modalities).parent,
)
