"""Rule apply_annotation_fixes: replace stage1_train by the community-fixed set, log the changes."""

from nucleistyle.data.acquire import apply_fixes_archive
from nucleistyle.utils import setup_logging

setup_logging(snakemake.log[0])
apply_fixes_archive(
    snakemake.input.original,
    snakemake.input.archive,
    snakemake.output.images,
    snakemake.output.manifest,
    expected_digest=snakemake.params.digest,
)
