"""Rule plot_clusters: Figure 2a/2b, silhouette per k, CLAHE examples, size and quality tables."""

import pandas as pd

from nucleistyle.metrics import read_groups
from nucleistyle.report import clusters as fig
from nucleistyle.utils import setup_logging

setup_logging(snakemake.log[0])
inp, out = snakemake.input, snakemake.output
assignments = pd.read_csv(inp.assignments)
silhouette = pd.read_csv(inp.silhouette)
clahe = pd.read_csv(inp.clahe)
truth = read_groups(inp.truth) if "truth" in inp.keys() else None
fig.plot_pca(assignments, out.pca, truth=truth)
fig.plot_cluster_examples(inp.images, assignments, out.examples)
fig.plot_silhouette(silhouette, out.silhouette, k=snakemake.params.k)
fig.plot_clahe_examples(inp.images, inp.enhanced, clahe, out.clahe)
fig.cluster_tables(
    assignments, silhouette, clahe, snakemake.params.k, truth, out.sizes, out.quality
)
