"""Rules import_*_folder: one of the user's paired images/ + masks/ folders into BBBC038 layout."""

from nucleistyle.data.folder import import_folder
from nucleistyle.data.images import IntensityRule
from nucleistyle.utils import setup_logging

setup_logging(snakemake.log[0])
import_folder(
    snakemake.input.folder,
    snakemake.output.images,
    training=snakemake.params.training,
    solution_csv=snakemake.output.get("solution"),
    rule=IntensityRule.from_config(snakemake.params.intensity),
)
