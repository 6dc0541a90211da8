"""The two Mask R-CNN baselines as configuration: Deep Retina and Mirzaev.

Every default below is a setting of one of the two public solutions, cited by name (Deep Retina:
github.com/Lopezurrutia/DSB_2018; Mirzaev: github.com/mirzaevinom/data_science_bowl_2018), a
torchvision convention, or a stated substitution for this re-implementation; docs/baselines.md
tabulates them and explains each deviation. :func:`get_config` starts from a baseline's defaults
and applies the overrides of the config file (``segment.common``, then ``segment.<baseline>``).

Example:
    >>> cfg = get_config("deep_retina", {"backbone": "resnet18", "weights": "none", "epochs": 2})
    >>> cfg.model.box_score_thresh, cfg.post.dilation, cfg.total_iterations(100)
    (0.9, 0, 100)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from nucleistyle.errors import NucleistyleError
from nucleistyle.schema import check

__all__ = [
    "ARMS",
    "BACKBONES",
    "BASELINES",
    "RESUME_IGNORES",
    "AugmentConfig",
    "ModelConfig",
    "OptimConfig",
    "PostConfig",
    "PrepConfig",
    "SegmenterConfig",
    "config_from_fingerprint",
    "flatten",
    "get_config",
    "merge_overrides",
]

BASELINES = ("deep_retina", "mirzaev")
BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101")
ARMS = ("none", "style", "jitter", "oversample")

_SECTIONS = ("model", "prep", "augment", "optim", "post")

# Keys that may change between a checkpoint and its resumption: the budget and where/how the
# run executes, not what is learnt.
RESUME_IGNORES = (
    "iterations",
    "epochs",
    "device",
    "precision",
    "checkpoint_every",
    "log_every",
    "workers",
    "val_every",
    "calibrate",
)


def _fail(key: str, rule: str, value: Any) -> NucleistyleError:
    return NucleistyleError(f"config key segment.{key} must be {rule}, got {value!r}")


def _check(config: Any, section: str = "") -> None:
    """The schema's rules for every field of one section (``$defs/segmenter`` in the schema)."""
    pointer = "#/$defs/segmenter" + (f"/properties/{section}" if section else "")
    key = "segment" + (f".{section}" if section else "")
    check(config, pointer, key, skip=("baseline", "seed", *_SECTIONS) if not section else ())


@dataclass(frozen=True)
class ModelConfig:
    """Mask R-CNN hyper-parameters (torchvision ``MaskRCNN`` arguments).

    Attributes:
        trainable_layers: Backbone stages trained (5 = all, Matterport ``layers="all"``, Deep Retina
            and Mirzaev); only matters with pretrained weights (from scratch everything trains).
        anchor_sizes: One square anchor side (px) per pyramid level P2..P6 (both solutions:
            8-128).
        aspect_ratios: Anchor aspect ratios at every level (Deep Retina: 0.5, 1, 2).
        rpn_batch_size_per_image: Anchors sampled per image for the RPN loss (Deep Retina: 256,
            Mirzaev: 320).
        rpn_pre_nms_top_n_train: Proposals kept per pyramid level before NMS, training
            (Matterport's 6000 is over all levels; torchvision suggests ~2000 per level).
        rpn_pre_nms_top_n_test: The same at inference.
        rpn_post_nms_top_n_train: Proposals kept after NMS, training (Deep Retina: 2000,
            Mirzaev: 2048).
        rpn_post_nms_top_n_test: The same at inference (Deep Retina: 1000, Mirzaev: 2048).
        rpn_nms_thresh: RPN NMS IoU (Deep Retina, Mirzaev: 0.7).
        box_batch_size_per_image: ROIs sampled per image for the heads (TRAIN_ROIS_PER_IMAGE,
            Deep Retina: 600, Mirzaev: 512).
        box_positive_fraction: Positive share of those ROIs (ROI_POSITIVE_RATIO 0.33).
        box_score_thresh: Minimum detection score (Deep Retina: 0.9, Mirzaev: 0.75).
        box_nms_thresh: Detection NMS IoU (Deep Retina: 0.2, Mirzaev: 0.3).
        box_detections_per_img: Maximum detections per image (Deep Retina: 512, Mirzaev: 400).
        image_mean: Per-channel mean subtracted from [0, 1] RGB. torchvision's ImageNet values
            (keep them with torchvision weights; Matterport subtracted its mean pixel only).
        image_std: Per-channel divisor after the mean (ImageNet values, see ``image_mean``).
        fpn_channels: Width of the FPN and of the mask head's convolutions
            (TOP_DOWN_PYRAMID_SIZE 256, Deep Retina; a narrower one is a cheap CPU-demo model: the
            heads, not the backbone, dominate the cost on small images).
        representation_size: Width of the box head's two fully connected layers (1024, torchvision).
        head_norm: Batch norm after each layer of the box head (2 x 1024 fully connected) and
            the mask head (4 convolutions), as in Matterport's heads. Off by default:
            torchvision's v1 heads have none, and COCO weights (which cover these heads) would
            meet untrained normalisation layers, so it is refused with ``weights: coco``. From
            scratch it can speed up convergence (the CPU configs' choice is measured).
    """

    trainable_layers: int = 5
    anchor_sizes: tuple[int, ...] = (8, 16, 32, 64, 128)
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    rpn_batch_size_per_image: int = 256
    rpn_pre_nms_top_n_train: int = 2000
    rpn_pre_nms_top_n_test: int = 2000
    rpn_post_nms_top_n_train: int = 2000
    rpn_post_nms_top_n_test: int = 1000
    rpn_nms_thresh: float = 0.7
    box_batch_size_per_image: int = 600
    box_positive_fraction: float = 0.33
    box_score_thresh: float = 0.9
    box_nms_thresh: float = 0.2
    box_detections_per_img: int = 512
    image_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    image_std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    fpn_channels: int = 256
    representation_size: int = 1024
    head_norm: bool = False

    def __post_init__(self) -> None:
        _check(self, "model")


@dataclass(frozen=True)
class PrepConfig:
    """How images are sized for the network (training and inference).

    Attributes:
        policy: ``"zoom_crop"`` (Deep Retina: random zoom so the short side is >=
            ``size``, random ``size`` x ``size`` crop; inference at native size, upscaled only
            when the short side is < ``size``) or ``"fit_longest"`` (Mirzaev: longest side
            resized to ``size`` at training and inference, zero padded to ``size`` x ``size``).
        size: The side length above (px; both solutions 512).
        pad_multiple: zoom_crop inference pads H and W to a multiple of this (Deep Retina: pad64);
            fit_longest pads to ``size`` instead.
        min_enlarge: zoom_crop: upper zoom bound is ``max(min_enlarge, s_min * zoom)`` with
            ``s_min = size / short side`` (Deep Retina: 1.2).
        zoom: zoom_crop: see ``min_enlarge`` (Deep Retina: 1.5).
        aspect: zoom_crop: the width (p = 0.5) or else the height scale is multiplied by
            U(1, aspect) (Deep Retina: 1.3).
        crop: fit_longest: random crop side before the resize (Mirzaev: 256, p = 0.5).
        crop_p: fit_longest: probability of that crop (Mirzaev: 0.5).
        fill_holes: Fill holes of every training mask (Mirzaev yes, Deep Retina no).
        max_instances: At most this many instances per training sample, randomly subsampled
            (MAX_GT_INSTANCES, Deep Retina and Mirzaev: 256).
    """

    policy: str = "zoom_crop"
    size: int = 512
    pad_multiple: int = 64
    min_enlarge: float = 1.2
    zoom: float = 1.5
    aspect: float = 1.3
    crop: int = 256
    crop_p: float = 0.5
    fill_holes: bool = False
    max_instances: int = 256

    def __post_init__(self) -> None:
        _check(self, "prep")


@dataclass(frozen=True)
class AugmentConfig:
    """Training augmentation; probabilities per sample, angles in degrees.

    Attributes:
        hflip: Probability of a horizontal flip (Deep Retina, Mirzaev: 0.5).
        vflip: Probability of a vertical flip (Deep Retina, Mirzaev: 0.5).
        rot90: ``"any"`` (k uniform in 0..3, Deep Retina), ``"pm1"`` (p = 0.5, k = +-1, Mirzaev) or
            ``"none"``.
        rotate_p: Probability of a free rotation, nearest-neighbour, zero corners (Deep Retina:
            0.5).
        rotate_deg: Its angle range +-deg (Deep Retina: 10).
        channel_shift: Each RGB channel + U(-v, v) on the 0-255 scale, clipped to the image's
            range, every sample (Deep Retina: 15; Mirzaev none).
        affine_p: Probability of a scale + rotation warp about the centre with reflected
            borders, relabelled by connected components (Mirzaev: 0.5; Deep Retina none).
        affine_scale: Its isotropic scale range (Mirzaev: 0.5-2).
        affine_deg: Its angle range +-deg (Mirzaev: 15).
        style_p: Arm ``style`` only: probability that a draw shows one of the image's
            GAN-restyled copies instead of the original (the paper restyles half of the
            training images: 0.5).
        jitter_p: Arm ``jitter`` only: probability of a strong colour jitter, the share of
            images the GAN restyles (seed paper §2.3: half of the training images).
        jitter_hue: Hue shift U(-v, v) in turns (0.5 = any hue).
        jitter_saturation: Saturation factor range; grey images get an added saturation
            U(0, ``jitter_tint``) first so that they can become coloured.
        jitter_tint: See ``jitter_saturation``.
        jitter_value: Brightness (HSV value) factor range.
        jitter_invert: Probability (given a jitter) of inverting the intensities, which turns
            dark-field fluorescence into bright-field-like images and back.
    """

    hflip: float = 0.5
    vflip: float = 0.5
    rot90: str = "any"
    rotate_p: float = 0.5
    rotate_deg: float = 10.0
    channel_shift: float = 15.0
    affine_p: float = 0.0
    affine_scale: tuple[float, float] = (0.5, 2.0)
    affine_deg: float = 15.0
    style_p: float = 0.5
    jitter_p: float = 0.5
    jitter_hue: float = 0.5
    jitter_saturation: tuple[float, float] = (0.5, 1.5)
    jitter_tint: float = 0.4
    jitter_value: tuple[float, float] = (0.6, 1.4)
    jitter_invert: float = 0.5

    def __post_init__(self) -> None:
        _check(self, "augment")
        for name in ("affine_scale", "jitter_saturation", "jitter_value"):
            low, high = getattr(self, name)
            if low > high:
                raise _fail(f"augment.{name}", "a pair [lo, hi] with lo <= hi", getattr(self, name))


@dataclass(frozen=True)
class OptimConfig:
    """Optimiser and learning-rate schedule.

    The schedule is piecewise constant: ``lr * lr_factors[k]`` after the k-th milestone, where
    milestones are fractions of the total iterations, so it scales with the budget the user sets
    (iterations or epochs).

    Attributes:
        optimizer: ``"sgd"`` (Deep Retina: momentum 0.9) or ``"adam"`` (Mirzaev: amsgrad).
        lr: Base learning rate (Deep Retina: 1e-3, Mirzaev: 1e-4).
        momentum: SGD momentum (Deep Retina: 0.9).
        amsgrad: Adam's AMSGrad variant (Mirzaev: yes).
        weight_decay: L2 penalty; 1e-4 (Matterport's form is far weaker; 1e-4 is torchvision's
            usual choice).
        grad_clip: Gradient norm clipped per parameter tensor (Keras clipnorm 5, both solutions);
            0 disables.
        milestones: Fractions of the total where the LR drops (Deep Retina: epochs 30 and 50 of
            75; Mirzaev: 25 and 50 of 75).
        lr_factors: LR multipliers before, between and after the milestones (Deep Retina: 1, 0.1,
            1/30; Mirzaev: 1, 0.1, 0.01).
        warmup_iters: Linear warm-up from ``lr / 1000`` over this many iterations (torchvision
            references; none in either solution, useful from scratch).
    """

    optimizer: str = "sgd"
    lr: float = 1e-3
    momentum: float = 0.9
    amsgrad: bool = False
    weight_decay: float = 1e-4
    grad_clip: float = 5.0
    milestones: tuple[float, ...] = (30 / 75, 50 / 75)
    lr_factors: tuple[float, ...] = (1.0, 0.1, 1 / 30)
    warmup_iters: int = 0

    def __post_init__(self) -> None:
        _check(self, "optim")
        if list(self.milestones) != sorted(self.milestones):
            raise _fail("optim.milestones", "increasing fractions in (0, 1)", self.milestones)
        if len(self.lr_factors) != len(self.milestones) + 1:
            raise _fail(
                "optim.lr_factors",
                "one positive factor more than there are milestones",
                self.lr_factors,
            )

    def lr_at(self, iteration: int, total: int) -> float:
        """The learning rate of 0-based ``iteration`` out of ``total``."""
        phase = sum(iteration >= m * total for m in self.milestones)
        lr = self.lr * self.lr_factors[phase]
        if iteration < self.warmup_iters:
            alpha = iteration / self.warmup_iters
            lr *= 1e-3 * (1 - alpha) + alpha
        return lr

    def phase_start(self, total: int) -> int:
        """First iteration of the last LR phase."""
        return math.ceil(self.milestones[-1] * total) if self.milestones else 0


@dataclass(frozen=True)
class PostConfig:
    """Post-processing of detections into a label image (see :mod:`.postprocess`).

    Steps, per instance in descending score order: binarise at ``mask_threshold``; drop if
    <= ``min_area`` px; fill holes; closing; dilation; remove pixels taken by better instances;
    drop if more than ``max_lost`` of the area was taken, or (``drop_fragmented``) if what is
    left is in several 8-connected pieces; drop if <= ``min_area`` px.

    Attributes:
        mask_threshold: Mask probability threshold. 0.5 for both: Mirzaev's 0.35 was tuned for
            Matterport's 28 x 28 mask geometry; on torchvision's masks it scored a trained model
            0.201 against 0.349 at 0.5 (docs/baselines.md).
        min_area: Instances of at most this many px are dropped (Mirzaev: 10; Deep Retina: none,
            0).
        fill_holes: Fill holes of each mask (Mirzaev yes).
        closing: Binary closing with a 3x3 cross (Mirzaev yes).
        dilation: Binary dilations with a 3x3 cross. 0 for both: Deep Retina dilated
            Matterport's masks by 1 px because they came out too small; torchvision's are
            already at least as large as the ground truth, and the dilation capped the ground
            truth itself at 0.573 (docs/baselines.md).
        max_lost: Drop an instance that lost more than this share of its area to better ones
            (Deep Retina: 0.7; 1.0 never).
        drop_fragmented: Drop an instance left in several pieces (Mirzaev yes).
        fallback_canvas: If the prediction has fewer than 2 foreground px, predict again with
            the image pasted into a canvas this many times larger and crop back (Mirzaev: 4;
            0 = off).
    """

    mask_threshold: float = 0.5
    min_area: int = 0
    fill_holes: bool = False
    closing: bool = False
    dilation: int = 0
    max_lost: float = 0.7
    drop_fragmented: bool = False
    fallback_canvas: int = 0

    def __post_init__(self) -> None:
        _check(self, "post")


@dataclass(frozen=True)
class SegmenterConfig:
    """Everything that defines a trained segmenter (stored in its checkpoints and model file).

    Attributes:
        baseline: ``"deep_retina"`` or ``"mirzaev"``.
        backbone: ``resnet18`` / ``resnet34`` (CPU demo), ``resnet50`` (default: the closest
            torchvision model with COCO weights) or ``resnet101`` (both originals,
            Deep Retina and Mirzaev), each with an FPN.
        weights: The start: ``"coco"`` (torchvision's COCO Mask R-CNN without its
            class-specific layers; Deep Retina started from Matterport's COCO Mask R-CNN),
            ``"imagenet"`` (torchvision's ImageNet ResNet as the backbone, the rest random;
            Mirzaev started from ImageNet ResNet-50 weights), ``"none"`` (from scratch) or the
            path of a local weights file (a torchvision detection or ResNet state dict, or a
            segmenter model file). COCO weights exist for ResNet-50 only
            (:data:`~.weights.RELEASED`).
        iterations: Training iterations (batches); exclusive with ``epochs``.
        epochs: Training length in passes over the training images (an epoch is
            ceil(images / batch_size) iterations, Deep Retina and Mirzaev); both solutions ran 75
            (Deep Retina, Mirzaev).
        batch_size: Images per iteration (Deep Retina, Mirzaev: 2).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        precision: ``auto`` (bf16 autocast on CUDA and bf16-capable CPUs), ``fp32``, ``bf16``.
        checkpoint_every: Iterations between checkpoints.
        log_every: Iterations between progress lines and history rows.
        seed: Seed of the weights, the sampling order and every augmentation.
        workers: DataLoader worker processes preparing samples (0 = in the training process).
        val_fraction: Share of the (first) training folder held out for validation, stratified
            by image type (Mirzaev: 0.1; Deep Retina: 0, no split).
        val_every: Iterations between validation losses (None: once per epoch).
        split_seed: Seed of the validation split (Mirzaev: 11).
        selection: Which weights become the model: ``"last"`` (Deep Retina) or ``"best_val"``, the
            lowest validation loss within the last LR phase (Mirzaev: best-val checkpoint of the
            last ``train()`` call).
        calibrate: After training, choose ``model.box_score_thresh`` and
            ``post.mask_threshold`` on the validation split: the pair of
            :data:`~.calibration.CALIBRATION_GRID` (and the configured pair) with the highest mean
            DSB score there, recorded in the model file and used by every prediction
            (:func:`~.calibration.calibrate`). Needs ``val_fraction`` > 0.
        model: See :class:`ModelConfig`.
        prep: See :class:`PrepConfig`.
        augment: See :class:`AugmentConfig`.
        optim: See :class:`OptimConfig`.
        post: See :class:`PostConfig`.
    """

    baseline: str = "deep_retina"
    backbone: str = "resnet50"
    weights: str = "coco"
    iterations: int | None = None
    epochs: float | None = 75
    batch_size: int = 2
    device: str = "auto"
    precision: str = "auto"
    checkpoint_every: int = 100
    log_every: int = 20
    seed: int = 0
    workers: int = 0
    val_fraction: float = 0.0
    val_every: int | None = None
    split_seed: int = 11
    selection: str = "last"
    calibrate: bool = False
    model: ModelConfig = field(default_factory=ModelConfig)
    prep: PrepConfig = field(default_factory=PrepConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    post: PostConfig = field(default_factory=PostConfig)

    def __post_init__(self) -> None:
        if self.baseline not in BASELINES:
            raise _fail("baseline", f"one of {BASELINES}", self.baseline)
        check(self.seed, "#/properties/seed", "seed")
        _check(self)
        if (self.iterations is None) == (self.epochs is None):
            raise NucleistyleError(
                "config keys segment.iterations and segment.epochs: set exactly one, got "
                f"iterations={self.iterations!r}, epochs={self.epochs!r}"
            )
        from nucleistyle.segment.weights import released_file  # no torch: cheap

        released_file(self.weights, self.backbone)  # a start torchvision publishes
        if self.model.head_norm and self.weights == "coco":
            raise _fail(
                "model.head_norm",
                "false with weights coco (the COCO box and mask heads have no batch norm)",
                self.model.head_norm,
            )
        if self.selection == "best_val" and self.val_fraction == 0:
            raise _fail("selection", "last when val_fraction is 0", self.selection)
        if self.calibrate and self.val_fraction == 0:
            raise _fail("calibrate", "false when val_fraction is 0", self.calibrate)

    def total_iterations(self, n_train: int) -> int:
        """The iteration budget for ``n_train`` training images."""
        if self.iterations is not None:
            return self.iterations
        assert self.epochs is not None
        return max(1, math.ceil(self.epochs * math.ceil(n_train / self.batch_size)))

    def epoch_iterations(self, n_train: int) -> int:
        """Iterations per epoch (one pass over ``n_train`` images)."""
        return max(1, math.ceil(n_train / self.batch_size))


# Baseline defaults that differ from the dataclass defaults (which are Deep Retina's).
_MIRZAEV: dict[str, Any] = {
    "weights": "imagenet",  # Mirzaev: ImageNet ResNet-50 weights, no COCO
    "val_fraction": 0.1,  # Mirzaev: 90/10 split stratified by modality, seed 11
    "selection": "best_val",  # Mirzaev: best val loss, last phase
    "model": {
        "rpn_batch_size_per_image": 320,  # Mirzaev
        "rpn_post_nms_top_n_train": 2048,  # Mirzaev
        "rpn_post_nms_top_n_test": 2048,  # Mirzaev
        "box_batch_size_per_image": 512,  # Mirzaev
        "box_score_thresh": 0.75,  # Mirzaev
        "box_nms_thresh": 0.3,  # Mirzaev
        "box_detections_per_img": 400,  # Mirzaev
    },
    "prep": {"policy": "fit_longest", "fill_holes": True},  # Mirzaev
    "augment": {
        "rot90": "pm1",  # Mirzaev
        "rotate_p": 0.0,  # no free rotation besides the affine warp (Mirzaev)
        "channel_shift": 0.0,  # Mirzaev: no colour augmentation
        "affine_p": 0.5,  # Mirzaev
    },
    "optim": {
        "optimizer": "adam",  # Mirzaev: Adam, amsgrad, clipnorm 5
        "amsgrad": True,
        "lr": 1e-4,
        "milestones": (25 / 75, 50 / 75),  # Mirzaev: 1e-4 / 1e-5 / 1e-6 for 25 epochs each
        "lr_factors": (1.0, 0.1, 0.01),
    },
    "post": {  # Mirzaev
        "min_area": 10,
        "fill_holes": True,
        "closing": True,
        "max_lost": 1.0,
        "drop_fragmented": True,
        "fallback_canvas": 4,
    },
}
_DEFAULTS: dict[str, dict[str, Any]] = {"deep_retina": {}, "mirzaev": _MIRZAEV}


_SECTION_CLASSES = {
    "model": ModelConfig,
    "prep": PrepConfig,
    "augment": AugmentConfig,
    "optim": OptimConfig,
    "post": PostConfig,
}


def _tuples(value: Any) -> Any:
    """YAML lists become tuples (the dataclasses are frozen and hashable)."""
    return tuple(_tuples(v) for v in value) if isinstance(value, list | tuple) else value


def _build_section(name: str, values: Mapping[str, Any]) -> Any:
    cls = _SECTION_CLASSES[name]
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise NucleistyleError(
            f"unknown config key segment.{name}.{unknown[0]} (known: {', '.join(sorted(known))})"
        )
    return cls(**{k: _tuples(v) for k, v in values.items()})


def merge_overrides(*layers: Mapping[str, Any] | None) -> dict[str, Any]:
    """Merge config layers left to right (``segment.common``, then ``segment.<baseline>``);
    the sections (``model``, ``prep``, ...) are merged key by key, not replaced."""
    out: dict[str, Any] = {}
    for layer in layers:
        for key, value in dict(layer or {}).items():
            if key in _SECTIONS and isinstance(value, Mapping):
                out[key] = {**out.get(key, {}), **value}
            else:
                out[key] = value
    return out


def get_config(baseline: str, overrides: Mapping[str, Any] | None = None) -> SegmenterConfig:
    """The configuration of ``baseline`` with the config file's ``overrides`` applied.

    Args:
        baseline: ``"deep_retina"`` or ``"mirzaev"``.
        overrides: Top-level fields of :class:`SegmenterConfig` (``backbone``, ``weights``,
            ``iterations``, ``epochs``, ``batch_size``, ...) and, under the keys ``model``,
            ``prep``, ``augment``, ``optim`` and ``post``, mappings of section fields. Setting
            ``iterations`` clears the default ``epochs`` and vice versa; a key set to None
            keeps the default.

    Returns:
        The frozen configuration.

    Raises:
        NucleistyleError: unknown baseline or key, or an invalid value (the message names
            the key as ``segment.<section>.<field>``).

    Example:
        >>> get_config("mirzaev", {"optim": {"lr": 3e-4}, "epochs": 10}).optim.lr
        0.0003
    """
    if baseline not in BASELINES:
        raise NucleistyleError(f"unknown segmentation baseline {baseline!r} (known: {BASELINES})")
    overrides = {k: v for k, v in dict(overrides or {}).items() if v is not None}
    top_known = {f.name for f in dataclasses.fields(SegmenterConfig)} - {"baseline"}
    unknown = sorted(set(overrides) - top_known)
    if unknown:
        raise NucleistyleError(
            f"unknown config key segment.{unknown[0]} (known: {', '.join(sorted(top_known))})"
        )
    defaults = _DEFAULTS[baseline]
    values: dict[str, Any] = {"baseline": baseline}
    for key in top_known - set(_SECTIONS):
        if key in overrides:
            values[key] = _tuples(overrides[key])
        elif key in defaults:
            values[key] = defaults[key]
    if "iterations" in overrides and "epochs" not in overrides:
        values["epochs"] = None
    for name in _SECTIONS:
        section = overrides.get(name, {})
        if not isinstance(section, Mapping):
            raise _fail(name, "a mapping of fields", section)
        values[name] = _build_section(name, {**defaults.get(name, {}), **section})
    return SegmenterConfig(**values)


def config_from_fingerprint(data: Mapping[str, Any]) -> SegmenterConfig:
    """Rebuild a :class:`SegmenterConfig` from what ``engine.fingerprint`` stored.

    Raises:
        NucleistyleError: a key this version does not know (a model from another version).
    """
    top: dict[str, Any] = {}
    sections: dict[str, dict[str, Any]] = {name: {} for name in _SECTIONS}
    for key, value in data.items():
        section, _, name = key.rpartition(".")
        if section:
            if section not in sections:
                raise NucleistyleError(f"unknown stored config key segment.{key}")
            sections[section][name] = value
        else:
            top[key] = value
    known = {f.name for f in dataclasses.fields(SegmenterConfig)} - set(_SECTIONS)
    unknown = sorted(set(top) - known)
    if unknown:
        raise NucleistyleError(f"unknown stored config key segment.{unknown[0]}")
    built = {name: _build_section(name, values) for name, values in sections.items()}
    return SegmenterConfig(**{k: _tuples(v) for k, v in top.items()}, **built)


def flatten(cfg: SegmenterConfig) -> dict[str, Any]:
    """``{"baseline": ..., "model.box_score_thresh": ..., ...}`` with lists for tuples."""

    def plain(value: Any) -> Any:
        return [plain(v) for v in value] if isinstance(value, tuple | list) else value

    flat: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            for sub in dataclasses.fields(value):
                flat[f"{f.name}.{sub.name}"] = plain(getattr(value, sub.name))
        else:
            flat[f.name] = plain(value)
    return flat
