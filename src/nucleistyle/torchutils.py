"""Shared PyTorch plumbing for the GAN and Mask R-CNN stages.

Device and precision selection, seeding, RNG state capture, atomic checkpoints that load with
``weights_only=True``, a loss history that travels inside the checkpoint, and a non-finite-loss
guard. Nothing here knows about a particular model.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import math
import os
import platform
import random
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from nucleistyle.errors import NucleistyleError, first_line
from nucleistyle.outputs import atomic_path
from nucleistyle.paths import PathLike

__all__ = [
    "LossHistory",
    "TrainingDiverged",
    "autocast",
    "check_finite",
    "cpu_has_bf16",
    "get_rng_state",
    "keep_freed_memory",
    "load_checkpoint",
    "log_environment",
    "resolve_precision",
    "save_checkpoint",
    "seed_everything",
    "select_device",
    "set_rng_state",
    "set_torch_threads",
]

log = logging.getLogger(__name__)

# Numeric precision of training and inference: bf16 autocast where the device supports it, or not.
PRECISIONS = ("auto", "fp32", "bf16")


class TrainingDiverged(NucleistyleError):
    """A loss became NaN or infinite; the last good checkpoint is kept."""


def select_device(name: str = "auto", key: str = "device") -> torch.device:
    """``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.

    Raises:
        NucleistyleError: CUDA requested but not available (names the config ``key`` and
            ``CUDA_VISIBLE_DEVICES``, the usual culprit on clusters).
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>")
        raise NucleistyleError(
            f"config key {key}: {name} requested but torch.cuda.is_available() is False "
            f"(CUDA_VISIBLE_DEVICES={visible}); use auto or cpu"
        )
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise NucleistyleError(f"config key {key}: {exc}") from exc


@functools.cache
def keep_freed_memory() -> bool:
    """Have glibc keep freed memory for reuse instead of handing it back to the kernel.

    A training step frees and re-allocates the same large activations every time. glibc serves
    each block over its mmap threshold with a fresh ``mmap`` and returns it on free, so every
    step page-faults its whole working set in again: ~70,000 faults and ~5 % of a GAN update on
    a 2-core CPU (``make bench``). Raising the mmap and trim thresholds keeps the blocks on the
    heap; the peak RSS stays the same. Process-wide, idempotent; False (nothing changed) where
    the C library is not glibc.
    """
    if platform.libc_ver()[0] != "glibc":
        return False
    mallopt = ctypes.CDLL(None).mallopt
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    return bool(mallopt(m_mmap_threshold, 1 << 30) and mallopt(m_trim_threshold, 2**31 - 1))


@functools.cache
def cpu_has_bf16() -> bool:
    """Whether this CPU has bf16 matrix units (Intel AMX or AVX512-BF16), from /proc/cpuinfo."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_precision(
    precision: str, device: torch.device, key: str = "precision"
) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device``: None means plain fp32.

    ``auto`` picks bf16 on CUDA devices that support it and on CPUs with bf16 matrix units
    (where it is several times faster for convolutions), fp32 elsewhere.

    Raises:
        NucleistyleError: an unknown precision (names ``key``).
    """
    if precision not in PRECISIONS:
        raise NucleistyleError(f"config key {key}: {precision!r} is not one of {PRECISIONS}")
    if precision == "fp32":
        return None
    if device.type == "cuda":
        supported = torch.cuda.is_bf16_supported()
    else:
        supported = cpu_has_bf16()
    if precision == "bf16":
        if not supported:
            log.warning(
                "bf16 requested on %s without bf16 hardware support: expect it to be slow", device
            )
        return torch.bfloat16
    return torch.bfloat16 if supported else None


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for ``dtype``, or a no-op context when ``dtype`` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def set_torch_threads(n: int) -> None:
    """Run PyTorch's CPU operators on ``n`` threads (intra-op), for a command's ``--threads``.

    Set before any work: more threads than the cores a job was given only oversubscribe them.

    Raises:
        NucleistyleError: ``n`` is not an integer >= 1.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise NucleistyleError(f"threads must be an integer >= 1, got {n!r}")
    torch.set_num_threads(n)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and PyTorch (CPU and CUDA) global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002  (libraries may still draw from it)
    torch.manual_seed(seed)


def get_rng_state() -> dict[str, Any]:
    """All global RNG states as tensors and plain Python values (loadable with weights_only)."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": [name, torch.from_numpy(np.asarray(keys, np.int64)), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`get_rng_state` captured."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))  # noqa: NPY002
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: PathLike, state: Mapping[str, Any]) -> None:
    """Write ``state`` with ``torch.save`` atomically: a crash mid-write never corrupts ``path``."""
    with atomic_path(path) as tmp:
        torch.save(dict(state), tmp)


def why_not_loaded(path: PathLike, exc: Exception) -> str:
    """Why ``torch.load(path, weights_only=True)`` failed, for a one-line message.

    Never passes on torch's advice to retry with ``weights_only=False``: for a file of unknown
    origin that would run whatever code it holds.
    """
    if isinstance(exc, OSError):
        return exc.strerror or first_line(exc)
    with contextlib.suppress(OSError):
        if os.path.getsize(path) == 0:
            return "the file is empty"
        if not zipfile.is_zipfile(path):
            return "not a PyTorch file"
    if "weights only load failed" in str(exc).lower():
        return (
            "it holds Python objects besides tensors and plain data, which are not loaded "
            "(loading them could run code)"
        )
    reason = first_line(exc)
    return "a damaged PyTorch file" + ("" if "weights_only" in reason else f" ({reason})")


def torch_load(path: PathLike) -> Any:
    """``torch.load`` with ``weights_only=True`` onto the CPU, without torch's warnings (about
    pickle protocols of foreign files): the caller's one-line message says what went wrong."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.load(path, map_location="cpu", weights_only=True)


def load_checkpoint(
    path: PathLike,
    expected_config: Mapping[str, Any] | None = None,
    ignore: tuple[str, ...] = (),
    what: str = "checkpoint",
) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` (no arbitrary code runs) onto the CPU.

    Args:
        path: the checkpoint file.
        expected_config: the :func:`config_fingerprint` the checkpoint must have been written with
            (keys in ``ignore``, e.g. the iteration budget, may differ).
        what: what the file should be ("checkpoint", "model"), for messages.

    Raises:
        NucleistyleError: unreadable file or not a nucleistyle checkpoint or model file (saying
            why, e.g. "not a PyTorch file"), or a checkpoint from a different configuration
            (naming the file and the first differing key).
    """
    try:
        state = torch_load(path)
    except Exception as exc:  # torch raises several types for corrupt or foreign files
        reason = why_not_loaded(path, exc)
        raise NucleistyleError(f"{path} is not a nucleistyle {what} file: {reason}") from exc
    if not isinstance(state, dict):
        raise NucleistyleError(
            f"{path} is not a nucleistyle {what} file: it holds a {type(state).__name__}"
        )
    if expected_config is not None:
        found = state.get("config")
        if not isinstance(found, Mapping):
            raise NucleistyleError(f"checkpoint {path}: no configuration recorded")
        for key in sorted(set(expected_config) | set(found)):
            if key in ignore:
                continue
            if found.get(key) != expected_config.get(key):
                raise NucleistyleError(
                    f"checkpoint {path} was written with a different configuration: {key} = "
                    f"{found.get(key)!r}, expected {expected_config.get(key)!r}"
                )
    return state


class LossHistory:
    """Loss values per logged iteration; saved inside checkpoints so a resumed run continues it."""

    def __init__(self, rows: list[dict[str, float]] | None = None) -> None:
        self.rows: list[dict[str, float]] = list(rows or [])

    def append(self, iteration: int, values: Mapping[str, float]) -> None:
        self.rows.append(
            {"iteration": float(iteration), **{k: float(v) for k, v in values.items()}}
        )

    def state(self) -> list[dict[str, float]]:
        return [dict(row) for row in self.rows]

    def to_frame(self) -> pd.DataFrame:
        frame = pd.DataFrame(self.rows)
        if "iteration" in frame:
            frame["iteration"] = frame["iteration"].astype(int)
        return frame

    def write_tsv(self, path: PathLike) -> None:
        with atomic_path(path) as tmp:
            self.to_frame().to_csv(tmp, sep="\t", index=False, float_format="%.6g")


def check_finite(
    losses: Mapping[str, torch.Tensor | float], iteration: int, checkpoint: PathLike | None
) -> None:
    """Stop with a clear message when a loss is NaN or infinite.

    Raises:
        TrainingDiverged: naming the loss, the iteration and the checkpoint that is kept.
    """
    for name, value in losses.items():
        value = float(value)
        if not math.isfinite(value):
            kept = f"; the last good checkpoint {checkpoint} is kept" if checkpoint else ""
            raise TrainingDiverged(
                f"loss {name} is {value} at iteration {iteration}{kept} "
                "(lower the learning rate, or use precision: fp32)"
            )


def log_environment(device: torch.device, dtype: torch.dtype | None, seed: int) -> dict[str, Any]:
    """Log (and return) what a run needs to be traced: versions, device, precision, seed."""
    info = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu",
        "cuda_available": torch.cuda.is_available(),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>"),
        "threads": torch.get_num_threads(),
        "precision": "fp32" if dtype is None else str(dtype).removeprefix("torch."),
        "cpu_bf16": cpu_has_bf16(),
        "seed": seed,
    }
    log.info("environment: %s", ", ".join(f"{k}={v}" for k, v in info.items()))
    return info
