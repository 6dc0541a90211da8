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
