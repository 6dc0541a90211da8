"""Paths a command reads and writes, checked before any work.

:data:`PathLike` is the type of every path argument of the library. :func:`check_input` refuses
an input that is missing, of the wrong kind or unreadable; :func:`check_output` an output that
cannot be written; :func:`check_separate` an output that is, contains or lies inside an input or
another output. Each says so in one line naming the path.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Mapping
from pathlib import Path

from nucleistyle.errors import NucleistyleError, os_reason

__all__ = [
    "PathLike",
    "check_input",
    "check_output",
    "check_separate",
    "output_target",
    "writes_in_place",
]

PathLike = str | os.PathLike[str]
"""A path argument: a string or anything :func:`os.fspath` takes."""

# Links written through in place (/dev/stdout, /proc/self/fd/N), never replaced by a rename.
IN_PLACE_ROOTS = ("/dev/", "/proc/")


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
        raise NucleistyleError(f"{what} {path}: {os_reason(exc)}") from exc


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


def writes_in_place(path: Path, st: os.stat_result | None) -> bool:
    """Whether ``path`` is written directly: a FIFO, a character device, or a link such as
    /dev/stdout or /proc/self/fd/N (which may stand for the shell's redirection)."""
    if st is not None and (stat.S_ISFIFO(st.st_mode) or stat.S_ISCHR(st.st_mode)):
        return True
    return path.is_symlink() and str(path.absolute()).startswith(IN_PLACE_ROOTS)


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


def output_target(path: Path, what: str, folder: bool) -> tuple[Path, os.stat_result | None]:
    """The path an output really goes to (a symbolic link is followed) and its stat, after
    refusing the wrong kind: a non-folder for a folder; a folder, block device or socket for a
    file. A file output is never written through a symbolic link to a file (or to nothing): the
    file it points to is not the command's to replace; a link to a FIFO or a character device
    (``/dev/null``) is written in place as before."""
    if path.is_symlink() and not str(path.absolute()).startswith(IN_PLACE_ROOTS):
        link, path = path, _resolved(path)
        st = _stat(path, what)
        if not folder and (st is None or not writes_in_place(path, st)):
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
    path, st = output_target(Path(path), what, folder)
    if not folder and writes_in_place(path, st):
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
