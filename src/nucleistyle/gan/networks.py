"""The six networks of the multi-domain disentangled GAN (DRIT++ / MDMM, as packaged by HistAuGAN).

MDMM's architecture (summarised, with its sources, in docs/gan.md), re-implemented from the
published descriptions; no upstream code.
All widths scale with ``base`` (64 in the paper); ``n_domains`` is C, ``attribute_dim`` is 8.

* :class:`ContentEncoder` E_c: image (N, 3, H, W) -> content map z_c (N, 4b, ⌈H/4⌉, ⌈W/4⌉).
* :class:`AttributeEncoder` E_a: image + domain one-hot -> (μ, log σ²), each (N, 8).
* :class:`Generator` G: (z_c, z_a, c) -> image in [-1, 1], attribute and domain tiled and
  concatenated on the channel axis ("concat" variant).
* :class:`ImageDiscriminator` (two copies, dis1/dis2): PatchGAN real/fake logits + a domain head.
* :class:`ContentDiscriminator` D_c: domain logits from z_c.

Parameter counts for C = 6, base 64, crop 216 equal docs/gan.md exactly (E_c 5,099,136;
E_a 1,350,224; G 5,563,619; each image D 15,765,120; D_c 10,684,934); ``tests/test_gan_model.py``
checks them. Deliberate deviations, all without a parameter change:

1. Reflection padding is folded into the convolutions (``padding_mode="reflect"``): same maths
   and state shapes, one op fewer; it pads in the autocast dtype (:class:`_ReflectConv2d`).
2. G's "MUNIT LayerNorm" (normalise over C, H, W; per-channel affine) is ``nn.GroupNorm(1, C)``:
   one fused kernel, biased variance, affine initialised to (1, 0) (MUNIT draws γ ~ U[0, 1)).
3. D_c ends in a global average pool instead of a reshape that needs a 1x1 map, and a content
   map smaller than :data:`CONTENT_D_MIN` px is resized up to it first (bilinear): the upstream
   D_c only works for crops of 209-240 px (DRIT issue #42); at crop 216 nothing changes.
4. The image discriminator's domain head has kernel ``max(1, crop // 64)`` (3 at 216, as
   upstream) so that small test crops work; its real/fake head keeps upstream's ``padding=1``
   (a ring of zero logits; changing it would re-weight the adversarial loss). Below crop 128
   it has fewer than six stride-2 layers (:func:`discriminator_depth`), so that its real/fake
   map stays 4 x 4 as at the paper's crop; at crop 216 nothing changes.
5. The attribute encoder's log-variance is clamped to ``±logvar_clamp`` (HistAuGAN saw ``inf``
   from ``exp(logvar)``).
6. G's first residual block (``share``) depends on z_c only; :meth:`Generator.decode` lets the
   trainer run it once per distinct content instead of once per translation (identical maths).

Three more rewrites change the arithmetic, not the function (equal up to rounding; tests compare
each with the layer-by-layer form), for speed: E_a's "conv3x3 then 2x2 average pool" runs as one
4x4 stride-2 convolution (:meth:`_ReflectConv2d.pooled`); E_a's tiled domain planes and G's last
tiled attribute planes are constant over the image, so their share of the next layer is added as
one vector per image instead of being convolved; G's final 1x1 transposed convolution is a matrix
product. Together with the bf16 padding they make a bf16 update on a 2-core CPU ~10 % faster
(``make bench``).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "CONTENT_D_MIN",
    "UPSAMPLING",
    "AttributeEncoder",
    "ContentDiscriminator",
    "ContentEncoder",
    "Generator",
    "ImageDiscriminator",
    "count_parameters",
    "discriminator_depth",
    "init_weights",
    "tile",
]

CONTENT_D_MIN = 53  # smallest content map the D_c geometry accepts (crop 209, docs/gan.md)


def count_parameters(module: nn.Module) -> int:
    """Number of parameters of ``module``."""
    return sum(p.numel() for p in module.parameters())


def init_weights(module: nn.Module) -> None:
    """Upstream initialisation: conv and transposed-conv weights ~ N(0, 0.02); all else default.

    (HistAuGAN once had std 0.2 here, which made training blow up to ``inf``.)
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
            nn.init.normal_(m.weight, 0.0, 0.02)


def tile(vector: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Broadcast (N, K) to (N, K, H, W) with the spatial size of ``like`` (a view, no copy)."""
    n, k = vector.shape
    return vector.to(like.dtype).view(n, k, 1, 1).expand(n, k, like.shape[2], like.shape[3])


class _ReflectPad(torch.autograd.Function):
    """``F.pad(x, pad, mode="reflect")`` with a backward that folds the borders back by slicing.

    ATen's ``reflection_pad2d_backward`` is a scalar scatter, and slower still in bf16: folding
    the padded strips onto the rows and columns they mirror is the same sum in two cheap passes.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, pad: tuple[int, int, int, int]) -> torch.Tensor:
        ctx.pad = pad
        return F.pad(x, pad, mode="reflect")

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        left, right, top, bottom = ctx.pad
        h, w = grad.shape[-2] - top - bottom, grad.shape[-1] - left - right
        cols = grad[..., left : left + w].clone()  # padded column left - j mirrors column j
        if left:
            cols[..., 1 : left + 1] += grad[..., :left].flip(-1)
        if right:
            cols[..., w - 1 - right : w - 1] += grad[..., left + w :].flip(-1)
        rows = cols[..., top : top + h, :]
        if top:
            rows[..., 1 : top + 1, :] += cols[..., :top, :].flip(-2)
        if bottom:
            rows[..., h - 1 - bottom : h - 1, :] += cols[..., top + h :, :].flip(-2)
        return rows, None


class _ReflectConv2d(nn.Conv2d):
    """Reflect-padded ``nn.Conv2d`` that pads in the autocast dtype (:class:`_ReflectPad`).

    CPU autocast runs ``reflection_pad2d`` in fp32, so a bf16 activation would be widened,
    padded and narrowed again for the convolution (and the same in backward); padding the
    already-narrowed tensor gives bit-identical values with a third of the memory traffic.
    """

    def _padded(self, x: torch.Tensor) -> torch.Tensor:
        device = x.device.type
        if torch.is_autocast_enabled(device):
            x = x.to(torch.get_autocast_dtype(device))
        with torch.autocast(device, enabled=False):
            return _ReflectPad.apply(x, self._reversed_padding_repeated_twice)

    def _conv_forward(
        self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        return F.conv2d(self._padded(x), weight, bias, self.stride, 0, self.dilation, self.groups)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """``avg_pool2d(self(x), 2)`` as one stride-2 convolution (for a 3x3, stride-1 layer).

        Averaging 2x2 outputs of a 3x3 kernel is a 4x4 stride-2 kernel (the 3x3 one summed over
        its four shifts, / 4) on the same padded input: the same linear map (odd sizes floor
        alike), with 4/9 of the multiply-adds and no pooling pass.
        """
        w = self.weight
        kernel = torch.stack(
            [F.pad(w, (left, 1 - left, top, 1 - top)) for top in (0, 1) for left in (0, 1)]
        ).sum(0)
        return F.conv2d(self._padded(x), kernel / 4, self.bias, 2)


def _conv(cin: int, cout: int, k: int, s: int = 1, p: int = 0, bias: bool = True) -> nn.Conv2d:
    if not p:
        return nn.Conv2d(cin, cout, k, s, bias=bias)
    return _ReflectConv2d(cin, cout, k, s, p, bias=bias, padding_mode="reflect")


class _ConvLeaky(nn.Sequential):
    """Reflect-padded conv + LeakyReLU, no norm (upstream "LeakyReLUConv2d"; its norm never ran)."""

    def __init__(self, cin: int, cout: int, k: int, s: int, p: int, slope: float = 0.01) -> None:
        super().__init__(_conv(cin, cout, k, s, p), nn.LeakyReLU(slope, inplace=True))


class _ConvInsRelu(nn.Sequential):
    """Reflect-padded conv + InstanceNorm (no affine) + ReLU (upstream "ReLUINSConv2d")."""

    def __init__(self, cin: int, cout: int, k: int, s: int, p: int) -> None:
        super().__init__(_conv(cin, cout, k, s, p), nn.InstanceNorm2d(cout), nn.ReLU(inplace=True))


class ResBlock(nn.Module):
    """[conv3, IN, ReLU, conv3, IN] + identity; no activation after the sum ("INSResBlock")."""

    def __init__(self, channels: int, conv: Callable[..., nn.Module] | None = None) -> None:
        super().__init__()
        conv = conv or _conv  # the layer-by-layer reference passes its plain padded conv
        self.body = nn.Sequential(
            conv(channels, channels, 3, 1, 1),
            nn.InstanceNorm2d(channels),
            nn.ReLU(inplace=True),
            conv(channels, channels, 3, 1, 1),
            nn.InstanceNorm2d(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


UPSAMPLING = ("transpose", "resize")


class _UpLayerNorm(nn.Sequential):
    """x2 upsampling + LayerNorm over (C, H, W) + ReLU.

    ``transpose``: ConvTranspose (k3, s2, p1, output_padding 1), the paper's layer.
    ``resize``: nearest-neighbour x2, then a reflect-padded 3x3 convolution, the same parameter
    count without the uneven kernel overlap that paints a checkerboard (Odena et al., Distill
    2016; DRIT issue #36).
    """

    def __init__(self, cin: int, cout: int, upsample: str = "transpose") -> None:
        if upsample == "transpose":
            layers: list[nn.Module] = [nn.ConvTranspose2d(cin, cout, 3, 2, 1, output_padding=1)]
        elif upsample == "resize":
            layers = [nn.Upsample(scale_factor=2, mode="nearest"), _conv(cin, cout, 3, 1, 1)]
        else:
            raise ValueError(f"upsample must be one of {UPSAMPLING}, got {upsample!r}")
        super().__init__(*layers, nn.GroupNorm(1, cout), nn.ReLU(inplace=True))


class ContentEncoder(nn.Module):
    """E_c: conv7 (b) -> 2 x [conv3 s2, IN, ReLU] (2b, 4b) -> 4 residual blocks -> noise.

    In training mode std-1 Gaussian noise is added to the output (upstream GaussianNoiseLayer);
    use ``eval()`` for inference.

    Args:
        base: Width b (64 upstream); the content map has 4b channels.
    """

    def __init__(self, base: int = 64) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            _ConvLeaky(3, base, 7, 1, 3),
            _ConvInsRelu(base, 2 * base, 3, 2, 1),
            _ConvInsRelu(2 * base, 4 * base, 3, 2, 1),
            *(ResBlock(4 * base) for _ in range(4)),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) in [-1, 1] -> (N, 4b, ⌈H/4⌉, ⌈W/4⌉)."""
        z = self.layers(x)
        if self.training:
            z = z + torch.randn_like(z)
        return z


class _BasicBlock(nn.Module):
    """E_a block: [LReLU .2, conv3 (in->in), LReLU .2, conv3 (in->out), avgpool2] + shortcut."""

    def __init__(self, cin: int, cout: int, conv: Callable[..., nn.Module] | None = None) -> None:
        super().__init__()
        conv = conv or _conv  # the layer-by-layer reference passes its plain padded conv
        self.main = nn.Sequential(
            nn.LeakyReLU(0.2),
            conv(cin, cin, 3, 1, 1),
            nn.LeakyReLU(0.2, inplace=True),
            conv(cin, cout, 3, 1, 1),
            nn.AvgPool2d(2),
        )
        self.shortcut = nn.Sequential(nn.AvgPool2d(2), nn.Conv2d(cin, cout, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        relu_in, conv_in, relu_mid, conv_out, _ = self.main  # conv_out + pool run as one
        pool, conv_1x1 = self.shortcut
        assert isinstance(conv_out, _ReflectConv2d)
        return conv_out.pooled(relu_mid(conv_in(relu_in(x)))) + conv_1x1(pool(x))


class AttributeEncoder(nn.Module):
    """E_a (VAE, conditioned on the domain): [x; tile(c)] -> (μ, log σ²).

    Args:
        n_domains: C.
        base: Width b; blocks b -> 2b -> 3b -> 4b.
        attribute_dim: Size of z_a (8 upstream).
        logvar_clamp: log σ² is clamped to [-logvar_clamp, logvar_clamp].
    """

    # the layer types (the plain reference form swaps them)
    conv: Callable[..., nn.Module] = staticmethod(_conv)
    block: type[nn.Module] = _BasicBlock

    def __init__(
        self, n_domains: int, base: int = 64, attribute_dim: int = 8, logvar_clamp: float = 10.0
    ) -> None:
        super().__init__()
        widths = [base * min(4, n + 1) for n in range(4)]
        self.logvar_clamp = logvar_clamp
        self.layers = nn.Sequential(
            self.conv(3 + n_domains, base, 4, 2, 1),
            *(self.block(a, b) for a, b in itertools.pairwise(widths)),
            nn.LeakyReLU(0.2, inplace=True),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.fc_mu = nn.Linear(widths[-1], attribute_dim)
        self.fc_logvar = nn.Linear(widths[-1], attribute_dim)

    def forward(self, x: torch.Tensor, domain: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (N, 3, H, W), domain one-hot (N, C) -> μ, log σ² (N, attribute_dim), float32."""
        # The input is [x; tile(c)]: the domain planes are constant (reflect padding keeps them
        # so), so their share of the first convolution is one vector per image.
        first, k = self.layers[0], x.shape[1]
        assert isinstance(first, nn.Conv2d) and first.bias is not None
        h = first._conv_forward(x, first.weight[:, :k], None)
        h = h + (domain @ first.weight[:, k:].sum((2, 3)).t() + first.bias)[..., None, None]
        h = self.layers[1:](h).float()
        logvar = self.fc_logvar(h).clamp(-self.logvar_clamp, self.logvar_clamp)
        return self.fc_mu(h), logvar


class Generator(nn.Module):
    """G ("concat" variant): z_a enters 4 times, the domain once, both tiled and concatenated.

    share: ResBlock(4b) -> cat[c, z_a] -> 3 x ResBlock(4b + C + A) -> cat z_a -> up x2 (LayerNorm)
    -> cat z_a -> up x2 -> cat z_a -> ConvTranspose 1x1 -> 3 -> tanh.

    Args:
        n_domains: C.
        base: Width b (content map has 4b channels).
        attribute_dim: A = size of z_a.
        upsample: ``transpose`` (the paper's) or ``resize`` (see :class:`_UpLayerNorm`).
    """

    def __init__(
        self, n_domains: int, base: int = 64, attribute_dim: int = 8, upsample: str = "transpose"
    ) -> None:
        super().__init__()
        a = attribute_dim
        c0 = 4 * base + n_domains + a
        c1 = c0 + a
        c2 = c1 // 2 + a
        c3 = c2 // 2 + a
        self.share = ResBlock(4 * base)
        self.res = nn.Sequential(*(ResBlock(c0) for _ in range(3)))
        self.up1 = _UpLayerNorm(c1, c1 // 2, upsample)
        self.up2 = _UpLayerNorm(c2, c2 // 2, upsample)
        self.out = nn.ConvTranspose2d(c3, 3, 1)

    def decode(
        self, shared: torch.Tensor, attribute: torch.Tensor, domain: torch.Tensor
    ) -> torch.Tensor:
        """After ``share``: (N, 4b, h, w), (N, A), (N, C) -> (N, 3, 4h, 4w) in [-1, 1]."""
        x = self.res(torch.cat([shared, tile(domain, shared), tile(attribute, shared)], dim=1))
        x = self.up1(torch.cat([x, tile(attribute, x)], dim=1))
        x = self.up2(torch.cat([x, tile(attribute, x)], dim=1))
        return torch.tanh(self._project(x, attribute))

    def _project(self, x: torch.Tensor, attribute: torch.Tensor) -> torch.Tensor:
        """``self.out(cat[x, tile(attribute)])`` without the tiles, as a matrix product (float32).

        A 1x1 transposed convolution mixes channels per pixel; the attribute channels are constant
        over the image, so their share is one 3-vector per image, added after the product.
        """
        n, k, h, w = x.shape
        weight = self.out.weight.flatten(1)  # (c3, 3): rows k.. belong to the attribute
        y = torch.bmm(weight[:k].t().expand(n, 3, k), x.flatten(2)).float()  # stays NCHW
        assert self.out.bias is not None
        offset = (attribute @ weight[k:]).float() + self.out.bias
        return (y + offset[..., None]).view(n, 3, h, w)

    def forward(
        self, content: torch.Tensor, attribute: torch.Tensor, domain: torch.Tensor
    ) -> torch.Tensor:
        """z_c (N, 4b, h, w), z_a (N, A), one-hot (N, C) -> image (N, 3, 4h, 4w), float32."""
        return self.decode(self.share(content), attribute, domain)


def discriminator_depth(crop: int) -> int:
    """Stride-2 layers of the image discriminator for ``crop``: 6 (upstream) unless fewer are
    needed to keep its real/fake map at least 4 x 4 px.

    At crop 216 six layers leave a 4 x 4 map (16 informative logits of the 36 that the padded
    1x1 head gives). At crop 64 six layers would leave 1 x 1, one informative logit of 9, a
    quarter of the paper's adversarial signal; four layers keep 4 x 4.
    """
    depth, side = 0, crop
    while depth < 6 and -(-side // 2) >= 4:
        side = -(-side // 2)
        depth += 1
    return max(depth, 1)


class ImageDiscriminator(nn.Module):
    """dis1 / dis2: ``discriminator_depth(crop)`` x [conv3 s2 + LReLU .01] (b .. 16b; six at
    the paper's crop), real/fake and domain heads.

    Args:
        n_domains: C.
        crop: Training crop; sets the depth and the domain head's kernel
            ``min(max(1, crop // 64), final map side)``.
        base: Width b.
    """

    def __init__(self, n_domains: int, crop: int = 216, base: int = 64) -> None:
        super().__init__()
        depth = discriminator_depth(crop)
        widths = [3, base, 2 * base, 4 * base, 8 * base, 16 * base, 16 * base][: depth + 1]
        side = crop
        for _ in range(depth):
            side = -(-side // 2)
        self.trunk = nn.Sequential(
            *(_ConvLeaky(a, b, 3, 2, 1) for a, b in itertools.pairwise(widths))
        )
        self.real_fake = nn.Conv2d(widths[-1], 1, 1, padding=1, bias=False)
        self.domain = nn.Conv2d(widths[-1], n_domains, min(max(1, crop // 64), side), bias=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (N, 3, H, W) -> patch logits (N, h*w) and domain logits (N, C), float32."""
        h = self.trunk(x)
        patches = self.real_fake(h).float().flatten(1)
        domain = self.domain(h).float().mean(dim=(2, 3))
        return patches, domain


class ContentDiscriminator(nn.Module):
    """D_c: 3 x [conv7 s2 + LReLU] -> conv4 + LReLU -> conv1 -> C logits (global average).

    Args:
        n_domains: C.
        base: Width b (content has 4b channels).
    """

    def __init__(self, n_domains: int, base: int = 64) -> None:
        super().__init__()
        c = 4 * base
        self.layers = nn.Sequential(
            _ConvLeaky(c, c, 7, 2, 1),
            _ConvLeaky(c, c, 7, 2, 1),
            _ConvLeaky(c, c, 7, 2, 1),
            _ConvLeaky(c, c, 4, 1, 0),
            nn.Conv2d(c, n_domains, 1),
        )

    def forward(self, content: torch.Tensor) -> torch.Tensor:
        """z_c (N, 4b, h, w) -> domain logits (N, C), float32; any h, w >= 1."""
        h, w = content.shape[2:]
        if min(h, w) < CONTENT_D_MIN:
            size = (max(h, CONTENT_D_MIN), max(w, CONTENT_D_MIN))
            content = F.interpolate(content, size=size, mode="bilinear", align_corners=False)
        return self.layers(content).float().mean(dim=(2, 3))
