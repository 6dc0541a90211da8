"""Rule predict_shard: one shard of a test set, single pass or TTA, + post-processing."""

from nucleistyle.segment.predict import predict_folder
from nucleistyle.torchutils import set_torch_threads
from nucleistyle.utils import setup_logging

setup_logging(snakemake.log[0])
set_torch_threads(snakemake.threads)
predict_folder(
    snakemake.input.model,
    snakemake.input.images,
    snakemake.output.submission,
    device=snakemake.params.device,
    tta=snakemake.params.tta,
    shard=(int(snakemake.wildcards.shard), snakemake.params.shards),
)
