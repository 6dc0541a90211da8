"""Settings of the style-transfer GAN (section ``gan`` of the config; docs/gan.md).

Torch-free, so the workflow and the command line can check and hash them without importing torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nucleistyle.errors import NucleistyleError
from nucleistyle.schema import check
from nucleistyle.utils import config_fingerprint, config_from_mapping

__all__ = [
    "ATTRIBUTE_SOURCES",
    "RESUME_IGNORES",
    "GanConfig",
    "lr_factor",
]

# Settings that may change between a run and its resumption: the budget, logging, and where and
# how it runs. Everything else must match the checkpoint.
RESUME_IGNORES = (
    "iterations",
    "checkpoint_every",
    "log_every",
    "device",
    "precision",
    "channels_last",
    "workers",
    "attribute_source",
    "stats_images",
    "monitor_every",
)
ATTRIBUTE_SOURCES = ("prior", "domain_stats")


@dataclass(frozen=True)
class GanConfig:
    """GAN hyper-parameters (config section ``gan``); defaults = MDMM / docs/gan.md.

    Attributes:
        n_domains: Number of domains C (the cluster k), >= 2.
        crop: Training crop side (px), a multiple of 4, >= 16 (216 upstream).
        resize: Side images are resized to before cropping (256 upstream); 0 = native size.
        flip: Random horizontal flips.
        batch_size: Images per full update, even (two halves A and B), 2 upstream.
        iterations: Full updates to train for (MDMM ~118k on DSB); may grow on resume.
        d_iter: Batches per iteration: ``d_iter - 1`` content-D updates + one full update (3).
        checkpoint_every: Iterations between checkpoints.
        log_every: Iterations per logged (averaged) loss-history row.
        lr: Adam learning rate of E_c, E_a, G and the image discriminators.
        lr_content: Adam learning rate of the content discriminator (lr / 2.5).
        betas: Adam betas.
        weight_decay: Adam (L2) weight decay.
        lr_policy: ``linear`` decay to ~0 (MDMM) or ``step`` x0.1 (HistAuGAN).
        decay_start: Fraction of ``iterations`` after which the rate decays.
        content_grad_clip: Max gradient norm of the content discriminator (0: off).
        w_cc: Cross-cycle L1.
        w_content: Content adversarial (E_c side).
        w_domain: Image adversarial (G side).
        w_cls: Domain classification, discriminator side (real images).
        w_cls_g: Domain classification, generator side (fakes).
        w_recon: Self-reconstruction L1.
        w_latent: Latent regression L1.
        w_structure: Nucleus visibility of the translated images, in the target domain's
            polarity (:func:`nucleistyle.gan.losses.nucleus_visibility`; not in the paper).
        warmup: The first ``warmup`` of the ``iterations`` are autoencoder updates: E_c, E_a
            and G on the self-reconstruction and KL terms only, the discriminators idle (not
            in the paper; docs/gan.md).
        polarity: ``as_is`` (the paper) or ``canonical``: the bright-nuclei domains are inverted
            for the GAN and back around it, so that every domain has dark nuclei in its
            space (not in the paper; docs/gan.md).
        upsample: The generator's x2 upsampling, ``transpose`` (the paper's transposed
            convolution) or ``resize`` (nearest-neighbour, then a 3x3 convolution: no
            checkerboard pattern).
        latent_regression: ``mdmm`` (the term trains G and E_c, not E_a) or ``histaugan``
            (it trains E_a too); see the module docstring.
        w_kl: KL of the attribute code.
        w_kl_content: L2 of the content code.
        attribute_dim: Size of the attribute code z_a.
        base_channels: Network width b (64 upstream; the tests use 4-8).
        logvar_clamp: |log σ²| bound of the attribute encoder.
        precision: ``auto`` (bf16 autocast on CUDA / bf16-capable CPUs), ``fp32`` or ``bf16``.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        channels_last: Channels-last memory format for all nets. Off by default: on this
            2-core CPU (bf16) it was no faster within the ±7 % run-to-run noise (the 256-channel
            residual convolutions, ~70 % of the time, ran slower; E_c's full-resolution layers
            faster); on CUDA tensor cores it usually helps.
        attribute_source: How :mod:`~nucleistyle.gan.stylize` samples attributes by default:
            ``prior`` N(0, I), or ``domain_stats`` N(mean_d, diag(std_d²)) of E_a on the
            training images of the target domain (HistAuGAN).
        stats_images: Training images per domain used for the attribute statistics (0: all).
        monitor_every: Iterations between transfer-quality evaluations during training (the
            learning curve; 0: only at the end); needs a monitor passed to :func:`train_gan`.
        workers: Image decoding threads.
        seed: Seeds weights, sampling and noise.
    """

    n_domains: int = 6
    crop: int = 216
    resize: int = 256
    flip: bool = True
    batch_size: int = 2
    iterations: int = 120_000
    d_iter: int = 3
    checkpoint_every: int = 1000
    log_every: int = 10
    lr: float = 1e-4
    lr_content: float = 4e-5
    betas: tuple[float, float] = (0.5, 0.999)
    weight_decay: float = 1e-4
    lr_policy: str = "linear"
    decay_start: float = 0.5
    content_grad_clip: float = 5.0
    w_cc: float = 10.0
    w_content: float = 1.0
    w_domain: float = 1.0
    w_cls: float = 1.0
    w_cls_g: float = 5.0
    w_recon: float = 10.0
    w_latent: float = 10.0
    w_structure: float = 0.0
    warmup: int = 0
    upsample: str = "transpose"
    polarity: str = "as_is"
    latent_regression: str = "mdmm"
    w_kl: float = 0.01
    w_kl_content: float = 0.01
    attribute_dim: int = 8
    base_channels: int = 64
    logvar_clamp: float = 10.0
    precision: str = "auto"
    device: str = "auto"
    channels_last: bool = False
    attribute_source: str = "domain_stats"
    stats_images: int = 0
    monitor_every: int = 0
    workers: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        check(self, "#/properties/gan", "gan", skip=("n_domains", "seed"))
        check(self.n_domains, "#/properties/cluster/properties/k", "gan.n_domains")
        check(self.seed, "#/properties/seed", "gan.seed")
        if self.warmup >= self.iterations > 0:
            raise NucleistyleError(
                f"config key gan.warmup ({self.warmup}) must be below gan.iterations "
                f"({self.iterations})"
            )
        if 0 < self.resize < self.crop:
            raise NucleistyleError(
                f"config key gan.resize ({self.resize}) must be 0 or >= gan.crop ({self.crop})"
            )

    @classmethod
    def from_config(cls, mapping: Mapping[str, Any]) -> GanConfig:
        """Build from the config section ``gan`` (missing keys take the defaults).

        Raises:
            NucleistyleError: An unknown key or an invalid value (named).
        """
        return config_from_mapping(cls, mapping, "gan")

    def fingerprint(self) -> dict[str, Any]:
        """The settings as plain data (stored in checkpoints and model files)."""
        return config_fingerprint(self)


def lr_factor(iteration: int, cfg: GanConfig) -> float:
    """Learning-rate multiplier for the update that follows ``iteration`` completed ones."""
    start = round(cfg.decay_start * cfg.iterations)
    if iteration < start:
        return 1.0
    if cfg.lr_policy == "step":
        return 0.1
    return 1.0 - (iteration - start) / (cfg.iterations - start + 1)
