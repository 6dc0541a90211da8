"""Small shared helpers: worker processes, progress, logging set-up, settings from config.

Errors are in :mod:`nucleistyle.errors`, path checks in :mod:`nucleistyle.paths`, staged output
in :mod:`nucleistyle.outputs`.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import dataclasses
import logging
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from tqdm import tqdm

from nucleistyle.errors import NucleistyleError
from nucleistyle.paths import PathLike

__all__ = [
    "Progress",
    "config_fingerprint",
    "config_from_mapping",
    "process_pool",
    "setup_logging",
]

T = TypeVar("T")


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


def setup_logging(log_file: PathLike | None = None, level: int = logging.INFO) -> None:
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
