"""Loss terms of the MDMM objective (docs/gan.md), normalised per sample.

Upstream sums the adversarial terms and the KL over the batch (``MD_Dis`` returns a tensor that
the loss loop iterates over sample by sample), so they grow with the batch size while the L1
terms are means. Here every term is a mean over samples; the terms that upstream sums over its
two halves A and B (batch 2 = one image each) are multiplied by :data:`DIRECTIONS` = 2, i.e.
they are "a sum over the two translation directions of a per-sample mean". At the default batch
of 2 every value equals upstream's, so the paper's weights keep their meaning, and a larger batch
no longer re-weights the objective (``tests/test_gan_model.py`` checks batch 1 vs. 2 duplicated).

GAN losses are vanilla (non-saturating) BCE computed from logits (``BCEWithLogits`` is the
numerically stable form of upstream's sigmoid + BCE, and is allowed under autocast). Every
function returns a float32 scalar.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "DIRECTIONS",
    "adversarial",
    "content_l2",
    "domain_classification",
    "kl_attribute",
    "l1",
    "latent_regression",
    "nucleus_visibility",
]

DIRECTIONS = 2  # upstream sums these terms over its two half-batches (A -> B and B -> A)


def adversarial(logits: torch.Tensor, real: bool) -> torch.Tensor:
    """BCE of patch logits (N, P) against all-real (1) or all-fake (0), ×2, mean over samples.

    D uses ``real=True`` on real images and ``real=False`` on fakes; G uses ``real=True`` on
    fakes (the non-saturating loss).
    """
    target = torch.full_like(logits, 1.0 if real else 0.0)
    return DIRECTIONS * F.binary_cross_entropy_with_logits(logits.float(), target)


def domain_classification(logits: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
    """ACGAN domain head / content discriminator: multi-label BCE against a target (N, C).

    The image discriminators and D_c use the one-hot domain; E_c's content-adversarial term uses
    ``1 - one_hot`` (push D_c towards "every other domain"). A mean over all N x C entries, as
    upstream (already independent of the batch size).
    """
    return F.binary_cross_entropy_with_logits(logits.float(), domain.float())


def l1(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error (cross-cycle and self-reconstruction terms)."""
    return (prediction.float() - target.float()).abs().mean()


def latent_regression(mu: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """|μ(G(z_c, z, c)) - z|: upstream's mean over each half, summed over the two halves."""
    return DIRECTIONS * l1(mu, z)


def kl_attribute(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(μ, σ²) || N(0, I)) summed over the attribute dimensions, ×2, mean over samples."""
    mu, logvar = mu.float(), logvar.float()
    per_sample = -0.5 * (1.0 + logvar - mu.pow(2) - logvar.exp()).sum(dim=1)
    return DIRECTIONS * per_sample.mean()


def content_l2(content: torch.Tensor) -> torch.Tensor:
    """mean(z_c²): upstream's "KL" on the content code, an L2 regulariser."""
    return content.float().pow(2).mean()


def nucleus_visibility(
    images: torch.Tensor,
    masks: torch.Tensor,
    plane: torch.Tensor,
    polarity: torch.Tensor,
    target: torch.Tensor,
    gap: torch.Tensor,
    ring: int = 3,
) -> torch.Tensor:
    """How far each fake's inherited nuclei fall short of the target domain's visibility.

    The differentiable form of :func:`nucleistyle.gan.quality.copy_quality`'s visibility: on a
    weighted plane of the image (grey or one channel, in grey levels), the d' between the pixels
    of ``masks`` and a ``ring`` px band around them and the gap between their means, both signed
    by the target domain's polarity. The loss is ``relu(1 - d' / target) + relu(1 - gap /
    gap_target)``: nuclei as separable and as strong as in real images of the target domain,
    and no more. Samples whose crop holds fewer than 5 nucleus or band pixels, or whose domain
    has no target (0), do not count.

    Args:
        images: (N, 3, H, W) fakes in [-1, 1].
        masks: (N, 1, H, W) inherited foreground, 0/1.
        plane: (N, 3) channel weights of the target domain's plane.
        polarity: (N,) +1 (nuclei brighter) or -1.
        target: (N,) the target domain's typical d'.
        gap: (N,) the target domain's typical gap, grey levels.
        ring: Band width (px).

    Returns:
        Mean over the counted samples (0 when none counts), float32.
    """
    values = torch.einsum("nchw,nc->nhw", images.float(), plane.float())[:, None] * 127.5
    band = F.max_pool2d(masks, 2 * ring + 1, 1, ring) - masks
    n_in, n_band = masks.sum((1, 2, 3)), band.sum((1, 2, 3))
    counted = (n_in >= 5) & (n_band >= 5) & (target > 0) & (gap > 0)
    mean_in = (values * masks).sum((1, 2, 3)) / n_in.clamp(min=1)
    mean_band = (values * band).sum((1, 2, 3)) / n_band.clamp(min=1)
    var_in = ((values - mean_in[:, None, None, None]) ** 2 * masks).sum((1, 2, 3))
    var_band = ((values - mean_band[:, None, None, None]) ** 2 * band).sum((1, 2, 3))
    spread = torch.sqrt(0.5 * (var_in / n_in.clamp(min=1) + var_band / n_band.clamp(min=1)) + 1.0)
    difference = polarity * (mean_in - mean_band)
    shortfall = F.relu(1 - difference / spread / target.clamp(min=1e-6)) + F.relu(
        1 - difference / gap.clamp(min=1e-6)
    )
    return (shortfall * counted).sum() / counted.sum().clamp(min=1)
