"""Small shared helpers: the project's error type, atomic output, logging set-up."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "NucleistyleError",
    "atomic_dir",
    "atomic_path",
    "config_from_mapping",
    "link_or_copy",
    "setup_logging",
    "staged_files",
]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Temp files and folders are created private (0600 / 0700); outputs get the usual permissions.
_FILE_MODE = 0o666 & ~_umask()
_DIR_MODE = 0o777 & ~_umask()


class NucleistyleError(ValueError):
    """Bad input or configuration: the message is one line naming the file or config key.

    The command-line interface prints it as ``error: <message>`` and exits with status 2.
    """


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; rename it onto ``path`` only on success.

    A reader never sees a half-written file, and a failure leaves neither a partial file nor
    damages an existing one (the old file stays until the rename).

    Example:
        >>> with atomic_path("out.csv") as tmp:  # doctest: +SKIP
        ...     tmp.write_text("a,b\\n")
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Like :func:`atomic_path` for a directory: build it beside ``path``, then rename.

    An existing ``path`` is replaced only once the new directory is complete.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, _DIR_MODE)
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def staged_files(out_dir: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a hidden staging folder beside ``out_dir``; on success move its files into
    ``out_dir`` (created if missing; each file by an atomic rename; other files of ``out_dir``
    stay, same names are replaced). On an error remove the staging folder and the parent folders
    created for it, so a failed run leaves nothing behind."""
    out_dir = Path(out_dir)
    created = [p for p in (out_dir.parent, *out_dir.parent.parents) if not p.exists()]
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        yield staging
        out_dir.mkdir(exist_ok=True)
        for path in sorted(staging.iterdir()):
            os.replace(path, out_dir / path.name)
        created = []
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        for folder in created:  # deepest first; only the empty folders made above
            with contextlib.suppress(OSError):
                folder.rmdir()


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


def config_from_mapping(cls: type, mapping: Mapping[str, Any], section: str) -> Any:
    """Build the settings dataclass ``cls`` from a config section (missing keys: defaults).

    Raises:
        NucleistyleError: a key that ``cls`` does not have, named as ``<section>.<key>``.
    """
    known = {f.name for f in dataclasses.fields(cls)}
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
