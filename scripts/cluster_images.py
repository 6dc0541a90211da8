"""Rule cluster_images: K-means on HSV features of the training set, PCA, silhouette per k."""

from nucleistyle.cluster import ClusterConfig, cluster_training_set
from nucleistyle.utils import setup_logging

setup_logging(snakemake.log[0])
cluster_training_set(
    snakemake.input.images,
    snakemake.output.assignments,
    snakemake.output.model,
    snakemake.output.silhouette,
    ClusterConfig.from_config(snakemake.params.cluster),
    workers=snakemake.threads,
)
