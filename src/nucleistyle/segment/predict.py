"""Prediction over a folder: the images of a folder (or one shard of them) segmented into a
Kaggle submission and label images, published together (:func:`predict_folder`).

The network pass and post-processing are :class:`~.inference.Segmenter`'s; the model file is
read by :func:`~.modelfile.load_segmenter`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from nucleistyle.data.bbbc038 import ImageRecord, list_images, read_image
from nucleistyle.data.csvio import CompressedLabels, check_image_id, write_submission
from nucleistyle.data.folder import outline, write_label_image
from nucleistyle.errors import NucleistyleError
from nucleistyle.outputs import published_together
from nucleistyle.paths import PathLike
from nucleistyle.segment.inference import Segmenter
from nucleistyle.segment.modelfile import load_segmenter
from nucleistyle.tta import BASELINE_TTA, TTAConfig
from nucleistyle.utils import Progress

__all__ = ["predict_folder"]

log = logging.getLogger(__name__)


def _check_shard(shard: tuple[int, int]) -> tuple[int, int]:
    """Validate ``shard = (index, n_shards)``."""
    ok = isinstance(shard, Sequence) and len(shard) == 2
    ok = ok and all(isinstance(v, int | np.integer) and not isinstance(v, bool) for v in shard)
    if not ok:
        raise NucleistyleError(f"shard must be (index, n_shards), two integers, got {shard!r}")
    index, n_shards = int(shard[0]), int(shard[1])
    if n_shards < 1:
        raise NucleistyleError(f"shard: n_shards must be >= 1, got {n_shards}")
    if not 0 <= index < n_shards:
        raise NucleistyleError(f"shard: index must be in [0, {n_shards}), got {index}")
    return index, n_shards


def _tta_config(tta: Mapping | TTAConfig | bool | None, baseline: str) -> TTAConfig | None:
    """None/False: single pass; True: the baseline's own TTA; a mapping: the config section
    ``tta`` resolved for ``baseline`` (:meth:`~nucleistyle.tta.TTAConfig.for_baseline`)."""
    if tta is None or tta is False or isinstance(tta, TTAConfig):
        return tta or None
    if tta is True:
        return TTAConfig.for_baseline(baseline)
    if isinstance(tta, Mapping):
        return TTAConfig.for_baseline(baseline, tta)
    raise NucleistyleError(f"tta must be a mapping (config section tta) or None, got {tta!r}")


def predict_folder(
    model_path: PathLike,
    images_dir: PathLike,
    submission_csv: PathLike | None,
    labels_dir: PathLike | None = None,
    device: str = "auto",
    tta: Mapping | TTAConfig | bool | None = None,
    shard: tuple[int, int] = (0, 1),
    label_format: str = "png",
    overlays: bool = False,
) -> int:
    """Segment the images of a folder (or one shard of them), single pass or with TTA.

    Each image goes through :meth:`~.inference.Segmenter.segment`: one network pass, or
    (``tta``) every variant of the image and the merge, then the baseline's post-processing
    either way (Mirzaev's fallback canvas included, under TTA too); see
    :func:`_images_per_call` for how many images go per call.

    Objects are numbered, and written to the submission, in descending confidence (under TTA
    the merged detections' mean score): COCO AP takes the confidence order from the row order.

    Outputs appear together, only once every image is done: the submission and the label
    images are staged beside their targets and published in one step (files of ``labels_dir``
    with other names are left alone). On an error nothing is written.

    Args:
        model_path: A model file from :func:`~.engine.train_segmenter`
            (``results/segment/<baseline>-<arm>/model.pt`` in the pipeline).
        images_dir: BBBC038-layout or flat folder of images.
        submission_csv: Kaggle submission (``ImageId,EncodedPixels``); an image without nuclei
            gets one empty row, an empty shard a header only. None: no submission.
        labels_dir: If given, ``<labels_dir>/<ImageId>.png`` (or ``.tif``): label images of
            each input's size (0 = background).
        device: Where to run (``auto``, ``cpu``, ``cuda``, ``cuda:N``).
        tta: None or False for a single pass; True for the baseline's own TTA; the config
            section ``tta`` as a mapping (resolved for the model's baseline), or a
            :class:`~nucleistyle.tta.TTAConfig`.
        shard: ``(index, n_shards)``: the images sorted by ImageId, this call takes every
            ``n_shards``-th one starting at ``index`` (it may get none).
        label_format: ``png`` (16-bit) or ``tif`` label images in ``labels_dir``.
        overlays: Also write ``<labels_dir>/overlays/<ImageId>.png``: the image with each
            nucleus outlined in yellow.

    Returns:
        The number of images segmented (in this shard).

    Raises:
        NucleistyleError: an invalid ``shard`` or ``tta``, no output requested, a missing or
            bad model file, an empty folder or an unreadable image (named).

    Example:
        >>> predict_folder("results/segment/mirzaev-style/model.pt", "stage1_test",
        ...                "shard1.csv", tta=True, shard=(1, 4))  # doctest: +SKIP
    """
    index, n_shards = _check_shard(shard)
    out_dir = _check_request(model_path, submission_csv, labels_dir, tta)
    records = list_images(images_dir)[index::n_shards]
    if submission_csv is not None:  # written last: refuse its ImageIds first
        for record in records:
            check_image_id(record.image_id, f"image {record.image_path}")
    segmenter = load_segmenter(model_path, device)
    cfg = _tta_config(tta, segmenter.cfg.baseline)
    per_call = _images_per_call(cfg, len(records), images_dir)
    if n_shards > 1:
        log.info("shard %d of %d: %d images", index, n_shards, len(records))
    with published_together() as outputs:  # the submission and the labels, or nothing
        names = [f"{r.image_id}.{label_format}" for r in records]
        names += [f"overlays/{r.image_id}.png" for r in records] if overlays else []
        staging = outputs.files_into(out_dir, names) if out_dir is not None else None
        start = time.perf_counter()
        predictions = _segment_records(
            segmenter, records, cfg, per_call, staging, label_format, overlays
        )
        elapsed = time.perf_counter() - start
        if submission_csv is not None:
            write_submission(submission_csv, predictions, outputs=outputs)
    rate = len(records) / elapsed if elapsed > 0 else 0.0
    log.info("segmented %d images of %s in %.1f s (%.2f images/s)", len(records), images_dir,
             elapsed, rate)  # fmt: skip
    return len(records)


def _check_request(
    model_path: PathLike,
    submission_csv: PathLike | None,
    labels_dir: PathLike | None,
    tta: Mapping | TTAConfig | bool | None,
) -> Path | None:
    """Refuse a request that cannot succeed, before the model is loaded; returns the label
    folder as a Path (None: no label images)."""
    if isinstance(tta, Mapping):  # a bad section fails whatever the model's baseline
        for baseline in BASELINE_TTA:
            TTAConfig.for_baseline(baseline, tta)
    if submission_csv is None and labels_dir is None:
        raise NucleistyleError(
            "predict_folder: nothing to write (no submission_csv, no labels_dir)"
        )
    out_dir = None if labels_dir is None else Path(labels_dir)
    if out_dir is not None and out_dir.exists() and not out_dir.is_dir():
        raise NucleistyleError(f"label folder {out_dir} exists and is not a folder")
    if not Path(model_path).is_file():
        raise NucleistyleError(f"model file not found: {model_path}")
    return out_dir


def _images_per_call(cfg: TTAConfig | None, n_images: int, images_dir: PathLike) -> int:
    """Images per :meth:`~.inference.Segmenter.segment` call, logged with the plan: one in a
    single pass; with TTA ``tta.batch_size // n_variants`` (at least 1; one when ``batch_size``
    is 0), their variants sent to the network ``tta.batch_size`` at a time (0: all at once).
    Variants of different sizes in one call go through the network in separate batches
    (:meth:`~.inference.Segmenter.raw`): an image's result does not depend on its company."""
    if cfg is None:
        log.info("single pass over %d images of %s", n_images, images_dir)
        return 1
    n_variants = len(cfg.transforms)
    per_call = max(1, cfg.batch_size // n_variants)
    log.info(
        "TTA over %d images of %s: %d variants each (%s), merge %s, %d images per call",
        n_images,
        images_dir,
        n_variants,
        ", ".join(cfg.transforms),
        cfg.merge,
        per_call,
    )
    return per_call


def _segment_records(
    segmenter: Segmenter,
    records: Sequence[ImageRecord],
    cfg: TTAConfig | None,
    per_call: int,
    staging: Path | None,
    label_format: str,
    overlays: bool,
) -> CompressedLabels:
    """Segment ``records`` ``per_call`` at a time; label images (and overlays) into
    ``staging``; returns the predictions for the submission."""
    if staging is not None and overlays:
        (staging / "overlays").mkdir()
    predictions = CompressedLabels()
    with Progress(len(records), "predict", log) as bar:
        for first in range(0, len(records), per_call):
            chunk = records[first : first + per_call]
            images = [read_image(record.image_path)[0] for record in chunk]
            results = zip(chunk, images, segmenter.segment(images, cfg), strict=True)
            for record, image, labels in results:
                predictions.add(record.image_id, labels)
                if staging is not None:
                    write_label_image(staging, record.image_id, labels, label_format)
                if staging is not None and overlays:
                    overlay = Image.fromarray(outline(image, labels))
                    overlay.save(staging / "overlays" / f"{record.image_id}.png")
            bar.update(len(chunk))
    return predictions
