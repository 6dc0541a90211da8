"""Rule download_bbbc038 / download_annotation_fixes: fetch one file, resume, verify, rename."""

from nucleistyle.data.acquire import download
from nucleistyle.utils import setup_logging

setup_logging(snakemake.log[0])
download(snakemake.params.url, snakemake.output[0], sha256=snakemake.params.sha256)
