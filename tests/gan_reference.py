"""The GAN's six networks written layer by layer, and a training update that uses them.

:mod:`~nucleistyle.gan.networks` rewrites several layers for speed; this module writes the same
architecture the straightforward way, as the upstream implementation does: a separate
``nn.ReflectionPad2d`` before each padded convolution, G's LayerNorm over (C, H, W) with a
per-channel affine (``F.layer_norm`` with the affine expanded), the domain and attribute codes
tiled into planes and concatenated, E_a's 3x3 convolution followed by a 2x2 average pool, G's
last layer a transposed 1x1 convolution on the concatenated planes, and G's first residual
block run once per translation. Two uses:

* the tests load the weights of the fast nets into these (:func:`copy_weights`) and check that
  every rewrite computes the same function, gradients included;
* ``bench/bench_gan.py`` times :class:`PlainTrainer` (``torch.optim.Adam`` without the fused
  kernel, glibc's default allocator behaviour) as the baseline its ratios are against, in the
  precision of ours it is compared with (fp32, and bf16 autocast): same layer sizes, same
  losses and the same update as :class:`~nucleistyle.gan.engine.GanTrainer`.

A test oracle, not part of the library: it lives beside the tests (``tests.gan_reference``,
importable from the repository root).
"""

from __future__ import annotations

import dataclasses
import itertools

import torch
import torch.nn.functional as F
from torch import nn

from nucleistyle.gan.configs import GanConfig
from nucleistyle.gan.engine import GanNets, GanTrainer
from nucleistyle.gan.networks import (
    CONTENT_D_MIN,
    AttributeEncoder,
    ResBlock,
    _BasicBlock,
    discriminator_depth,
    tile,
)

__all__ = [
    "PlainAttributeEncoder",
    "PlainContentDiscriminator",
    "PlainContentEncoder",
    "PlainGanNets",
    "PlainGenerator",
    "PlainImageDiscriminator",
    "PlainTrainer",
    "copy_weights",
]


def _conv(cin: int, cout: int, k: int, s: int = 1, p: int = 0) -> nn.Module:
    """Reflection padding, then an unpadded convolution (upstream's two layers)."""
    if not p:
        return nn.Conv2d(cin, cout, k, s)
    return nn.Sequential(nn.ReflectionPad2d(p), nn.Conv2d(cin, cout, k, s))


def _conv_leaky(cin: int, cout: int, k: int, s: int, p: int) -> nn.Sequential:
    return nn.Sequential(_conv(cin, cout, k, s, p), nn.LeakyReLU(0.01, inplace=True))


def _conv_ins_relu(cin: int, cout: int, k: int, s: int, p: int) -> nn.Sequential:
    return nn.Sequential(_conv(cin, cout, k, s, p), nn.InstanceNorm2d(cout), nn.ReLU(inplace=True))


def _res_block(channels: int) -> ResBlock:
    """[pad, conv3, IN, ReLU, pad, conv3, IN] + identity."""
    return ResBlock(channels, conv=_conv)


class _LayerNorm(nn.Module):
    """Normalise over (C, H, W), then a per-channel affine of shape (C, 1, 1) (upstream's form)."""

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape[1:]
        return F.layer_norm(x, shape, self.weight.expand(shape), self.bias.expand(shape), self.eps)


class _PlainBasicBlock(_BasicBlock):
    """E_a block: [LReLU .2, conv3, LReLU .2, conv3, avgpool2] + [avgpool2, conv1], run as
    written (the library fuses the last conv with the pooling)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(cin, cout, conv=_conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x) + self.shortcut(x)


class PlainContentEncoder(nn.Module):
    """E_c: conv7 -> 2 x [conv3 s2, IN, ReLU] -> 4 residual blocks (+ N(0, 1) noise in training)."""

    def __init__(self, base: int = 64) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            _conv_leaky(3, base, 7, 1, 3),
            _conv_ins_relu(base, 2 * base, 3, 2, 1),
            _conv_ins_relu(2 * base, 4 * base, 3, 2, 1),
            *(_res_block(4 * base) for _ in range(4)),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.layers(x)
        return z + torch.randn_like(z) if self.training else z


class PlainAttributeEncoder(AttributeEncoder):
    """E_a on the concatenated input [x; tile(c)] -> (μ, clamped log σ²), float32."""

    conv = staticmethod(_conv)
    block = _PlainBasicBlock

    def forward(self, x: torch.Tensor, domain: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.layers(torch.cat([x, tile(domain, x)], dim=1)).float()
        logvar = self.fc_logvar(h).clamp(-self.logvar_clamp, self.logvar_clamp)
        return self.fc_mu(h), logvar


class PlainGenerator(nn.Module):
    """G ("concat"): the attribute tiled and concatenated 4 times, the domain once.

    :meth:`share` is the identity and :meth:`decode` runs the first residual block itself, so
    :class:`GanTrainer`'s update runs it once per translation, as upstream does.
    """

    def __init__(
        self, n_domains: int, base: int = 64, attribute_dim: int = 8, upsample: str = "transpose"
    ) -> None:
        if upsample != "transpose":
            raise ValueError("the layer-by-layer reference has the paper's transposed convolutions")
        super().__init__()
        a = attribute_dim
        c0 = 4 * base + n_domains + a
        c1 = c0 + a
        c2 = c1 // 2 + a
        c3 = c2 // 2 + a
        self.dec_share = _res_block(4 * base)
        self.res = nn.Sequential(*(_res_block(c0) for _ in range(3)))
        self.up1 = nn.Sequential(
            nn.ConvTranspose2d(c1, c1 // 2, 3, 2, 1, output_padding=1),
            _LayerNorm(c1 // 2),
            nn.ReLU(inplace=True),
        )
        self.up2 = nn.Sequential(
            nn.ConvTranspose2d(c2, c2 // 2, 3, 2, 1, output_padding=1),
            _LayerNorm(c2 // 2),
            nn.ReLU(inplace=True),
        )
        self.out = nn.ConvTranspose2d(c3, 3, 1)

    def share(self, content: torch.Tensor) -> torch.Tensor:
        return content

    def decode(
        self, content: torch.Tensor, attribute: torch.Tensor, domain: torch.Tensor
    ) -> torch.Tensor:
        x = self.dec_share(content)
        x = self.res(torch.cat([x, tile(domain, x), tile(attribute, x)], dim=1))
        x = self.up1(torch.cat([x, tile(attribute, x)], dim=1))
        x = self.up2(torch.cat([x, tile(attribute, x)], dim=1))
        return torch.tanh(self.out(torch.cat([x, tile(attribute, x)], dim=1))).float()

    def forward(
        self, content: torch.Tensor, attribute: torch.Tensor, domain: torch.Tensor
    ) -> torch.Tensor:
        return self.decode(content, attribute, domain)


class PlainImageDiscriminator(nn.Module):
    """dis1 / dis2: [pad, conv3 s2, LReLU .01] x 6 (fewer below crop 128, as
    :func:`~.networks.discriminator_depth`), real/fake and domain heads (float32)."""

    def __init__(self, n_domains: int, crop: int = 216, base: int = 64) -> None:
        super().__init__()
        depth = discriminator_depth(crop)
        widths = [3, base, 2 * base, 4 * base, 8 * base, 16 * base, 16 * base][: depth + 1]
        side = crop
        for _ in range(depth):  # each padded 3x3 stride-2 layer: ceil(side / 2)
            side = -(-side // 2)
        self.trunk = nn.Sequential(
            *(_conv_leaky(a, b, 3, 2, 1) for a, b in itertools.pairwise(widths))
        )
        self.real_fake = nn.Conv2d(widths[-1], 1, 1, padding=1, bias=False)
        self.domain = nn.Conv2d(widths[-1], n_domains, min(max(1, crop // 64), side), bias=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.trunk(x)
        return self.real_fake(h).float().flatten(1), self.domain(h).float().mean(dim=(2, 3))


class PlainContentDiscriminator(nn.Module):
    """D_c: 3 x [pad, conv7 s2, LReLU] -> conv4 + LReLU -> conv1 -> C logits (float32)."""

    def __init__(self, n_domains: int, base: int = 64) -> None:
        super().__init__()
        c = 4 * base
        self.layers = nn.Sequential(
            *(_conv_leaky(c, c, 7, 2, 1) for _ in range(3)),
            _conv_leaky(c, c, 4, 1, 0),
            nn.Conv2d(c, n_domains, 1),
        )

    def forward(self, content: torch.Tensor) -> torch.Tensor:
        h, w = content.shape[2:]
        if min(h, w) < CONTENT_D_MIN:  # as networks.ContentDiscriminator (small test crops)
            size = (max(h, CONTENT_D_MIN), max(w, CONTENT_D_MIN))
            content = F.interpolate(content, size=size, mode="bilinear", align_corners=False)
        return self.layers(content).float().mean(dim=(2, 3))


class PlainGanNets(GanNets):
    """The six plain networks with :class:`~.trainer.GanNets`' attribute names and init."""

    content_encoder = PlainContentEncoder
    attribute_encoder = PlainAttributeEncoder
    generator = PlainGenerator
    image_discriminator = PlainImageDiscriminator
    content_discriminator = PlainContentDiscriminator


@torch.no_grad()
def copy_weights(source: nn.Module, plain: nn.Module) -> None:
    """Copy a fast net's parameters into its plain counterpart (same order and sizes).

    Raises:
        ValueError: the two nets do not have parameters of the same sizes in the same order.
    """
    pairs = list(itertools.zip_longest(source.parameters(), plain.parameters()))
    if any(a is None or b is None or a.numel() != b.numel() for a, b in pairs):
        raise ValueError("the nets' parameters differ in number or size")
    for a, b in pairs:
        b.copy_(a.reshape(b.shape))


class PlainTrainer(GanTrainer):
    """:class:`GanTrainer`'s updates (the same code) on :class:`PlainGanNets`.

    It starts from the weights a :class:`GanTrainer` of ``cfg`` would start from
    (same seed, same weights), and its optimisers have the trainer's parameter groups and
    settings, but run ``torch.optim.Adam``'s default (unfused) implementation. ``dtype`` is the
    autocast dtype, as the trainer's (None: fp32; ``torch.bfloat16``: the bf16 reference that
    the bench compares our bf16 update with).
    """

    def __init__(
        self, cfg: GanConfig, device: torch.device, dtype: torch.dtype | None = None
    ) -> None:
        super().__init__(dataclasses.replace(cfg, channels_last=False), device, dtype)
        plain = PlainGanNets(cfg).to(device)
        copy_weights(self.nets, plain)
        same = dict(zip(map(id, self.nets.parameters()), plain.parameters(), strict=True))
        self.nets = plain
        self.optimizers = {
            name: torch.optim.Adam(
                [
                    {**group, "params": [same[id(p)] for p in group["params"]], "fused": None}
                    for group in optimizer.param_groups
                ]
            )
            for name, optimizer in self.optimizers.items()
        }
