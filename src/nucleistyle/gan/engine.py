"""Training the multi-domain style-transfer GAN (paper §2.3; docs/gan.md).

One **iteration** = ``d_iter - 1`` content-discriminator updates, each on a fresh batch (MDMM's
``d_iter = 3`` gives 2), then one full update on another batch: the forward pass (docs/gan.md), the
image discriminators' step, then one step of E_c, E_a and G. ``iterations`` counts full updates
(MDMM's ``total_it``); MDMM's 1200 epochs on the DSB clusters are about 118k of them.

Choices made on purpose (the upstream pitfalls of docs/gan.md):

* **Single generator step.** All E_c/E_a/G terms are summed and back-propagated once, then the
  three nets step together (HistAuGAN's fix; MDMM's two-step update raises an in-place error on
  PyTorch >= 1.5).
* **Latent regression trains G and E_c only** (``latent_regression: mdmm``): E_a encodes the
  random-attribute fake with its weights detached, as MDMM's separate ``backward_G_alone``
  step effectively did. HistAuGAN's single step lets the term train E_a too
  (``latent_regression: histaugan``); E_a can then satisfy it by mapping every fake to the
  prior, and on a two-domain toy with a known answer that form collapsed to one style in 1 of
  3 seeds, the MDMM form in none (docs/gan.md).
* **Batch-size-independent losses** (see :mod:`nucleistyle.gan.losses`): equal to upstream's at
  batch 2.
* **Content discriminator at any crop** and a **clamped log-variance** (see
  :mod:`nucleistyle.gan.networks`).
* **One learning-rate schedule for all nets**, a pure function of (iteration, config):
  constant, then linear decay to ~0 (``lr_policy: linear``, MDMM) or x0.1 (``step``, HistAuGAN)
  from ``decay_start * iterations``. Upstream never decays D_c's rate (a bug); here it decays
  too. Raising ``iterations`` on resume re-plans the decay.
* The D_c gradient norm is clipped to ``content_grad_clip`` (5), as upstream.

Runs resume bit-for-bit: a checkpoint holds the six nets, the three Adam optimisers, the global
and sampler RNG states, the iteration, the loss history and the partial logging window, so on
the CPU in fp32 a run killed at any point ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nucleistyle.gan import losses as L
from nucleistyle.gan.configs import (
    RESUME_IGNORES,
    GanConfig,
    lr_factor,
)
from nucleistyle.gan.data import (
    DomainSampler,
    DomainSet,
    centre_crop,
    load_domain_set,
    one_hot,
    to_tensor,
)
from nucleistyle.gan.networks import (
    AttributeEncoder,
    ContentDiscriminator,
    ContentEncoder,
    Generator,
    ImageDiscriminator,
    init_weights,
)
from nucleistyle.gan.quality import LOOK_IMAGES, PLANES, DomainLook, domain_looks
from nucleistyle.paths import PathLike
from nucleistyle.torchutils import (
    LossHistory,
    autocast,
    check_finite,
    get_rng_state,
    set_rng_state,
)
from nucleistyle.training import Runtime, TrainingPlan, train

__all__ = [
    "CHECKPOINT_FORMAT",
    "GENERATOR_SIDE",
    "MODEL_FORMAT",
    "GanNets",
    "GanTask",
    "GanTrainer",
    "attribute_statistics",
    "inverted_domains",
    "train_gan",
]

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "nucleistyle.gan-checkpoint/1"
MODEL_FORMAT = "nucleistyle.gan/1"
GENERATOR_SIDE = ("enc_c", "enc_a", "gen")
MONITOR_STATS_IMAGES = 8  # images per domain for the attribute statistics of a monitor pass


class GanNets(nn.Module):
    """The six networks: enc_c, enc_a, gen (kept for inference), dis1, dis2, dis_c.

    Weights are initialised as upstream (conv ~ N(0, 0.02)) from the global torch generator.
    """

    # the network classes; the layer-by-layer reference (tests/gan_reference.py) swaps in its own
    content_encoder: type[nn.Module] = ContentEncoder
    attribute_encoder: type[AttributeEncoder] = AttributeEncoder
    generator: type[nn.Module] = Generator
    image_discriminator: type[nn.Module] = ImageDiscriminator
    content_discriminator: type[nn.Module] = ContentDiscriminator

    def __init__(self, cfg: GanConfig) -> None:
        super().__init__()
        c, b, a = cfg.n_domains, cfg.base_channels, cfg.attribute_dim
        self.enc_c = self.content_encoder(b)
        self.enc_a = self.attribute_encoder(c, b, a, cfg.logvar_clamp)
        self.gen: Any = self.generator(c, b, a, cfg.upsample)  # Generator API: share, decode
        self.dis1 = self.image_discriminator(c, cfg.crop, b)
        self.dis2 = self.image_discriminator(c, cfg.crop, b)
        self.dis_c = self.content_discriminator(c, b)
        init_weights(self)


@contextlib.contextmanager
def _frozen(*modules: nn.Module) -> Iterator[None]:
    """No parameter gradients for ``modules`` in the block (inputs still get theirs)."""
    params = [p for m in modules for p in m.parameters()]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def _swap(t: torch.Tensor) -> torch.Tensor:
    """Exchange the two halves of a batch (A <-> B)."""
    h = t.shape[0] // 2
    return torch.cat([t[h:], t[:h]])


def _reparameterise(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    return mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)


def inverted_domains(looks: Sequence[DomainLook | None], polarity: str) -> list[int]:
    """The domains the GAN sees inverted: with ``polarity`` ``canonical``, those whose nuclei
    are brighter than their surroundings in their real images (``as_is``: none)."""
    if polarity == "as_is":
        return []
    return [d for d, look in enumerate(looks) if look is not None and look.polarity > 0]


def _signs(inverted: Sequence[int], n_domains: int) -> torch.Tensor:
    """(C,) float: -1 for the inverted domains, +1 for the others."""
    sign = torch.ones(n_domains)
    sign[list(inverted)] = -1.0
    return sign


def _structure_targets(
    looks: Sequence[DomainLook | None], n_domains: int, device: torch.device
) -> dict[str, torch.Tensor]:
    """Per-domain plane weights (C, 3), polarity, target d' and gap (C,) of the structure
    term; a domain without a look gets zeros (no loss)."""
    plane = torch.zeros(n_domains, 3)
    polarity, target, gap = (torch.zeros(n_domains) for _ in range(3))
    for d, look in enumerate(looks):
        if look is None:
            continue
        if look.plane == 0:
            plane[d] = 1.0 / 3.0
        else:
            plane[d, look.plane - 1] = 1.0
        polarity[d], target[d], gap[d] = look.polarity, look.visibility, look.gap
    targets = {"plane": plane, "polarity": polarity, "target": target, "gap": gap}
    return {k: v.to(device) for k, v in targets.items()}


def _generator_weights(cfg: GanConfig) -> dict[str, float]:
    """The weight of each generator-side loss term."""
    return {
        "g_adv1": cfg.w_domain,
        "g_adv2": cfg.w_domain,
        "g_cls1": cfg.w_cls_g,
        "g_cls2": cfg.w_cls_g,
        "g_content": cfg.w_content,
        "cross_cycle": cfg.w_cc,
        "self_recon": cfg.w_recon,
        "latent": cfg.w_latent,
        "kl": cfg.w_kl,
        "kl_content": cfg.w_kl_content,
        "structure": cfg.w_structure,
    }


class GanTrainer:
    """The nets, their optimisers and the update steps (no data or file handling).

    Args:
        cfg: Hyper-parameters.
        device: Where to train.
        dtype: Autocast dtype (None: fp32).
        checkpoint: Named in the divergence message (the checkpoint that is kept).
        looks: How each domain's nuclei look in its real images (from
            :func:`nucleistyle.gan.quality.domain_looks`; None for a domain without masks),
            the targets of the structure term when ``cfg.w_structure > 0``.
        inverted: Domains whose images the nets see inverted (``gan.polarity: canonical``,
            :func:`inverted_domains`): their real images are inverted before E_c, E_a and the
            discriminators, and the fakes rendered into them are inverted back for the
            structure term, which measures in the real images' polarity.
    """

    def __init__(
        self,
        cfg: GanConfig,
        device: torch.device,
        dtype: torch.dtype | None = None,
        checkpoint: PathLike | None = None,
        looks: Sequence[DomainLook | None] | None = None,
        inverted: Sequence[int] = (),
    ) -> None:
        self.cfg = cfg
        self.structure = _structure_targets(looks, cfg.n_domains, device) if looks else None
        self.sign = _signs(inverted, cfg.n_domains).to(device) if inverted else None
        self.device = device
        self.dtype = dtype
        self.checkpoint = checkpoint
        self.iteration = 0
        self.memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        self.nets = GanNets(cfg).to(device).to(memory_format=self.memory_format)
        n = self.nets

        def adam(modules: list[nn.Module], lr: float) -> torch.optim.Adam:
            groups = [{"params": list(m.parameters())} for m in modules]
            # fused: one kernel per step instead of ~10 per parameter tensor (same update rule)
            return torch.optim.Adam(
                groups, lr=lr, betas=cfg.betas, weight_decay=cfg.weight_decay, fused=True
            )

        self.optimizers = {
            "gen": adam([n.enc_c, n.enc_a, n.gen], cfg.lr),
            "dis": adam([n.dis1, n.dis2], cfg.lr),
            "dis_c": adam([n.dis_c], cfg.lr_content),
        }
        self.base_lr = {"gen": cfg.lr, "dis": cfg.lr, "dis_c": cfg.lr_content}

    # -- helpers ---------------------------------------------------------------------------------

    def _autocast(self) -> contextlib.AbstractContextManager:
        return autocast(self.device, self.dtype)

    def _inputs(self, images: np.ndarray, domains: np.ndarray) -> tuple[torch.Tensor, ...]:
        x = to_tensor(images).to(self.device, memory_format=self.memory_format)
        c = one_hot(domains, self.cfg.n_domains).to(self.device)
        if self.sign is not None:  # in [-1, 1], 255 - v is -x
            x = x * self.sign[torch.as_tensor(domains, device=self.device)].view(-1, 1, 1, 1)
        return x, c

    def _step(self, name: str, loss: torch.Tensor, values: dict[str, torch.Tensor]) -> None:
        """Check every loss is finite (one device sync), then back-propagate and step."""
        numbers = dict(zip(values, torch.stack(list(values.values())).tolist(), strict=True))
        check_finite(numbers, self.iteration + 1, self.checkpoint)
        optimizer = self.optimizers[name]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if name == "dis_c" and self.cfg.content_grad_clip > 0:
            nn.utils.clip_grad_norm_(self.nets.dis_c.parameters(), self.cfg.content_grad_clip)
        optimizer.step()

    def set_lr(self) -> float:
        """Apply the schedule for the next update; returns the factor."""
        factor = lr_factor(self.iteration, self.cfg)
        for name, optimizer in self.optimizers.items():
            for group in optimizer.param_groups:
                group["lr"] = self.base_lr[name] * factor
        return factor

    # -- updates ---------------------------------------------------------------------------------

    def content_step(self, images: np.ndarray, domains: np.ndarray) -> dict[str, float]:
        """Update D_c on one batch: BCE(D_c(E_c(x)), c); E_c runs without gradients."""
        x, c = self._inputs(images, domains)
        with self._autocast():
            with torch.no_grad():
                content = self.nets.enc_c(x)
            loss = L.domain_classification(self.nets.dis_c(content), c)
        values = {"d_content": loss.detach()}
        self._step("dis_c", loss, values)
        return {k: float(v) for k, v in values.items()}

    def full_step(
        self, images: np.ndarray, domains: np.ndarray, masks: np.ndarray | None = None
    ) -> dict[str, float]:
        """Forward pass of docs/gan.md, the dis1/dis2 step, then one E_c/E_a/G step.

        Args:
            images: uint8 (N, H, W, 3), N even; halves A = [:N/2], B = [N/2:].
            domains: int (N,).
            masks: bool (N, H, W) foreground of the images, for the structure term (with
                ``w_structure > 0``).

        Returns:
            Every loss term as a float (``d_*``: discriminators, the rest: generator side,
            ``g_total`` the weighted sum).

        Raises:
            TrainingDiverged: A loss is NaN or infinite (nothing is stepped).
        """
        cfg, net = self.cfg, self.nets
        x, c = self._inputs(images, domains)
        n = x.shape[0]
        with self._autocast():
            content = net.enc_c(x)
            mu, logvar = net.enc_a(x, c)
            attribute = _reparameterise(mu, logvar)
            z_random = torch.randn(n // 2, cfg.attribute_dim, device=self.device).repeat(2, 1)
            # G's first residual block sees only the content: run it once per real image
            shared = net.gen.share(content)
            fakes = net.gen.decode(
                torch.cat([_swap(shared), shared, _swap(shared)]),
                torch.cat([attribute, attribute, z_random]),
                c.repeat(3, 1),
            )
            fake_cross, fake_self, fake_random = fakes.split(n)  # cross: B's content, A's style
            content_cross = net.enc_c(fake_cross.contiguous(memory_format=self.memory_format))
            if cfg.latent_regression == "histaugan":
                mu_fake, logvar_fake = net.enc_a(
                    torch.cat([fake_cross, fake_random]), c.repeat(2, 1)
                )
                mu_cross, logvar_cross, mu_random = mu_fake[:n], logvar_fake[:n], mu_fake[n:]
            else:  # E_a's weights get no gradient from the latent regression (MDMM)
                mu_cross, logvar_cross = net.enc_a(fake_cross, c)
                detached = {k: v.detach() for k, v in net.enc_a.named_parameters()}
                mu_random, _ = torch.func.functional_call(net.enc_a, detached, (fake_random, c))
            attribute_cross = _reparameterise(mu_cross, logvar_cross)
            cycle = net.gen(_swap(content_cross), attribute_cross, c)

            d_loss, d_values = self._discriminator_losses(x, c, fake_cross, fake_random)
        d_values = {k: v.detach() for k, v in d_values.items()}
        self._step("dis", d_loss, d_values)

        with _frozen(net.dis1, net.dis2, net.dis_c), self._autocast():
            patches1, classes1 = net.dis1(fake_cross)
            patches2, classes2 = net.dis2(fake_random)
            g_values = {
                "g_adv1": L.adversarial(patches1, True),
                "g_adv2": L.adversarial(patches2, True),
                "g_cls1": L.domain_classification(classes1, c),
                "g_cls2": L.domain_classification(classes2, c),
                "g_content": L.domain_classification(net.dis_c(content), 1.0 - c),
                "cross_cycle": L.l1(cycle, x),
                "self_recon": L.l1(fake_self, x),
                "latent": L.latent_regression(mu_random, z_random),
                "kl": L.kl_attribute(mu, logvar),
                "kl_content": L.content_l2(content),
            }
            if self.structure is not None and masks is not None:
                fakes3 = torch.cat([fake_cross, fake_self, fake_random])
                g_values["structure"] = self._structure_term(fakes3, masks, domains)
            weights = _generator_weights(cfg)
            g_loss = torch.stack([weights[k] * v for k, v in g_values.items()]).sum()
        values = {**{k: v.detach() for k, v in g_values.items()}, "g_total": g_loss.detach()}
        self._step("gen", g_loss, values)
        return {k: float(v) for k, v in {**d_values, **values}.items()}

    def _discriminator_losses(
        self, x: torch.Tensor, c: torch.Tensor, fake_cross: torch.Tensor, fake_random: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """dis1 on the encoded-attribute fakes, dis2 on the random-attribute ones: real/fake and
        domain classification of the reals; the weighted sum and each term."""
        n = x.shape[0]
        values: dict[str, torch.Tensor] = {}
        nets = (("d1", self.nets.dis1, fake_cross), ("d2", self.nets.dis2, fake_random))
        for name, dis, fake in nets:
            patches, classes = dis(torch.cat([x, fake.detach()]))
            values[f"{name}_adv"] = L.adversarial(patches[:n], True) + L.adversarial(
                patches[n:], False
            )
            values[f"{name}_cls"] = L.domain_classification(classes[:n], c)
        total = torch.stack(
            [values[f"{k}_adv"] + self.cfg.w_cls * values[f"{k}_cls"] for k in ("d1", "d2")]
        ).sum()
        return total, values

    def _structure_term(
        self, fakes: torch.Tensor, masks: np.ndarray, domains: np.ndarray
    ) -> torch.Tensor:
        """The nucleus-visibility loss of the cross, self and random fakes (concatenated in
        that order): the cross and random fakes show the other half's nuclei in this domain,
        the self-reconstruction its own."""
        assert self.structure is not None
        own = torch.from_numpy(masks).to(self.device)[:, None].float()
        index = torch.as_tensor(domains, device=self.device)
        t = {k: v[index].repeat(3, *([1] * (v.dim() - 1))) for k, v in self.structure.items()}
        if self.sign is not None:  # back to the real images' polarity
            fakes = fakes * self.sign[index].repeat(3).view(-1, 1, 1, 1)
        return L.nucleus_visibility(
            fakes,
            torch.cat([_swap(own), own, _swap(own)]),
            t["plane"],
            t["polarity"],
            t["target"],
            t["gap"],
        )

    def warmup_step(self, images: np.ndarray, domains: np.ndarray) -> dict[str, float]:
        """One autoencoder update of E_c, E_a and G: self-reconstruction and the two KL terms,
        weighted as in :meth:`full_step`; the discriminators are not used.

        Raises:
            TrainingDiverged: A loss is NaN or infinite (nothing is stepped).
        """
        cfg, net = self.cfg, self.nets
        x, c = self._inputs(images, domains)
        with self._autocast():
            content = net.enc_c(x)
            mu, logvar = net.enc_a(x, c)
            values = {
                "self_recon": L.l1(net.gen(content, _reparameterise(mu, logvar), c), x),
                "kl": L.kl_attribute(mu, logvar),
                "kl_content": L.content_l2(content),
            }
            loss = (
                cfg.w_recon * values["self_recon"]
                + cfg.w_kl * values["kl"]
                + cfg.w_kl_content * values["kl_content"]
            )
        values = {**{k: v.detach() for k, v in values.items()}, "g_total": loss.detach()}
        self._step("gen", loss, values)
        return {k: float(v) for k, v in values.items()}

    def train_iteration(self, sampler: DomainSampler) -> dict[str, float]:
        """One iteration: an autoencoder update during the first ``warmup`` iterations, then
        ``d_iter - 1`` content-D updates and a full update (batches drawn from ``sampler``);
        advances :attr:`iteration`. Returns the losses (D_c averaged)."""
        lr = self.set_lr()
        if self.iteration < self.cfg.warmup:
            values = self.warmup_step(*sampler.draw())
            values["lr_factor"] = lr
            self.iteration += 1
            return values
        content = [
            self.content_step(*sampler.draw())["d_content"] for _ in range(self.cfg.d_iter - 1)
        ]
        values = self.full_step(*sampler.draw_with_masks())
        if content:
            values["d_content"] = float(np.mean(content))
        values["lr_factor"] = lr
        self.iteration += 1
        return values

    # -- state -----------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """Weights, optimiser states and the iteration (tensors and plain data only)."""
        return {
            "iteration": self.iteration,
            "nets": self.nets.state_dict(),
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
        }

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state` returned."""
        self.nets.load_state_dict(state["nets"])
        for name, optimizer in self.optimizers.items():
            optimizer.load_state_dict(state["optimizers"][name])
        self.iteration = int(state["iteration"])


@torch.no_grad()
def attribute_statistics(
    enc_a: AttributeEncoder,
    data: DomainSet,
    crop: int,
    device: torch.device,
    dtype: torch.dtype | None = None,
    per_domain: int = 0,
    batch_size: int = 8,
    inverted: Sequence[int] = (),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-domain mean and std of the attribute code of the training images.

    Each image is centre-cropped (MDMM's test transform) and encoded with its own domain. The
    statistics are those of the aggregate posterior, a mixture of N(μ_i, σ_i²): mean = mean(μ),
    std = sqrt(var(μ) + mean(σ²)), per dimension.

    Args:
        enc_a: Trained attribute encoder.
        data: The training set.
        crop: Crop side.
        device: Where to run.
        dtype: Autocast dtype.
        per_domain: Images used per domain, the first ones by ImageId (0: all).
        batch_size: Images per forward pass.
        inverted: Domains whose images E_a sees inverted (see :class:`GanTrainer`).

    Returns:
        ``(mean, std)``, float32 tensors of shape (C, attribute_dim), on the CPU.
    """
    means, stds = [], []
    with contextlib.ExitStack() as stack:
        if enc_a.training:
            stack.callback(enc_a.train)
            enc_a.eval()
        for domain, members in enumerate(data.members):
            chosen = members if per_domain <= 0 else members[:per_domain]
            mus, variances = [], []
            for start in range(0, chosen.size, batch_size):
                batch = [
                    centre_crop(data.images[i], crop) for i in chosen[start : start + batch_size]
                ]
                x = to_tensor(batch).to(device)
                if domain in inverted:
                    x = -x
                c = one_hot([domain] * len(batch), data.n_domains).to(device)
                with autocast(device, dtype):
                    mu, logvar = enc_a(x, c)
                mus.append(mu.float().cpu())
                variances.append(logvar.float().exp().cpu())
            mu_all, var_all = torch.cat(mus), torch.cat(variances)
            means.append(mu_all.mean(0))
            stds.append((mu_all.var(0, unbiased=False) + var_all.mean(0)).sqrt())
    return torch.stack(means), torch.stack(stds)


def _model_state(
    trainer: GanTrainer,
    data: DomainSet,
    cfg: GanConfig,
    mean: torch.Tensor,
    std: torch.Tensor,
    inverted: Sequence[int],
) -> dict[str, Any]:
    nets = {
        name: {
            k: v.detach().cpu().contiguous()
            for k, v in getattr(trainer.nets, name).state_dict().items()
        }
        for name in GENERATOR_SIDE
    }
    return {
        "format": MODEL_FORMAT,
        "config": cfg.fingerprint(),
        "iteration": trainer.iteration,
        "nets": nets,
        "attribute_mean": mean,
        "attribute_std": std,
        "domain_names": list(data.names),
        "cluster_ids": list(range(data.n_domains)),
        "inverted_domains": list(inverted),
        "data_fingerprint": data.fingerprint,
    }


def _monitor(
    monitor: Callable[[dict[str, Any], DomainSet], Mapping[str, float]],
    trainer: GanTrainer,
    data: DomainSet,
    cfg: GanConfig,
    device: torch.device,
    dtype: torch.dtype | None,
    inverted: Sequence[int],
) -> dict[str, float]:
    """Run ``monitor`` on the current weights (attribute statistics from a few images).

    The global random generators are restored afterwards: watching a run does not change it
    (the same weights whatever ``monitor_every`` is).
    """
    tic = time.perf_counter()
    rng = get_rng_state()
    try:
        mean, std = attribute_statistics(
            trainer.nets.enc_a, data, cfg.crop, device, dtype, MONITOR_STATS_IMAGES,
            inverted=inverted,
        )  # fmt: skip
        values = dict(monitor(_model_state(trainer, data, cfg, mean, std, inverted), data))
    finally:
        set_rng_state(rng)
    log.info(
        "iteration %d monitor (%.1f s): %s",
        trainer.iteration,
        time.perf_counter() - tic,
        "  ".join(f"{k} {v:.3g}" for k, v in values.items()),
    )
    return values


def _training_looks(data: DomainSet) -> list[DomainLook | None]:
    """How each domain's nuclei look in its training images (the structure term's targets)."""
    assert data.labels is not None
    labels = data.labels
    looks = domain_looks(
        ((data.images[i], labels[i], d) for d, members in enumerate(data.members) for i in members),
        data.n_domains,
        per_domain=LOOK_IMAGES,
    )
    for name, look in zip(data.names, looks, strict=True):
        if look is None:
            log.warning("domain %s has no image with masks: no structure term into it", name)
        else:
            log.info(
                "domain %s: nuclei %s on %s, d' %.2f",
                name,
                "bright" if look.polarity > 0 else "dark",
                PLANES[look.plane],
                look.visibility,
            )
    return looks


class GanTask:
    """The GAN's training as a :class:`nucleistyle.training.Task`: the trainer's iterations on
    batches from a domain-balanced sampler, the monitor as its evaluation.

    Args:
        cfg: Hyper-parameters.
        runtime: Device and precision.
        data: The training set.
        checkpoint: Named in a divergence message.
        looks: How each domain's nuclei look (see :class:`GanTrainer`).
        monitor: See :func:`train_gan` (None: no evaluation rows).
    """

    def __init__(
        self,
        cfg: GanConfig,
        runtime: Runtime,
        data: DomainSet,
        checkpoint: PathLike | None,
        looks: Sequence[DomainLook | None] | None,
        monitor: Callable[[dict[str, Any], DomainSet], Mapping[str, float]] | None,
    ) -> None:
        self.cfg, self.runtime, self.data, self.monitor = cfg, runtime, data, monitor
        self.inverted = inverted_domains(looks or [], cfg.polarity)
        if self.inverted:
            names = ", ".join(data.names[d] for d in self.inverted)
            log.info("gan.polarity canonical: the GAN sees %s inverted (bright nuclei)", names)
        structure = looks if cfg.w_structure > 0 else None
        self.trainer = GanTrainer(
            cfg, runtime.device, runtime.dtype, checkpoint, structure, self.inverted
        )
        self.sampler = DomainSampler(data, cfg.batch_size, cfg.crop, cfg.flip, cfg.seed)

    def step(self, iteration: int) -> dict[str, float]:
        return self.trainer.train_iteration(self.sampler)

    def evaluate(self, iteration: int) -> dict[str, float]:
        if self.monitor is None:
            return {}
        rt = self.runtime
        return _monitor(
            self.monitor, self.trainer, self.data, self.cfg, rt.device, rt.dtype, self.inverted
        )

    def state(self) -> dict[str, Any]:
        return {**self.trainer.state(), "sampler": self.sampler.state()}

    def load_state(self, state: Mapping[str, Any]) -> None:
        self.trainer.load_state(state)
        self.sampler.set_state(state["sampler"])

    def model_file(self, iteration: int, history: LossHistory) -> dict[str, Any]:
        """E_c, E_a and G with the per-domain attribute statistics of the training images."""
        cfg, rt = self.cfg, self.runtime
        mean, std = attribute_statistics(
            self.trainer.nets.enc_a, self.data, cfg.crop, rt.device, rt.dtype, cfg.stats_images,
            inverted=self.inverted,
        )  # fmt: skip
        return _model_state(self.trainer, self.data, cfg, mean, std, self.inverted)


def train_gan(
    images_dir: PathLike,
    assignments_csv: PathLike,
    out_model: PathLike,
    cfg: GanConfig,
    checkpoint: PathLike | None = None,
    history_tsv: PathLike | None = None,
    monitor: Callable[[dict[str, Any], DomainSet], Mapping[str, float]] | None = None,
) -> Path:
    """Train the GAN on the clustered training images and write the inference model.

    Runs on the shared loop of :mod:`nucleistyle.training`: resumes from ``checkpoint`` when it
    exists (same configuration and training set except for :data:`RESUME_IGNORES`;
    ``iterations`` may have grown) and writes it every ``checkpoint_every`` iterations and at
    the end. A NaN or infinite loss stops the run with
    :class:`~nucleistyle.torchutils.TrainingDiverged`; the last checkpoint is kept and the
    history so far is written.

    Args:
        images_dir: Training images (BBBC038 layout or a flat folder).
        assignments_csv: Cluster assignment table (ImageId, cluster, name, ...).
        out_model: The model file (E_c, E_a, G weights, config, per-domain attribute
            statistics, domain names and cluster ids; ``torch.load(weights_only=True)``-able).
        cfg: Hyper-parameters.
        checkpoint: Training checkpoint to resume from and write (None: no checkpoints).
        history_tsv: Loss history (one row per ``log_every`` iterations, averaged), plus the
            monitor's rows.
        monitor: Called every ``cfg.monitor_every`` iterations and at the end with the
            current model state (as written to the model file) and the training set; what it
            returns is added to the history at that iteration (e.g.
            :class:`nucleistyle.gan.evaluate.TransferMonitor`).

    Returns:
        ``out_model``.

    Raises:
        NucleistyleError: Bad input (empty folder, image without assignment, a domain without
            images, a checkpoint of another configuration or training set), each naming the file.
        TrainingDiverged: A loss became NaN or infinite.
    """
    runtime = Runtime.select(cfg.device, cfg.precision, cfg.seed, "gan")
    needs_masks = cfg.w_structure > 0 or cfg.polarity == "canonical"
    data = load_domain_set(
        images_dir, assignments_csv, cfg.n_domains, cfg.resize, cfg.crop, cfg.workers, needs_masks
    )
    looks = _training_looks(data) if needs_masks else None  # before the seed, as it always was
    plan = TrainingPlan(
        budget=cfg.iterations,
        budget_key="gan.iterations",
        seed=cfg.seed,
        log_every=cfg.log_every,
        checkpoint_every=cfg.checkpoint_every,
        evaluate_every=cfg.monitor_every,
        fingerprint={**cfg.fingerprint(), "data": data.fingerprint},
        checkpoint=checkpoint,
        resume_ignores=RESUME_IGNORES,
        checkpoint_format=CHECKPOINT_FORMAT,
        name="gan",
    )
    return train(
        plan,
        lambda state: GanTask(cfg, runtime, data, checkpoint, looks, monitor),
        out_model,
        history_tsv,
    )
