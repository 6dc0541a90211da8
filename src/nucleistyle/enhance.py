"""CLAHE enhancement of the dark, low-contrast training images (paper §2.2).

Contrast-limited adaptive histogram equalisation (scikit-image ``equalize_adapthist``) on the V
channel, hue and saturation kept, for the images selected by :class:`ClaheConfig` (by default
those with median V below :data:`~nucleistyle.cluster.DARK_V_MEDIAN`: dark fluorescence); the
others are linked unchanged and masks are never touched. The GAN trains on the result.
"""

from __future__ import annotations

import concurrent.futures
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image
from skimage.exposure import equalize_adapthist

from nucleistyle.cluster import DARK_V_MEDIAN, check_rgb, v_median
from nucleistyle.data.bbbc038 import ImageRecord, list_images, read_image
from nucleistyle.errors import NucleistyleError
from nucleistyle.outputs import link_or_copy, published_together
from nucleistyle.paths import PathLike
from nucleistyle.schema import check
from nucleistyle.utils import config_from_mapping

__all__ = ["ClaheConfig", "enhance_dataset", "enhance_image"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClaheConfig:
    """CLAHE settings (config section ``clahe``); see :func:`enhance_image`.

    Attributes:
        clip_limit: ``skimage.exposure.equalize_adapthist`` clip limit in (0, 1]. 0.01 (the
            skimage default) brings dim nuclei up without lifting the background noise of dark
            fluorescence images; 0.02-0.03 visibly amplifies background noise and cytoplasm
            (checked by eye on the real images).
        kernel_size: Tile size in px (int >= 2), or None for skimage's default, 1/8 of the
            image height and width.
        nbins: Histogram bins, >= 2.
        select: Which images are enhanced: "dark" (median V < ``dark_v_median``: the dark,
            low-contrast fluorescence images), "clusters" (those in ``clusters``), "all",
            "none".
        clusters: Cluster ids to enhance when ``select == "clusters"`` (non-empty then).
        dark_v_median: Median-V threshold (0-1) for ``select == "dark"``.

    Raises:
        NucleistyleError: On an invalid field (named in the message).
    """

    clip_limit: float = 0.01
    kernel_size: int | None = None
    nbins: int = 256
    select: str = "dark"
    clusters: tuple[int, ...] = ()
    dark_v_median: float = DARK_V_MEDIAN

    def __post_init__(self) -> None:
        object.__setattr__(self, "clusters", tuple(self.clusters))
        check(self, "#/properties/clahe", "clahe")  # with select: clusters, a non-empty list

    @classmethod
    def from_config(cls, mapping: Mapping[str, Any]) -> ClaheConfig:
        """Build from a config mapping (keys = field names; missing keys take the defaults)."""
        return config_from_mapping(cls, mapping, "clahe")

    def selects(self, v_median: float, cluster: int) -> bool:
        """Whether an image with this median V (0-1) and cluster id is enhanced."""
        if self.select == "dark":
            return v_median < self.dark_v_median
        if self.select == "clusters":
            return cluster in self.clusters
        return self.select == "all"


def enhance_image(image: np.ndarray, cfg: ClaheConfig) -> np.ndarray:
    """CLAHE on the V channel of HSV, keeping hue and saturation.

    V = max(R, G, B) / 255 is equalised with ``skimage.exposure.equalize_adapthist``; each pixel's
    RGB is then scaled by V' / V (which is exactly HSV -> RGB with H and S unchanged), and a black
    pixel (V = 0) becomes grey V'. Grey images stay grey (R == G == B), colours keep their hue.

    Args:
        image: uint8 RGB, shape (H, W, 3).
        cfg: CLAHE settings (``select`` is not consulted: the image is always enhanced).

    Returns:
        uint8 RGB of the same shape.

    Raises:
        NucleistyleError: ``image`` is not a non-empty uint8 (H, W, 3) array.
    """
    rgb = check_rgb(image)
    top = np.maximum(np.maximum(rgb[..., 0], rgb[..., 1]), rgb[..., 2])
    v_new = equalize_adapthist(
        top.astype(np.float64) / 255.0,
        kernel_size=cfg.kernel_size,
        clip_limit=cfg.clip_limit,
        nbins=cfg.nbins,
    )
    gain = np.where(top > 0, 255.0 * v_new / np.maximum(top, 1), 0.0)[..., None]
    out = np.where(top[..., None] > 0, rgb * gain, v_new[..., None] * 255.0)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _enhance_one(record: ImageRecord, cluster: int, cfg: ClaheConfig, root: Path) -> dict[str, Any]:
    image, _ = read_image(record.image_path)
    before = v_median(image)
    selected = cfg.selects(before, cluster)
    folder = root / record.image_id
    (folder / "images").mkdir(parents=True)
    target = folder / "images" / f"{record.image_id}.png"
    after = before
    if selected:
        enhanced = enhance_image(image, cfg)
        Image.fromarray(enhanced, "RGB").save(target)
        after = v_median(enhanced)
    else:
        link_or_copy(record.image_path, target)
    if record.mask_paths:
        (folder / "masks").mkdir()
        for mask in record.mask_paths:
            link_or_copy(mask, folder / "masks" / mask.name)
    return {
        "ImageId": record.image_id,
        "cluster": cluster,
        "enhanced": selected,
        "v_median_before": before,
        "v_median_after": after,
    }


def enhance_dataset(
    images_dir: PathLike,
    assignments: pd.DataFrame,
    out_dir: PathLike,
    cfg: ClaheConfig,
    workers: int = 2,
    table_csv: PathLike | None = None,
) -> pd.DataFrame:
    """Write a CLAHE-enhanced copy of a training set in the same BBBC038 layout.

    Selected images (:meth:`ClaheConfig.selects`) are enhanced with :func:`enhance_image` and
    written as 8-bit RGB PNG; the others, and every mask PNG, are hard-linked (copied across file
    systems), so they stay byte-identical. The folder is built beside ``out_dir`` and renamed
    into place when complete (an existing ``out_dir`` is replaced).

    Args:
        images_dir: Training set, BBBC038 layout (masks optional) or flat folder (written out in
            BBBC038 layout).
        assignments: Table with ImageId and cluster for every image in ``images_dir``.
        out_dir: Output folder.
        cfg: CLAHE settings.
        workers: Threads (CLAHE and PNG encoding run mostly outside the GIL).
        table_csv: Where to also write the returned table (it appears with the folder), optional.

    Returns:
        One row per image in ImageId order: ImageId, cluster, enhanced (bool), v_median_before,
        v_median_after (median V in 0-1, see :func:`v_median`).

    Raises:
        NucleistyleError: Missing/empty folder, unreadable image (named), or an image without a
            row in ``assignments`` (named).
    """
    records = list_images(images_dir)
    if not {"ImageId", "cluster"} <= set(assignments.columns):
        raise NucleistyleError("assignments: need columns ImageId and cluster")
    cluster_of = dict(
        zip(assignments["ImageId"].astype(str), assignments["cluster"].astype(int), strict=True)
    )
    for record in records:
        if record.image_id not in cluster_of:
            raise NucleistyleError(
                f"ImageId {record.image_id} of {images_dir} has no row in the cluster assignments"
            )
    with published_together() as outputs:  # the folder and its table together
        tmp = outputs.folder(out_dir)
        with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
            rows = list(
                pool.map(lambda r: _enhance_one(r, cluster_of[r.image_id], cfg, tmp), records)
            )
        table = pd.DataFrame(rows)
        if table_csv is not None:
            table.to_csv(outputs.file(table_csv), index=False)
    log.info(
        "CLAHE (clip %.3g, select %s): %d of %d images enhanced into %s",
        cfg.clip_limit,
        cfg.select,
        int(table["enhanced"].sum()),
        len(table),
        out_dir,
    )
    return table
