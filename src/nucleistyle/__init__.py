"""nucleistyle: multi-modality microscopy style transfer for nuclei segmentation.

A reproduction of Liu, Wagner & Peng (ISBI 2022) as a library plus a Snakemake pipeline.
All logic lives in this package; the workflow's scripts are thin adapters around it.
"""

__version__ = "0.1.0"
