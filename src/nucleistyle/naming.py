"""Model names: ``classical`` or ``<baseline>-<arm>[-tta]``, built by the workflow, read back by
the report.

A trained segmenter is named ``<baseline>-<arm>`` (``deep_retina-style``: its folder under
``results/segment/``); each predicts once under that name and, with test-time augmentation, as
``<baseline>-<arm>-tta``. The classical segmenter is ``classical``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

__all__ = ["ARM_LABELS", "BASELINE_LABELS", "CLASSICAL", "ModelName"]

CLASSICAL = "classical"
TTA_SUFFIX = "-tta"
BASELINE_LABELS = {"deep_retina": "Deep Retina", "mirzaev": "Inom Mirzaev"}
ARM_LABELS = {
    "none": "w/o augmentation",
    "style": "w/ style-transfer augmentation",
    "jitter": "w/ colour-jitter augmentation",
    "oversample": "w/ minority-cluster oversampling",
}


@dataclass(frozen=True)
class ModelName:
    """A model name, parsed.

    Attributes:
        baseline: ``deep_retina``, ``mirzaev``, ... (None for ``classical``).
        arm: the training-set arm (``none``, ``style``, ...; None for ``classical``).
        tta: whether predictions use test-time augmentation.

    Example:
        >>> ModelName.parse("deep_retina-style-tta")
        ModelName(baseline='deep_retina', arm='style', tta=True)
        >>> str(ModelName("mirzaev", "none"))
        'mirzaev-none'
    """

    baseline: str | None
    arm: str | None = None
    tta: bool = False

    @classmethod
    def parse(cls, name: str) -> ModelName:
        """Split ``<baseline>-<arm>[-tta]`` (or ``classical``); a name without ``-`` is a
        baseline with no arm.

        Raises:
            ValueError: an empty name.
        """
        if not name:
            raise ValueError("empty model name")
        if name == CLASSICAL:
            return cls(None)
        tta = name.endswith(TTA_SUFFIX)
        stem = name.removesuffix(TTA_SUFFIX)
        baseline, _, arm = stem.rpartition("-")
        if not baseline:
            return cls(stem, None, tta)
        return cls(baseline, arm, tta)

    def __str__(self) -> str:
        if self.baseline is None:
            return CLASSICAL
        stem = self.baseline if self.arm is None else f"{self.baseline}-{self.arm}"
        return stem + (TTA_SUFFIX if self.tta else "")

    @property
    def trained(self) -> ModelName:
        """The trained segmenter behind this predictor (the name without ``-tta``)."""
        return replace(self, tta=False)

    @property
    def label(self) -> str:
        """Human-readable method name, e.g. ``Deep Retina w/ style-transfer augmentation, TTA``."""
        if self.baseline is None:
            return "classical (threshold + watershed)"
        text = BASELINE_LABELS.get(self.baseline, self.baseline)
        if self.arm is not None:
            text += " " + ARM_LABELS.get(self.arm, f"arm {self.arm}")
        return text + (", TTA" if self.tta else "")
