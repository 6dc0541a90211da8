"""torchvision Mask R-CNN built from a :class:`~.configs.SegmenterConfig` (torchvision).

Two classes (background, nucleus); one anchor size per FPN level (8..128) x 3 aspect ratios;
RPN / ROI sample counts and detection thresholds from the config. Sizing is done by the
baselines' own preparation (:mod:`.transforms`, :mod:`.predict`), so the model's transform only
normalises and pads (:class:`PreparedTransform`): torchvision's default would rescale every
image to 800-1333 px, which is both wrong for these baselines and 3-6x slower on a CPU.

Pretrained weights (``cfg.weights``): ``coco`` (torchvision's ResNet-50 Mask R-CNN without the
class-specific layers, like Deep Retina's COCO start), ``imagenet`` (backbone only, like
Mirzaev), a local file, or ``none``. Every tensor a start provides must arrive: legacy key names
are renamed as torchvision renames them, and loading fails, naming the keys, when any tensor
other than the class-specific ones would stay random (:func:`load_pretrained`). With pretrained
weights the backbone's batch norm is frozen (Matterport TRAIN_BN=False); from scratch it is
trainable, as torchvision does.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet
from torchvision.models.detection import MaskRCNN, maskrcnn_resnet50_fpn
from torchvision.models.detection import roi_heads as tv_roi_heads
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import MultiScaleRoIAlign, roi_align
from torchvision.ops import misc as misc_nn_ops
from torchvision.ops.poolers import _setup_scales  # the level mapping MultiScaleRoIAlign uses

from nucleistyle.errors import NucleistyleError
from nucleistyle.paths import PathLike
from nucleistyle.segment.configs import SegmenterConfig
from nucleistyle.segment.weights import PRETRAINED_STARTS, released_file, released_weights
from nucleistyle.torchutils import torch_load, why_not_loaded

__all__ = [
    "CLASS_SPECIFIC",
    "GatherRoIAlign",
    "PixelEdgeRoIHeads",
    "PreparedTransform",
    "build_model",
    "keep_geometry_in_float32",
    "load_pretrained",
    "maskrcnn_options",
    "modern_key_names",
    "project_masks",
    "read_weights_file",
    "released_standin",
    "roi_align_taps",
]

log = logging.getLogger(__name__)

# The layers whose shape depends on the classes (91 COCO classes there, background + nucleus
# here): a pretrained start never covers them (Matterport's exclude list for Deep Retina's COCO
# start: mrcnn_class_logits, mrcnn_bbox_fc, mrcnn_bbox, mrcnn_mask).
CLASS_SPECIFIC = (
    "roi_heads.box_predictor.cls_score.",
    "roi_heads.box_predictor.bbox_pred.",
    "roi_heads.mask_predictor.mask_fcn_logits.",
)


class PreparedTransform(GeneralizedRCNNTransform):
    """torchvision's transform without the resize: normalise, then zero-pad the batch
    (bottom/right) to a multiple of ``size_divisible``. Images arrive already sized."""

    def __init__(
        self, image_mean: list[float], image_std: list[float], size_divisible: int
    ) -> None:
        super().__init__(1, 1, image_mean, image_std, size_divisible=size_divisible)

    def resize(
        self, image: torch.Tensor, target: dict[str, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
        return image, target


class HeadBatchNorm1d(nn.BatchNorm1d):
    """Batch norm of the box head; a training batch of 0 or 1 ROIs uses the running statistics
    (plain BatchNorm1d raises on one value per channel)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.shape[0] <= 1:
            return F.batch_norm(
                x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
            )
        return super().forward(x)


class HeadBatchNorm2d(nn.BatchNorm2d):
    """Batch norm of the mask head; an empty batch (no positive ROI) passes through instead
    of turning the running statistics into NaN."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] == 0:
            return x
        return super().forward(x)


class NormMLPHead(nn.Module):
    """Matterport's box head: two fully connected layers (1024 wide there), each followed by
    batch norm and ReLU (torchvision). Layer names match torchvision's ``TwoMLPHead`` (fc6, fc7), so
    COCO weights still load into the linear layers."""

    def __init__(self, in_channels: int, representation_size: int = 1024) -> None:
        super().__init__()
        self.fc6 = nn.Linear(in_channels, representation_size)
        self.bn6 = HeadBatchNorm1d(representation_size)
        self.fc7 = nn.Linear(representation_size, representation_size)
        self.bn7 = HeadBatchNorm1d(representation_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn6(self.fc6(x.flatten(start_dim=1))))
        return F.relu(self.bn7(self.fc7(x)))


def read_weights_file(path: PathLike) -> dict[str, torch.Tensor]:
    """A state dict from a local file (``weights_only=True``): a plain state dict, or a
    segmenter model / checkpoint file (its ``"model"`` entry).

    Raises:
        NucleistyleError: missing or unreadable file, or one without tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise NucleistyleError(f"weights file not found: {path}")
    try:
        state = torch_load(path)
    except Exception as exc:  # corrupt or foreign files raise several types
        reason = why_not_loaded(path, exc)
        raise NucleistyleError(f"cannot load weights file {path}: {reason}") from exc
    if isinstance(state, Mapping) and isinstance(state.get("model"), Mapping):
        state = state["model"]
    if not isinstance(state, Mapping) or not any(
        isinstance(v, torch.Tensor) for v in state.values()
    ):
        raise NucleistyleError(f"weights file {path} holds no state dict")
    return dict(state)


def _renamed_keys() -> dict[str, str]:
    """The released COCO file's name -> the current name, for every key torchvision renames
    on load (each module's ``_load_from_state_dict`` for state dicts of version < 2; read in
    torchvision 0.29): the RPN head's 3x3 convolution (``RPNHead``), the FPN's lateral and
    output convolutions of the four levels (``FeaturePyramidNetwork``) and the mask head's four
    convolutions (``MaskRCNNHeads``). The released file predates all three layouts."""
    names = {}
    for kind in ("weight", "bias"):
        names[f"rpn.head.conv.{kind}"] = f"rpn.head.conv.0.0.{kind}"
        for i in range(4):
            for block in ("inner_blocks", "layer_blocks"):
                names[f"backbone.fpn.{block}.{i}.{kind}"] = f"backbone.fpn.{block}.{i}.0.{kind}"
            names[f"roi_heads.mask_head.mask_fcn{i + 1}.{kind}"] = (
                f"roi_heads.mask_head.{i}.0.{kind}"
            )
    return names


_LEGACY_KEYS = _renamed_keys()
_RELEASED_NAMES = {current: old for old, current in _LEGACY_KEYS.items()}  # for stand-ins


def modern_key_names(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename the legacy keys of torchvision's released COCO file to the current layout.

    The file names the RPN head's convolution ``rpn.head.conv``, the FPN's convolutions
    ``inner_blocks.<i>`` / ``layer_blocks.<i>`` and the mask head's ``mask_fcn1..4``; current
    torchvision wraps each in a Sequential (``conv.0.0``, ``inner_blocks.<i>.0``, ``0.0 .. 3.0``)
    and renames the keys only inside ``load_state_dict``. Filtering keys by name before that
    call would silently leave those layers random; this renames them first, as torchvision does.
    """
    return {_LEGACY_KEYS.get(key, key): value for key, value in state.items()}


def released_standin(weights: str, backbone: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors in the key layout and shapes of torchvision's released file of a start.

    COCO: ``maskrcnn_resnet50_fpn`` with its 91 classes and frozen batch norm (no
    ``num_batches_tracked``), the RPN, FPN and mask-head keys under the names the released file
    uses (``rpn.head.conv``, ``backbone.fpn.inner_blocks.<i>``, ``mask_fcn1..4``). ImageNet: the
    ResNet classifier's state dict, ``fc`` and batch-norm counters included. A stand-in where
    the real file cannot be had (a paper-size run on a machine without network: the slow
    workflow test, ``make gpu-smoke`` offline) and the tests' model of the released files.

    Raises:
        NucleistyleError: a start torchvision does not publish (see :func:`.weights.released_file`).
    """
    if released_file(weights, backbone) is None:
        raise NucleistyleError(f"segment weights {weights!r} name no released file")
    torch.manual_seed(seed)
    if weights == "imagenet":
        return dict(getattr(resnet, backbone)().state_dict())
    model = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91)
    state = {}
    for key, value in model.state_dict().items():
        if key.endswith(".num_batches_tracked"):
            continue
        state[_RELEASED_NAMES.get(key, key)] = value
    return state


def _listed(keys: set[str], limit: int = 4) -> str:
    shown = sorted(keys)[:limit]
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(shown) + more


def load_pretrained(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Load a pretrained start into ``model`` and check that every tensor it covers arrived.

    A backbone file (its keys all under ``backbone.body.``, e.g. an ImageNet ResNet mapped by
    :func:`_backbone_state`) must provide every tensor of the backbone's ResNet; a detection
    file (torchvision's COCO Mask R-CNN, a segmenter model file) every tensor of the model
    except the class-specific layers (:data:`CLASS_SPECIFIC`), which are loaded only when their
    shapes fit (a segmenter's own file). Legacy key names are renamed first
    (:func:`modern_key_names`); batch-norm counters (``num_batches_tracked``), which frozen
    batch norm has no use for, are dropped.

    Raises:
        NucleistyleError: one line naming the tensors that would stay random (missing), that
            the model has no place for (unexpected) or whose shapes differ.
    """
    own = model.state_dict()
    state = {
        k: v
        for k, v in modern_key_names(state).items()
        if k in own or not k.endswith(".num_batches_tracked")
    }
    backbone_only = all(k.startswith("backbone.body.") for k in state)
    expected = {k for k in own if k.startswith("backbone.body.")} if backbone_only else set(own)
    fits = {k for k, v in state.items() if k in own and own[k].shape == v.shape}
    class_specific = {k for k in own if k.startswith(CLASS_SPECIFIC)}
    missing = expected - fits - class_specific
    unexpected = set(state) - set(own)
    wrong_shape = {k for k in state if k in own and k not in fits} - class_specific
    if missing or unexpected or wrong_shape:
        problems = [
            f"{label} {_listed(keys)}"
            for label, keys in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("of another shape", wrong_shape),
            )
            if keys
        ]
        raise NucleistyleError(
            f"weights {source}: not every pretrained tensor would arrive ({'; '.join(problems)})"
        )
    result = model.load_state_dict({k: state[k] for k in fits}, strict=False)
    assert not result.unexpected_keys, result.unexpected_keys
    log.info(
        "loaded %d of the model's %d tensors from %s (%s start; not loaded: %s)",
        len(fits),
        len(own),
        source,
        "backbone" if backbone_only else "whole-model",
        _listed(set(own) - fits, 6) or "none",
    )


def _backbone_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a ResNet classifier state dict (``conv1.weight``...) to ``backbone.body.*``."""
    if any(k.startswith("backbone.") for k in state):
        return dict(state)
    return {f"backbone.body.{k}": v for k, v in state.items() if not k.startswith("fc.")}


def _as_float32(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.float() if value.is_floating_point() else value
    if isinstance(value, dict):
        return type(value)((k, _as_float32(v)) for k, v in value.items())
    if isinstance(value, list | tuple):
        return type(value)(_as_float32(v) for v in value)
    return value


def _float32_outputs(module: nn.Module, inputs: Any, output: Any) -> Any:
    return _as_float32(output)


def keep_geometry_in_float32(model: MaskRCNN) -> None:
    """Make bf16 autocast safe for box geometry (forward hooks; the state dict is unchanged).

    Under autocast, torchvision's anchors take the feature maps' dtype and ``BoxCoder.decode``
    casts boxes to the dtype of the regression output, so proposals and detections would be
    computed in bf16, whose 8-bit mantissa rounds a coordinate near 500 px to 4 px. Casting the
    FPN features and the heads' outputs back to fp32 keeps every coordinate in fp32 while the
    convolutions and linear layers still run in bf16 (autocast re-casts their inputs).
    """
    for module in (
        model.backbone,
        model.rpn.head,
        model.roi_heads.box_predictor,
        model.roi_heads.mask_predictor,
    ):
        module.register_forward_hook(_float32_outputs)


def project_masks(
    gt_masks: torch.Tensor, boxes: torch.Tensor, matched_idxs: torch.Tensor, m: int
) -> torch.Tensor:
    """The mask head's m x m training targets: each proposal's matched true mask, sampled over
    the proposal box taken as pixel edges (pixel k covers [k, k + 1); ROI Align ``aligned=True``).

    torchvision's ``project_masks_on_boxes`` samples half a pixel off (``aligned=False``), and
    its paste reads box ends as inclusive pixels; a perfect mask head then grows every nucleus
    by about a pixel and scores 0.75 on real images (DSB, 20 native 256-px images), 1.0 with
    these targets and :meth:`nucleistyle.segment.inference.Detections.paste`.

    Args:
        gt_masks: (n_true, H, W) masks of one image.
        boxes: float (n, 4) proposals, x0, y0, x1, y1 in pixel edges.
        matched_idxs: (n,) index of each proposal's true mask.
        m: Output side (28).

    Returns:
        float (n, m, m) mask fractions in [0, 1].
    """
    rois = torch.cat([matched_idxs.to(boxes)[:, None], boxes], dim=1)
    return roi_align(gt_masks[:, None].to(rois), rois, (m, m), 1.0, aligned=True)[:, 0]


class PixelEdgeRoIHeads(tv_roi_heads.RoIHeads):
    """torchvision's ROI heads, trained on :func:`project_masks` targets.

    torchvision looks ``project_masks_on_boxes`` up in its module when the mask loss runs, so
    training swaps it for the length of this forward call (CPU and CUDA alike; the
    inference path is torchvision's own, unchanged)."""

    def forward(
        self,
        features: dict[str, torch.Tensor],
        proposals: list[torch.Tensor],
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, torch.Tensor]] | None = None,
    ) -> tuple[list[dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
        if not self.training:
            return super().forward(features, proposals, image_shapes, targets)
        original = tv_roi_heads.project_masks_on_boxes
        tv_roi_heads.project_masks_on_boxes = project_masks
        try:
            return super().forward(features, proposals, image_shapes, targets)
        finally:
            tv_roi_heads.project_masks_on_boxes = original


def _bilinear_taps(
    start: torch.Tensor, bin_size: torch.Tensor, bins: int, samples: int, size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel indices and weights, along one axis, of ROI Align's bilinear samples: shape
    (rois, bins, samples, 2) for the low and the high neighbour (torchvision's CPU kernel:
    a sample beyond one pixel outside the map weighs 0, one inside is clamped to the map)."""
    offsets = (
        torch.arange(bins, dtype=start.dtype, device=start.device)[:, None]
        + (torch.arange(samples, dtype=start.dtype, device=start.device) + 0.5) / samples
    )
    pos = start[:, None, None] + offsets * bin_size[:, None, None]
    inside = (pos >= -1.0) & (pos <= size)
    pos = pos.clamp(min=0.0)
    low = pos.long()
    edge = low >= size - 1
    low = torch.where(edge, torch.full_like(low, size - 1), low)
    high = torch.where(edge, low, low + 1)
    frac = torch.where(edge, torch.zeros_like(pos), pos - low)
    weight = torch.stack((1.0 - frac, frac), -1) * inside[..., None]
    return torch.stack((low, high), -1), weight


def roi_align_taps(
    rois: torch.Tensor,
    height: int,
    width: int,
    spatial_scale: float,
    output_size: tuple[int, int],
    sampling_ratio: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """ROI Align (``aligned=False``, a fixed ``sampling_ratio``) as a weighted sum of feature
    rows: for every output cell (rois x ph x pw rows), the indices of its ``4 s^2`` taps into the
    (batch x height x width) flattened map and their weights (averaged over the s x s samples).
    """
    ph, pw = output_size
    s = sampling_ratio
    rois = rois.float()
    x0, y0, x1, y1 = (rois[:, i] * spatial_scale for i in range(1, 5))
    roi_w, roi_h = (x1 - x0).clamp(min=1.0), (y1 - y0).clamp(min=1.0)
    yi, yw = _bilinear_taps(y0, roi_h / ph, ph, s, height)  # (R, ph, s, 2)
    xi, xw = _bilinear_taps(x0, roi_w / pw, pw, s, width)  # (R, pw, s, 2)
    base = rois[:, 0].long() * (height * width)
    # (R, ph, pw, sy, sx, 2, 2): every sample's four neighbours
    index = (
        base[:, None, None, None, None, None, None]
        + yi[:, :, None, :, None, :, None] * width
        + xi[:, None, :, None, :, None, :]
    )
    weight = yw[:, :, None, :, None, :, None] * xw[:, None, :, None, :, None, :] / (s * s)
    taps = 4 * s * s
    return index.reshape(-1, taps), weight.reshape(-1, taps)


class _WeightedGather(torch.autograd.Function):
    """``out[r] = sum_t weight[r, t] * table[index[r, t]]``; the backward scatters each tap's
    share with ``index_add_`` (``embedding_bag``'s own backward sorts every index first)."""

    @staticmethod
    def forward(ctx: Any, table: torch.Tensor, index: torch.Tensor, weight: torch.Tensor) -> Any:
        ctx.save_for_backward(index, weight)
        ctx.rows = table.shape[0]
        return F.embedding_bag(index, table, per_sample_weights=weight, mode="sum")

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Any:
        index, weight = ctx.saved_tensors
        shares = (weight[:, :, None] * grad[:, None, :]).reshape(-1, grad.shape[1])
        out = grad.new_zeros(ctx.rows, grad.shape[1])
        return out.index_add_(0, index.reshape(-1), shares), None, None


class GatherRoIAlign(MultiScaleRoIAlign):
    """torchvision's multi-scale ROI Align, computed on the CPU as one weighted gather over all
    levels: the values and gradients of ``torchvision.ops.roi_align`` (``aligned=False``; the
    boxes get no gradient there either). torchvision's CPU backward recomputes every bilinear
    weight once per channel; this one computes them once, which made a demo training step
    about 7 % faster (``make bench``). Elsewhere (CUDA, adaptive sampling): torchvision's."""

    def forward(
        self,
        x: dict[str, torch.Tensor],
        boxes: list[torch.Tensor],
        image_shapes: list[tuple[int, int]],
    ) -> torch.Tensor:
        features = [x[name] for name in self.featmap_names]
        if features[0].device.type != "cpu" or self.sampling_ratio <= 0:
            return super().forward(x, boxes, image_shapes)
        if self.scales is None or self.map_levels is None:  # type: ignore[has-type]
            self.scales, self.map_levels = _setup_scales(
                features, image_shapes, self.canonical_scale, self.canonical_level
            )
        rois = torch.cat(
            [torch.cat([torch.full_like(b[:, :1], i), b], 1) for i, b in enumerate(boxes)]
        )
        levels = (
            self.map_levels(boxes)
            if len(features) > 1
            else torch.zeros(len(rois), dtype=torch.long)
        )
        cells = self.output_size[0] * self.output_size[1]
        taps = 4 * self.sampling_ratio**2
        index = torch.zeros(len(rois) * cells, taps, dtype=torch.long)
        weight = torch.zeros(len(rois) * cells, taps)
        rows, offset = [], 0
        for level, (feature, scale) in enumerate(zip(features, self.scales, strict=True)):
            n, c, h, w = feature.shape
            chosen = torch.where(levels == level)[0]
            if len(chosen):
                i, wt = roi_align_taps(
                    rois[chosen], h, w, scale, self.output_size, self.sampling_ratio
                )
                cell_rows = (chosen[:, None] * cells + torch.arange(cells)).reshape(-1)
                index[cell_rows] = i + offset
                weight[cell_rows] = wt
            rows.append(feature.permute(0, 2, 3, 1).reshape(n * h * w, c))
            offset += n * h * w
        with torch.autocast("cpu", enabled=False):
            table = torch.cat(rows).float()
            pooled = _WeightedGather.apply(table, index, weight)
        out = pooled.reshape(len(rois), *self.output_size, table.shape[1]).permute(0, 3, 1, 2)
        return out.contiguous().to(features[0].dtype)


def _resnet_fpn(
    name: str,
    norm_layer: type[nn.Module],
    trainable_layers: int,
    out_channels: int,
) -> BackboneWithFPN:
    """torchvision's ``resnet_fpn_backbone`` with a configurable FPN width (P2-P5 + max-pool
    P6, the first ``5 - trainable_layers`` stages frozen)."""
    body = getattr(resnet, name)(weights=None, norm_layer=norm_layer)
    train = ["layer4", "layer3", "layer2", "layer1", "conv1"][:trainable_layers]
    if trainable_layers == 5:
        train.append("bn1")
    for param_name, parameter in body.named_parameters():
        if not any(param_name.startswith(layer) for layer in train):
            parameter.requires_grad_(False)
    stage2 = body.inplanes // 8  # channels of layer1's output
    return BackboneWithFPN(
        body,
        return_layers={f"layer{k}": str(k - 1) for k in (1, 2, 3, 4)},
        in_channels_list=[stage2 * 2 ** (k - 1) for k in (1, 2, 3, 4)],
        out_channels=out_channels,
    )


def maskrcnn_options(cfg: SegmenterConfig) -> dict[str, Any]:
    """The keyword arguments of torchvision's ``MaskRCNN`` that ``cfg`` sets: the training size
    (``min_size = max_size``), the batch padding (``size_divisible``), the normalisation, the
    anchors, the RPN and ROI sample counts and the thresholds. :func:`build_model` builds with
    them, and so does the benchmark's torchvision twin of our model (bench/bench_segment.py)."""
    m, prep = cfg.model, cfg.prep
    return {
        "min_size": prep.size,
        "max_size": prep.size,
        "size_divisible": prep.pad_multiple if prep.policy == "zoom_crop" else prep.size,
        "image_mean": list(m.image_mean),
        "image_std": list(m.image_std),
        "rpn_anchor_generator": AnchorGenerator(
            sizes=tuple((s,) for s in m.anchor_sizes),
            aspect_ratios=(tuple(m.aspect_ratios),) * len(m.anchor_sizes),
        ),
        "rpn_pre_nms_top_n_train": m.rpn_pre_nms_top_n_train,
        "rpn_pre_nms_top_n_test": m.rpn_pre_nms_top_n_test,
        "rpn_post_nms_top_n_train": m.rpn_post_nms_top_n_train,
        "rpn_post_nms_top_n_test": m.rpn_post_nms_top_n_test,
        "rpn_nms_thresh": m.rpn_nms_thresh,
        "rpn_batch_size_per_image": m.rpn_batch_size_per_image,
        "box_batch_size_per_image": m.box_batch_size_per_image,
        "box_positive_fraction": m.box_positive_fraction,
        "box_score_thresh": m.box_score_thresh,
        "box_nms_thresh": m.box_nms_thresh,
        "box_detections_per_img": m.box_detections_per_img,
    }


def build_model(
    cfg: SegmenterConfig,
    pretrained: bool = True,
    weights_file: PathLike | None = None,
) -> MaskRCNN:
    """The Mask R-CNN of ``cfg``.

    Args:
        cfg: The configuration.
        pretrained: Load ``cfg.weights`` (False: same architecture, random weights; used
            when a trained model's weights are loaded next).
        weights_file: The released file of a ``coco`` or ``imagenet`` start (the workflow's
            ``resources/weights/``); None: found in or downloaded into the torch hub cache
            (:func:`~.weights.released_weights`).

    Returns:
        The model (train mode, on the CPU).

    Raises:
        NucleistyleError: weights that cannot be had (one line, saying what to download and
            where to put it), an unusable weights file, or one that does not cover every
            tensor it should (:func:`load_pretrained`).
    """
    m = cfg.model
    frozen_bn = cfg.weights != "none"  # torchvision: FrozenBatchNorm2d iff pretrained
    norm_layer = misc_nn_ops.FrozenBatchNorm2d if frozen_bn else nn.BatchNorm2d
    backbone = _resnet_fpn(
        cfg.backbone,
        norm_layer,
        m.trainable_layers if frozen_bn else 5,
        m.fpn_channels,
    )
    c, rep = m.fpn_channels, m.representation_size
    if m.head_norm:
        box_head: nn.Module = NormMLPHead(c * 7 * 7, rep)
        mask_head = MaskRCNNHeads(c, [c] * 4, 1, norm_layer=HeadBatchNorm2d)
    else:  # torchvision's v1 heads
        box_head = TwoMLPHead(c * 7 * 7, rep)
        mask_head = MaskRCNNHeads(c, [c] * 4, 1)
    options = maskrcnn_options(cfg)
    model = MaskRCNN(
        backbone,
        num_classes=None,  # two classes (background, nucleus) through the predictors below
        **options,
        box_roi_pool=GatherRoIAlign(["0", "1", "2", "3"], 7, 2),
        box_head=box_head,
        box_predictor=FastRCNNPredictor(rep, 2),
        mask_roi_pool=GatherRoIAlign(["0", "1", "2", "3"], 14, 2),
        mask_head=mask_head,
        mask_predictor=MaskRCNNPredictor(c, c, 2),
    )
    model.transform = PreparedTransform(
        options["image_mean"], options["image_std"], options["size_divisible"]
    )
    model.roi_heads.__class__ = PixelEdgeRoIHeads  # same parameters, pixel-edge mask targets
    keep_geometry_in_float32(model)
    # torchvision initialises the 1x1 mask logits conv with fan-out Kaiming (std 1 for 2 output
    # channels), which starts the mask loss at 2-3 instead of log 2; Detectron2's std 0.001
    # starts it at log 2. Pretrained weights never cover this class-specific layer.
    logits = model.roi_heads.mask_predictor.mask_fcn_logits
    nn.init.normal_(logits.weight, std=0.001)
    nn.init.zeros_(logits.bias)
    if not pretrained or cfg.weights == "none":
        return model
    if cfg.weights in PRETRAINED_STARTS:
        path = weights_file or released_weights(cfg.weights, cfg.backbone)
    else:
        path = cfg.weights
    load_pretrained(model, _backbone_state(read_weights_file(path)), str(path))
    return model
