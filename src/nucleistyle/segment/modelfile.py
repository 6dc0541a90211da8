"""The segmenter's model file: what training writes and prediction loads.

A model file (``results/segment/<baseline>-<arm>/model.pt``) holds the selected weights, the
flat configuration, the CLAHE of the training inputs and the calibrated thresholds, tagged with
:data:`MODEL_FORMAT` so that a training checkpoint is never taken for a model. It loads with
``weights_only=True``: no code in it runs.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from nucleistyle.enhance import ClaheConfig
from nucleistyle.errors import NucleistyleError, first_line
from nucleistyle.paths import PathLike
from nucleistyle.segment.calibration import Calibration
from nucleistyle.segment.configs import config_from_fingerprint
from nucleistyle.segment.inference import Segmenter
from nucleistyle.segment.model import build_model
from nucleistyle.torchutils import load_checkpoint, resolve_precision, select_device

__all__ = ["MODEL_FORMAT", "load_segmenter", "read_model_file"]

log = logging.getLogger(__name__)

MODEL_FORMAT = "nucleistyle-segmenter-1"


def read_model_file(path: PathLike) -> Mapping[str, Any]:
    """Load a model file written by :func:`~.engine.train_segmenter` (``weights_only=True``).

    Raises:
        NucleistyleError: unreadable, or not a segmenter model file.
    """
    state = load_checkpoint(path, what="model")
    if state.get("format") != MODEL_FORMAT:
        raise NucleistyleError(
            f"{path} is not a segmenter model file (format {state.get('format')!r}, "
            f"expected {MODEL_FORMAT!r}); a training checkpoint is not a model"
        )
    return state


def load_segmenter(model_path: PathLike, device: str = "auto") -> Segmenter:
    """Load a model file written by :func:`~.engine.train_segmenter` (``weights_only=True``).

    Args:
        model_path: The model file.
        device: ``auto``, ``cpu``, ``cuda``... (precision follows the stored config).

    Raises:
        NucleistyleError: unreadable or foreign file, weights not matching the stored
            configuration.
    """
    state = read_model_file(model_path)
    cfg = config_from_fingerprint(state["config"])
    if state.get("calibration") is not None:
        record = dict(state["calibration"])
        calibration = Calibration(**{**record, "grid": tuple(map(tuple, record["grid"]))})
        cfg = calibration.apply(cfg)
        log.info(
            "calibrated thresholds: box_score_thresh %g, mask_threshold %g",
            calibration.box_score_thresh,
            calibration.mask_threshold,
        )
    model = build_model(cfg, pretrained=False)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise NucleistyleError(
            f"{model_path}: weights do not match the stored configuration: {first_line(exc)}"
        ) from exc
    torch_device = select_device(device)
    dtype = resolve_precision(cfg.precision, torch_device)
    clahe = state.get("input_clahe")
    clahe = None if clahe is None else ClaheConfig.from_config(clahe)
    log.info("loaded %s (%s, %s) on %s", model_path, cfg.baseline, cfg.backbone, torch_device)
    return Segmenter(model, cfg, torch_device, dtype, clahe)
