"""Rule make_holdout: a held-out test set carved out of annotated training images by cluster."""

from pathlib import Path

from nucleistyle.holdout import make_holdout
from nucleistyle.utils import setup_logging

setup_logging(snakemake.log[0])
settings = snakemake.params.holdout
make_holdout(
    snakemake.input.train,
    Path(snakemake.output.table).parent,
    fraction=settings["fraction"],
    seed=snakemake.params.seed,
    k=snakemake.params.k,
    workers=snakemake.threads,
    scheme=settings["scheme"],
    held_cluster=settings["cluster"],
    overwrite=True,
)
