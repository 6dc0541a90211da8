"""Kaggle DSB 2018 solution and submission CSV files.

* Solution (ground truth): ``ImageId,EncodedPixels,Height,Width,Usage``, one row per object.
  ``1 1`` (and an empty EncodedPixels) is a placeholder meaning "no object" — the single row of
  every stage-2 ``Ignored`` decoy image carries it. Consequence: a real 1-pixel object at the
  top-left pixel cannot be stored in a solution file (:func:`write_solution` warns).
* Submission: ``ImageId,EncodedPixels``, one row per predicted nucleus; an image without any
  nucleus has a single row with an empty EncodedPixels.

Readers use the :mod:`csv` module (quotes, CRLF and LF line endings) and keep each row's line
number so that errors found later, when RLE rows are decoded, still name file, line and ImageId.
Writers are atomic (:func:`nucleistyle.outputs.atomic_path`) and use LF line endings.
"""

from __future__ import annotations

import csv
import logging
import os
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nucleistyle.data.images import max_pixels
from nucleistyle.data.rle import _parse_runs, rle_decode_labels, rle_encode_labels
from nucleistyle.errors import NucleistyleError
from nucleistyle.outputs import OutputSet, atomic_path
from nucleistyle.paths import PathLike

__all__ = [
    "PLACEHOLDER_RLE",
    "SOLUTION_HEADER",
    "SUBMISSION_HEADER",
    "CompressedLabels",
    "GroundTruth",
    "Submission",
    "check_image_id",
    "gather_submissions",
    "read_rows",
    "read_solution",
    "read_submission",
    "select_usage",
    "write_solution",
    "write_submission",
]

log = logging.getLogger(__name__)

SOLUTION_HEADER = ("ImageId", "EncodedPixels", "Height", "Width", "Usage")
SUBMISSION_HEADER = ("ImageId", "EncodedPixels")
PLACEHOLDER_RLE = "1 1"


@dataclass
class GroundTruth:
    """The ground-truth objects of one image, as read from a solution file.

    Attributes:
        image_id: the ImageId.
        height, width: image size in pixels.
        rles: one RLE string per object, in file order, ``1 1`` placeholders removed.
        usage: the Usage column (e.g. ``Public``, ``Private``).
        lines: the 1-based CSV line of each entry of ``rles`` (for error messages).
        source: the file it was read from ("" when built in memory).
    """

    image_id: str
    height: int
    width: int
    rles: list[str]
    usage: str
    lines: list[int] = field(default_factory=list)
    source: str = ""

    @property
    def shape(self) -> tuple[int, int]:
        """``(height, width)``."""
        return self.height, self.width

    def label_image(self) -> tuple[np.ndarray, int]:
        """Decode the objects into an int32 label image (row k -> label k + 1).

        Overlapping rows are resolved first-row-wins (rare in the real ground truth).

        Returns:
            ``(labels, n_contested)``: (height, width) int32 array and the number of pixels
            claimed by more than one row.

        Raises:
            RLEError: a malformed RLE row (message names file, line and ImageId).
        """
        wheres = [self._where(i) for i in range(len(self.rles))]
        return rle_decode_labels(self.rles, self.shape, where=wheres, allow_overlap=True)

    def _where(self, i: int) -> str:
        line = f" line {self.lines[i]}" if i < len(self.lines) else f" row {i + 1}"
        return f"{self.source or 'solution'}{line}, ImageId {self.image_id}"


class Submission(dict[str, list[str]]):
    """``{ImageId: [rle, ...]}`` as read by :func:`read_submission`, plus where each row came from.

    An image whose only row has an empty EncodedPixels maps to ``[]`` (no nucleus).

    Attributes:
        source: the file path.
        lines: ``{ImageId: [line, ...]}``, the 1-based CSV line of each RLE.
    """

    def __init__(self, source: str = "") -> None:
        super().__init__()
        self.source = source
        self.lines: dict[str, list[int]] = {}

    def where(self, image_id: str) -> list[str]:
        """Error-message context for each RLE row of ``image_id`` (file, line, ImageId)."""
        return [f"{self.source} line {n}, ImageId {image_id}" for n in self.lines[image_id]]


def read_rows(path: PathLike) -> Iterator[tuple[int, list[str]]]:
    """Yield ``(line_number, cells)`` of every non-blank row of a CSV file, header included.

    A UTF-8 byte-order mark and whitespace around cells are tolerated. Line numbers are 1-based
    physical lines, right also for errors found while decoding the text.

    Raises:
        NucleistyleError: the file cannot be opened, is not UTF-8 text or not CSV (naming the
            file and line).
    """
    path = Path(path)
    try:
        f = path.open(newline="", encoding="utf-8-sig")
    except OSError as e:
        raise NucleistyleError(f"{path}: cannot open ({e.strerror})") from e
    with f:
        reader = csv.reader(f)
        try:
            for row in reader:
                if any(cell.strip() for cell in row):
                    yield reader.line_num, [cell.strip() for cell in row]
        except UnicodeDecodeError as e:
            line = _first_undecodable_line(path)
            raise NucleistyleError(f"{path} line {line}: not UTF-8 text ({e.reason})") from e
        except csv.Error as e:
            raise NucleistyleError(f"{path} line {reader.line_num}: unreadable CSV ({e})") from e
        except OSError as e:
            raise NucleistyleError(f"{path}: cannot read ({e.strerror})") from e


def _first_undecodable_line(path: Path) -> int:
    """The 1-based line holding the first byte that is not UTF-8 (text is decoded in blocks,
    so the reader's own line count can lag behind)."""
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                return number
    return 1


def _rows(path: Path, header: tuple[str, ...]) -> Iterator[tuple[int, list[str]]]:
    """Yield ``(line_number, row)`` after checking the header exactly; blank lines skipped."""
    rows = read_rows(path)
    first = next(rows, None)
    if first is None:
        raise NucleistyleError(f"{path}: empty file (expected the header {','.join(header)!r})")
    found = first[1]
    if tuple(found) != header:
        raise NucleistyleError(
            f"{path}: header must be {','.join(header)!r}, found {','.join(found)!r}"
        )
    for line, row in rows:
        if len(row) != len(header):
            raise NucleistyleError(
                f"{path} line {line}: expected {len(header)} columns, found {len(row)}"
            )
        yield line, row


def _positive_int(text: str, what: str, where: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) <= 0:
        raise NucleistyleError(f"{where}: {what} must be a positive integer, found {text!r}")
    return int(text)


def read_solution(path: PathLike, usage: str | None = "auto") -> dict[str, GroundTruth]:
    """Read a solution (ground-truth) CSV such as ``stage1_solution.csv``.

    Every RLE row is syntax-checked here (sorted, positive, in range) so a bad file fails early;
    overlaps between rows of one image are resolved later by :meth:`GroundTruth.label_image`.

    Args:
        path: the CSV file, header exactly ``ImageId,EncodedPixels,Height,Width,Usage``.
        usage: which rows to keep. ``"auto"``: if any row has Usage ``Private`` keep only the
            Private rows (stage 2: the 106 scored images; the ``Ignored`` decoys are dropped),
            otherwise keep every row (stage 1: Usage is not filtered). ``None``: keep every row.
            Any other string: keep the rows with exactly that Usage.

    Returns:
        ``{ImageId: GroundTruth}`` in file order. An image whose kept rows are all placeholders
        (``1 1`` or empty) is kept with zero objects (logged as a warning for Private rows).

    Raises:
        NucleistyleError: unreadable file, wrong header, wrong column count, Height/Width not a
            positive integer, more pixels than images may have (:func:`.images.max_pixels`) or
            not constant per ImageId, Usage not constant per ImageId, a malformed RLE row
            (RLEError), or a ``usage`` filter that keeps no row. Messages name the file, and the
            line and ImageId where relevant.
    """
    path = Path(path)
    images: dict[str, GroundTruth] = {}
    for line, (image_id, rle, h, w, row_usage) in _rows(path, SOLUTION_HEADER):
        where = f"{path} line {line}, ImageId {image_id}"
        if not image_id:
            raise NucleistyleError(f"{path} line {line}: empty ImageId")
        height = _positive_int(h, "Height", where)
        width = _positive_int(w, "Width", where)
        if height * width > max_pixels():  # its label image is decoded: the images' limit
            raise NucleistyleError(
                f"{where}: image size {height}x{width} is over {max_pixels():,} pixels"
            )
        gt = images.get(image_id)
        if gt is None:
            gt = images[image_id] = GroundTruth(
                image_id, height, width, [], row_usage, [], str(path)
            )
        elif (height, width) != gt.shape:
            raise NucleistyleError(
                f"{where}: size {height}x{width} differs from {gt.height}x{gt.width} earlier"
            )
        elif row_usage != gt.usage:
            raise NucleistyleError(
                f"{where}: Usage {row_usage!r} differs from {gt.usage!r} on an earlier row"
            )
        if rle in ("", PLACEHOLDER_RLE):
            continue
        _parse_runs(rle, height * width, where)
        gt.rles.append(rle)
        gt.lines.append(line)
    images = select_usage(images, usage, path)
    for gt in images.values():
        if not gt.rles and gt.usage == "Private":
            log.warning("%s: scored (Private) image %s has no objects", path, gt.image_id)
    log.info(
        "%s: %d images, %d objects (usage=%s)",
        path,
        len(images),
        sum(len(gt.rles) for gt in images.values()),
        usage,
    )
    return images


def select_usage(
    images: Mapping[str, GroundTruth],
    usage: str | None = "auto",
    path: PathLike = "solution",
) -> dict[str, GroundTruth]:
    """Keep the images of a solution that are scored, by their Usage.

    Args:
        images: ``{ImageId: GroundTruth}`` as read with ``read_solution(path, usage=None)``.
        usage: ``"auto"`` (only ``Private`` if any image is Private, else all), ``None`` (all),
            or one Usage value to keep.
        path: the file the images came from, for the error message.

    Returns:
        The kept images, in their original order.

    Raises:
        NucleistyleError: no image has the requested Usage.
    """
    if usage == "auto":
        usage = "Private" if any(gt.usage == "Private" for gt in images.values()) else None
    if usage is None:
        return dict(images)
    kept = {k: gt for k, gt in images.items() if gt.usage == usage}
    if not kept:
        raise NucleistyleError(f"{path}: no rows with Usage {usage!r}")
    return kept


def read_submission(path: PathLike) -> Submission:
    """Read a submission CSV (header exactly ``ImageId,EncodedPixels``).

    RLE rows are not decoded here (that needs the image size from the solution); the line of
    every row is kept in :attr:`Submission.lines` so that decoding errors can name it.

    Args:
        path: the CSV file.

    Returns:
        :class:`Submission` (a ``dict[str, list[str]]``) in file order; an empty EncodedPixels
        row contributes no RLE, so an image with only that row maps to ``[]``.

    Raises:
        NucleistyleError: unreadable file, wrong header (extra columns included), a row with the
            wrong number of columns, or an empty ImageId.
    """
    path = Path(path)
    sub = Submission(str(path))
    for line, (image_id, rle) in _rows(path, SUBMISSION_HEADER):
        if not image_id:
            raise NucleistyleError(f"{path} line {line}: empty ImageId")
        rles = sub.setdefault(image_id, [])
        lines = sub.lines.setdefault(image_id, [])
        if rle:
            rles.append(rle)
            lines.append(line)
    return sub


def check_image_id(image_id: str, where: PathLike) -> None:
    """Refuse an ImageId that a submission or solution CSV cannot hold: empty, or with a comma,
    a double quote or a line break. Commands that write one check their ImageIds before any work,
    and ``import-folder`` refuses such file names at once.

    Raises:
        NucleistyleError: naming ``where`` (the file or image) and the ImageId.
    """
    if not image_id or any(c in image_id for c in ',"\r\n'):
        raise NucleistyleError(
            f'{where}: invalid ImageId {image_id!r} (empty, or has , " or a line break, which '
            "the submission CSV cannot hold)"
        )


def _check_labels(labels: np.ndarray, image_id: str, path: Path) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.dtype.kind not in "iu":
        raise NucleistyleError(
            f"{path}: ImageId {image_id}: expected a 2-D integer label image, "
            f"got {labels.dtype} {labels.shape}"
        )
    if labels.dtype.kind == "i" and labels.size and labels.min() < 0:
        raise NucleistyleError(f"{path}: ImageId {image_id}: negative labels")
    return labels


def _encode(labels: np.ndarray, image_id: str, path: Path) -> list[str]:
    """RLE rows of one label image, validated as a scorer would validate them."""
    labels = _check_labels(labels, image_id, path)
    rles = list(rle_encode_labels(labels).values())
    # a label image cannot give unsorted or overlapping runs; decoding the rows back (sorted,
    # disjoint, in range, rows disjoint) is cheap and keeps an encoder bug out of the file
    rle_decode_labels(rles, labels.shape, where=f"{path}, ImageId {image_id}")
    return rles


def write_submission(
    path: PathLike,
    predictions: Mapping[str, np.ndarray],
    *,
    outputs: OutputSet | None = None,
) -> None:
    """Write a submission CSV from predicted label images, atomically.

    Args:
        path: output file.
        predictions: ``{ImageId: labels}``, each an (H, W) integer label image (0 = background,
            any other value one nucleus, labels need not be sequential). Rows follow the mapping's
            order; nuclei in ascending label order; an image without nuclei gets one row with an
            empty EncodedPixels.
        outputs: publish the file with these other outputs (default: on its own, now).

    Raises:
        NucleistyleError: an invalid ImageId or label image; nothing is written then.
    """
    path = Path(path)
    with atomic_path(path, outputs) as tmp, tmp.open("w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(SUBMISSION_HEADER)
        for image_id, labels in predictions.items():
            check_image_id(image_id, path)
            rles = _encode(labels, image_id, path)
            writer.writerows([image_id, rle] for rle in rles or [""])
    log.info("wrote %s (%d images)", path, len(predictions))


def write_solution(
    path: PathLike,
    ground_truth: Mapping[str, np.ndarray],
    usage: str = "Public",
    *,
    outputs: OutputSet | None = None,
) -> None:
    """Write a solution (ground-truth) CSV from label images, atomically.

    Args:
        path: output file.
        ground_truth: ``{ImageId: labels}``, (H, W) integer label images, one row per object in
            ascending label order. An image without objects gets one placeholder row (empty
            EncodedPixels), read back as zero objects.
        usage: the Usage column for every row (``Public``, ``Private``, ``Ignored``…).
        outputs: publish the file with these other outputs (default: on its own, now).

    Raises:
        NucleistyleError: an invalid ImageId, usage or label image; nothing is written then.
    """
    path = Path(path)
    if not usage or any(c in usage for c in ',"\r\n'):
        raise NucleistyleError(f"{path}: invalid Usage {usage!r}")
    with atomic_path(path, outputs) as tmp, tmp.open("w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(SOLUTION_HEADER)
        for image_id, labels in ground_truth.items():
            check_image_id(image_id, path)
            rles = _encode(labels, image_id, path)
            if PLACEHOLDER_RLE in rles:
                log.warning(
                    "%s: ImageId %s has a 1-pixel object at the top-left pixel; its RLE '1 1' "
                    "is the placeholder and will read back as no object",
                    path,
                    image_id,
                )
            h, w = labels.shape
            writer.writerows([image_id, rle, h, w, usage] for rle in rles or [""])
    log.info("wrote %s (%d images, usage %s)", path, len(ground_truth), usage)


def gather_submissions(shard_csvs: Sequence[PathLike], out_csv: PathLike) -> int:
    """Concatenate the submissions of the shards of one test set into one submission, atomically.

    Each image's rows are copied in their shard's order (the predictor writes them in
    descending confidence, which COCO AP relies on); images are sorted by ImageId; an image
    without nuclei keeps its single empty-EncodedPixels row. RLE rows are copied, not decoded
    (the scorer checks them against the image sizes). A shard with a header only (no image) is
    fine.

    Args:
        shard_csvs: The shards' submission CSVs (header ``ImageId,EncodedPixels``).
        out_csv: The gathered submission.

    Returns:
        The number of images in ``out_csv``.

    Raises:
        NucleistyleError: no shard given, an unreadable or malformed shard (named), or an
            ImageId found in two shards (naming both files); nothing is written then.

    Example:
        >>> gather_submissions(["shards/0.csv", "shards/1.csv"], "submission.csv")  # doctest: +SKIP
        3019
    """
    if isinstance(shard_csvs, str | os.PathLike) or not shard_csvs:
        raise NucleistyleError(f"{out_csv}: no shard submissions to gather")
    images: dict[str, list[str]] = {}
    source: dict[str, str] = {}
    for shard in shard_csvs:
        sub = read_submission(shard)
        for image_id, rles in sub.items():
            if image_id in source:
                raise NucleistyleError(
                    f"ImageId {image_id} appears in two shards: {source[image_id]} and {shard}"
                )
            source[image_id] = str(shard)
            images[image_id] = rles
    out_csv = Path(out_csv)
    with atomic_path(out_csv) as tmp, tmp.open("w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(SUBMISSION_HEADER)
        for image_id in sorted(images):
            writer.writerows([image_id, rle] for rle in images[image_id] or [""])
    log.info(
        "gathered %d shards into %s (%d images, %d objects)",
        len(shard_csvs),
        out_csv,
        len(images),
        sum(len(rles) for rles in images.values()),
    )
    return len(images)


class CompressedLabels(Mapping[str, np.ndarray]):
    """``{ImageId: labels}`` held zlib-compressed (label images shrink ~50x) until written.

    Lets a whole test set (stage 2: 3,019 images) be collected in memory before
    :func:`write_submission`; iteration keeps insertion order.
    """

    def __init__(self) -> None:
        self._items: dict[str, tuple[tuple[int, int], bytes]] = {}

    @staticmethod
    def compress(labels: np.ndarray) -> tuple[tuple[int, int], bytes]:
        """(shape, compressed int32 bytes): cheap to send from a worker process."""
        labels = np.ascontiguousarray(labels, np.int32)
        return labels.shape, zlib.compress(labels.tobytes(), 1)

    def add(self, image_id: str, labels: np.ndarray) -> None:
        self._items[image_id] = self.compress(labels)

    def add_compressed(self, image_id: str, shape: tuple[int, int], data: bytes) -> None:
        self._items[image_id] = (shape, data)

    def __getitem__(self, image_id: str) -> np.ndarray:
        shape, data = self._items[image_id]
        return np.frombuffer(zlib.decompress(data), np.int32).reshape(shape)

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)
