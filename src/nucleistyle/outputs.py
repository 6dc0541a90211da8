"""Output transactions: every output appears whole, and a command's outputs appear together.

Outputs are staged beside their targets under hidden names (``.NAME.XXXXXXXX.tmp``) and moved
into place only when complete, several at once when a command has several outputs
(:func:`published_together`): a failure or a kill leaves no half-written output, and the next run
into the same place removes the staging left by a killed one. An output never replaces a
folder, a FIFO or a device by a file, nor a file by a folder; a folder is replaced only when
empty or, with ``--overwrite``, when the same command wrote it (its :data:`MARKER_NAME` file).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import os
import re
import secrets
import shutil
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from nucleistyle.errors import NucleistyleError, os_reason
from nucleistyle.paths import PathLike, output_target, writes_in_place

__all__ = [
    "MARKER_NAME",
    "OutputSet",
    "atomic_dir",
    "atomic_path",
    "describe_os_error",
    "link_or_copy",
    "published_together",
    "staged_files",
    "user_paths",
]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Temp files and folders are created private (0600 / 0700); outputs get the usual permissions.
_FILE_MODE = 0o666 & ~_umask()
_DIR_MODE = 0o777 & ~_umask()

MARKER_NAME = ".nucleistyle"
"""File naming the command that wrote a folder: ``--overwrite`` replaces only such folders."""

# Staging of an output NAME (".NAME.XXXXXXXX.tmp") and the old copy of a replaced one (".old").
_STAGING_RE = re.compile(r"\.(?P<name>.+)\.[a-z0-9_]{8}\.(?P<kind>tmp|old)")
_STAGING_IN_TEXT = re.compile(
    r"(?<![^/\s'\"])\.(?P<name>[^/\s]+)\.[a-z0-9_]{8}\.(?:tmp|old)(?=$|[/\s'\":,])"
)


def user_paths(text: str) -> str:
    """``text`` with every staging name (``.NAME.XXXXXXXX.tmp``) replaced by its NAME: messages
    name the user's output, never an internal temporary file."""
    return _STAGING_IN_TEXT.sub(lambda m: m["name"], text)


def describe_os_error(exc: OSError) -> str:
    """One line for an operating-system error: ``cannot <access|write> <path>: <reason>``."""
    name = exc.filename if exc.filename is not None else exc.filename2
    full = exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG, errno.EPIPE)
    what = "cannot write" if full else "cannot access"
    if name is None:
        return f"{what} the output: {os_reason(exc)}"
    if isinstance(name, bytes):
        name = os.fsdecode(name)
    return f"{what} {user_paths(name)}: {os_reason(exc)}"


def _check_replaceable(path: Path, marker: str | None, overwrite: bool) -> None:
    """Refuse to replace anything but a missing or empty folder, unless ``overwrite`` (and, with
    a ``marker``, only a folder that the same command wrote, holding nothing but what it wrote:
    the list in its marker file)."""
    if output_target(path, "output folder", folder=True)[1] is None:
        return
    try:
        entries = _entries(path)
    except OSError as exc:
        raise NucleistyleError(f"output folder {path}: {os_reason(exc)}") from exc
    if not entries:
        return
    if not overwrite:
        raise NucleistyleError(
            f"output folder {path} already exists and is not empty (pass --overwrite to replace "
            "a folder that this command wrote)"
        )
    if marker is None:
        return
    command, written = _read_marker(path)
    if command != marker:
        raise NucleistyleError(
            f"output folder {path} was not written by nucleistyle {marker} (no {MARKER_NAME} "
            "file naming it): refusing to replace it, even with --overwrite"
        )
    if not written:
        raise NucleistyleError(
            f"output folder {path} was written by an older nucleistyle that kept no list of its "
            "files: refusing to replace it, even with --overwrite (remove it yourself)"
        )
    foreign = sorted(entries - written)
    if foreign:
        raise NucleistyleError(
            f"output folder {path} holds {len(foreign)} file(s) that nucleistyle {marker} did "
            f"not write ({foreign[0]}): refusing to replace it, even with --overwrite (move "
            "them away first)"
        )


def _entries(folder: Path) -> set[str]:
    """Every file, folder and link under ``folder`` (links not followed), as relative POSIX
    paths, the marker file excepted."""
    found: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(folder, onerror=_raise):
        base = Path(dirpath).relative_to(folder)
        found.update((base / name).as_posix() for name in dirnames + filenames)
    found.discard(MARKER_NAME)
    return found


def _raise(exc: OSError) -> None:
    raise exc


def _write_marker(folder: Path, command: str) -> None:
    """The marker file: the command on its first line, then every entry it wrote (one JSON
    string a line, so that any file name fits), for ``--overwrite`` to remove only those."""
    lines = [f"nucleistyle {command}", *map(json.dumps, sorted(_entries(folder)))]
    (folder / MARKER_NAME).write_text("\n".join(lines) + "\n", encoding="utf-8")


def _read_marker(folder: Path) -> tuple[str | None, set[str]]:
    """The command named by a folder's marker file (None without one) and the entries listed."""
    try:
        text = (folder / MARKER_NAME).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None, set()
    first, *rest = text.splitlines() or [""]
    written = set()
    for line in rest:
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if isinstance(entry, str):
                written.add(entry)
    return first.removeprefix("nucleistyle ").strip(), written


# ------------------------------------------------------------------------------------------------
# staged output


def _held(path: Path) -> bool:
    """Whether a live run holds the staging ``path`` (each run locks its own with flock)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return True  # not ours to judge (a link, unreadable): leave it
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


def _remove_stale(target: Path) -> None:
    """Remove what a killed run left beside ``target``: its unlocked staging, and the old copy of
    a replaced folder once ``target`` exists again (before that, it is the only copy)."""
    try:
        entries = list(os.scandir(target.parent))
    except OSError:
        return
    for entry in entries:
        match = _STAGING_RE.fullmatch(entry.name)
        if match is None or match["name"] != target.name or entry.is_symlink():
            continue
        if match["kind"] == "old" and not os.path.lexists(target):
            continue
        path = Path(entry.path)
        if match["kind"] == "old" or not _held(path):
            _remove(path)


def _unique_sibling(path: Path, suffix: str) -> Path:
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}{suffix}")


def _check_file_target(path: Path) -> None:
    """Refuse to put a file where a folder is (never moved aside and deleted)."""
    if path.is_dir() and not path.is_symlink():
        raise NucleistyleError(f"output file {path}: is a folder, expected a file")


def _backup(path: Path) -> Path | None:
    """A second name for an existing file about to be replaced (to restore it on failure)."""
    if not os.path.lexists(path):
        return None
    backup = _unique_sibling(path, ".old")
    try:
        os.link(path, backup, follow_symlinks=False)
    except OSError:  # no hard links here: move it aside instead
        os.rename(path, backup)
    return backup


def _copy_into(staged: Path, target: Path) -> None:
    """Write a staged file's bytes into a target that is written in place (FIFO, device)."""
    with staged.open("rb") as src:
        stdout = sys.__stdout__
        if stdout is not None and _same_file(target, stdout.fileno()):
            stdout.flush()
            shutil.copyfileobj(src, stdout.buffer)
            stdout.flush()
            return
        with target.open("wb") as dst:
            shutil.copyfileobj(src, dst)


def _same_file(path: Path, fd: int) -> bool:
    try:
        return os.path.samestat(os.stat(path), os.fstat(fd))
    except (OSError, ValueError):
        return False


def _merge(
    staging: Path, target: Path, undo: list[tuple[Path, Path | None]], made: list[Path]
) -> None:
    """Move the files of ``staging`` into ``target`` (created if missing), sub-folders merged;
    each replaced file is kept in ``undo`` and each folder made in ``made``, for a roll-back."""
    if not target.is_dir():
        target.mkdir()
        made.append(target)
    for path in sorted(staging.iterdir()):
        dest = target / path.name
        if path.is_dir():
            _merge(path, dest, undo, made)
            continue
        _check_file_target(dest)
        undo.append((dest, _backup(dest)))
        os.replace(path, dest)


@dataclasses.dataclass
class _Staged:
    how: str  # "file" (replace), "in_place" (write into), "folder" (replace), "into" (merge)
    target: Path
    staging: Path
    marker: str | None = None
    overwrite: bool = True


class OutputSet:
    """Outputs that appear together or not at all.

    Each output is staged beside its target (:meth:`file`, :meth:`folder`, :meth:`files_into`);
    :meth:`publish` moves them all into place, and if one move fails, undoes the others (what was
    there before is restored). Use it through :func:`published_together`.
    """

    def __init__(self) -> None:
        self._staged: list[_Staged] = []
        self._locks: list[int] = []
        self._created: list[Path] = []  # folders made for the outputs
        self._published = False

    def _make_parent(self, path: Path) -> None:
        parent = path.parent
        missing = [p for p in (parent, *parent.parents) if not os.path.lexists(p)]
        self._created += [p for p in missing if p not in self._created]
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise NucleistyleError(f"cannot create folder {parent}: {os_reason(exc)}") from exc

    def _lock(self, path: Path) -> None:
        fd = os.open(path, os.O_RDONLY)
        self._locks.append(fd)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def _stage(self, path: Path, folder: bool) -> Path:
        """A new locked staging file or folder ``.NAME.XXXXXXXX.tmp`` beside ``path``."""
        self._make_parent(path)
        _remove_stale(path)
        prefix = f".{path.name}."
        try:
            if folder:
                staging = Path(tempfile.mkdtemp(prefix=prefix, suffix=".tmp", dir=path.parent))
            else:
                fd, name = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=path.parent)
                os.close(fd)
                staging = Path(name)
        except OSError as exc:
            raise NucleistyleError(f"cannot write {path}: {os_reason(exc)}") from exc
        self._lock(staging)
        return staging

    def file(self, path: PathLike) -> Path:
        """Stage the file ``path``; returns the temporary file to write.

        A symbolic link is written through; a FIFO or a character device (``/dev/stdout``) is
        written in place; a folder, block device or socket is refused.
        """
        path, st = output_target(Path(path), "output file", folder=False)
        if writes_in_place(path, st):
            fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp")
            os.close(fd)
            self._staged.append(_Staged("in_place", path, Path(name)))
            self._lock(Path(name))
            return Path(name)
        staging = self._stage(path, folder=False)
        self._staged.append(_Staged("file", path, staging))
        return staging

    def folder(self, path: PathLike, *, marker: str | None = None, overwrite: bool = True) -> Path:
        """Stage the folder ``path``, replaced as a whole; returns the staging folder to fill.

        A missing or empty ``path`` is always fine. A non-empty one is replaced only with
        ``overwrite``, and, when ``marker`` names a command, only if that command wrote it (its
        :data:`MARKER_NAME` file, written into the new folder too). A file is never replaced.
        """
        path = output_target(Path(path), "output folder", folder=True)[0]
        _check_replaceable(path, marker, overwrite)
        staging = self._stage(path, folder=True)
        self._staged.append(_Staged("folder", path, staging, marker, overwrite))
        return staging

    def files_into(self, path: PathLike, names: Iterable[str] = ()) -> Path:
        """Stage files to be moved into the folder ``path`` (created if missing; its other files
        stay, same names are replaced, sub-folders are merged); returns the staging folder.

        ``names``, the files that will be written, are checked now, before the work: a folder
        of that name is refused (it is never replaced by a file).
        """
        path = output_target(Path(path), "output folder", folder=True)[0]
        for name in names:
            _check_file_target(path / name)
        staging = self._stage(path, folder=True)
        self._staged.append(_Staged("into", path, staging))
        return staging

    def publish(self) -> None:
        """Move every staged output into place; on a failure undo those already moved."""
        undo: list[tuple[Path, Path | None]] = []  # (published path, what to restore or None)
        made: list[Path] = []
        try:
            for item in self._staged:
                if item.how == "file":
                    os.chmod(item.staging, _FILE_MODE)
                    _check_file_target(item.target)
                    undo.append((item.target, _backup(item.target)))
                    os.replace(item.staging, item.target)
                elif item.how == "folder":
                    _check_replaceable(item.target, item.marker, item.overwrite)
                    if item.marker is not None:
                        _write_marker(item.staging, item.marker)
                    os.chmod(item.staging, _DIR_MODE)
                    old = None
                    if os.path.lexists(item.target):
                        old = _unique_sibling(item.target, ".old")
                        os.rename(item.target, old)
                    undo.append((item.target, old))
                    os.replace(item.staging, item.target)
                elif item.how == "into":
                    _merge(item.staging, item.target, undo, made)
            for item in self._staged:
                if item.how == "in_place":
                    _copy_into(item.staging, item.target)
        except BaseException:
            for path, previous in reversed(undo):
                with contextlib.suppress(OSError):
                    _remove(path)
                    if previous is not None:
                        os.rename(previous, path)
            for folder in reversed(made):
                with contextlib.suppress(OSError):
                    folder.rmdir()
            raise
        self._published = True
        for _, previous in undo:
            if previous is not None:
                _remove(previous)

    def discard(self) -> None:
        """Remove what is still staged, and after a failure the folders made for the outputs."""
        for fd in self._locks:
            os.close(fd)
        self._locks.clear()
        for item in self._staged:
            if os.path.lexists(item.staging):
                _remove(item.staging)
        if not self._published:  # the folders made here, deepest first, if still empty
            for folder in sorted(self._created, key=lambda p: len(p.absolute().parts))[::-1]:
                with contextlib.suppress(OSError):
                    folder.rmdir()


@contextlib.contextmanager
def published_together(outputs: OutputSet | None = None) -> Iterator[OutputSet]:
    """Stage several outputs and publish them together when the block succeeds.

    Given an enclosing set ``outputs``, the block joins it: its outputs are published with
    that set's, later.

    Example:
        >>> with published_together() as out:  # doctest: +SKIP
        ...     table.to_csv(out.file("a.csv"))
        ...     model.save(out.file("model.json"))
    """
    if outputs is not None:
        yield outputs
        return
    outputs = OutputSet()
    try:
        yield outputs
        outputs.publish()
    finally:
        outputs.discard()


@contextlib.contextmanager
def atomic_path(path: PathLike, outputs: OutputSet | None = None) -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; move it onto ``path`` only on success.

    A reader never sees a half-written file, and a failure leaves neither a partial file nor
    damages an existing one. FIFOs and character devices are written in place, never replaced.
    With ``outputs``, the file is published with that set's other outputs instead.

    Example:
        >>> with atomic_path("out.csv") as tmp:  # doctest: +SKIP
        ...     tmp.write_text("a,b\\n")
    """
    with published_together(outputs) as together:
        yield together.file(path)


@contextlib.contextmanager
def atomic_dir(
    path: PathLike, *, marker: str | None = None, overwrite: bool = True
) -> Iterator[Path]:
    """Like :func:`atomic_path` for a folder: build it beside ``path``, then rename it there.

    See :meth:`OutputSet.folder` for when an existing ``path`` may be replaced (never a file).
    """
    with published_together() as outputs:
        yield outputs.folder(path, marker=marker, overwrite=overwrite)


@contextlib.contextmanager
def staged_files(out_dir: PathLike, names: Iterable[str] = ()) -> Iterator[Path]:
    """Yield a hidden staging folder beside ``out_dir``; on success move its files into
    ``out_dir`` (created if missing; other files of ``out_dir`` stay, same names are replaced).
    On an error remove the staging folder and the parent folders created for it, so a failed run
    leaves nothing behind. ``names``: see :meth:`OutputSet.files_into`."""
    with published_together() as outputs:
        yield outputs.files_into(out_dir, names)


def link_or_copy(src: PathLike, dst: PathLike) -> Any:
    """Hard-link ``src`` to ``dst`` (no extra space), or copy it where links are impossible.

    Pipeline outputs are always replaced by atomic rename, never edited in place, so a linked
    file can never be changed through its other name. Returns ``dst`` (so it can serve as
    ``shutil.copytree``'s ``copy_function``).
    """
    try:
        os.link(src, dst)
    except OSError:  # another file system, or links not permitted
        shutil.copy2(src, dst)
    return dst
