"""Helpers for the bad-input tests: run the command line in-process, snapshot a folder, build
tiny inputs (images, masks, CSV files)."""

from __future__ import annotations

import contextlib
import io
import os
import stat
import struct
import sys
import warnings
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

import numpy as np
from PIL import Image

from nucleistyle.cli import main
from nucleistyle.data.csvio import write_solution, write_submission


def _print_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def run(argv: Sequence[str]) -> tuple[int, str, str]:
    """``nucleistyle ARGV`` in this process: (exit status, stdout, stderr). Python warnings are
    printed on that stderr, with Python's default filters, as in a real run (pytest would
    otherwise collect them, and a warning on top of an error line would go unseen)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        with warnings.catch_warnings():
            warnings.resetwarnings()
            warnings.simplefilter("default")
            for quiet in (DeprecationWarning, PendingDeprecationWarning, ImportWarning):
                warnings.simplefilter("ignore", quiet)
            warnings.simplefilter("ignore", ResourceWarning)
            warnings.showwarning = _print_warning
            code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def snapshot(root: Path) -> dict[str, object]:
    """Every entry under ``root`` (hidden ones too, links not followed): its kind and content."""
    entries: dict[str, object] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            mode = path.lstat().st_mode
            if stat.S_ISLNK(mode):
                entry: object = ("link", os.readlink(path))
            elif stat.S_ISREG(mode):
                entry = ("file", path.read_bytes())
            else:
                entry = (stat.S_IFMT(mode), None)
            entries[str(path.relative_to(root))] = entry
    return entries


def assert_refused(argv: Sequence[str], root: Path, match: str | None = None) -> str:
    """Run a command that must fail: exit status 2, exactly one line on stderr starting with
    ``error:`` (no traceback), nothing printed on stdout, and nothing under ``root`` changed
    (inputs byte-identical, nothing new). Returns the error line."""
    before = snapshot(root)
    code, out, err = run(argv)
    lines = err.splitlines()
    assert code == 2, (code, err)
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err and out == ""
    assert "weights_only" not in err  # never the advice to load a file of unknown origin unsafely
    if match is not None:
        assert match in lines[0], lines[0]
    assert snapshot(root) == before
    return lines[0]


def png(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    """Write ``array`` as a PNG (parents created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode).save(path, format="PNG")
    return path


def rgb(seed: int, shape: tuple[int, int] = (16, 16)) -> np.ndarray:
    """A random-looking uint8 RGB image with a bright square (a 'nucleus')."""
    image = np.random.default_rng(seed).integers(0, 60, (*shape, 3), dtype=np.uint8)
    image[4:10, 4:10] = 200 + seed % 50
    return image


def flat_folder(folder: Path, n: int = 3, shape: tuple[int, int] = (16, 16)) -> Path:
    """A flat folder of ``n`` PNG images ``im0.png`` ..."""
    for k in range(n):
        png(folder / f"im{k}.png", rgb(k, shape))
    return folder


def sample_folder(root: Path, n: int = 4, shape: tuple[int, int] = (16, 16)) -> Path:
    """A BBBC038-layout training folder: ``n`` samples ``s<k>`` with two masks each."""
    for k in range(n):
        folder = root / f"s{k}"
        png(folder / "images" / f"s{k}.png", rgb(k * 7 + 1, shape))
        for m, (r, c) in enumerate([(2, 2), (9, 9)]):
            mask = np.zeros(shape, np.uint8)
            mask[r : r + 4, c : c + 4] = 255
            png(folder / "masks" / f"m{m}.png", mask)
    return root


def score_files(root: Path) -> tuple[Path, Path]:
    """A solution and a submission CSV of two 8 x 8 images."""
    truth = np.zeros((8, 8), np.int32)
    truth[1:4, 1:4] = 1
    write_solution(root / "solution.csv", {"a": truth, "b": truth})
    write_submission(root / "submission.csv", {"a": truth, "b": np.zeros((8, 8), np.int32)})
    return root / "solution.csv", root / "submission.csv"


def png_header(width: int, height: int) -> bytes:
    """A PNG that is only its header: an 8-bit RGB image of ``width`` x ``height``, no data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def tiff_header(width: int, height: int) -> bytes:
    """A TIFF that is only its header: one 8-bit grey page of ``width`` x ``height``, no data."""
    # (tag, type, count, value): size, 8 bits, no compression, grey, data at 8, one empty strip
    tags = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, 8), (259, 3, 1, 1),
            (262, 3, 1, 1), (273, 4, 1, 8), (277, 3, 1, 1), (278, 4, 1, height),
            (279, 4, 1, 0)]  # fmt: skip
    entries = b"".join(struct.pack("<HHII", *tag) for tag in tags)
    return b"II*\x00" + struct.pack("<IH", 8, len(tags)) + entries + struct.pack("<I", 0)
