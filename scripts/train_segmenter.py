"""Rule train_segmenter: one Mask R-CNN baseline on one training arm (resumes after a kill)."""

from nucleistyle.enhance import ClaheConfig
from nucleistyle.segment.configs import get_config
from nucleistyle.segment.engine import train_segmenter
from nucleistyle.torchutils import set_torch_threads
from nucleistyle.utils import setup_logging

setup_logging(snakemake.log[0])
set_torch_threads(snakemake.threads)
train_segmenter(
    [snakemake.input.train_dirs],
    snakemake.output.model,
    get_config(snakemake.wildcards.baseline, snakemake.params.segment),
    checkpoint=snakemake.params.checkpoint,
    history_tsv=snakemake.output.history,
    arm=snakemake.wildcards.arm,
    assignments_csv=snakemake.input.get("assignments"),
    style_dirs=[snakemake.input.style_images] if "style_images" in snakemake.input.keys() else [],
    style_manifests=(
        [snakemake.input.style_manifest] if "style_manifest" in snakemake.input.keys() else []
    ),
    input_clahe=(
        ClaheConfig.from_config(snakemake.params.clahe)
        if snakemake.params.inputs == "enhanced"
        else None
    ),
    weights_file=snakemake.input.get("weights"),
)
