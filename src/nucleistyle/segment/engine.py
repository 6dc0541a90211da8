"""Training engine in the style of torchvision's ``references/detection/engine.py``.

:func:`train_iterations` runs iterations with bf16 autocast (when configured), per-tensor
gradient clipping and a per-iteration learning rate, logging smoothed losses;
:func:`evaluate` gives the validation losses (Mirzaev's model selection, Mirzaev);
:func:`train_segmenter` ties it together: data, model, optimiser, checkpoints with resume and
the final model file.

Checkpoints (written atomically, loaded with ``weights_only=True``) hold the model, the
optimiser, the iteration, the loss history, the RNG states, the best validation weights so
far and the configuration fingerprint; a rerun after a crash or SIGKILL continues from the last
one. The learning rate is a pure function of (iteration, total), so no scheduler state is
needed; the total may grow on resume (the schedule's milestones then move with it).

Example:
    >>> cfg = get_config("deep_retina", {"iterations": 300})  # doctest: +SKIP
    >>> train_segmenter(["train"], "model.pt", cfg, checkpoint="ckpt.pt")  # doctest: +SKIP
"""

from __future__ import annotations

import collections
import copy
import logging
import math
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from nucleistyle.enhance import ClaheConfig
from nucleistyle.errors import NucleistyleError
from nucleistyle.metrics import image_score
from nucleistyle.paths import PathLike
from nucleistyle.segment.calibration import Calibration, calibrate, ceiling_score
from nucleistyle.segment.configs import RESUME_IGNORES, SegmenterConfig, flatten
from nucleistyle.segment.dataset import (
    DrawDataset,
    TrainItem,
    attach_variants,
    check_arm,
    cluster_weights,
    images_digest,
    list_training_records,
    load_items,
    read_assignments,
    split_validation,
    training_config_summary,
    validation_samples,
)
from nucleistyle.segment.inference import Segmenter
from nucleistyle.segment.model import build_model
from nucleistyle.segment.modelfile import MODEL_FORMAT
from nucleistyle.segment.transforms import eval_pipeline, training_pipeline
from nucleistyle.torchutils import (
    LossHistory,
    autocast,
    check_finite,
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

__all__ = [
    "MetricLogger",
    "SmoothedValue",
    "TrainingRun",
    "evaluate",
    "fingerprint",
    "make_optimizer",
    "train_iterations",
    "train_segmenter",
]

log = logging.getLogger(__name__)
Batch = list[tuple[torch.Tensor, dict[str, torch.Tensor]]]


class SmoothedValue:
    """A series of values with a windowed mean (torchvision references)."""

    def __init__(self, window: int = 20) -> None:
        self.values: collections.deque[float] = collections.deque(maxlen=window)

    def update(self, value: float) -> None:
        self.values.append(value)

    @property
    def avg(self) -> float:
        return sum(self.values) / max(len(self.values), 1)


class MetricLogger:
    """Named :class:`SmoothedValue` meters and a one-line summary."""

    def __init__(self, window: int = 20) -> None:
        self.meters: dict[str, SmoothedValue] = collections.defaultdict(
            lambda: SmoothedValue(window)
        )

    def update(self, **values: float) -> None:
        for name, value in values.items():
            self.meters[name].update(float(value))

    def averages(self) -> dict[str, float]:
        return {name: meter.avg for name, meter in self.meters.items()}

    def __str__(self) -> str:
        return "  ".join(f"{name} {meter.avg:.4g}" for name, meter in self.meters.items())


def fingerprint(
    cfg: SegmenterConfig, arm: str, train_ids: Sequence[str], val_ids: Sequence[str]
) -> dict[str, Any]:
    """What a checkpoint must match to be resumed: the flat config, the arm and the data."""
    return {
        **flatten(cfg),
        "data.arm": arm,
        "data.train_images": images_digest(train_ids),
        "data.val_images": images_digest(val_ids),
    }


def make_optimizer(model: nn.Module, cfg: SegmenterConfig) -> torch.optim.Optimizer:
    """SGD with momentum (Deep Retina) or Adam/AMSGrad (Mirzaev) over the trainable
    parameters; the learning rate is set per iteration by the engine. Fused: one kernel per
    step instead of a Python loop over ~200 tensors (measured: the loop took 0.2 s of a 1.2 s
    CPU iteration)."""
    params = [p for p in model.parameters() if p.requires_grad]
    o = cfg.optim
    if o.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay, fused=True
        )
    return torch.optim.Adam(
        params, lr=o.lr, amsgrad=o.amsgrad, weight_decay=o.weight_decay, fused=True
    )


def _clip_per_tensor(params: Iterable[torch.Tensor], max_norm: float) -> None:
    """Keras ``clipnorm``: scale each gradient tensor to norm <= ``max_norm`` (both solutions)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    norms = torch._foreach_norm(grads)
    scales = [torch.clamp(max_norm / (n + 1e-6), max=1.0) for n in norms]
    torch._foreach_mul_(grads, scales)


def _to_device(batch: Batch, device: torch.device) -> tuple[list, list]:
    images = [image.to(device, non_blocking=True) for image, _ in batch]
    targets = [{k: v.to(device, non_blocking=True) for k, v in t.items()} for _, t in batch]
    return images, targets


@dataclass
class TrainingRun:
    """What stays fixed across the iterations of one training run.

    Attributes:
        model, optimizer: What is trained, and how.
        batches: An endless iterator of training batches (CPU tensors).
        device, dtype: Where the model runs; the autocast dtype (None: fp32).
        cfg: The configuration (learning-rate schedule, gradient clipping, logging interval).
        total: Iterations in the whole run: the length of the learning-rate schedule.
        history: Loss rows are appended here.
        metrics: The smoothing window of the logged losses.
        checkpoint: Named when a loss diverges (the last checkpoint is kept).
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    batches: Iterator[Batch]
    device: torch.device
    dtype: torch.dtype | None
    cfg: SegmenterConfig
    total: int
    history: LossHistory
    metrics: MetricLogger
    checkpoint: PathLike | None = None


def train_iterations(run: TrainingRun, start: int, stop: int) -> None:
    """Train iterations ``start`` .. ``stop - 1`` of ``run`` (up to the next checkpoint or
    validation).

    Every ``cfg.log_every`` iterations the losses and seconds per iteration, averaged over the
    ``metrics`` window, and the current learning rate are logged and appended to ``history``
    (row ``iteration`` = iterations done).

    Raises:
        TrainingDiverged: a loss became NaN or infinite (the last checkpoint is kept).
    """
    model, optimizer, cfg, total = run.model, run.optimizer, run.cfg, run.total
    history, metrics, checkpoint = run.history, run.metrics, run.checkpoint
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    progress = tqdm(
        range(start, stop), desc="train", unit="it", disable=None, file=sys.stderr, leave=False
    )
    tic = time.perf_counter()
    for iteration in progress:
        images, targets = _to_device(next(run.batches), run.device)
        lr = cfg.optim.lr_at(iteration, total)
        for group in optimizer.param_groups:
            group["lr"] = lr
        with autocast(run.device, run.dtype):
            loss_dict = model(images, targets)
        losses = sum(loss_dict.values())
        values = {k: float(v.detach()) for k, v in loss_dict.items()}
        check_finite({"loss": float(losses.detach()), **values}, iteration + 1, checkpoint)
        optimizer.zero_grad(set_to_none=True)
        losses.backward()
        if cfg.optim.grad_clip > 0:
            _clip_per_tensor(params, cfg.optim.grad_clip)
        optimizer.step()
        now = time.perf_counter()
        metrics.update(loss=float(losses.detach()), **values, sec_per_it=now - tic)
        tic = now
        done = iteration + 1
        if done % cfg.log_every == 0 or done == total:
            averages = metrics.averages()
            history.append(done, {**averages, "lr": lr})
            log.info("iteration %d/%d  %s  lr %.3g", done, total, metrics, lr)
            progress.set_postfix(loss=f"{averages['loss']:.3f}")


@torch.no_grad()
def evaluate(
    model: nn.Module,
    samples: Sequence[tuple[torch.Tensor, dict[str, torch.Tensor]]],
    device: torch.device,
    dtype: torch.dtype | None,
    batch_size: int,
) -> dict[str, float]:
    """Mean losses over ``samples`` (validation, Mirzaev), without updating anything.

    The model runs in training mode (torchvision returns losses only then) with its batch-norm
    layers in eval mode, so running statistics are not touched.

    Returns:
        ``{"val_loss": total, "val_loss_mask": ..., ...}`` averaged over batches.
    """
    model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()
    sums: dict[str, float] = collections.defaultdict(float)
    batches = 0
    for first in range(0, len(samples), batch_size):
        images, targets = _to_device(list(samples[first : first + batch_size]), device)
        with autocast(device, dtype):
            loss_dict = model(images, targets)
        sums["val_loss"] += float(sum(loss_dict.values()))
        for key, value in loss_dict.items():
            sums[f"val_{key}"] += float(value)
        batches += 1
    model.train()
    return {key: value / max(batches, 1) for key, value in sums.items()}


def _collate(batch: Batch) -> Batch:
    return list(batch)


def _batches(dataset: DrawDataset, start: int, batch_size: int, workers: int) -> Iterator[Batch]:
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=range(start * batch_size, len(dataset)),
        num_workers=workers,
        collate_fn=_collate,
        persistent_workers=False,
    )
    return iter(loader)


def _state_on_cpu(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


MONITOR_IMAGES = 8  # training images scored along the way when there is no validation split


@torch.no_grad()
def score_items(
    model: nn.Module,
    cfg: SegmenterConfig,
    device: torch.device,
    dtype: torch.dtype | None,
    items: Sequence[TrainItem],
) -> float:
    """Mean DSB score of the model (single pass, the baseline's post-processing) on ``items``.

    This is the learning curve's measure: the metric the model is judged by, not a loss. The
    model is left in training mode.
    """
    segmenter = Segmenter(model, cfg, device, dtype)
    try:
        scores = [
            image_score(item.labels.astype(np.int32), labels)
            for item in items
            for labels in segmenter.segment([item.image])
        ]
    finally:
        model.train()
    return float(np.mean(scores)) if scores else math.nan


def _calibrate(
    model: nn.Module,
    state: Mapping[str, torch.Tensor],
    cfg: SegmenterConfig,
    device: torch.device,
    dtype: torch.dtype | None,
    items: Sequence[TrainItem],
) -> Calibration:
    """:func:`~.calibration.calibrate` of the selected weights on the validation items."""
    model.load_state_dict(state)
    found = calibrate(
        Segmenter(model, cfg, device, dtype),
        [it.image for it in items],
        [it.labels for it in items],
    )
    log.info(
        "calibrated on %d validation images: box_score_thresh %g, mask_threshold %g "
        "(val score %.4f; configured %g / %g: %.4f)",
        found.n_images,
        found.box_score_thresh,
        found.mask_threshold,
        found.score,
        cfg.model.box_score_thresh,
        cfg.post.mask_threshold,
        found.configured_score,
    )
    return found


def train_segmenter(
    train_dirs: Sequence[PathLike],
    out_model: PathLike,
    cfg: SegmenterConfig,
    checkpoint: PathLike | None = None,
    history_tsv: PathLike | None = None,
    arm: str = "none",
    assignments_csv: PathLike | None = None,
    style_dirs: Sequence[PathLike] = (),
    style_manifests: Sequence[PathLike] = (),
    input_clahe: ClaheConfig | None = None,
) -> Path:
    """Train one segmenter and write its model file.

    Every arm trains the same number of iterations with the same schedule: epochs count the
    original images only. Every ``val_every`` iterations the validation images (or, without a
    validation split, the first :data:`MONITOR_IMAGES` training images) are segmented and
    scored with the DSB metric; the history gets ``val_score`` (or ``train_score``), the
    ``score_ceiling`` (a perfect network's output on those images, pasted and post-processed:
    no model can score above it), ``wall_s`` and ``cpu_s`` (seconds of training so far, wall
    clock and this process's CPU time).

    Args:
        train_dirs: BBBC038-layout folders with masks (the original training set); ImageIds
            must be distinct.
        out_model: The model file (weights + configuration), written atomically; load it with
            :func:`nucleistyle.segment.modelfile.load_segmenter`.
        cfg: The configuration (:func:`~.configs.get_config`).
        checkpoint: Checkpoint file: resumed from when it exists (its configuration and data
            must match, except the budget and run settings), rewritten every
            ``cfg.checkpoint_every`` iterations and at the end.
        history_tsv: Where to write the loss history (iteration, smoothed losses, lr,
            sec_per_it, and val_* columns on validation rows).
        arm: ``none``, ``style`` (restyled copies shown with probability
            ``cfg.augment.style_p``), ``jitter`` (strong colour jitter) or ``oversample``
            (clusters of ``assignments_csv`` drawn equally often).
        assignments_csv: Cluster table (ImageId, cluster): needed for ``oversample``; if given,
            the validation split is stratified by cluster.
        style_dirs: Arm ``style``: folders of restyled copies (:mod:`nucleistyle.gan.augment`).
        style_manifests: Their manifests (which original each copy restyles); copies of
            validation images are left out.
        input_clahe: The CLAHE the training images went through (``segment.inputs:
            enhanced``; select ``dark``, ``all`` or ``none``), recorded in the model file so that
            prediction enhances new images by the same rule. None: the images are as they come.

    With ``cfg.calibrate`` the selected weights then choose their detection and mask
    thresholds on the validation images (:func:`~.calibration.calibrate`); the model file records
    the choice and the whole grid (``calibration``), and loading it applies them.

    Returns:
        ``out_model`` as a Path.

    Raises:
        NucleistyleError: bad training data (an image without masks, a mask of the wrong size,
            an empty set: each naming the file), a checkpoint from another configuration
            (naming the file and key), unavailable pretrained weights.
        TrainingDiverged: a non-finite loss.
    """
    check_arm(arm, assignments_csv, len(style_dirs))
    if input_clahe is not None and input_clahe.select == "clusters":
        raise NucleistyleError(
            "segment.inputs: enhanced needs clahe.select dark, all or none "
            "(a trained segmenter cannot tell a new image's cluster)"
        )
    if arm != "style" and style_dirs:
        raise NucleistyleError(f"restyled folders given for arm {arm}: only arm style uses them")
    if len(style_manifests) != len(style_dirs):
        raise NucleistyleError(
            f"{len(style_dirs)} restyled folders and {len(style_manifests)} manifests given: "
            "each folder needs its manifest"
        )
    device = select_device(cfg.device, "segment.device")
    keep_freed_memory()  # no page faults for the same activations every step
    dtype = resolve_precision(cfg.precision, device, "segment.precision")
    environment = log_environment(device, dtype, cfg.seed)
    items = load_items(list_training_records(train_dirs), cfg.prep.fill_holes)
    clusters = read_assignments(assignments_csv) if assignments_csv is not None else None
    train_idx, val_idx = split_validation(items, cfg.val_fraction, cfg.split_seed, clusters)
    train_items = [items[i] for i in train_idx]
    val_items = [items[i] for i in val_idx]
    copies: list[str] = []
    if style_dirs:
        train_items, n_copies = attach_variants(
            train_items, style_dirs, style_manifests, [it.image_id for it in val_items]
        )
        copies = [f"{it.image_id}:{len(it.variants)}" for it in train_items if it.variants]
        log.info(
            "arm style: %d restyled copies of %d training images, each draw restyled with "
            "p = %.2f (copies of the %d validation images left out)",
            n_copies,
            len(copies),
            cfg.augment.style_p,
            len(val_items),
        )
    monitor = val_items or sorted(train_items, key=lambda it: it.image_id)[:MONITOR_IMAGES]
    score_key = "val_score" if val_items else "train_score"
    ceiling = ceiling_score([it.labels for it in monitor], cfg)
    log.info("post-processing ceiling on the %d monitored images: %.4f", len(monitor), ceiling)
    weights = None
    if arm == "oversample":
        assert clusters is not None and assignments_csv is not None
        weights = cluster_weights([it.image_id for it in train_items], clusters, assignments_csv)
    total = cfg.total_iterations(len(train_items))
    log.info("%s, arm %s", training_config_summary(cfg, len(train_items), len(val_items)), arm)
    expected = fingerprint(
        cfg, arm, [it.image_id for it in train_items], [it.image_id for it in val_items]
    )
    expected["data.restyled"] = images_digest(copies)

    seed_everything(cfg.seed)
    resume = checkpoint is not None and Path(checkpoint).exists()
    model = build_model(cfg, pretrained=not resume).to(device)
    optimizer = make_optimizer(model, cfg)
    start, history, best, clock = 0, LossHistory(), None, {"wall_s": 0.0, "cpu_s": 0.0}
    if resume:
        assert checkpoint is not None
        state = load_checkpoint(checkpoint, expected, ignore=RESUME_IGNORES)
        start = int(state["iteration"])
        if start > total:
            raise NucleistyleError(
                f"checkpoint {checkpoint} is at iteration {start}, beyond the budget of {total} "
                "iterations (raise segment.iterations / epochs or delete the checkpoint)"
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        history = LossHistory(state["history"])
        best = state.get("best")
        clock = dict(state.get("clock", clock))
        log.info("resumed from %s at iteration %d of %d", checkpoint, start, total)

    dataset = DrawDataset(
        train_items,
        training_pipeline(cfg, arm),
        total * cfg.batch_size,
        cfg.seed,
        cfg.prep.max_instances,
        weights,
        cfg.augment.style_p if arm == "style" else 0.0,
    )
    batches = _batches(dataset, start, cfg.batch_size, cfg.workers)
    val_samples = validation_samples(val_items, eval_pipeline(cfg), cfg.prep.max_instances)
    val_every = cfg.val_every or cfg.epoch_iterations(len(train_items))
    last_phase = cfg.optim.phase_start(total)
    metrics = MetricLogger(window=cfg.log_every)  # history rows: means over log_every iterations
    if resume:  # last, after everything that draws from the global generators (DataLoader)
        set_rng_state(state["rng"])

    def save(iteration: int) -> None:
        if checkpoint is None:
            return
        save_checkpoint(
            checkpoint,
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "iteration": iteration,
                "config": expected,
                "history": history.state(),
                "rng": get_rng_state(),
                "best": best,
                "clock": clock,
            },
        )
        log.info("checkpoint %s at iteration %d", checkpoint, iteration)

    run = TrainingRun(
        model, optimizer, batches, device, dtype, cfg, total, history, metrics, checkpoint
    )
    iteration = start
    wall, cpu = time.perf_counter(), time.process_time()
    while iteration < total:
        stop = min(
            total,
            (iteration // cfg.checkpoint_every + 1) * cfg.checkpoint_every,
            (iteration // val_every + 1) * val_every,
        )
        train_iterations(run, iteration, stop)
        iteration = stop
        now_wall, now_cpu = time.perf_counter(), time.process_time()
        clock["wall_s"] += now_wall - wall
        clock["cpu_s"] += now_cpu - cpu
        if iteration % val_every == 0 or iteration == total:
            scores = (
                evaluate(model, val_samples, device, dtype, cfg.batch_size) if val_samples else {}
            )
            scores[score_key] = score_items(model, cfg, device, dtype, monitor)
            scores["score_ceiling"] = ceiling
            history.append(iteration, {**scores, **clock})
            log.info(
                "iteration %d: %s %.4f%s",
                iteration,
                score_key,
                scores[score_key],
                f", val_loss {scores['val_loss']:.4f}" if val_samples else "",
            )
            if (
                cfg.selection == "best_val"
                and iteration > last_phase
                and math.isfinite(scores["val_loss"])
                and (best is None or scores["val_loss"] < best["val_loss"])
            ):
                best = {
                    "iteration": iteration,
                    "val_loss": scores["val_loss"],
                    "model": _state_on_cpu(model),
                }
        if iteration % cfg.checkpoint_every == 0 or iteration == total:
            save(iteration)
        wall, cpu = time.perf_counter(), time.process_time()  # scoring and saving not counted

    selected = total
    final_state = _state_on_cpu(model)
    if cfg.selection == "best_val":
        if best is None:
            log.warning("no validation in the last LR phase: keeping the last weights")
        else:
            selected, final_state = int(best["iteration"]), copy.copy(best["model"])
            log.info("selected iteration %d (val_loss %.4f)", selected, best["val_loss"])
    calibration = None
    if cfg.calibrate:
        calibration = _calibrate(model, final_state, cfg, device, dtype, val_items)
        history.append(selected, {"val_score_calibrated": calibration.score})
    save_checkpoint(
        out_model,
        {
            "format": MODEL_FORMAT,
            "model": final_state,
            "config": flatten(cfg),
            "arm": arm,
            "input_clahe": None if input_clahe is None else asdict(input_clahe),
            "calibration": None if calibration is None else asdict(calibration),
            "iterations": total,
            "selected_iteration": selected,
            "train_images": [it.image_id for it in train_items],
            "val_images": [it.image_id for it in val_items],
            "restyled_copies": sum(len(it.variants) for it in train_items),
            "environment": {k: str(v) for k, v in environment.items()},
        },
    )
    if history_tsv is not None:
        history.write_tsv(history_tsv)
    log.info("wrote %s", out_model)
    return Path(out_model)
