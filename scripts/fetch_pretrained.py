"""Rule fetch_pretrained: one released torchvision weights file, from a torch hub cache or
downloaded (resumed, verified against the hash in its name, renamed into place)."""

from nucleistyle.segment.weights import fetch_weights
from nucleistyle.utils import setup_logging

setup_logging(snakemake.log[0])
fetch_weights(snakemake.wildcards.weights_file, snakemake.output[0], snakemake.params.base_url)
