"""Synthetic multi-modality nuclei images: the project's offline demo data set.

Five modalities mimic the five image groups of the 2018 Data Science Bowl (Caicedo et al. 2019):
small and large fluorescent nuclei (grey, stored as RGB with R == G == B), grayscale tissue
(cytology: dark nuclei inside grey cells on a bright background) and two H&E-like colour tissues.
Every image comes with non-overlapping instance labels. :func:`generate` writes a train set with
masks, a test set without masks, the test ground truth as a Kaggle solution file and a table of
modalities, all in BBBC038 layout, byte-identical for a given seed.

Calibration: :data:`REAL_STATS` holds per-group statistics measured on the 531 real BBBC038
training images of ``/work/shared/bbbc038`` (see the table's comment); the modality styles in
:data:`_STYLES` were tuned until :func:`image_stats` on generated images reproduced them
(checked by ``tests/test_synthetic.py``). A generated image of side S shows a real-looking field
of view of side S / scale native pixels; the default scale (:func:`default_scale`) makes a
128-px image look like a 160-px real crop shrunk to 0.8x.

Example:
    >>> from pathlib import Path
    >>> table = generate(SyntheticConfig(n_train=20, n_test_per_modality=2), Path("demo"))
    ... # doctest: +SKIP
"""

from nucleistyle.data.synthetic.calibration import (
    DEFAULT_PROPORTIONS,
    MODALITIES,
    REAL_GROUP,
    REAL_STATS,
    GroupStats,
    default_scale,
    image_stats,
)
from nucleistyle.data.synthetic.dataset import SyntheticConfig, generate, image_id, train_counts
from nucleistyle.data.synthetic.draw import synthesize

__all__ = [
    "DEFAULT_PROPORTIONS",
    "MODALITIES",
    "REAL_GROUP",
    "REAL_STATS",
    "GroupStats",
    "SyntheticConfig",
    "default_scale",
    "generate",
    "image_id",
    "image_stats",
    "synthesize",
    "train_counts",
]
