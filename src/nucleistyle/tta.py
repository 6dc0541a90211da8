"""Test-time augmentation (TTA) for instance segmentation: transforms, batching, merging.

Every image is predicted under several transforms (flips, rotations, rescales, colour jitter);
each variant's instance masks are mapped back into the image's frame by the transform's exact
inverse, and the variants are merged into one set of instances (README, "The metric",
Deep Retina and Mirzaev):

* ``"vote"`` (Deep Retina, Moshkov et al. 2020): instances are matched across variants at mask
  IoU >= ``iou_match`` (0.6 as in Deep Retina); a cluster is kept when it appears in at least
  ``min_votes`` of the variants, and a pixel when at least ``pixel_vote`` of the cluster's masks
  cover it.
* ``"union"`` (Mirzaev): same matching and cluster filter, fused mask = union of the members.
  Mirzaev's own variant is ``transforms=("identity", "hflip"), iou_match=0.1, min_votes=1.0``.
* ``"none"``: all variants' instances pooled unmerged (an ablation; :func:`to_labels` then
  resolves the overlaps by score).

:func:`to_labels` finally makes the instances non-overlapping. The module does not depend on
any model: it drives any :data:`PredictFn`, a function from a batch of uint8 RGB images to one
:class:`Instances` per image, in that image's frame.

Example:
    >>> cfg = TTAConfig(transforms=("identity", "hflip", "vflip", "rot180"))
    >>> merged = predict_tta(predict_fn, images, cfg)  # doctest: +SKIP
    >>> labels = [to_labels(m, cfg.mask_threshold, cfg.min_size) for m in merged]  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray

from nucleistyle.errors import NucleistyleError
from nucleistyle.schema import check
from nucleistyle.utils import config_from_mapping

__all__ = [
    "BASELINE_TTA",
    "DIHEDRAL",
    "Instances",
    "PredictFn",
    "TTAConfig",
    "Transform",
    "make_transforms",
    "mask_iou",
    "merge",
    "merge_union",
    "merge_vote",
    "predict_tta",
    "predict_tta_labels",
    "to_labels",
]

log = logging.getLogger(__name__)

DIHEDRAL: tuple[str, ...] = (
    "identity",
    "rot90",
    "rot180",
    "rot270",
    "hflip",
    "vflip",
    "transpose",
    "transverse",
)
"""The 8 symmetries of the square: rotations counter-clockwise (``np.rot90``), left-right and
up-down flips, and the transposes about the main and the anti-diagonal."""

# dihedral name -> its inverse (rotations invert each other, every reflection is its own)
_DIHEDRAL_INVERSE = {name: name for name in DIHEDRAL} | {"rot90": "rot270", "rot270": "rot90"}
_MAX_JITTER_SHIFT = 15.0  # grey levels, Deep Retina's channel-shift range (Deep Retina)
_MAX_JITTER_GAIN = 0.1  # brightness gain in [0.9, 1.1]


@dataclass(frozen=True)
class Instances:
    """Instance predictions for one image.

    Attributes:
        masks: ``[N, H, W]`` soft masks (float32 in [0, 1]) or binary masks (bool).
        scores: ``[N]`` float32 confidence scores.

    Raises:
        NucleistyleError: ``masks`` is not 3-D or ``scores`` is not ``[N]``.
    """

    masks: np.ndarray
    scores: np.ndarray

    def __post_init__(self) -> None:
        if self.masks.ndim != 3 or self.scores.shape != (self.masks.shape[0],):
            raise NucleistyleError(
                f"instances need masks [N, H, W] and scores [N], got masks "
                f"{self.masks.shape} and scores {self.scores.shape}"
            )

    def __len__(self) -> int:
        return int(self.masks.shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        """The image frame ``(H, W)``."""
        return int(self.masks.shape[1]), int(self.masks.shape[2])

    @classmethod
    def empty(cls, shape: tuple[int, int]) -> Instances:
        """No instances in an ``(H, W)`` frame."""
        return cls(np.zeros((0, *shape), np.float32), np.zeros(0, np.float32))


PredictFn = Callable[[list[np.ndarray]], list[Instances]]
"""A model: a batch of uint8 RGB images ``(H, W, 3)`` (sizes may differ) -> one
:class:`Instances` per image, in that image's frame."""


# -- transforms ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Op:
    """One step of a transform: ``kind`` "dihedral" (``arg`` a name from :data:`DIHEDRAL`),
    "scale" (``arg`` = (sy, sx)) or "jitter" (``arg`` = seed)."""

    kind: str
    arg: Any


def _dihedral(x: np.ndarray, name: str, axes: tuple[int, int]) -> np.ndarray:
    """Apply a dihedral symmetry to the two spatial ``axes`` of ``x`` (a view, no copy)."""
    a, b = axes
    if name == "identity":
        return x
    if name == "hflip":
        return np.flip(x, b)
    if name == "vflip":
        return np.flip(x, a)
    if name == "transpose":
        return np.swapaxes(x, a, b)
    if name == "transverse":
        return np.swapaxes(np.rot90(x, 2, axes), a, b)
    return np.rot90(x, {"rot90": 1, "rot180": 2, "rot270": 3}[name], axes)


def _interp_matrix(n_in: int, n_out: int) -> sp.csr_matrix:
    """``[n_out, n_in]`` bilinear resampling weights (Pillow's BILINEAR filter).

    Pixel centres are aligned (output pixel ``o`` sits at input coordinate
    ``(o + 0.5) * n_in / n_out - 0.5``); the triangle filter is widened by the shrink factor
    when downscaling (antialiasing); weights are renormalised at the borders, so every row
    sums to 1 (a constant stays constant).
    """
    ratio = n_in / n_out
    support = max(ratio, 1.0)
    centres = (np.arange(n_out) + 0.5) * ratio
    weights = 1.0 - np.abs(np.arange(n_in) + 0.5 - centres[:, None]) / support
    weights = np.maximum(weights, 0.0)
    weights /= weights.sum(axis=1, keepdims=True)
    return sp.csr_matrix(weights.astype(np.float32))


def _resize(stack: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resize a float ``[N, h, w]`` stack to ``[N, H, W]`` with :func:`_interp_matrix` weights."""
    n, h, w = stack.shape
    rows, cols = _interp_matrix(h, shape[0]), _interp_matrix(w, shape[1])
    out = rows @ stack.astype(np.float32).transpose(1, 0, 2).reshape(h, n * w)  # [H, N*w]
    out = out.reshape(shape[0], n, w).transpose(1, 0, 2).reshape(n * shape[0], w)
    out = (cols @ out.T).T  # [N*H, W]
    return np.ascontiguousarray(out.reshape(n, *shape), dtype=np.float32)


def _scaled_shape(shape: tuple[int, int], factors: tuple[float, float]) -> tuple[int, int]:
    # rounded half up (Python's round() rounds 13.5 to 14 but 12.5 to 12)
    height = max(1, math.floor(shape[0] * factors[0] + 0.5))
    return height, max(1, math.floor(shape[1] * factors[1] + 0.5))


def _jitter_params(seed: int) -> tuple[float, np.ndarray]:
    """Brightness gain and per-channel shift (grey levels) of ``jitter:<seed>``."""
    rng = np.random.default_rng(seed)
    gain = 1.0 + rng.uniform(-_MAX_JITTER_GAIN, _MAX_JITTER_GAIN)
    return gain, rng.uniform(-_MAX_JITTER_SHIFT, _MAX_JITTER_SHIFT, size=3)


def _forward_op(op: _Op, image: np.ndarray) -> np.ndarray:
    if op.kind == "dihedral":
        return _dihedral(image, op.arg, (0, 1))
    if op.kind == "scale":
        shape = _scaled_shape(image.shape[:2], op.arg)
        resized = _resize(image.transpose(2, 0, 1), shape).transpose(1, 2, 0)
        return np.clip(np.rint(resized), 0, 255).astype(np.uint8)
    gain, shift = _jitter_params(op.arg)
    shifted = image.astype(np.float32) * gain + shift[: image.shape[2]].astype(np.float32)
    return np.clip(np.rint(shifted), 0, 255).astype(np.uint8)


def _op_shape(op: _Op, shape: tuple[int, int]) -> tuple[int, int]:
    """The spatial shape after ``op`` of an input of ``shape``."""
    if op.kind == "dihedral" and op.arg in ("rot90", "rot270", "transpose", "transverse"):
        return shape[1], shape[0]
    if op.kind == "scale":
        return _scaled_shape(shape, op.arg)
    return shape


@dataclass(frozen=True)
class Transform:
    """A test-time transform: a forward map on images and its inverse on instance masks.

    Built by :func:`make_transforms`. Dihedral transforms are exact permutations of pixels (their
    inverse undoes them bit for bit); ``scale`` resizes with Pillow-style bilinear weights and its
    inverse resizes the soft masks back the same way (the round trip is close, not exact);
    ``jitter`` changes colours only, its inverse is the identity.

    Attributes:
        name: The spec it was built from, e.g. ``"rot90"`` or ``"hflip+scale:1.5"``.
        ops: The steps, applied left to right by :meth:`forward`, undone right to left by
            :meth:`inverse`.
    """

    name: str
    ops: tuple[_Op, ...]

    def forward(self, image: np.ndarray) -> np.ndarray:
        """Transform an image.

        Args:
            image: ``(H, W, C)`` uint8 (C <= 3 for jitter).

        Returns:
            The transformed image, uint8, C-contiguous (ready for ``torch.from_numpy``); the
            input object itself for the identity on a contiguous image.
        """
        for op in self.ops:
            image = _forward_op(op, image)
        return np.ascontiguousarray(image)

    def inverse(self, masks: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        """Map masks predicted on :meth:`forward`'s output back into the original frame.

        Args:
            masks: ``[N, h, w]`` masks in the transformed frame (float or bool; a rescale gives
                float32).
            shape: ``(H, W)`` of the original image.

        Returns:
            ``[N, H, W]`` masks, C-contiguous; the input object itself for the identity.

        Raises:
            NucleistyleError: ``masks`` do not have the transformed frame's size.
        """
        shapes: list[tuple[int, int]] = [(int(shape[0]), int(shape[1]))]
        for op in self.ops:
            shapes.append(_op_shape(op, shapes[-1]))
        if tuple(masks.shape[1:]) != shapes[-1]:
            raise NucleistyleError(
                f"TTA transform {self.name}: masks of size {tuple(masks.shape[1:])}, expected "
                f"{shapes[-1]} (image {tuple(shape)})"
            )
        for op, before in zip(reversed(self.ops), reversed(shapes[:-1]), strict=True):
            if op.kind == "dihedral":
                masks = _dihedral(masks, _DIHEDRAL_INVERSE[op.arg], (1, 2))
            elif op.kind == "scale":
                masks = _resize(masks, before)
        return np.ascontiguousarray(masks)


def _parse_op(part: str, spec: str) -> _Op:
    kind, _, arg = part.partition(":")
    try:
        if part in DIHEDRAL:
            return _Op("dihedral", part)
        if kind == "scale":
            sy, _, sx = arg.partition("x")
            factors = (float(sy), float(sx or sy))
            if all(math.isfinite(f) and 0.05 <= f <= 20 for f in factors):
                return _Op("scale", factors)
        if kind == "jitter" and int(arg) >= 0:
            return _Op("jitter", int(arg))
    except ValueError:
        pass
    raise NucleistyleError(
        f"tta.transforms: bad transform {spec!r} (known: {', '.join(DIHEDRAL)}, "
        f"scale:<f> or scale:<fy>x<fx> with 0.05 <= f <= 20, jitter:<seed>; combine with '+')"
    )


def make_transforms(spec: Sequence[str]) -> list[Transform]:
    """Build transforms from their names.

    A name is one of :data:`DIHEDRAL`, ``"scale:<f>"`` (resize by ``f``; ``"scale:<fy>x<fx>"``
    for different height and width factors; new size ``max(1, floor(size * f + 0.5))``), or
    ``"jitter:<seed>"`` (a deterministic colour shift: every pixel times a gain in [0.9, 1.1]
    plus a per-channel shift in [-15, 15] grey levels, both drawn from ``seed``, rounded and
    clipped to uint8). ``"+"`` chains steps, applied left to right, e.g. Deep Retina's
    ``"vflip+hflip+rot90+scale:0.9x0.8"``.

    Args:
        spec: Transform names (duplicates allowed: they vote twice).

    Returns:
        One :class:`Transform` per name, in order.

    Raises:
        NucleistyleError: An unknown or malformed name, or an empty ``spec``.

    Example:
        >>> [t.name for t in make_transforms(["identity", "hflip+scale:1.5"])]
        ['identity', 'hflip+scale:1.5']
    """
    if isinstance(spec, str) or not len(spec):
        raise NucleistyleError(f"tta.transforms must be a non-empty list of names, got {spec!r}")
    out = []
    for name in spec:
        if not isinstance(name, str) or not name:
            raise NucleistyleError(f"tta.transforms: names must be strings, got {name!r}")
        out.append(Transform(name, tuple(_parse_op(p.strip(), name) for p in name.split("+"))))
    return out


# -- configuration ----------------------------------------------------------------------------


@dataclass(frozen=True)
class TTAConfig:
    """TTA settings (config section ``tta``).

    Attributes:
        transforms: Transform names (see :func:`make_transforms`); default the 8 dihedral ones.
        merge: ``"vote"``, ``"union"`` or ``"none"`` (see the module docstring).
        iou_match: Mask IoU at or above which instances of different variants match (0.6, Deep
            Retina's value), in (0, 1].
        min_votes: Fraction of the variants a cluster must appear in to be kept, in [0, 1]
            (at least ``ceil(min_votes * n_variants)`` variants, and at least 1).
        pixel_vote: ``"vote"`` only: fraction that must cover a pixel, in (0, 1]: of the
            cluster's masks (``vote_base: members``, at least ``ceil(pixel_vote * n_members)``)
            or of all variants (``vote_base: variants``, Deep Retina's ">= 5 of 15"); at
            least 1.
        vote_base: ``"members"`` or ``"variants"``, see ``pixel_vote``.
        mask_threshold: A soft mask covers a pixel where it is ``>=`` this, in (0, 1).
        batch_size: Images per ``predict_fn`` call, counting every variant of every image;
            0 sends all variants of all images in one call. Larger batches are faster where
            memory allows.
        min_size: Smallest object (px) :func:`predict_tta_labels` keeps.

    Raises:
        NucleistyleError: On an invalid field, named as ``tta.<field>``.
    """

    transforms: tuple[str, ...] = DIHEDRAL
    merge: str = "vote"
    iou_match: float = 0.6
    min_votes: float = 0.5
    pixel_vote: float = 0.5
    vote_base: str = "members"
    mask_threshold: float = 0.5
    batch_size: int = 0
    min_size: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.transforms, Sequence) and not isinstance(self.transforms, str):
            object.__setattr__(self, "transforms", tuple(self.transforms))
        check(self, "#/properties/tta", "tta")
        make_transforms(self.transforms)

    @classmethod
    def from_config(cls, mapping: Mapping[str, Any]) -> TTAConfig:
        """Build from the config section ``tta`` (missing keys take the defaults)."""
        return config_from_mapping(cls, mapping, "tta")

    @classmethod
    def for_baseline(cls, baseline: str, mapping: Mapping[str, Any] | None = None) -> TTAConfig:
        """The TTA of ``baseline`` (:data:`BASELINE_TTA`), then the section's common keys, then
        its ``<baseline>`` sub-section; the other baselines' sub-sections are ignored.

        Raises:
            NucleistyleError: An unknown baseline, key or an invalid value.
        """
        if baseline not in BASELINE_TTA:
            raise NucleistyleError(f"no TTA preset for baseline {baseline!r}")
        mapping = dict(mapping or {})
        own = mapping.pop(baseline, None) or {}
        common = {k: v for k, v in mapping.items() if k not in BASELINE_TTA}
        base = {**BASELINE_TTA[baseline], **common}
        config = config_from_mapping(cls, base, "tta")
        if not own:
            return config
        try:
            return config_from_mapping(cls, {**base, **own}, "tta")
        except NucleistyleError as exc:  # name the key where the user wrote it
            raise NucleistyleError(str(exc).replace("tta.", f"tta.{baseline}.", 1)) from None


BASELINE_TTA: dict[str, dict[str, Any]] = {
    # Deep Retina's submitted TTA: 15 variants (vertical flip, horizontal flip, rot90 x k, then
    # an anisotropic resize, in that order), matched at mask IoU 0.6, a pixel kept with >= 5 of
    # the 15 votes. One deviation: the original skipped a downscale when the image had a side
    # under 512 px; here every variant always runs.
    "deep_retina": {
        "transforms": (
            "identity",
            "scale:2",
            "scale:0.7x0.8",
            "scale:1.5",
            "vflip+hflip+rot90+scale:0.9x0.8",
            "vflip+rot180+scale:1.1x1.2",
            "hflip+rot270+scale:0.5",
            "hflip+rot270+scale:1x1.2",
            "vflip+hflip+rot180",
            "vflip+hflip+rot180",
            "hflip+rot270",
            "vflip+rot90",
            "vflip+hflip+rot270+scale:1x0.9",
            "hflip+rot270+scale:1.5",
            "rot270+scale:1.2x1",
        ),
        "merge": "vote",
        "iou_match": 0.6,
        "min_votes": 0.0,
        "pixel_vote": 5 / 15,
        "vote_base": "variants",
    },
    # Mirzaev: the original and its horizontal flip; a detection is kept only when the other
    # pass found it too (mask IoU > 0.1), as the union of both masks.
    "mirzaev": {
        "transforms": ("identity", "hflip"),
        "merge": "union",
        "iou_match": 0.1,
        "min_votes": 1.0,
    },
}
"""Each baseline's own test-time augmentation (docs/baselines.md)."""


# -- matching and merging ---------------------------------------------------------------------


def _sparse_rows(binary: np.ndarray) -> sp.csr_matrix:
    """``[N, H, W]`` bool -> ``[N, H*W]`` sparse 0/1 matrix (int32)."""
    flat = binary.reshape(binary.shape[0], binary.shape[1] * binary.shape[2])  # N may be 0
    rows, cols = np.nonzero(flat)
    data = np.ones(rows.size, np.int32)
    return sp.csr_matrix((data, (rows, cols)), shape=flat.shape)


def _iou(a: sp.csr_matrix, b: sp.csr_matrix) -> NDArray[np.float64]:
    """IoU matrix of two sparse 0/1 mask matrices: intersections by one matrix product."""
    inter = (a @ b.T).toarray().astype(np.float64)
    union = np.asarray(a.sum(axis=1)) + np.asarray(b.sum(axis=1)).T - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def mask_iou(a: np.ndarray, b: np.ndarray) -> NDArray[np.float64]:
    """Pairwise IoU of two stacks of binary masks.

    Computed as one sparse matrix product of the flattened masks (cost grows with the
    overlapping foreground, not with N * M * H * W).

    Args:
        a: ``[N, H, W]`` bool.
        b: ``[M, H, W]`` bool, same frame.

    Returns:
        ``[N, M]`` float64 IoU; 0 where both masks are empty.

    Example:
        >>> m = np.zeros((1, 2, 2), bool); m[0, 0] = True
        >>> mask_iou(m, np.ones((1, 2, 2), bool))
        array([[0.5]])
    """
    return _iou(_sparse_rows(a), _sparse_rows(b))


def _check_variants(variants: Sequence[Instances]) -> None:
    if not variants:
        raise NucleistyleError("TTA merge needs at least one variant")
    shapes = {v.shape for v in variants}
    if len(shapes) > 1:
        raise NucleistyleError(f"TTA variants must share one frame, got sizes {sorted(shapes)}")


def _need(fraction: float, n: int) -> int:
    """Smallest count that is at least ``fraction`` of ``n`` (and at least 1)."""
    return max(1, math.ceil(round(fraction * n, 9)))


def _cluster(
    variants: Sequence[Instances], cfg: TTAConfig
) -> tuple[list[np.ndarray], list[list[tuple[int, int]]]]:
    """Greedy cross-variant matching.

    Instances (binarised at ``mask_threshold``; empty ones ignored) are visited by descending
    score (ties: variant order, then instance order). Each joins the cluster whose seed (its
    first, highest-scoring member) it overlaps most at IoU >= ``iou_match``, among clusters
    that have no member from its own variant yet; otherwise it seeds a new cluster.

    Returns:
        The binarised masks per variant, and per cluster its ``(variant, instance)`` members in
        visiting order; clusters in seed order (descending seed score).
    """
    binaries = [v.masks >= cfg.mask_threshold for v in variants]
    owners = [
        (k, i) for k, b in enumerate(binaries) for i in np.flatnonzero(b.any(axis=(1, 2))).tolist()
    ]
    if not owners:
        return binaries, []
    variant_of = np.array([k for k, _ in owners])
    scores = np.array([variants[k].scores[i] for k, i in owners], np.float64)
    pooled = sp.vstack([_sparse_rows(b[b.any(axis=(1, 2))]) for b in binaries], format="csr")
    iou = _iou(pooled, pooled)
    seeds: list[int] = []
    taken = np.zeros((len(owners), len(variants)), bool)  # cluster x variant
    clusters: list[list[tuple[int, int]]] = []
    for p in np.argsort(-scores, kind="stable").tolist():
        k = variant_of[p]
        best = -1
        if seeds:
            candidates = np.where(taken[: len(seeds), k], -1.0, iou[p, seeds])
            best = int(np.argmax(candidates))
            if candidates[best] < cfg.iou_match:
                best = -1
        if best < 0:
            best = len(seeds)
            seeds.append(p)
            clusters.append([])
        taken[best, k] = True
        clusters[best].append(owners[p])
    return binaries, clusters


def _merge(variants: Sequence[Instances], cfg: TTAConfig, how: str) -> Instances:
    _check_variants(variants)
    if len(variants) == 1:
        return variants[0]
    shape = variants[0].shape
    if how == "none":
        masks = np.concatenate([v.masks.astype(np.float32, copy=False) for v in variants])
        return Instances(masks, np.concatenate([v.scores for v in variants]).astype(np.float32))
    binaries, clusters = _cluster(variants, cfg)
    need = _need(cfg.min_votes, len(variants))
    clusters = [c for c in clusters if len(c) >= need]
    masks = np.zeros((len(clusters), *shape), np.float32)
    scores = np.zeros(len(clusters), np.float32)
    mt = cfg.mask_threshold
    for j, members in enumerate(clusters):
        scores[j] = np.mean([variants[k].scores[i] for k, i in members], dtype=np.float64)
        if how == "union":
            for k, i in members:
                np.maximum(masks[j], variants[k].masks[i], out=masks[j])
        else:
            votes = np.zeros(shape, np.int32)
            for k, i in members:
                votes += binaries[k][i]
            fraction = votes / len(members)
            base = len(variants) if cfg.vote_base == "variants" else len(members)
            kept = votes >= _need(cfg.pixel_vote, base)
            masks[j] = np.where(kept, mt + (1.0 - mt) * fraction, mt * fraction)
    nonempty = (masks >= mt).any(axis=(1, 2))
    return Instances(masks[nonempty], scores[nonempty])


def merge_vote(variants: Sequence[Instances], cfg: TTAConfig) -> Instances:
    """Merge per-variant instances (all in the original frame) by voting.

    Instances are matched across variants (greedily by descending score, mask IoU >=
    ``cfg.iou_match``, at most one member per variant), clusters present in fewer than
    ``cfg.min_votes`` of the variants are dropped, and each cluster's pixels are fused by vote.
    The merged soft mask encodes the vote fraction ``f`` (members covering the pixel / members)
    so that thresholding at ``cfg.mask_threshold`` (``t``) gives exactly the voted pixels:
    ``t + (1 - t) * f`` where ``f`` reaches ``cfg.pixel_vote``, ``t * f`` elsewhere (1 where all
    members agree, 0 where none does). Score = mean score of the members. A single variant is
    returned unchanged.

    Args:
        variants: One :class:`Instances` per transform, same ``(H, W)``.
        cfg: ``iou_match``, ``min_votes``, ``pixel_vote`` and ``mask_threshold`` are used.

    Returns:
        Merged instances, float32 masks, ordered by their highest member score; clusters whose
        fused mask is empty are dropped.

    Raises:
        NucleistyleError: No variants, or variants of different sizes.
    """
    return _merge(variants, cfg, "vote")


def merge_union(variants: Sequence[Instances], cfg: TTAConfig) -> Instances:
    """Merge per-variant instances by union (Mirzaev's flip-agreement TTA, generalised).

    Matching and the ``cfg.min_votes`` filter are as in :func:`merge_vote`; a cluster's soft
    mask is the pixel-wise maximum of its members' masks, so thresholding it at
    ``cfg.mask_threshold`` gives exactly the union of the binarised members. Score = mean score
    of the members. A single variant is returned unchanged.

    Args:
        variants: One :class:`Instances` per transform, same ``(H, W)``.
        cfg: ``iou_match``, ``min_votes`` and ``mask_threshold`` are used.

    Returns:
        Merged instances, float32 masks, ordered by their highest member score.

    Raises:
        NucleistyleError: No variants, or variants of different sizes.
    """
    return _merge(variants, cfg, "union")


def merge(variants: Sequence[Instances], cfg: TTAConfig) -> Instances:
    """Merge variants as ``cfg.merge`` says (``"none"`` pools them, float32 masks)."""
    return _merge(variants, cfg, cfg.merge)


# -- prediction -------------------------------------------------------------------------------


def _check_images(images: Sequence[np.ndarray]) -> None:
    for n, image in enumerate(images):
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
            raise NucleistyleError(f"TTA image {n}: expected a uint8 numpy array")
        if image.ndim != 3 or image.shape[2] != 3 or 0 in image.shape:
            raise NucleistyleError(f"TTA image {n}: expected (H, W, 3), got {image.shape}")


def predict_tta(
    predict_fn: PredictFn, images: Sequence[np.ndarray], cfg: TTAConfig | None = None
) -> list[Instances]:
    """Predict every image under every transform, invert the masks and merge the variants.

    Variants are generated image by image, transform by transform, and sent to ``predict_fn``
    in calls of ``cfg.batch_size`` images (0: all in one call); an image's variants are merged
    (:func:`merge`) as soon as all are back, so at most one call's inputs are held at once.
    With a single transform (e.g. ``("identity",)``) the result is exactly ``predict_fn``'s.

    Args:
        predict_fn: The model (see :data:`PredictFn`).
        images: uint8 RGB images ``(H, W, 3)``; sizes may differ.
        cfg: TTA settings; default :class:`TTAConfig()`.

    Returns:
        One merged :class:`Instances` per image, in its original frame (see :func:`merge_vote`
        and :func:`merge_union` for the merged masks and scores).

    Raises:
        NucleistyleError: A bad image, or ``predict_fn`` returning the wrong number of results
            or masks of the wrong size (named by image index and transform).
    """
    cfg = cfg or TTAConfig()
    _check_images(images)
    transforms = make_transforms(cfg.transforms)
    jobs = [(n, t) for n in range(len(images)) for t in transforms]
    step = cfg.batch_size or max(1, len(jobs))
    pending: dict[int, list[Instances]] = {}
    merged: dict[int, Instances] = {}
    for start in range(0, len(jobs), step):
        chunk = jobs[start : start + step]
        batch = [t.forward(images[n]) for n, t in chunk]
        predictions = predict_fn(batch)
        if len(predictions) != len(batch):
            raise NucleistyleError(
                f"predict_fn returned {len(predictions)} results for {len(batch)} images"
            )
        log.debug(
            "TTA: predicted %d variants (%d of %d)", len(batch), start + len(batch), len(jobs)
        )
        for (n, t), x, pred in zip(chunk, batch, predictions, strict=True):
            if pred.shape != x.shape[:2]:
                raise NucleistyleError(
                    f"predict_fn: image {n}, transform {t.name}: masks of size {pred.shape}, "
                    f"expected {x.shape[:2]}"
                )
            variant = Instances(t.inverse(pred.masks, images[n].shape[:2]), pred.scores)
            pending.setdefault(n, []).append(variant)
            if len(pending[n]) == len(transforms):
                merged[n] = merge(pending.pop(n), cfg)
    return [merged[n] for n in range(len(images))]


def to_labels(instances: Instances, threshold: float = 0.5, min_size: int = 0) -> np.ndarray:
    """Non-overlapping label image from (possibly overlapping) instances.

    Masks are binarised at ``>= threshold``. Instances smaller than ``min_size`` px are dropped
    first; then every pixel goes to the highest-scoring instance covering it (ties: input order);
    an instance left empty or smaller than ``min_size`` by this is dropped and its remaining
    pixels become background.

    Args:
        instances: ``[N, H, W]`` masks and ``[N]`` scores.
        threshold: Mask threshold.
        min_size: Smallest object kept (px).

    Returns:
        ``(H, W)`` int32 labels 1..n (0 = background), numbered by descending score.

    Example:
        >>> masks = np.zeros((2, 1, 4), np.float32); masks[0, 0, :3] = 1; masks[1, 0, 1:] = 1
        >>> to_labels(Instances(masks, np.array([0.2, 0.9], np.float32)))
        array([[2, 1, 1, 1]], dtype=int32)
    """
    binary = instances.masks >= threshold
    minimum = max(1, min_size)
    order = np.argsort(-instances.scores.astype(np.float64), kind="stable")
    order = order[binary[order].sum(axis=(1, 2)) >= minimum]
    labels = np.zeros(instances.shape, np.int32)
    if order.size == 0:
        return labels
    ranked = binary[order]
    winner = np.argmax(ranked, axis=0)  # first (highest-scoring) instance covering the pixel
    covered = np.take_along_axis(ranked, winner[None], axis=0)[0]
    labels[covered] = winner[covered] + 1
    kept = np.bincount(labels.ravel(), minlength=order.size + 1)[1:] >= minimum
    relabel = np.zeros(order.size + 1, np.int32)
    relabel[1:][kept] = np.arange(1, np.count_nonzero(kept) + 1, dtype=np.int32)
    return relabel[labels]


def predict_tta_labels(
    predict_fn: PredictFn, images: Sequence[np.ndarray], cfg: TTAConfig | None = None
) -> list[np.ndarray]:
    """:func:`predict_tta`, then :func:`to_labels` at ``cfg.mask_threshold`` and ``cfg.min_size``.

    Returns:
        One ``(H, W)`` int32 label image per input image.
    """
    cfg = cfg or TTAConfig()
    merged = predict_tta(predict_fn, images, cfg)
    return [to_labels(m, cfg.mask_threshold, cfg.min_size) for m in merged]
