"""Reading microscope images (PNG, TIFF, JPEG) as the 8-bit RGB the models expect, and label images.

Every command reads images through :func:`read_image`, so one rule decides how a 16-bit or
multi-channel image becomes RGB, in training, stylisation and prediction alike
(:class:`IntensityRule`, documented in ``docs/data.md``):

* **channels** - which channels are shown as red, green and blue. By default one channel is
  grey, two are red and green (blue 0, the ImageJ composite colours), three or more are the
  first three as RGB (an alpha channel is dropped).
* **intensities** - 8-bit data are shown as stored. Deeper data (16/32-bit integer, float) are
  scaled between two percentiles of the chosen channels' values: the ``low`` percentile becomes
  0 and the ``high`` percentile 255, values outside are clipped. ``low = 0`` means zero itself
  (an offset-free image keeps its black), ``high = 100`` the maximum; the default (0, 100)
  scales by the image's own maximum. StarDist's usual choice is (1, 99.8). The channels share
  one scale (colour is kept) unless ``per_channel`` is set.

TIFFs are read with ``tifffile``: the first series, one plane (a stack of several Z planes or
time points is refused), with its channel axis (``C`` or ``S``) anywhere. A file whose axes do
not say which one holds the channels (pages saved one by one, tifffile's shaped ``Q`` axis, or
channels stored as ImageJ slices) is read with a declared ``channel_axis`` (the rule's).

No image larger than :func:`max_pixels` (Pillow's own refusal, 178,956,970 pixels, unless the
environment variable ``NUCLEISTYLE_MAX_PIXELS`` says otherwise) is decoded, whatever its format:
the size is read from the header first, so a small compressed file declaring a huge image is
refused before any memory is taken. A TIFF counts every plane (page or channel).

Label images (:func:`read_label_image`) hold one integer per nucleus (0 = background), 8, 16 or
32 bits, PNG or TIFF, the convention of StarDist, Cellpose and BBBC039.
"""

from __future__ import annotations

import contextlib
import os
import re
import warnings
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFile

from nucleistyle.errors import NucleistyleError
from nucleistyle.paths import PathLike
from nucleistyle.schema import check

__all__ = [
    "DEFAULT_RULE",
    "MAX_PIXELS_VARIABLE",
    "IntensityRule",
    "max_pixels",
    "open_image",
    "read_image",
    "read_label_image",
    "to_rgb",
]

TIFF_SUFFIXES = (".tif", ".tiff")
# What a broken or foreign file raises inside Pillow or tifffile: UnidentifiedImageError and
# truncation are OSErrors, a bad PNG chunk CRC is a SyntaxError, a short stream an EOFError.
DECODE_ERRORS = (
    OSError,
    ValueError,
    SyntaxError,
    EOFError,
    IndexError,
    KeyError,
    zlib.error,
    Image.DecompressionBombError,
)


_SCHEMA_NODE = "#/properties/data/properties/folder/properties/intensity"

MAX_PIXELS_VARIABLE = "NUCLEISTYLE_MAX_PIXELS"
DEFAULT_MAX_PIXELS = 178_956_970  # Pillow's refusal: 2 * Image.MAX_IMAGE_PIXELS, about 13,377^2


def max_pixels() -> int:
    """The most pixels an image may have to be read: ``$NUCLEISTYLE_MAX_PIXELS`` or the default.

    Raises:
        NucleistyleError: the variable is set but not a positive integer.
    """
    text = os.environ.get(MAX_PIXELS_VARIABLE, "").strip()
    if not text:
        return DEFAULT_MAX_PIXELS
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise NucleistyleError(
            f"environment variable {MAX_PIXELS_VARIABLE}: a positive number of pixels expected, "
            f"got {text!r}"
        )
    return int(text)


def _too_large(path: PathLike, pixels: int, limit: int, size: str = "") -> str:
    return (
        f"image {path} has {size}{pixels:,} pixels, more than the limit of {limit:,} (set "
        f"{MAX_PIXELS_VARIABLE} to read larger images)"
    )


def _check_pixels(path: PathLike, shape: Sequence[int], axes: str) -> None:
    """Refuse, before decoding, an image whose header declares more than :func:`max_pixels`.

    ``shape`` and ``axes`` are the stored array's; every plane counts (pages, channels, Z), the
    colour samples of a pixel (an ``S`` axis of up to 4) do not, as for a PNG.
    """
    limit = max_pixels()
    pixels = 1
    for length, axis in zip(shape, axes, strict=True):
        if axis != "S" or length > 4:
            pixels *= int(length)
    if pixels > limit:
        size = " x ".join(str(n) for n in shape)
        raise NucleistyleError(_too_large(path, pixels, limit, f"{size} ({axes}) = "))


@contextlib.contextmanager
def open_image(path: PathLike) -> Iterator[ImageFile.ImageFile]:
    """``PIL.Image.open`` (header read, nothing decoded yet) with the :func:`max_pixels` limit.

    Raises:
        NucleistyleError: the image is larger than the limit (naming the file); Pillow's own
            errors (:data:`DECODE_ERRORS`) otherwise.
    """
    limit = max_pixels()
    if Image.MAX_IMAGE_PIXELS is not None and limit > 2 * Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = -(-limit // 2)  # Pillow refuses beyond twice this
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            im = Image.open(path)
        except Image.DecompressionBombError as exc:
            found = re.search(r"\((\d+) pixels\)", str(exc))
            pixels = int(found[1]) if found else limit + 1
            raise NucleistyleError(_too_large(path, pixels, limit)) from exc
    with im:
        if im.width * im.height > limit:
            size = f"{im.width} x {im.height} = "
            raise NucleistyleError(_too_large(path, im.width * im.height, limit, size))
        yield im


@dataclass(frozen=True)
class IntensityRule:
    """How an image becomes 8-bit RGB (see the module docstring).

    Attributes:
        channels: Channel indices shown as R, G, B (one index: grey; two: red and green);
            None for the default choice.
        low: Percentile (0-100) of the values mapped to 0; 0 means zero itself.
        high: Percentile (0-100, above ``low``) mapped to 255; 100 is the maximum.
        per_channel: Scale each chosen channel on its own instead of jointly.
        channel_axis: TIFFs only: the axis of the stored array (tifffile's first series) that
            holds the channels, whatever the file calls it (0 for a stack of pages); None: the
            file's own axes decide.
    """

    channels: tuple[int, ...] | None = None
    low: float = 0.0
    high: float = 100.0
    per_channel: bool = False
    channel_axis: int | None = None

    def __post_init__(self) -> None:
        if self.channels is not None:
            object.__setattr__(self, "channels", tuple(self.channels))
        section = {
            "channels": self.channels,
            "percentiles": [self.low, self.high],
            "per_channel": self.per_channel,
            "channel_axis": self.channel_axis,
        }
        check(section, _SCHEMA_NODE, "data.folder.intensity")
        if not self.low < self.high:
            raise NucleistyleError(
                "config key data.folder.intensity.percentiles: low must be below high, "
                f"got {self.low}, {self.high}"
            )

    @classmethod
    def from_config(cls, section: dict[str, Any] | None) -> IntensityRule:
        """From the config section ``data.folder.intensity`` (keys channels, percentiles,
        per_channel, channel_axis)."""
        section = section or {}
        low, high = section.get("percentiles", (0.0, 100.0))
        channels = section.get("channels")
        return cls(
            channels=None if channels is None else tuple(channels),
            low=float(low),
            high=float(high),
            per_channel=bool(section.get("per_channel", False)),
            channel_axis=section.get("channel_axis"),
        )


DEFAULT_RULE = IntensityRule()


def _choose_channels(n: int, rule: IntensityRule, path: PathLike) -> list[int]:
    if rule.channels is None:
        return [0] if n == 1 else [0, 1] if n == 2 else [0, 1, 2]
    missing = [c for c in rule.channels if c >= n]
    if missing:
        raise NucleistyleError(
            f"cannot read image {path}: channel {missing[0]} requested, the image has {n} "
            f"channel{'s' if n != 1 else ''} (0..{n - 1})"
        )
    return list(rule.channels)


def _scale(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map the ``low`` / ``high`` percentiles of ``values`` to 0 / 255 (``low = 0``: zero)."""
    values = values.astype(np.float64)
    if not np.isfinite(values).all():
        raise ValueError("non-finite pixel values")
    lo = float(np.percentile(values, low)) if low > 0 else 0.0
    hi = float(np.percentile(values, high)) if values.size else 0.0
    if hi <= lo:  # no contrast: what lies above the floor is shown white
        return np.where(values > lo, 255, 0).astype(np.uint8)
    return np.rint(np.clip((values - lo) / (hi - lo), 0.0, 1.0) * 255.0).astype(np.uint8)


def to_rgb(
    data: np.ndarray, rule: IntensityRule = DEFAULT_RULE, path: PathLike = "<array>"
) -> np.ndarray:
    """Map an (H, W) or (H, W, C) array of any numeric dtype to uint8 RGB by ``rule``.

    Args:
        data: The image; channels last.
        rule: The channel choice and intensity scaling.
        path: Named in errors.

    Returns:
        uint8 array of shape (H, W, 3).

    Raises:
        NucleistyleError: a requested channel does not exist, or the values are not finite.

    Example:
        >>> to_rgb(np.array([[0, 1000], [2000, 4000]], np.uint16))[..., 0].tolist()
        [[0, 64], [128, 255]]
    """
    data = np.asarray(data)
    if data.ndim == 2:
        data = data[:, :, None]
    if data.ndim != 3 or data.dtype.kind not in "buif":
        raise NucleistyleError(
            f"cannot read image {path}: not an image ({data.dtype} {data.shape})"
        )
    chosen = data[:, :, _choose_channels(data.shape[2], rule, path)]
    if chosen.dtype == np.uint8:
        shown = chosen.copy()
    elif chosen.dtype == np.bool_:
        shown = chosen.astype(np.uint8) * 255
    else:
        try:
            if rule.per_channel:
                shown = np.stack(
                    [_scale(chosen[:, :, i], rule.low, rule.high) for i in range(chosen.shape[2])],
                    axis=2,
                )
            else:
                shown = _scale(chosen, rule.low, rule.high)
        except ValueError as exc:
            raise NucleistyleError(f"cannot read image {path}: {exc}") from exc
    height, width, n = shown.shape
    if n == 1:
        return np.repeat(shown, 3, axis=2)
    if n == 2:
        return np.concatenate([shown, np.zeros((height, width, 1), np.uint8)], axis=2)
    return np.ascontiguousarray(shown)


_PILLOW_MODES = {  # single-channel TIFFs report Pillow's mode names, like PNGs do
    ("u", 1): "L",
    ("u", 2): "I;16",
    ("i", 4): "I",
    ("f", 4): "F",
}


def _read_tiff(path: PathLike, channel_axis: int | None = None) -> tuple[np.ndarray, str]:
    """The first series of a TIFF as (H, W) or (H, W, C), and a mode string; ``channel_axis``
    (an index into the stored axes) names the channel axis where the file does not."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        _check_pixels(path, series.shape, series.axes)
        axes = series.axes
        if channel_axis is not None:
            if channel_axis >= len(axes) or axes[channel_axis] in "YX":
                raise NucleistyleError(
                    f"cannot read image {path}: channel axis {channel_axis} declared, the image's "
                    f"axes are {axes} {series.shape} (0..{len(axes) - 1}, not Y or X)"
                )
            axes = axes[:channel_axis] + "C" + axes[channel_axis + 1 :]
        data = series.asarray()
        big_endian = tif.byteorder == ">"
    keep = [i for i, a in enumerate(axes) if a in "YX" or data.shape[i] > 1]
    data = data.reshape([data.shape[i] for i in keep])
    axes = "".join(axes[i] for i in keep)
    if "Y" not in axes or "X" not in axes:
        raise ValueError(f"no 2-D image in the first series (axes {series.axes})")
    extra = [a for a in axes if a not in "YX"]
    if len(extra) > 1 or (extra and extra[0] not in "CSI"):
        raise ValueError(
            f"{data.shape} with axes {axes}: one 2-D plane (with channels) expected, not a "
            "stack of planes (if an axis holds channels, declare it: import-folder "
            "--channel-axis, config key data.folder.intensity.channel_axis)"
        )
    order = [axes.index("Y"), axes.index("X")] + [axes.index(a) for a in extra]
    data = np.transpose(data, order)
    n = data.shape[2] if data.ndim == 3 else 1
    mode = _PILLOW_MODES.get((data.dtype.kind, data.dtype.itemsize), str(data.dtype))
    if mode == "I;16" and big_endian:
        mode = "I;16B"
    if n > 1:
        mode = f"{n}x{data.dtype}"
    return data, mode


def _read_pillow(path: PathLike, rule: IntensityRule) -> tuple[np.ndarray, str]:
    with open_image(path) as im:
        rawmode = im.tile[0][3] if im.tile else None
        im.load()
        mode = im.mode
        if mode in ("P", "PA", "1", "LA", "CMYK", "YCbCr", "LAB", "HSV"):
            # palette looked up, bilevel 0/255, alpha dropped (not composited), colour spaces -> RGB
            data = np.array(im.convert("RGBA" if mode in ("P", "PA") else "RGB").convert("RGB"))
            if mode in ("1", "LA"):
                data = data[:, :, :1]
        elif mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F", "L", "RGB", "RGBA", "RGBX"):
            data = np.array(im)
            if mode.startswith("I;16"):
                data = data.astype(np.uint16)
        else:
            raise ValueError(f"unsupported image mode {mode}")
    if data.ndim == 3 and data.shape[2] == 4 and rule.channels is None:
        data = data[:, :, :3]  # alpha is not a colour
    if mode in ("RGB", "RGBA") and isinstance(rawmode, str) and ";16" in rawmode:
        # Pillow decodes 16-bit-per-channel colour PNGs to their high bytes only; scale those.
        mode = f"{mode};16"
        data = data.astype(np.uint16)
    return data, mode


def read_image(path: PathLike, rule: IntensityRule = DEFAULT_RULE) -> tuple[np.ndarray, str]:
    """Read an image file as uint8 RGB.

    8-bit modes 1, L, LA, P, PA, RGB, RGBA are converted exactly (1 becomes 0/255, a palette is
    looked up); alpha is dropped, not composited (BBBC038's alpha is 255 everywhere). Deeper
    data and other channel counts follow ``rule`` (module docstring): by default a dark 16-bit
    fluorescence image (say, max 4000 of 65535) is scaled by its own maximum, not crushed to
    black; negative values are clipped to 0. Pillow decodes 16-bit-per-channel colour PNGs to
    their high bytes only; those are scaled the same way and the mode is reported as "RGB;16".

    Args:
        path: Image file (PNG, TIFF, JPEG).
        rule: Channel choice and intensity scaling.

    Returns:
        ``(image, mode)``: uint8 array of shape (H, W, 3) and the file's mode (Pillow's mode
        name; a multi-channel TIFF gives "<channels>x<dtype>", e.g. "2xuint16").

    Raises:
        NucleistyleError: "cannot read image <path>: <reason>" for a missing, corrupt,
            truncated or non-image file, a stack of planes, or a missing channel.

    Example:
        >>> image, mode = read_image("stage1_train/<id>/images/<id>.png")  # doctest: +SKIP
        >>> image.shape[2], mode  # doctest: +SKIP
        (3, 'RGBA')
    """
    try:
        if Path(path).suffix.lower() in TIFF_SUFFIXES:
            data, mode = _read_tiff(path, rule.channel_axis)
        else:
            data, mode = _read_pillow(path, rule)
    except DECODE_ERRORS as exc:
        if isinstance(exc, NucleistyleError):
            raise
        reason = str(exc) or type(exc).__name__
        raise NucleistyleError(f"cannot read image {path}: {reason}") from exc
    return to_rgb(data, rule, path), mode


def read_label_image(path: PathLike) -> np.ndarray:
    """Read an instance label image: one integer per nucleus, 0 = background.

    Args:
        path: PNG or TIFF with one integer channel (8, 16 or 32 bits, signed or not).

    Returns:
        int32 array (H, W); values as stored (not renumbered).

    Raises:
        NucleistyleError: one line naming the file: unreadable, more than one channel, a
            non-integer (float) image, negative values or values beyond int32.
    """
    try:
        if Path(path).suffix.lower() in TIFF_SUFFIXES:
            data, _ = _read_tiff(path)
        else:
            with open_image(path) as im:
                im.load()
                if im.mode not in ("1", "L", "P", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"):
                    raise ValueError(f"{im.mode} image; a label image has one integer channel")
                data = np.array(im)
    except DECODE_ERRORS as exc:
        if isinstance(exc, NucleistyleError):
            raise
        reason = str(exc) or type(exc).__name__
        raise NucleistyleError(f"cannot read label image {path}: {reason}") from exc
    if data.ndim != 2:
        raise NucleistyleError(
            f"label image {path} has {data.shape[2]} channels; one integer per pixel expected"
        )
    if data.dtype.kind not in "bui":
        raise NucleistyleError(
            f"label image {path} is {data.dtype}, not integer: one integer label per nucleus "
            "expected (0 = background)"
        )
    if data.size and (data.min() < 0 or data.max() > np.iinfo(np.int32).max):
        raise NucleistyleError(f"label image {path} has labels outside 0..2^31-1")
    return data.astype(np.int32)


def image_files(folder: Path, suffixes: Sequence[str]) -> dict[str, Path]:
    """Visible files of ``folder`` with one of ``suffixes`` (any case), by file stem.

    Raises:
        NucleistyleError: two files share a stem ("a.tif" and "a.png").
    """
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        if path.suffix.lower() not in suffixes:
            continue
        if path.stem in found:
            raise NucleistyleError(
                f"two files named {path.stem!r} in {folder}: {found[path.stem].name}, {path.name}"
            )
        found[path.stem] = path
    return found
