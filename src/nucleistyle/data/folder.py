"""Your own annotated images: the paired images/labels layout in; label images and overlays out.

The layout of StarDist, Cellpose and the BBBC039-style sets::

    <folder>/images/<name>.tif    the image: PNG or TIFF, 8/16/32-bit, one or more channels
    <folder>/masks/<name>.tif     its instance label image: one integer per nucleus, 0 = background

Image and label image are matched by file name without extension (``a.tif`` with ``a.png`` is
fine). A training folder needs a label image for every image; a test folder either has
``masks/`` (it is scored) or not (it is only predicted).

:func:`import_folder` turns such a folder into the BBBC038 layout every stage reads
(``<name>/images/<name>.png`` as 8-bit RGB by the :class:`~nucleistyle.data.images.IntensityRule`,
``<name>/masks/*.png`` per nucleus for training; a Kaggle solution CSV for a labelled test
folder), so the channel choice and intensity scaling are applied once and training,
stylisation and prediction see the same pixels. :func:`export_labels` writes a submission back
as one label image per input (TIFF or PNG) and, optionally, an overlay PNG for quick review.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from nucleistyle.data.bbbc038 import list_images, read_image, write_label_png, write_sample
from nucleistyle.data.csvio import check_image_id, read_submission, write_solution
from nucleistyle.data.images import (
    DEFAULT_RULE,
    IntensityRule,
    image_files,
    open_image,
    read_label_image,
)
from nucleistyle.data.rle import rle_decode_labels
from nucleistyle.errors import NucleistyleError
from nucleistyle.outputs import atomic_dir, published_together
from nucleistyle.paths import PathLike, check_input
from nucleistyle.utils import Progress

__all__ = [
    "LABEL_FORMATS",
    "Pair",
    "export_labels",
    "import_folder",
    "list_pairs",
    "outline",
    "write_label_image",
]

log = logging.getLogger(__name__)

SUFFIXES = (".tif", ".tiff", ".png")
LABEL_FORMATS = ("tif", "png")
OVERLAY_COLOUR = (255, 255, 0)  # yellow outlines: visible on dark fluorescence and on stains


@dataclass(frozen=True)
class Pair:
    """One image of a paired folder and its label image (None: unlabelled)."""

    name: str
    image: Path
    labels: Path | None


def list_pairs(folder: PathLike, *, training: bool) -> list[Pair]:
    """List ``<folder>/images`` and match each image with ``<folder>/masks/<name>.*``.

    Args:
        folder: The paired folder.
        training: Every image must have a label image (a training folder).

    Returns:
        One :class:`Pair` per image, sorted by name; ``labels`` is None for every pair of an
        unlabelled test folder (no ``masks/``).

    Raises:
        NucleistyleError: one line naming the file or folder: no ``images/``, no images, two
            files with the same name, a name that cannot be an ImageId (a comma, a double quote
            or a line break), an image without labels where labels are needed, or a label
            image without its image.
    """
    root = check_input(folder, "image folder", folder=True)
    images_dir = root / "images"
    if not images_dir.is_dir():
        raise NucleistyleError(f"{root} has no images/ folder (expected images/ and masks/)")
    images = image_files(images_dir, SUFFIXES)
    if not images:
        raise NucleistyleError(f"no images (*.tif, *.tiff, *.png) in {images_dir}")
    for name, path in images.items():  # the name becomes an ImageId: refused here, not later
        check_image_id(name, f"image {path}")
    masks_dir = root / "masks"
    if not masks_dir.is_dir():
        if training:
            raise NucleistyleError(
                f"{root} has no masks/ folder: a training folder needs a label image per image"
            )
        return [Pair(name, path, None) for name, path in sorted(images.items())]
    labels = image_files(masks_dir, SUFFIXES)
    for name, path in sorted(images.items()):
        if name not in labels:
            raise NucleistyleError(
                f"image {path} has no label image {masks_dir / name}.(tif|tiff|png)"
            )
    for name, path in sorted(labels.items()):
        if name not in images:
            raise NucleistyleError(f"label image {path} has no image in {images_dir}")
    return [Pair(name, images[name], labels[name]) for name in sorted(images)]


def _load_pair(pair: Pair, rule: IntensityRule) -> tuple[np.ndarray, np.ndarray | None]:
    image, _ = read_image(pair.image, rule)
    if pair.labels is None:
        return image, None
    labels = read_label_image(pair.labels)
    if labels.shape != image.shape[:2]:
        raise NucleistyleError(
            f"label image {pair.labels} is {labels.shape[0]}x{labels.shape[1]}, its image "
            f"{pair.image} is {image.shape[0]}x{image.shape[1]}"
        )
    return image, labels


def import_folder(
    folder: PathLike,
    out_dir: PathLike,
    *,
    training: bool,
    solution_csv: PathLike | None = None,
    rule: IntensityRule = DEFAULT_RULE,
    overwrite: bool = False,
) -> int:
    """Convert a paired folder to the BBBC038 layout, all outputs published together.

    Every image and label image is read and checked before anything appears: on bad input
    nothing is written.

    Args:
        folder: The paired folder (module docstring).
        out_dir: New BBBC038-layout folder: ``<name>/images/<name>.png`` (8-bit RGB by
            ``rule``) and, for a training folder, ``<name>/masks/<name>_<label>.png``.
        training: A training folder (labels required, written as masks).
        solution_csv: For a labelled test folder: the Kaggle solution CSV to write (Usage
            ``Public``). Required exactly when the test folder has labels.
        rule: Channel choice and intensity scaling.
        overwrite: Replace a non-empty ``out_dir`` that this function wrote before (never
            anything else).

    Returns:
        The number of images.

    Raises:
        NucleistyleError: as :func:`list_pairs`; an unreadable image or label image, a
            non-integer label image, a label image of another size than its image (each named);
            ``solution_csv`` given for an unlabelled folder or missing for a labelled one.
    """
    pairs = list_pairs(folder, training=training)
    labelled = pairs[0].labels is not None
    if not training and labelled != (solution_csv is not None):
        state = "has labels (masks/)" if labelled else "has no labels (no masks/)"
        raise NucleistyleError(
            f"test folder {folder} {state}: "
            + ("a solution CSV is needed" if labelled else "no solution CSV can be written")
        )
    truth: dict[str, np.ndarray] = {}
    n_objects = 0
    with published_together() as outputs, Progress(len(pairs), "import", log) as progress:
        staging = outputs.folder(out_dir, marker="import-folder", overwrite=overwrite)
        for pair in pairs:
            image, labels = _load_pair(pair, rule)
            if labels is not None:
                n_objects += len(np.unique(labels)) - int((labels == 0).any())
            if training:
                write_sample(staging, pair.name, image, labels)
            else:
                write_sample(staging, pair.name, image, None)
                if labels is not None:
                    truth[pair.name] = labels
            progress.update()
        if solution_csv is not None:
            write_solution(solution_csv, truth, usage="Public", outputs=outputs)
    log.info(
        "imported %d images (%s) from %s -> %s%s",
        len(pairs),
        f"{n_objects} nuclei" if labelled else "unlabelled",
        folder,
        out_dir,
        f" and {solution_csv}" if solution_csv is not None else "",
    )
    return len(pairs)


def outline(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The image with each object's inner boundary drawn in :data:`OVERLAY_COLOUR`."""
    from skimage.segmentation import find_boundaries

    overlay = image.copy()
    overlay[find_boundaries(labels, mode="inner")] = OVERLAY_COLOUR
    return overlay


def write_label_image(folder: Path, image_id: str, labels: np.ndarray, fmt: str) -> Path:
    """Write ``<folder>/<image_id>.<fmt>``: a TIFF (uint16, or uint32 beyond 65,535 objects) or
    a 16-bit PNG label image, 0 = background.

    Raises:
        NucleistyleError: an unknown format, or more than 65,535 objects for a PNG.
    """
    if fmt not in LABEL_FORMATS:
        raise NucleistyleError(f"label format {fmt!r}: one of {', '.join(LABEL_FORMATS)}")
    path = folder / f"{image_id}.{fmt}"
    top = int(labels.max(initial=0))
    if fmt == "tif":
        import tifffile

        dtype = np.uint16 if top <= np.iinfo(np.uint16).max else np.uint32
        tifffile.imwrite(path, labels.astype(dtype))
    else:
        write_label_png(path, labels)
    return path


def export_labels(
    submission_csv: PathLike,
    images_dir: PathLike,
    out_dir: PathLike,
    *,
    fmt: str = "tif",
    overlays: bool = False,
) -> int:
    """Write a submission as one instance label image per image (and overlays), in one step.

    Args:
        submission_csv: Kaggle submission (``ImageId,EncodedPixels``) of the images.
        images_dir: The images it was predicted on (any layout :func:`list_images` reads).
        out_dir: New folder of ``<ImageId>.tif`` (uint16, or uint32 beyond 65,535 objects) or
            ``<ImageId>.png`` (16-bit) label images, objects numbered in submission row order.
        fmt: ``tif`` or ``png``.
        overlays: Also write ``out_dir/overlays/<ImageId>.png``: the image as the models saw
            it, each predicted nucleus outlined in yellow.

    Returns:
        The number of images written.

    Raises:
        NucleistyleError: an unknown format, an unreadable submission or image, a submission
            naming an image that is not in ``images_dir``.
    """
    if fmt not in LABEL_FORMATS:
        raise NucleistyleError(f"label format {fmt!r}: one of {', '.join(LABEL_FORMATS)}")
    records = {r.image_id: r for r in list_images(images_dir)}
    submission = read_submission(submission_csv)
    unknown = sorted(set(submission) - set(records))
    if unknown:
        raise NucleistyleError(
            f"{submission_csv}: ImageId {unknown[0]} is not an image of {images_dir}"
        )
    with atomic_dir(out_dir) as labels_out:
        overlays_out = labels_out / "overlays" if overlays else None
        if overlays_out is not None:
            overlays_out.mkdir()
        for image_id, record in records.items():
            if overlays_out is not None:
                image = read_image(record.image_path)[0]
                shape = image.shape[:2]
            else:
                with open_image(record.image_path) as im:
                    shape = (im.height, im.width)
            rles = [r for r in submission.get(image_id, []) if r]
            labels, _ = rle_decode_labels(rles, shape, where=str(submission_csv))
            write_label_image(labels_out, image_id, labels, fmt)
            if overlays_out is not None:
                Image.fromarray(outline(image, labels)).save(overlays_out / f"{image_id}.png")
    log.info("wrote %d label images to %s", len(records), out_dir)
    return len(records)
