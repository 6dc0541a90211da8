"""One resumable training loop, for the style-transfer GAN and the Mask R-CNN segmenters.

The loop owns what both trainings share: the device and precision (:class:`Runtime`), the seed,
the checkpoint (written atomically every ``checkpoint_every`` iterations and at the end, with
the global RNG states, the loss history and the partial logging window) and resuming from it,
the iteration budget, timing, the history rows and the writing of the model file. A model
supplies a :class:`Task`: one training iteration, an evaluation, its own state and its model
file.

History rows: every ``log_every`` iterations (and at the end) the mean of each value the task's
steps returned since the last row (:class:`Window`; values named in ``TrainingPlan.instant``,
such as a learning rate, as they were at the last step) and ``sec_per_it``; every
``evaluate_every`` iterations (0: only at the end) the task's evaluation with ``wall_s`` and
``cpu_s``, the seconds of training so far (wall clock and this process's CPU time; evaluation
and checkpoints not counted).

A rerun after a crash or SIGKILL continues from the last checkpoint: on the CPU in fp32 it ends
with the same weights and history (timings aside) as an uninterrupted run. A checkpoint at or
beyond the budget trains nothing more: the model file is written from its weights (with a
warning when beyond). A NaN or infinite loss stops the run
(:class:`~nucleistyle.torchutils.TrainingDiverged`); the last checkpoint is kept and the history
so far is written.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from tqdm import tqdm

from nucleistyle.errors import NucleistyleError
from nucleistyle.paths import PathLike
from nucleistyle.torchutils import (
    LossHistory,
    TrainingDiverged,
    get_rng_state,
    keep_freed_memory,
    load_checkpoint,
    log_environment,
    resolve_precision,
    save_checkpoint,
    seed_everything,
    select_device,
    set_rng_state,
)

__all__ = ["Runtime", "Task", "TrainingPlan", "Window", "read_checkpoint", "train"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Runtime:
    """Where a training runs: the device, the autocast dtype (None: fp32) and what was logged
    about the environment (versions, device, precision, seed)."""

    device: torch.device
    dtype: torch.dtype | None
    environment: dict[str, Any]

    @classmethod
    def select(cls, device: str, precision: str, seed: int, section: str) -> Runtime:
        """Resolve config ``<section>.device`` and ``<section>.precision`` (bad values named)
        and keep freed memory for reuse (:func:`~nucleistyle.torchutils.keep_freed_memory`)."""
        chosen = select_device(device, f"{section}.device")
        keep_freed_memory()  # no page faults for the same activations every step
        dtype = resolve_precision(precision, chosen, f"{section}.precision")
        return cls(chosen, dtype, log_environment(chosen, dtype, seed))


@dataclass(frozen=True)
class TrainingPlan:
    """How long a training runs and when it logs, evaluates and checkpoints.

    Attributes:
        budget: Iterations in the whole run.
        budget_key: The config key(s) that set it, for messages.
        seed: Seeds the global generators before the task is built.
        log_every: Iterations per history row of averaged step values.
        checkpoint_every: Iterations between checkpoints.
        evaluate_every: Iterations between evaluations (0: only at the end).
        fingerprint: What a checkpoint must have been written with to be resumed.
        checkpoint: The checkpoint file (None: no checkpoints, no resume).
        resume_ignores: Fingerprint keys that may differ on resume (the budget, run settings).
        checkpoint_format: Stored as ``format`` and required on resume (None: not checked).
        instant: Step values written as they were at a row's last step, not averaged.
        name: The progress bar's label.
    """

    budget: int
    budget_key: str
    seed: int
    log_every: int
    checkpoint_every: int
    evaluate_every: int
    fingerprint: Mapping[str, Any]
    checkpoint: PathLike | None = None
    resume_ignores: tuple[str, ...] = ()
    checkpoint_format: str | None = None
    instant: tuple[str, ...] = ()
    name: str = "train"

    def due(self, done: int, every: int) -> bool:
        """Whether something done every ``every`` iterations (0: never) and at the end is due
        after ``done`` iterations."""
        return done == self.budget or (every > 0 and done % every == 0)


class Task(Protocol):
    """What a model supplies to :func:`train`."""

    def step(self, iteration: int) -> dict[str, float]:
        """Train iteration ``iteration`` (0-based); returns its loss values."""
        ...

    def evaluate(self, iteration: int) -> dict[str, float]:
        """Values for the history after ``iteration`` iterations (empty: no row)."""
        ...

    def state(self) -> dict[str, Any]:
        """The task's part of a checkpoint (weights, optimisers, samplers; tensors and plain
        data only, none of the loop's keys)."""
        ...

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state` returned (the whole checkpoint is passed)."""
        ...

    def model_file(self, iteration: int, history: LossHistory) -> dict[str, Any]:
        """The model file's content after ``iteration`` iterations (it may add history rows)."""
        ...


class Window:
    """The step values since the last history row: running sums, or the last value of the
    ``instant`` names (part of the checkpoint, so a resumed run writes the same rows)."""

    def __init__(self, instant: tuple[str, ...] = (), state: Mapping[str, Any] | None = None):
        self.instant = instant
        self.sums: dict[str, float] = dict(state["sums"]) if state else {}
        self.count = int(state["count"]) if state else 0

    def add(self, values: Mapping[str, float]) -> None:
        for k, v in values.items():
            self.sums[k] = v if k in self.instant else self.sums.get(k, 0.0) + v
        self.count += 1

    def means(self) -> dict[str, float]:
        n = max(self.count, 1)
        return {k: v if k in self.instant else v / n for k, v in self.sums.items()}

    def state(self) -> dict[str, Any]:
        return {"sums": dict(self.sums), "count": self.count}


def read_checkpoint(plan: TrainingPlan) -> dict[str, Any] | None:
    """The plan's checkpoint, checked against its fingerprint and format; None without one.

    Raises:
        NucleistyleError: unreadable, of another configuration or data (naming the file and
            the first differing key), or not a checkpoint of this kind.
    """
    if plan.checkpoint is None or not Path(plan.checkpoint).exists():
        return None
    state = load_checkpoint(plan.checkpoint, plan.fingerprint, ignore=plan.resume_ignores)
    found, expected = state.get("format"), plan.checkpoint_format
    if expected is not None and found != expected:
        raise NucleistyleError(
            f"checkpoint {plan.checkpoint} is not a {plan.name} training checkpoint (format "
            f"{found!r}, expected {expected!r})"
        )
    return state


class _Run:
    """The loop's own state: iteration, history, window and training-time clock."""

    def __init__(self, plan: TrainingPlan, state: Mapping[str, Any] | None) -> None:
        self.plan = plan
        self.iteration = int(state["iteration"]) if state else 0
        self.history = LossHistory(state["history"] if state else None)
        self.window = Window(plan.instant, state.get("window") if state else None)
        clock = state.get("clock") if state else None
        self.clock = dict(clock) if clock else {"wall_s": 0.0, "cpu_s": 0.0}
        self.tic = (time.perf_counter(), time.process_time())

    def tick(self) -> None:
        """Add the time since the last :meth:`tick` (or :meth:`restart`) to the clock."""
        wall, cpu = time.perf_counter(), time.process_time()
        self.clock["wall_s"] += wall - self.tic[0]
        self.clock["cpu_s"] += cpu - self.tic[1]
        self.tic = (wall, cpu)

    def restart(self) -> None:
        """Start timing again (what happened since the last tick is not training)."""
        self.tic = (time.perf_counter(), time.process_time())

    def save(self, task: Task) -> None:
        plan = self.plan
        if plan.checkpoint is None:
            return
        state = {
            **task.state(),
            "format": plan.checkpoint_format,
            "config": dict(plan.fingerprint),
            "iteration": self.iteration,
            "rng": get_rng_state(),
            "history": self.history.state(),
            "window": self.window.state(),
            "clock": self.clock,
        }
        if plan.checkpoint_format is None:
            del state["format"]
        save_checkpoint(plan.checkpoint, state)
        log.info("checkpoint %s at iteration %d", plan.checkpoint, self.iteration)

    def log_row(self) -> None:
        means = self.window.means()
        self.history.append(self.iteration, means)
        self.window = Window(self.plan.instant)
        log.info(
            "iteration %d/%d  %s",
            self.iteration,
            self.plan.budget,
            "  ".join(f"{k} {v:.4g}" for k, v in means.items()),
        )


def _iterate(task: Task, run: _Run) -> None:
    """Train from ``run.iteration`` to the budget: rows, evaluations and checkpoints on time."""
    plan = run.plan
    bar = tqdm(
        total=plan.budget, initial=run.iteration, desc=plan.name, disable=None, file=sys.stderr
    )
    try:
        while run.iteration < plan.budget:
            tic = time.perf_counter()
            values = task.step(run.iteration)
            run.window.add({**values, "sec_per_it": time.perf_counter() - tic})
            run.iteration += 1
            bar.update()
            if plan.due(run.iteration, plan.log_every):
                run.log_row()
            run.tick()
            if plan.due(run.iteration, plan.evaluate_every):
                scores = task.evaluate(run.iteration)
                if scores:
                    run.history.append(run.iteration, {**scores, **run.clock})
            if plan.due(run.iteration, plan.checkpoint_every):
                run.save(task)
            run.restart()
    finally:
        bar.close()


def train(
    plan: TrainingPlan,
    build: Callable[[Mapping[str, Any] | None], Task],
    out_model: PathLike,
    history_tsv: PathLike | None = None,
) -> Path:
    """Build the task, resume it from the plan's checkpoint if there is one, train it to the
    budget and write its model file (atomically) and the history.

    Args:
        plan: The budget, schedule and checkpoint.
        build: ``build(state) -> Task``, called after seeding the global generators with the
            checkpoint (None for a fresh run), so that it can start its data where the
            checkpoint left off; the task's state and the RNG states are restored after it.
        out_model: The model file (``torch.load(weights_only=True)``-able).
        history_tsv: Where to write the history (also when the run diverges).

    Returns:
        ``out_model`` as a Path.

    Raises:
        NucleistyleError: a checkpoint that does not match the plan (see
            :func:`read_checkpoint`).
        TrainingDiverged: a loss became NaN or infinite.
    """
    seed_everything(plan.seed)
    state = read_checkpoint(plan)
    task: Task = build(state)
    run = _Run(plan, state)
    if state is not None:
        task.load_state(state)
        set_rng_state(state["rng"])  # last: after everything that draws from them
        log.info("resumed from %s at iteration %d", plan.checkpoint, run.iteration)
        if run.iteration > plan.budget:
            log.warning(
                "checkpoint %s is at iteration %d, beyond the budget of %d iterations (%s): "
                "not training",
                plan.checkpoint,
                run.iteration,
                plan.budget,
                plan.budget_key,
            )
    try:
        _iterate(task, run)
    except TrainingDiverged:
        if history_tsv is not None:
            run.history.write_tsv(history_tsv)
        raise
    save_checkpoint(out_model, task.model_file(run.iteration, run.history))
    if history_tsv is not None:
        run.history.write_tsv(history_tsv)
    log.info("wrote %s (iteration %d)", out_model, run.iteration)
    return Path(out_model)
