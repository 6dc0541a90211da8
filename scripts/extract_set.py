"""Rule extract_bbbc038: safe unzip of one set, content digest verified and recorded."""

import json

from nucleistyle.data.acquire import extract_set
from nucleistyle.outputs import atomic_path
from nucleistyle.utils import setup_logging

setup_logging(snakemake.log[0])
record = extract_set(
    snakemake.input.archive,
    snakemake.output.images,
    name=snakemake.wildcards.bbbc_set,
    expected_digest=snakemake.params.digest,
)
with atomic_path(snakemake.output.record) as tmp:
    tmp.write_text(json.dumps(record, indent=2) + "\n")
