"""Rule plot_training: loss curves of every trained segmenter."""

from pathlib import Path

from nucleistyle.report.segment import plot_training
from nucleistyle.utils import setup_logging

setup_logging(snakemake.log[0])
plot_training({Path(p).parent.name: p for p in snakemake.input.histories}, snakemake.output.curves)
