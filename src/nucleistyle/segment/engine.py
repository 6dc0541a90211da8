"""Training a segmenter, in the style of torchvision's ``references/detection/engine.py``.

:class:`TrainStep` is one iteration: bf16 autocast (when configured), per-tensor gradient
clipping and a per-iteration learning rate; :func:`evaluate` gives the validation losses
(Mirzaev's model selection); :class:`SegmenterTask` adds the validation scores, the best-weights
selection and the model file; :func:`train_segmenter` ties it together on the shared resumable
loop of :mod:`nucleistyle.training` (checkpoints with resume, history, budget).

The learning rate is a pure function of (iteration, total), so no scheduler state is needed;
the total may grow on resume (the schedule's milestones then move with it).

Example:
    >>> cfg = get_config("deep_retina", {"iterations": 300})  # doctest: +SKIP
    >>> train_segmenter(["train"], "model.pt", cfg, checkpoint="ckpt.pt")  # doctest: +SKIP
"""

from __future__ import annotations

import collections
import copy
import logging
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

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
from nucleistyle.torchutils import LossHistory, autocast, check_finite
from nucleistyle.training import Runtime, TrainingPlan, train

__all__ = [
    "SegmenterTask",
    "TrainStep",
    "TrainingData",
    "evaluate",
    "fingerprint",
    "make_optimizer",
    "train_segmenter",
]

log = logging.getLogger(__name__)
Batch = list[tuple[torch.Tensor, dict[str, torch.Tensor]]]


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
class TrainStep:
    """One training iteration of a segmenter: a batch, the learning rate of the iteration, the
    forward pass under autocast, a finite-loss check, backward, clipping and the optimiser step.

    Attributes:
        model, optimizer: What is trained, and how.
        batches: An endless iterator of training batches (CPU tensors).
        device, dtype: Where the model runs; the autocast dtype (None: fp32).
        cfg: The configuration (learning-rate schedule, gradient clipping).
        total: Iterations in the whole run: the length of the learning-rate schedule.
        checkpoint: Named when a loss diverges (the last checkpoint is kept).
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    batches: Iterator[Batch]
    device: torch.device
    dtype: torch.dtype | None
    cfg: SegmenterConfig
    total: int
    checkpoint: PathLike | None = None
    params: list[torch.Tensor] = field(init=False)

    def __post_init__(self) -> None:
        self.params = [p for p in self.model.parameters() if p.requires_grad]

    def __call__(self, iteration: int) -> dict[str, float]:
        """Train iteration ``iteration`` (0-based); returns the total and each loss, and the
        learning rate used.

        Raises:
            TrainingDiverged: a loss became NaN or infinite (nothing is stepped).
        """
        if not self.model.training:
            self.model.train()
        images, targets = _to_device(next(self.batches), self.device)
        lr = self.cfg.optim.lr_at(iteration, self.total)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        with autocast(self.device, self.dtype):
            loss_dict = self.model(images, targets)
        losses = sum(loss_dict.values())
        values = {"loss": float(losses.detach())}
        values.update({k: float(v.detach()) for k, v in loss_dict.items()})
        check_finite(values, iteration + 1, self.checkpoint)
        self.optimizer.zero_grad(set_to_none=True)
        losses.backward()
        if self.cfg.optim.grad_clip > 0:
            _clip_per_tensor(self.params, self.cfg.optim.grad_clip)
        self.optimizer.step()
        return {**values, "lr": lr}


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


@dataclass
class TrainingData:
    """What a segmenter trains on, and what it is scored on along the way.

    Attributes:
        train_items, val_items: The training and validation images (restyled copies attached
            to the training images of the style arm).
        monitor: The images scored along the way: the validation images, or without a
            validation split the first :data:`MONITOR_IMAGES` training images.
        score_key: ``val_score`` or ``train_score``.
        ceiling: A perfect network's score on ``monitor`` (:func:`ceiling_score`).
        weights: Per-image sampling weights (arm ``oversample``), else None.
        fingerprint: What a checkpoint must match to be resumed.
    """

    train_items: list[TrainItem]
    val_items: list[TrainItem]
    monitor: list[TrainItem]
    score_key: str
    ceiling: float
    weights: np.ndarray | None
    fingerprint: dict[str, Any]

    @classmethod
    def load(
        cls,
        cfg: SegmenterConfig,
        arm: str,
        train_dirs: Sequence[PathLike],
        assignments_csv: PathLike | None,
        style_dirs: Sequence[PathLike],
        style_manifests: Sequence[PathLike],
    ) -> TrainingData:
        """Read the training images, split off the validation images (stratified by cluster
        when ``assignments_csv`` is given) and attach the restyled copies (arm ``style``)."""
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
        ceiling = ceiling_score([it.labels for it in monitor], cfg)
        log.info("post-processing ceiling on the %d monitored images: %.4f", len(monitor), ceiling)
        weights = None
        if arm == "oversample":
            assert clusters is not None and assignments_csv is not None
            ids = [it.image_id for it in train_items]
            weights = cluster_weights(ids, clusters, assignments_csv)
        log.info("%s, arm %s", training_config_summary(cfg, len(train_items), len(val_items)), arm)
        expected = fingerprint(
            cfg, arm, [it.image_id for it in train_items], [it.image_id for it in val_items]
        )
        expected["data.restyled"] = images_digest(copies)
        score_key = "val_score" if val_items else "train_score"
        return cls(train_items, val_items, monitor, score_key, ceiling, weights, expected)


class SegmenterTask:
    """A segmenter's training as a :class:`nucleistyle.training.Task`.

    Args:
        cfg: The configuration.
        runtime: Device and precision.
        data: The training data.
        arm: The training arm (its augmentation).
        input_clahe: Recorded in the model file.
        checkpoint: Named in a divergence message.
        state: The checkpoint resumed from (its weights replace the pretrained ones, its
            iteration is where the batches start), or None.
        weights_file: The released file of a pretrained start (None: the torch hub cache's);
            not read when resuming.
    """

    def __init__(
        self,
        cfg: SegmenterConfig,
        runtime: Runtime,
        data: TrainingData,
        arm: str,
        input_clahe: ClaheConfig | None,
        checkpoint: PathLike | None,
        state: Mapping[str, Any] | None,
        weights_file: PathLike | None = None,
    ) -> None:
        self.cfg, self.runtime, self.data, self.arm = cfg, runtime, data, arm
        self.input_clahe = input_clahe
        total = cfg.total_iterations(len(data.train_items))
        model = build_model(cfg, pretrained=state is None, weights_file=weights_file)
        self.model = model.to(runtime.device)
        self.optimizer = make_optimizer(self.model, cfg)
        dataset = DrawDataset(
            data.train_items,
            training_pipeline(cfg, arm),
            total * cfg.batch_size,
            cfg.seed,
            cfg.prep.max_instances,
            data.weights,
            cfg.augment.style_p if arm == "style" else 0.0,
        )
        start = int(state["iteration"]) if state is not None else 0
        batches = _batches(dataset, start, cfg.batch_size, cfg.workers)
        self._step = TrainStep(
            self.model, self.optimizer, batches, runtime.device, runtime.dtype, cfg, total,
            checkpoint,
        )  # fmt: skip
        self.val_samples = validation_samples(
            data.val_items, eval_pipeline(cfg), cfg.prep.max_instances
        )
        self.total = total
        self.last_phase = cfg.optim.phase_start(total)
        self.best: dict[str, Any] | None = None

    def step(self, iteration: int) -> dict[str, float]:
        return self._step(iteration)

    def evaluate(self, iteration: int) -> dict[str, float]:
        """Validation losses (with a validation split), the DSB score of the monitored images
        and the ceiling; keeps the best weights under ``selection: best_val``."""
        cfg, data, device, dtype = self.cfg, self.data, self.runtime.device, self.runtime.dtype
        scores = {}
        if self.val_samples:
            scores = evaluate(self.model, self.val_samples, device, dtype, cfg.batch_size)
        scores[data.score_key] = score_items(self.model, cfg, device, dtype, data.monitor)
        scores["score_ceiling"] = data.ceiling
        log.info(
            "iteration %d: %s %.4f%s",
            iteration,
            data.score_key,
            scores[data.score_key],
            f", val_loss {scores['val_loss']:.4f}" if self.val_samples else "",
        )
        if (
            cfg.selection == "best_val"
            and iteration > self.last_phase
            and math.isfinite(scores["val_loss"])
            and (self.best is None or scores["val_loss"] < self.best["val_loss"])
        ):
            self.best = {
                "iteration": iteration,
                "val_loss": scores["val_loss"],
                "model": _state_on_cpu(self.model),
            }
        return scores

    def state(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "best": self.best,
        }

    def load_state(self, state: Mapping[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.best = state.get("best")

    def model_file(self, iteration: int, history: LossHistory) -> dict[str, Any]:
        """The selected weights (the best validation loss in the last LR phase under
        ``selection: best_val``, else the last), calibrated thresholds (``calibrate``), the
        configuration and what was trained on."""
        cfg, data = self.cfg, self.data
        selected, final_state = iteration, _state_on_cpu(self.model)
        if cfg.selection == "best_val":
            if self.best is None:
                log.warning("no validation in the last LR phase: keeping the last weights")
            else:
                selected, final_state = int(self.best["iteration"]), copy.copy(self.best["model"])
                log.info("selected iteration %d (val_loss %.4f)", selected, self.best["val_loss"])
        calibration = None
        if cfg.calibrate:
            calibration = _calibrate(
                self.model, final_state, cfg, self.runtime.device, self.runtime.dtype,
                data.val_items,
            )  # fmt: skip
            history.append(selected, {"val_score_calibrated": calibration.score})
        return {
            "format": MODEL_FORMAT,
            "model": final_state,
            "config": flatten(cfg),
            "arm": self.arm,
            "input_clahe": None if self.input_clahe is None else asdict(self.input_clahe),
            "calibration": None if calibration is None else asdict(calibration),
            "iterations": self.total,
            "selected_iteration": selected,
            "train_images": [it.image_id for it in data.train_items],
            "val_images": [it.image_id for it in data.val_items],
            "restyled_copies": sum(len(it.variants) for it in data.train_items),
            "environment": {k: str(v) for k, v in self.runtime.environment.items()},
        }


def _check_arguments(
    arm: str,
    assignments_csv: PathLike | None,
    style_dirs: Sequence[PathLike],
    style_manifests: Sequence[PathLike],
    input_clahe: ClaheConfig | None,
) -> None:
    """Refuse arguments that do not go together (before any data is read)."""
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
    weights_file: PathLike | None = None,
) -> Path:
    """Train one segmenter and write its model file.

    Every arm trains the same number of iterations with the same schedule: epochs count the
    original images only. Every ``val_every`` iterations (default: once per epoch) the
    monitored images are segmented and scored (:meth:`SegmenterTask.evaluate`); the history
    gets ``val_score`` (or ``train_score``), the ``score_ceiling`` (no model can score above
    it), and the loop's ``wall_s`` and ``cpu_s``. With ``cfg.calibrate`` the selected weights
    then choose their detection and mask thresholds on the validation images
    (:func:`~.calibration.calibrate`); the model file records the choice and the whole grid.

    Args:
        train_dirs: BBBC038-layout folders with masks (the original training set); ImageIds
            must be distinct.
        out_model: The model file (weights + configuration), written atomically; load it with
            :func:`nucleistyle.segment.modelfile.load_segmenter`.
        cfg: The configuration (:func:`~.configs.get_config`).
        checkpoint: Checkpoint file: resumed from when it exists (its configuration and data
            must match, except the budget and run settings), rewritten every
            ``cfg.checkpoint_every`` iterations and at the end.
        history_tsv: Where to write the history (iteration, averaged losses, lr, sec_per_it,
            and the evaluation rows).
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
        weights_file: The released file of a ``coco`` or ``imagenet`` start (the workflow's
            ``resources/weights/``; None: the torch hub cache's, see
            :func:`~.model.build_model`). Not read when resuming from a checkpoint.

    Returns:
        ``out_model`` as a Path.

    Raises:
        NucleistyleError: bad training data (an image without masks, a mask of the wrong size,
            an empty set: each naming the file), a checkpoint from another configuration
            (naming the file and key), unavailable pretrained weights.
        TrainingDiverged: a non-finite loss.
    """
    _check_arguments(arm, assignments_csv, style_dirs, style_manifests, input_clahe)
    runtime = Runtime.select(cfg.device, cfg.precision, cfg.seed, "segment")
    data = TrainingData.load(cfg, arm, train_dirs, assignments_csv, style_dirs, style_manifests)
    n_train = len(data.train_items)
    plan = TrainingPlan(
        budget=cfg.total_iterations(n_train),
        budget_key="segment.iterations / epochs",
        seed=cfg.seed,
        log_every=cfg.log_every,
        checkpoint_every=cfg.checkpoint_every,
        evaluate_every=cfg.val_every or cfg.epoch_iterations(n_train),
        fingerprint=data.fingerprint,
        checkpoint=checkpoint,
        resume_ignores=RESUME_IGNORES,
        instant=("lr",),
        name="train",
    )

    def build(state: Mapping[str, Any] | None) -> SegmenterTask:
        return SegmenterTask(cfg, runtime, data, arm, input_clahe, checkpoint, state, weights_file)

    return train(plan, build, out_model, history_tsv)
