"""Small shared helpers: the project's error type, safe output, input checks, logging set-up.

Outputs are staged beside their targets under hidden names (``.NAME.XXXXXXXX.tmp``) and moved
into place only when complete, several at once when a command has several outputs
(:func:`published_together`): a failure or a kill leaves no half-written output, and the next run
into the same place removes the staging left by a killed one. An output never replaces a
folder, a FIFO or a device by a file, nor a file by a folder.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import dataclasses
import errno
import fcntl
import json
import logging
import multiprocessing as mp
import os
import re
import secrets
import shutil
import signal
import stat
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from tqdm import tqdm

__all__ = [
    "MARKER_NAME",
    "NucleistyleError",
    "OutputSet",
    "Progress",
    "atomic_dir",
    "atomic_path",
    "check_input",
    "check_output",
    "check_separate",
    "config_from_mapping",
    "describe_os_error",
    "link_or_copy",
    "process_pool",
    "published_together",
    "setup_logging",
    "staged_files",
    "user_paths",
]

PathLike = str | os.PathLike[str]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Temp files and folders are created private (0600 / 0700); outputs get the usual permissions.
_FILE_MODE = 0o666 & ~_umask()
_DIR_MODE = 0o777 & ~_umask()

MARKER_NAME = ".nucleistyle"
T = TypeVar("T")
# Numeric precision of training and inference: bf16 autocast where the device supports it, or not.
PRECISIONS = ("auto", "fp32", "bf16")
"""File naming the command that wrote a folder: ``--overwrite`` replaces only such folders."""

# Staging of an output NAME (".NAME.XXXXXXXX.tmp") and the old copy of a replaced one (".old").
_STAGING_RE = re.compile(r"\.(?P<name>.+)\.[a-z0-9_]{8}\.(?P<kind>tmp|old)")
_STAGING_IN_TEXT = re.compile(
    r"(?<![^/\s'\"])\.(?P<name>[^/\s]+)\.[a-z0-9_]{8}\.(?:tmp|old)(?=$|[/\s'\":,])"
)
# Links written through in place (/dev/stdout, /proc/self/fd/N), never replaced by a rename.
_IN_PLACE_ROOTS = ("/dev/", "/proc/")


class NucleistyleError(ValueError):
    """Bad input or configuration: the message is one line naming the file or config key.

    The command-line interface prints it as ``error: <message>`` and exits with status 2.
    """


# ------------------------------------------------------------------------------------------------
# messages


def _reason(exc: OSError) -> str:
    text = exc.strerror or str(exc) or type(exc).__name__
    return text[:1].lower() + text[1:]


def _kind(mode: int) -> str:
    """What a file of this ``st_mode`` is, for messages ("a file", "a FIFO", ...)."""
    for test, name in (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISREG, "a file"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "a special file"


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
        return f"{what} the output: {_reason(exc)}"
    if isinstance(name, bytes):
        name = os.fsdecode(name)
    return f"{what} {user_paths(name)}: {_reason(exc)}"


# ------------------------------------------------------------------------------------------------
# checks done before any work


def _stat(path: Path, what: str) -> os.stat_result | None:
    """``os.stat(path)``, None when it does not exist; other failures as one line."""
    try:
        return os.stat(path)
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        parent = next(p for p in path.parents if p.exists())
        raise NucleistyleError(f"{what} {path}: {parent} is a file, expected a folder") from None
    except OSError as exc:
        raise NucleistyleError(f"{what} {path}: {_reason(exc)}") from exc


def check_input(path: PathLike, what: str, *, folder: bool = False) -> Path:
    """Refuse an input that is missing, of the wrong kind or unreadable (one line naming it).

    "not found" is said only of a path that does not exist.
    """
    path = Path(path)
    st = _stat(path, what)
    if st is None:
        raise NucleistyleError(f"{what} not found: {path}")
    if folder and not stat.S_ISDIR(st.st_mode):
        raise NucleistyleError(f"{what} {path}: is {_kind(st.st_mode)}, expected a folder")
    if not folder and stat.S_ISDIR(st.st_mode):
        raise NucleistyleError(f"{what} {path}: is a folder, expected a file")
    if not os.access(path, os.R_OK | (os.X_OK if folder else 0)):
        raise NucleistyleError(f"{what} {path}: permission denied")
    return path


def _writes_in_place(path: Path, st: os.stat_result | None) -> bool:
    """Whether ``path`` is written directly: a FIFO, a character device, or a link such as
    /dev/stdout or /proc/self/fd/N (which may stand for the shell's redirection)."""
    if st is not None and (stat.S_ISFIFO(st.st_mode) or stat.S_ISCHR(st.st_mode)):
        return True
    return path.is_symlink() and str(path.absolute()).startswith(_IN_PLACE_ROOTS)


def _existing_ancestor(path: Path, what: str) -> Path:
    """The nearest existing folder above ``path`` (refused when it is not a folder)."""
    for parent in path.absolute().parents:
        st = _stat(parent, what)
        if st is None:
            continue
        if not stat.S_ISDIR(st.st_mode):
            raise NucleistyleError(f"{what} {path}: {parent} is a file, expected a folder")
        return parent
    return Path("/")


def _output_target(path: Path, what: str, folder: bool) -> tuple[Path, os.stat_result | None]:
    """The path an output really goes to (a symbolic link is followed) and its stat, after
    refusing the wrong kind: a non-folder for a folder; a folder, block device or socket for a
    file. A file output is never written through a symbolic link to a file (or to nothing): the
    file it points to is not the command's to replace; a link to a FIFO or a character device
    (``/dev/null``) is written in place as before."""
    if path.is_symlink() and not str(path.absolute()).startswith(_IN_PLACE_ROOTS):
        link, path = path, _resolved(path)
        st = _stat(path, what)
        if not folder and (st is None or not _writes_in_place(path, st)):
            raise NucleistyleError(
                f"{what} {link} is a symbolic link to {path}: refusing to write through it "
                "(remove the link or choose another path)"
            )
    st = _stat(path, what)
    mode = 0 if st is None else st.st_mode
    if st is not None and folder and not stat.S_ISDIR(mode):
        raise NucleistyleError(f"{what} {path}: is {_kind(mode)}, expected a folder")
    if st is not None and not folder and stat.S_ISDIR(mode):
        raise NucleistyleError(f"{what} {path}: is a folder, expected a file")
    if not folder and (stat.S_ISBLK(mode) or stat.S_ISSOCK(mode)):
        raise NucleistyleError(f"{what} {path}: is {_kind(mode)}, not a file to write")
    return path, st


def check_output(path: PathLike, what: str, *, folder: bool = False) -> Path:
    """Refuse an output path that cannot be written, before any work is done: a file where a
    folder is wanted or the reverse, a block device or socket, an unwritable place."""
    path, st = _output_target(Path(path), what, folder)
    if not folder and _writes_in_place(path, st):
        if st is not None and not os.access(path, os.W_OK):
            raise NucleistyleError(f"{what} {path}: permission denied")
        return path
    place = _existing_ancestor(path, what)
    if not os.access(place, os.W_OK | os.X_OK):
        raise NucleistyleError(f"{what} {path}: permission denied (cannot write in {place})")
    if folder and st is not None and not os.access(path, os.W_OK | os.X_OK):
        raise NucleistyleError(f"{what} {path}: permission denied")
    return path


def _resolved(path: PathLike) -> Path:
    return Path(os.path.realpath(path))


def check_separate(
    inputs: Mapping[str, PathLike | None], outputs: Mapping[str, PathLike | None]
) -> None:
    """Refuse an output that is, contains or lies inside an input or another output.

    Symbolic links are resolved first, and existing paths are compared by identity too (hard
    links, bind mounts), so that no run can write over what it reads.

    Args:
        inputs: Description (e.g. "image folder") -> path; None entries are skipped.
        outputs: Likewise for the outputs.
    """
    ins = [(what, Path(p)) for what, p in inputs.items() if p is not None]
    outs = [(what, Path(p)) for what, p in outputs.items() if p is not None]
    pairs = [(o, i) for o in outs for i in ins]
    pairs += [(a, b) for k, a in enumerate(outs) for b in outs[k + 1 :]]
    for (out_what, out), (in_what, other) in pairs:
        a, b = _resolved(out), _resolved(other)
        same = a == b
        if not same and a.exists() and b.exists():
            with contextlib.suppress(OSError):
                same = os.path.samefile(a, b)
        if same:
            raise NucleistyleError(f"{out_what} {out} is the {in_what} {other}: choose another")
        if a.is_relative_to(b):
            raise NucleistyleError(f"{out_what} {out} lies inside the {in_what} {other}")
        if b.is_relative_to(a):
            raise NucleistyleError(f"{out_what} {out} contains the {in_what} {other}")


def _check_replaceable(path: Path, marker: str | None, overwrite: bool) -> None:
    """Refuse to replace anything but a missing or empty folder, unless ``overwrite`` (and, with
    a ``marker``, only a folder that the same command wrote, holding nothing but what it wrote:
    the list in its marker file)."""
    if _output_target(path, "output folder", folder=True)[1] is None:
        return
    try:
        entries = _entries(path)
    except OSError as exc:
        raise NucleistyleError(f"output folder {path}: {_reason(exc)}") from exc
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
            raise NucleistyleError(f"cannot create folder {parent}: {_reason(exc)}") from exc

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
            raise NucleistyleError(f"cannot write {path}: {_reason(exc)}") from exc
        self._lock(staging)
        return staging

    def file(self, path: PathLike) -> Path:
        """Stage the file ``path``; returns the temporary file to write.

        A symbolic link is written through; a FIFO or a character device (``/dev/stdout``) is
        written in place; a folder, block device or socket is refused.
        """
        path, st = _output_target(Path(path), "output file", folder=False)
        if _writes_in_place(path, st):
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
        path = _output_target(Path(path), "output folder", folder=True)[0]
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
        path = _output_target(Path(path), "output folder", folder=True)[0]
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


_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _die_with_parent(parent: int) -> None:
    """Initializer of worker processes: they end with their parent, whatever ends it.

    Ctrl-C, SIGTERM and SIGHUP end a worker at once and without a traceback (the parent reports
    them as one line). On Linux the kernel sends the worker SIGKILL when the parent dies, even by
    SIGKILL (``prctl(PR_SET_PDEATHSIG)``); a thread watching the parent's PID does the same
    elsewhere and covers a parent that died before the worker got here. A worker left behind
    would hold the lock on its run's staging (so the next run could not remove it) and go on
    writing into it.
    """
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)
    if sys.platform == "linux":
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)  # the parent is gone already
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)


@contextlib.contextmanager
def process_pool(workers: int) -> Iterator[concurrent.futures.ProcessPoolExecutor]:
    """A pool of ``workers`` processes that live no longer than this process or the block.

    The workers are forked on Linux (they start at once and, unlike "spawn", do not re-run the
    caller's ``__main__``, e.g. a Snakemake script) and die with their parent (see
    :func:`_die_with_parent`). When the block ends by an exception (a bad input, Ctrl-C, a
    termination signal) the workers are killed at once rather than left to finish their current
    images: the staging they write into is about to be removed.
    """
    context = mp.get_context("fork") if sys.platform == "linux" else None
    pool = concurrent.futures.ProcessPoolExecutor(
        workers, context, initializer=_die_with_parent, initargs=(os.getpid(),)
    )
    try:
        yield pool
    except BaseException:
        for process in list((getattr(pool, "_processes", None) or {}).values()):
            with contextlib.suppress(OSError, ValueError):
                process.kill()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


class Progress:
    """Progress of a long loop: a tqdm bar on stderr when it is a terminal, and a log line at
    every tenth of the way, as training logs its iterations: the pipeline's job logs and ``-v``
    show it where no terminal is (an 18-minute augmentation was silent before).

    Example:
        >>> with Progress(len(records), "stylize", log) as progress:  # doctest: +SKIP
        ...     for record in records:
        ...         progress.update()
    """

    def __init__(self, total: int, desc: str, logger: logging.Logger, unit: str = "image") -> None:
        self.bar = tqdm(total=total, desc=desc, unit=unit, disable=None, file=sys.stderr)
        self.total, self.desc, self.logger, self.unit = total, desc, logger, unit
        self.step = max(1, -(-total // 10))
        self.done, self.start = 0, time.perf_counter()

    def update(self, n: int = 1) -> None:
        """``n`` more items done."""
        self.bar.update(n)
        before, self.done = self.done, self.done + n
        if self.done // self.step > before // self.step or self.done == self.total:
            elapsed = time.perf_counter() - self.start
            rate = self.done / elapsed if elapsed > 0 else 0.0
            left = (self.total - self.done) / rate if rate > 0 else 0.0
            self.logger.info(
                "%s: %d/%d %ss (%.2f %ss/s, about %.0f s left)",
                self.desc, self.done, self.total, self.unit, rate, self.unit, left,
            )  # fmt: skip

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.close()


def setup_logging(
    log_file: str | os.PathLike[str] | None = None, level: int = logging.INFO
) -> None:
    """Send library logging to ``log_file`` (a rule's log) or to stderr.

    With a log file, an uncaught exception is also written to it, so a failed job's log says why.
    """
    handler: logging.Handler
    if log_file is None:
        handler = logging.StreamHandler(sys.stderr)
    else:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(log_file, mode="w")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.captureWarnings(True)
    if log_file is not None:
        previous = sys.excepthook

        def log_exception(kind: type[BaseException], value: BaseException, tb: Any) -> None:
            logging.getLogger("nucleistyle").error(
                "%s: %s", kind.__name__, value, exc_info=(kind, value, tb)
            )
            previous(kind, value, tb)

        sys.excepthook = log_exception


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type name when it has none."""
    return (str(exc).splitlines() or [type(exc).__name__])[0]


def config_fingerprint(cfg: Any) -> dict[str, Any]:
    """A dataclass (or mapping) as plain data, stored in checkpoints to detect mismatches."""
    is_instance = dataclasses.is_dataclass(cfg) and not isinstance(cfg, type)
    data = dataclasses.asdict(cfg) if is_instance else dict(cfg)
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in data.items()}


def config_from_mapping(cls: type[T], mapping: Mapping[str, Any], section: str) -> T:
    """Build the settings dataclass ``cls`` from a config section (missing keys: defaults).

    Raises:
        NucleistyleError: a key that ``cls`` does not have, named as ``<section>.<key>``.
    """
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(mapping) - known)
    if unknown:
        raise NucleistyleError(
            f"unknown config key {section}.{unknown[0]} (known: {', '.join(sorted(known))})"
        )
    return cls(**dict(mapping))


def link_or_copy(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> Any:
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
