"""Rule record_provenance: configuration, versions, git commit, seeds and hardware of this run."""

from pathlib import Path

from nucleistyle.report.provenance import write_provenance
from nucleistyle.utils import setup_logging

setup_logging(snakemake.log[0])
# the workflow's base directory (its git checkout and envs/) is the parent of scripts/
basedir = Path(snakemake.scriptdir).parent
write_provenance(snakemake.config, basedir, snakemake.output.page, out_json=snakemake.output.record)
