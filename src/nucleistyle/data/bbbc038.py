"""Reading and writing BBBC038 (2018 Data Science Bowl) images and per-nucleus masks.

On-disk layout (one folder per image; the ImageId is the folder name)::

    <root>/<ImageId>/images/<ImageId>.png   the image (any PNG mode; converted to uint8 RGB)
    <root>/<ImageId>/masks/<MaskId>.png     one binary PNG per nucleus (absent for test sets)

A flat folder of images (``*.png``, ``*.tif``, ``*.tiff``, ``*.jpg``; ImageId = file stem) is
accepted too, for unlabelled data. Masks become one instance label image per sample: int32,
0 = background, 1..n in sorted MaskId order (see :func:`read_masks` for overlaps).

Example:
    >>> records = list_images("resources/stage1_train")  # doctest: +SKIP
    >>> for sample in iter_samples(records, workers=2):  # doctest: +SKIP
    ...     print(sample.image_id, sample.image.shape, sample.labels.max())
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import itertools
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from nucleistyle.data.images import DECODE_ERRORS, open_image, read_image
from nucleistyle.errors import NucleistyleError
from nucleistyle.outputs import atomic_dir, atomic_path
from nucleistyle.paths import PathLike, check_input
from nucleistyle.utils import process_pool

__all__ = [
    "ImageRecord",
    "Sample",
    "iter_samples",
    "list_images",
    "load_sample",
    "read_image",
    "read_masks",
    "relabel_sequential",
    "write_label_png",
    "write_sample",
]

log = logging.getLogger(__name__)

FLAT_SUFFIXES = (".png", ".tif", ".tiff", ".jpg")


@dataclass(frozen=True)
class ImageRecord:
    """Where one sample lives on disk.

    Attributes:
        image_id: The ImageId (folder name, or file stem for a flat folder).
        image_path: The image file.
        mask_paths: One PNG per nucleus, sorted by file name (MaskId); empty when the sample has
            no ``masks/`` folder (test sets, flat folders).
    """

    image_id: str
    image_path: Path
    mask_paths: tuple[Path, ...] = ()


@dataclass
class Sample:
    """One decoded sample.

    Attributes:
        image_id: The ImageId.
        image: uint8 RGB image, shape (H, W, 3).
        labels: int32 instance labels, shape (H, W), 0 = background, 1..n in sorted MaskId
            order; None when the record has no masks.
        mode: The image file's original Pillow mode ("RGBA", "L", "I;16", ...).
        overlap_pixels: Pixels claimed by more than one mask (see :func:`read_masks`).
    """

    image_id: str
    image: np.ndarray
    labels: np.ndarray | None
    mode: str
    overlap_pixels: int = 0


def _visible(path: Path) -> bool:
    return not path.name.startswith(".")


def list_images(root: PathLike) -> list[ImageRecord]:
    """List the samples under ``root``, sorted by ImageId.

    ``root`` is either a BBBC038-layout folder (every visible sub-folder ``<id>`` holds
    ``images/<id>.png`` and optionally ``masks/*.png``; loose files beside the folders are
    ignored) or a flat folder of images (``*.png``, ``*.tif``, ``*.tiff``, ``*.jpg``, any case;
    other files are ignored). Names starting with "." (hidden and temporary files) are ignored.

    Args:
        root: The folder.

    Returns:
        One :class:`ImageRecord` per sample, sorted by ImageId; mask paths sorted by file name.

    Raises:
        NucleistyleError: ``root`` is missing, not a folder, unreadable or holds no images, a
            sample folder lacks its image, a flat folder has two images with the same stem, or
            ``root`` mixes sample folders with loose images.
    """
    root = check_input(root, "image folder", folder=True)
    entries = sorted(p for p in root.iterdir() if _visible(p))
    folders = [p for p in entries if p.is_dir()]
    flat = [p for p in entries if p.is_file() and p.suffix.lower() in FLAT_SUFFIXES]
    if folders and flat:
        raise NucleistyleError(
            f"{root} mixes sample folders ({folders[0].name}) with loose images ({flat[0].name})"
        )
    records: list[ImageRecord] = []
    if folders:
        for folder in folders:
            image_path = folder / "images" / f"{folder.name}.png"
            if not image_path.is_file():
                raise NucleistyleError(f"sample folder without its image: {image_path} not found")
            mask_dir = folder / "masks"
            masks: tuple[Path, ...] = ()
            if mask_dir.is_dir():
                masks = tuple(
                    sorted(
                        (p for p in mask_dir.iterdir() if _visible(p) and p.suffix == ".png"),
                        key=lambda p: p.name,
                    )
                )
            records.append(ImageRecord(folder.name, image_path, masks))
    else:
        seen: dict[str, Path] = {}
        for path in flat:
            if path.stem in seen:
                raise NucleistyleError(
                    f"two images with ImageId {path.stem!r} in {root}: {seen[path.stem].name}, "
                    f"{path.name}"
                )
            seen[path.stem] = path
            records.append(ImageRecord(path.stem, path))
    if not records:
        raise NucleistyleError(f"no images found in {root}")
    records.sort(key=lambda r: r.image_id)
    return records


def _read_mask(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """Foreground (any nonzero pixel) of one mask file as flat indices into ``shape``."""
    try:
        with open_image(path) as im:
            if (im.height, im.width) != shape:
                raise NucleistyleError(
                    f"mask {path} is {im.height}x{im.width}, its image is {shape[0]}x{shape[1]}"
                )
            im.load()
            if im.mode in ("L", "1"):
                # Masks are tiny blobs in a large frame: Pillow's bounding box (C) avoids a numpy
                # scan of the whole frame, which costs as much as decoding it.
                box = im.getbbox()
                if box is None:
                    return np.zeros(0, np.intp)
                rows, cols = np.nonzero(np.asarray(im.crop(box)))
                return (rows + box[1]) * shape[1] + (cols + box[0])
            converted = im.convert("RGBA") if im.mode in ("P", "PA") else im
            arr: np.ndarray = np.asarray(converted)
            bands = converted.getbands()
    except DECODE_ERRORS as exc:
        if isinstance(exc, NucleistyleError):
            raise
        reason = str(exc) or type(exc).__name__
        raise NucleistyleError(f"cannot read mask {path}: {reason}") from exc
    if arr.ndim == 3:
        # Any nonzero colour channel is foreground; alpha is not a colour.
        colour = [i for i, band in enumerate(bands) if band != "A"]
        arr = np.asarray(arr[:, :, colour].any(axis=2))
    return np.flatnonzero(arr)


def read_masks(paths: Sequence[PathLike], shape: tuple[int, int]) -> tuple[np.ndarray, int]:
    """Merge one-PNG-per-nucleus masks into an instance label image.

    Policy (deterministic): masks are taken in sorted file-name (MaskId) order; any nonzero
    pixel is foreground; a pixel claimed by several masks belongs to the FIRST of them. The
    number of such contested pixels (each pixel counted once) is returned, and a warning naming
    the mask folder is logged when it is > 0 (the community-fixed BBBC038 has 1-2 px overlaps in
    6 images). A mask left with no pixel (an empty file, or one wholly covered by earlier masks)
    gets no label and is logged as a warning: labels stay consecutive, so ``labels.max()`` is the
    number of objects visible in the label image.

    Args:
        paths: Mask PNG files (any order; sorted by file name here).
        shape: (H, W) of the image; every mask must have this size.

    Returns:
        ``(labels, overlap_pixels)``: int32 array of shape (H, W) with 0 = background and
        1..n, and the number of pixels claimed by more than one mask.

    Raises:
        NucleistyleError: A mask has the wrong size or cannot be read (the message names it).

    Example:
        >>> labels, overlap = read_masks(record.mask_paths, image.shape[:2])  # doctest: +SKIP
    """
    height, width = int(shape[0]), int(shape[1])
    labels = np.zeros(height * width, np.int32)
    contested = np.zeros(height * width, bool)
    ordered = sorted((Path(p) for p in paths), key=lambda p: p.name)
    next_label = 1
    for path in ordered:
        idx = _read_mask(path, (height, width))
        taken = labels[idx] != 0
        contested[idx[taken]] = True
        free = idx[~taken]
        if free.size == 0:
            log.warning("mask %s has no pixel of its own: no label assigned", path)
            continue
        labels[free] = next_label
        next_label += 1
    overlap = int(np.count_nonzero(contested))
    if overlap:
        folder = ordered[0].parent
        log.warning(
            "%d pixel(s) claimed by several masks in %s: kept by the first mask in MaskId order",
            overlap,
            folder,
        )
    return labels.reshape(height, width), overlap


def load_sample(record: ImageRecord) -> Sample:
    """Decode one sample: its image and, when it has masks, its label image.

    Args:
        record: From :func:`list_images`.

    Returns:
        The :class:`Sample`; ``labels`` is None when ``record.mask_paths`` is empty.

    Raises:
        NucleistyleError: The image or a mask cannot be read, or a mask has the wrong size.
    """
    image, mode = read_image(record.image_path)
    labels, overlap = None, 0
    if record.mask_paths:
        labels, overlap = read_masks(record.mask_paths, image.shape[:2])
    return Sample(record.image_id, image, labels, mode, overlap)


class _ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        record.msg, record.args = record.getMessage(), None  # picklable, formatted once
        self.records.append(record)


_Job = tuple[Sample, list[logging.LogRecord]]


def _load_in_worker(record: ImageRecord) -> _Job:
    """:func:`load_sample` in a worker process; its log records go back to the parent."""
    handler = _ListHandler()
    log.addHandler(handler)
    log.propagate = False
    try:
        return load_sample(record), handler.records
    finally:
        log.removeHandler(handler)
        log.propagate = True


def _load_in_thread(record: ImageRecord) -> _Job:
    return load_sample(record), []


def _pool(
    workers: int, masks: bool
) -> tuple[
    contextlib.AbstractContextManager[concurrent.futures.Executor], Callable[[ImageRecord], _Job]
]:
    # Measured on the 531 real images, 2 cores: decoding ~23k small mask PNGs is GIL-bound
    # (Pillow's PNG decoder holds it), so processes beat threads there; images alone spend their
    # time in GIL-free conversions, and threads avoid pickling them back. Processes are forked,
    # so Linux only (see process_pool).
    if masks and sys.platform == "linux":
        return process_pool(workers), _load_in_worker
    threads = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="bbbc038")
    return threads, _load_in_thread


def iter_samples(records: Sequence[ImageRecord], workers: int = 2) -> Iterator[Sample]:
    """Decode samples in parallel and yield them in input order.

    Samples with masks are decoded in ``workers`` forked processes (threads off Linux), whose
    warnings are re-emitted in the caller's process; images without masks in ``workers``
    threads. At most ``4 * workers`` samples are decoded ahead of the consumer, so memory
    stays bounded.

    Args:
        records: Samples to decode.
        workers: Worker processes or threads; 0 or 1 decodes serially in the calling thread.

    Yields:
        One :class:`Sample` per record, in the order of ``records``.

    Raises:
        NucleistyleError: As :func:`load_sample`, when the failing sample's turn comes.
    """
    if workers <= 1 or len(records) <= 1:
        for record in records:
            yield load_sample(record)
        return
    pooled, work = _pool(workers, any(r.mask_paths for r in records))
    with pooled as pool:
        pending: collections.deque[concurrent.futures.Future[_Job]] = collections.deque()
        todo = iter(records)
        try:
            for record in itertools.islice(todo, 4 * workers):
                pending.append(pool.submit(work, record))
            while pending:
                sample, logged = pending.popleft().result()
                following = next(todo, None)
                if following is not None:
                    pending.append(pool.submit(work, following))
                for entry in logged:
                    log.handle(entry)
                yield sample
        finally:
            for future in pending:
                future.cancel()


def _check_image_id(image_id: str) -> None:
    if not image_id or image_id.startswith(".") or "/" in image_id or os.sep in image_id:
        raise NucleistyleError(
            f"invalid ImageId {image_id!r}: empty, hidden or containing a path separator"
        )


def write_sample(
    root: PathLike,
    image_id: str,
    image: np.ndarray,
    labels: np.ndarray | None = None,
) -> Path:
    """Write one sample in BBBC038 layout, atomically.

    Writes ``<root>/<id>/images/<id>.png`` (8-bit RGB) and, when ``labels`` is given, one 8-bit
    L PNG with values {0, 255} per nonzero label ``k`` at ``<root>/<id>/masks/<id>_<k:04d>.png``.
    The folder is built under a hidden temporary name in ``root`` and renamed into place, so a
    reader never sees half a sample; an existing sample folder is replaced. Reading it back with
    :func:`load_sample` gives ``relabel_sequential(labels)`` (for label values up to 9999, where
    the zero-padded file-name order is the value order).

    Args:
        root: Output folder (created if missing).
        image_id: The ImageId (folder and file name).
        image: uint8 image, shape (H, W, 3) or (H, W) for grey.
        labels: Integer instance labels, shape (H, W), 0 = background, values >= 0.

    Returns:
        The sample folder ``<root>/<id>``.

    Raises:
        NucleistyleError: Invalid ImageId, or an image/labels array of the wrong dtype or shape.
    """
    _check_image_id(image_id)
    image = np.asarray(image)
    if image.dtype != np.uint8 or not (
        image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)
    ):
        raise NucleistyleError(
            f"{image_id}: image must be uint8 (H, W, 3) or (H, W), got {image.dtype} {image.shape}"
        )
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != image.shape[:2] or not np.issubdtype(labels.dtype, np.integer):
            raise NucleistyleError(
                f"{image_id}: labels must be integer {image.shape[:2]}, got {labels.dtype} "
                f"{labels.shape}"
            )
        if labels.size and labels.min() < 0:
            raise NucleistyleError(f"{image_id}: labels must be >= 0")
    folder = Path(root) / image_id
    with atomic_dir(folder) as tmp:
        (tmp / "images").mkdir()
        Image.fromarray(np.ascontiguousarray(image), "RGB").save(tmp / "images" / f"{image_id}.png")
        if labels is not None:
            (tmp / "masks").mkdir()
            flat = labels.ravel()
            order = np.argsort(flat, kind="stable")
            values, starts = np.unique(flat[order], return_index=True)
            bounds = np.append(starts, flat.size)
            mask = np.zeros(flat.size, np.uint8)
            for i, value in enumerate(values):
                if value == 0:
                    continue
                idx = order[bounds[i] : bounds[i + 1]]
                mask[idx] = 255
                Image.fromarray(mask.reshape(labels.shape), "L").save(
                    tmp / "masks" / f"{image_id}_{int(value):04d}.png"
                )
                mask[idx] = 0
    return folder


def relabel_sequential(labels: np.ndarray) -> np.ndarray:
    """Renumber instance labels to 1..n in order of label value, keeping 0 as background.

    Args:
        labels: Integer label image, any shape; 0 = background.

    Returns:
        int32 array of the same shape: the smallest nonzero label becomes 1, the next 2, ...

    Example:
        >>> relabel_sequential(np.array([[0, 7], [3, 7]])).tolist()
        [[0, 2], [1, 2]]
    """
    labels = np.asarray(labels)
    values, inverse = np.unique(labels, return_inverse=True)
    out = inverse.reshape(labels.shape).astype(np.int32)
    if values.size == 0 or values[0] != 0:
        out += 1
    return out


def write_label_png(path: PathLike, labels: np.ndarray) -> None:
    """Write a 16-bit label PNG (0 = background) atomically.

    Raises:
        NucleistyleError: more than 65535 objects.
    """
    if labels.max(initial=0) > np.iinfo(np.uint16).max:
        raise NucleistyleError(f"{path}: {labels.max()} objects do not fit a 16-bit PNG")
    with atomic_path(path) as tmp:
        Image.fromarray(labels.astype(np.uint16)).save(tmp, format="PNG")
