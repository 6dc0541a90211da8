"""GAN networks, losses, configuration, sampler and one training iteration (no files)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nucleistyle.errors import NucleistyleError
from nucleistyle.gan import losses as L
from nucleistyle.gan.configs import GanConfig, lr_factor
from nucleistyle.gan.data import DomainSampler, DomainSet, one_hot, to_tensor
from nucleistyle.gan.engine import GanNets, GanTrainer, inverted_domains
from nucleistyle.gan.networks import (
    AttributeEncoder,
    ContentDiscriminator,
    ContentEncoder,
    Generator,
    ImageDiscriminator,
    count_parameters,
)
from nucleistyle.gan.quality import DomainLook

# parameter counts (docs/gan.md), C = 6 domains, crop 216, base 64
PAPER_COUNTS = {
    "enc_c": 5_099_136,
    "enc_a": 1_350_224,
    "gen": 5_563_619,
    "dis1": 15_765_120,
    "dis2": 15_765_120,
    "dis_c": 10_684_934,
}


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convolutions: a second thread only adds overhead
    yield
    torch.set_num_threads(threads)


def test_parameter_counts_match_gan_md_for_six_domains_at_crop_216() -> None:
    nets = GanNets(GanConfig(n_domains=6, crop=216))
    counts = {name: count_parameters(getattr(nets, name)) for name in PAPER_COUNTS}
    print("parameter counts (C=6, crop 216):", counts, "total", sum(counts.values()))
    assert counts == PAPER_COUNTS
    assert sum(counts.values()) == 54_228_153  # "total ≈ 54.2 M"


@pytest.mark.parametrize("size", [36, 52, 64, 100])
def test_shapes_at_several_crop_sizes(size: int) -> None:
    torch.manual_seed(0)
    c, b = 3, 4
    x = torch.rand(2, 3, size, size) * 2 - 1
    domain = one_hot([0, 2], c)
    enc_c, enc_a, gen = ContentEncoder(b).eval(), AttributeEncoder(c, b), Generator(c, b)
    content = enc_c(x)
    assert content.shape == (2, 4 * b, math.ceil(size / 4), math.ceil(size / 4))
    mu, logvar = enc_a(x, domain)
    assert mu.shape == logvar.shape == (2, 8)
    out = gen(content, mu, domain)
    assert out.shape == x.shape
    assert out.abs().max() <= 1
    patches, classes = ImageDiscriminator(c, size, b)(x)
    assert patches.shape[0] == 2 and classes.shape == (2, c)
    assert ContentDiscriminator(c, b)(content).shape == (2, c)


@pytest.mark.parametrize("side", [1, 2, 9, 53, 54, 64, 80])
def test_content_discriminator_accepts_any_content_size(side: int) -> None:
    logits = ContentDiscriminator(4, base=2)(torch.randn(3, 8, side, side + 3))
    assert logits.shape == (3, 4)
    assert torch.isfinite(logits).all()


def test_content_discriminator_geometry_at_crop_216_is_upstream() -> None:
    # 54 -> 25 -> 11 -> 4 -> 1: the global pool sees a single value, as upstream's reshape did
    net = ContentDiscriminator(6, base=2)
    h = torch.randn(1, 8, 54, 54)
    assert net.layers(h).shape[2:] == (1, 1)


def test_logvar_is_clamped() -> None:
    enc = AttributeEncoder(2, base=2, logvar_clamp=3.0)
    with torch.no_grad():
        enc.fc_logvar.bias.fill_(100.0)
    _, logvar = enc(torch.zeros(1, 3, 16, 16), one_hot([1], 2))
    assert torch.all(logvar == 3.0)
    with torch.no_grad():
        enc.fc_logvar.bias.fill_(-100.0)
    _, logvar = enc(torch.zeros(1, 3, 16, 16), one_hot([1], 2))
    assert torch.all(logvar == -3.0)


def test_loss_values_by_hand() -> None:
    zeros = torch.zeros(2, 9)
    # BCE(sigmoid(0), 1) = log 2 per patch; x2 for the two directions
    assert L.adversarial(zeros, True).item() == pytest.approx(2 * math.log(2))
    assert L.adversarial(torch.full((1, 4), 50.0), True).item() == pytest.approx(0, abs=1e-12)
    mu, logvar = torch.zeros(2, 8), torch.zeros(2, 8)
    assert L.kl_attribute(mu, logvar).item() == 0
    # KL of N(1, 1) per sample = 0.5 * 8; x2 directions
    assert L.kl_attribute(torch.ones(2, 8), logvar).item() == pytest.approx(8.0)
    assert L.latent_regression(torch.ones(2, 8), torch.zeros(2, 8)).item() == 2.0
    assert L.content_l2(torch.full((1, 2, 3, 3), 3.0)).item() == 9.0
    target = one_hot([1], 2)
    expected = (math.log1p(math.exp(-2.0)) + math.log1p(math.exp(-2.0))) / 2
    assert L.domain_classification(torch.tensor([[-2.0, 2.0]]), target).item() == pytest.approx(
        expected
    )


def test_losses_do_not_scale_with_batch_size() -> None:
    g = torch.Generator().manual_seed(0)
    logits, classes = torch.randn(1, 36, generator=g), torch.randn(1, 6, generator=g)
    mu, logvar = torch.randn(1, 8, generator=g), torch.randn(1, 8, generator=g)
    image, other = torch.rand(1, 3, 8, 8, generator=g), torch.rand(1, 3, 8, 8, generator=g)
    content, domain = torch.randn(1, 16, 4, 4, generator=g), one_hot([3], 6)

    def twice(t: torch.Tensor) -> torch.Tensor:
        return torch.cat([t, t])

    pairs = [
        (L.adversarial(logits, True), L.adversarial(twice(logits), True)),
        (L.adversarial(logits, False), L.adversarial(twice(logits), False)),
        (
            L.domain_classification(classes, domain),
            L.domain_classification(twice(classes), twice(domain)),
        ),
        (L.kl_attribute(mu, logvar), L.kl_attribute(twice(mu), twice(logvar))),
        (L.latent_regression(mu, logvar), L.latent_regression(twice(mu), twice(logvar))),
        (L.l1(image, other), L.l1(twice(image), twice(other))),
        (L.content_l2(content), L.content_l2(twice(content))),
    ]  # fmt: skip
    for single, double in pairs:
        assert single.item() == pytest.approx(double.item(), rel=1e-6)


def test_config_defaults_are_gan_md() -> None:
    cfg = GanConfig()
    assert (cfg.lr, cfg.lr_content, cfg.betas, cfg.weight_decay) == (1e-4, 4e-5, (0.5, 0.999), 1e-4)
    assert (cfg.w_cc, cfg.w_recon, cfg.w_latent, cfg.w_kl, cfg.w_kl_content) == (
        10,
        10,
        10,
        0.01,
        0.01,
    )
    assert (cfg.w_content, cfg.w_domain, cfg.w_cls, cfg.w_cls_g) == (1, 1, 1, 5)
    assert (cfg.crop, cfg.resize, cfg.batch_size, cfg.d_iter, cfg.attribute_dim) == (
        216,
        256,
        2,
        3,
        8,
    )
    assert GanConfig.from_config({"betas": [0.4, 0.9]}).betas == (0.4, 0.9)


@pytest.mark.parametrize(
    ("mapping", "key"),
    [
        ({"batch_size": 3}, "batch_size"),
        ({"crop": 218}, "crop"),
        ({"crop": 12}, "crop"),
        ({"resize": 100}, "resize"),
        ({"precision": "fp16"}, "precision"),
        ({"attribute_source": "mean"}, "attribute_source"),
        ({"w_kl": -1}, "w_kl"),
        ({"decay_start": 1.5}, "decay_start"),
        ({"n_domains": 1}, "n_domains"),
        ({"no_such_key": 1}, "no_such_key"),
    ],
)
def test_config_rejects_bad_values_naming_the_key(mapping: dict, key: str) -> None:
    with pytest.raises(NucleistyleError, match=f"gan.{key}"):
        GanConfig.from_config(mapping)


def test_linear_lr_schedule_decays_from_decay_start() -> None:
    cfg = GanConfig(iterations=100, decay_start=0.5)
    assert lr_factor(0, cfg) == lr_factor(49, cfg) == 1.0
    assert lr_factor(50, cfg) == 1.0
    assert lr_factor(99, cfg) == pytest.approx(1 - 49 / 51)
    assert lr_factor(75, GanConfig(iterations=100, lr_policy="step")) == 0.1


def _domain_set(sizes: list[int], side: int = 12) -> DomainSet:
    images, domains = [], []
    for d, n in enumerate(sizes):
        for _ in range(n):
            images.append(np.full((side, side, 3), 10 * len(images), np.uint8))
            domains.append(d)
    domains_arr = np.array(domains)
    return DomainSet(
        image_ids=tuple(f"img{i}" for i in range(len(images))),
        images=tuple(images),
        domains=domains_arr,
        names=tuple(f"d{k}" for k in range(len(sizes))),
        members=tuple(np.flatnonzero(domains_arr == k) for k in range(len(sizes))),
        fingerprint="x",
    )


def test_sampler_draws_each_domain_uniformly_regardless_of_size() -> None:
    data = _domain_set([20, 3, 1])
    sampler = DomainSampler(data, batch_size=2, crop=8, seed=0)
    draws = [sampler.draw() for _ in range(1500)]
    domains = np.concatenate([d for _, d in draws])
    share = np.bincount(domains, minlength=3) / domains.size
    assert np.all(np.abs(share - 1 / 3) < 0.03)
    # within the 3-image domain, each image ~1/3 of its draws (images differ by grey value)
    values = np.concatenate([b[:, 0, 0, 0] for b, _ in draws])[domains == 1]
    counts = np.unique(values, return_counts=True)[1]
    assert counts.size == 3 and np.all(np.abs(counts / counts.sum() - 1 / 3) < 0.06)
    batch, _ = draws[0]
    assert batch.shape == (2, 8, 8, 3) and batch.dtype == np.uint8


def test_sampler_is_reproducible_from_its_state() -> None:
    sampler = DomainSampler(_domain_set([4, 4]), batch_size=2, crop=8, seed=3)
    sampler.draw()
    state = sampler.state()
    first = [sampler.draw()[0] for _ in range(3)]
    sampler.set_state(state)
    again = [sampler.draw()[0] for _ in range(3)]
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))


def test_to_tensor_scales_to_minus_one_one() -> None:
    x = to_tensor(np.array([[[[0, 255, 127]]]], np.uint8))
    assert x.shape == (1, 3, 1, 1)
    assert x.flatten().tolist() == pytest.approx([-1.0, 1.0, 127 / 127.5 - 1])


def test_one_training_iteration_updates_all_networks_with_finite_losses() -> None:
    cfg = GanConfig(n_domains=3, crop=36, resize=40, base_channels=4, iterations=10, device="cpu")
    torch.manual_seed(0)
    trainer = GanTrainer(cfg, torch.device("cpu"))
    before = {k: v.clone() for k, v in trainer.nets.state_dict().items()}
    rng = np.random.default_rng(0)
    data = _domain_set([2, 2, 2], side=40)
    data = DomainSet(
        data.image_ids,
        tuple(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8) for _ in data.images),
        data.domains,
        data.names,
        data.members,
        "x",
    )
    values = trainer.train_iteration(DomainSampler(data, 2, 36, seed=0))
    assert trainer.iteration == 1
    assert all(math.isfinite(v) for v in values.values())
    expected = {"d1_adv", "d2_adv", "d1_cls", "d2_cls", "d_content", "g_adv1", "g_adv2", "g_cls1"}
    expected |= {"g_cls2", "g_content", "cross_cycle", "self_recon", "latent", "kl", "kl_content"}
    assert expected <= set(values)
    after = trainer.nets.state_dict()
    for name in ("enc_c", "enc_a", "gen", "dis1", "dis2", "dis_c"):
        keys = [k for k in before if k.startswith(name + ".")]
        changed = [k for k in keys if not torch.equal(before[k], after[k])]
        assert changed == keys, f"{name}: unchanged {sorted(set(keys) - set(changed))}"


def _random_set(sizes: list[int], side: int = 40, labels: bool = False) -> DomainSet:
    data = _domain_set(sizes, side=side)
    rng = np.random.default_rng(0)
    masks = None
    if labels:
        masks = tuple(
            (np.add.outer(np.arange(side), np.arange(side)) % 12 < 5).astype(np.int32)
            for _ in data.images
        )
    return DomainSet(
        data.image_ids,
        tuple(rng.integers(0, 256, (side, side, 3), dtype=np.uint8) for _ in data.images),
        data.domains,
        data.names,
        data.members,
        "x",
        masks,
    )


def test_warmup_updates_train_the_autoencoder_and_leave_the_discriminators_alone() -> None:
    cfg = GanConfig(n_domains=3, crop=36, resize=40, base_channels=4, iterations=10, warmup=2)
    torch.manual_seed(0)
    trainer = GanTrainer(cfg, torch.device("cpu"))
    before = {k: v.clone() for k, v in trainer.nets.state_dict().items()}
    sampler = DomainSampler(_random_set([2, 2, 2]), 2, 36, seed=0)
    values = [trainer.train_iteration(sampler) for _ in range(2)]
    assert set(values[0]) == {"self_recon", "kl", "kl_content", "g_total", "lr_factor"}
    after = trainer.nets.state_dict()
    for name in ("dis1", "dis2", "dis_c"):
        assert all(torch.equal(before[k], after[k]) for k in before if k.startswith(name + "."))
    for name in ("enc_c", "enc_a", "gen"):
        keys = [k for k in before if k.startswith(name + ".")]
        assert any(not torch.equal(before[k], after[k]) for k in keys), name
    assert "d1_adv" in trainer.train_iteration(sampler)  # then the adversarial updates


def test_resize_upsampling_has_the_paper_generators_parameters_and_shapes() -> None:
    paper, resize = Generator(6, 8, 8), Generator(6, 8, 8, upsample="resize")
    assert count_parameters(paper) == count_parameters(resize)
    content = torch.randn(2, 32, 9, 9)
    attribute, domain = torch.randn(2, 8), one_hot([1, 4], 6)
    assert resize(content, attribute, domain).shape == paper(content, attribute, domain).shape
    with pytest.raises(ValueError, match="upsample"):
        Generator(6, 8, 8, upsample="bilinear")


def test_nucleus_visibility_loss_asks_for_the_target_domains_polarity_and_contrast() -> None:
    mask = torch.zeros(1, 1, 24, 24)
    mask[..., 8:16, 8:16] = 1
    grey = torch.full((1, 3), 1 / 3)
    bright = (mask * 1.6 - 0.8).repeat(1, 3, 1, 1)  # nuclei at 229, ground at 25 grey levels

    def loss(image: torch.Tensor, polarity: float, gap: float = 100.0) -> torch.Tensor:
        one = torch.tensor([1.0])
        return L.nucleus_visibility(image, mask, grey, polarity * one, 3 * one, gap * one)

    assert loss(bright, +1.0).item() == 0.0  # clearer and stronger than asked: no loss
    assert loss(bright, -1.0).item() > 2  # the wrong polarity for this domain
    assert loss(bright, +1.0, gap=408.0).item() == pytest.approx(0.5)  # half the gap asked for
    faint = (mask * 0.1 - 0.8).repeat(1, 3, 1, 1)  # separable, but 13 grey levels: near blank
    assert loss(faint, +1.0).item() == pytest.approx(1 - 12.75 / 100, abs=0.01)
    flat = torch.zeros(1, 3, 24, 24, requires_grad=True)
    value = loss(flat, +1.0)
    assert value.item() == pytest.approx(2.0)  # invisible nuclei fall short on both counts
    value.backward()
    assert flat.grad is not None and (flat.grad[0, :, 8:16, 8:16] < 0).all()  # brighten them
    one = torch.tensor([1.0])
    empty = L.nucleus_visibility(flat, torch.zeros_like(mask), grey, one, 3 * one, 50 * one)
    assert empty.item() == 0.0  # a crop without nuclei does not count
    no_target = L.nucleus_visibility(flat, mask, grey, 0 * one, 0 * one, 0 * one)
    assert no_target.item() == 0.0  # nor a domain without a look


def test_the_structure_term_joins_the_generator_loss_with_masks() -> None:
    cfg = GanConfig(n_domains=3, crop=36, resize=40, base_channels=4, iterations=10,
                    w_structure=1.0)  # fmt: skip
    looks = [DomainLook(0, 1, 3.0, 50.0, 0.0, 4), DomainLook(2, -1, 2.0, 40.0, 0.0, 4)] * 2
    looks = looks[:3]
    torch.manual_seed(0)
    trainer = GanTrainer(cfg, torch.device("cpu"), looks=looks)
    sampler = DomainSampler(_random_set([2, 2, 2], labels=True), 2, 36, seed=0)
    values = trainer.train_iteration(sampler)
    assert values["structure"] > 0 and math.isfinite(values["g_total"])
    plain = GanTrainer(GanConfig(n_domains=3, crop=36, resize=40, base_channels=4, iterations=10),
                       torch.device("cpu"))  # fmt: skip
    assert "structure" not in plain.train_iteration(DomainSampler(_random_set([2, 2, 2]), 2, 36))


def test_canonical_polarity_inverts_the_bright_nuclei_domains_for_the_nets_only() -> None:
    """The nets see the inverted domains' images as 255 - x; the structure term measures the
    fakes back in the real images' polarity (so its targets stay those of the real images)."""
    bright, dark = DomainLook(0, 1, 3.0, 50.0, 0.0, 4), DomainLook(2, -1, 2.0, 40.0, 0.0, 4)
    assert inverted_domains([bright, dark, None], "canonical") == [0]
    assert inverted_domains([bright, dark, None], "as_is") == []
    cfg = GanConfig(n_domains=3, crop=36, resize=40, base_channels=4, iterations=10,
                    w_structure=1.0, polarity="canonical")  # fmt: skip
    trainer = GanTrainer(cfg, torch.device("cpu"), looks=[bright, dark, dark], inverted=[0])
    images = np.random.default_rng(0).integers(0, 256, (2, 36, 36, 3), dtype=np.uint8)
    x, _ = trainer._inputs(images, np.array([0, 1]))
    assert torch.equal(x[0], -to_tensor(images[:1])[0])  # 255 - v in [-1, 1]
    assert torch.equal(x[1], to_tensor(images[1:])[0])
    assert torch.allclose(to_tensor(255 - images[:1])[0], -to_tensor(images[:1])[0], atol=1e-6)
    # fakes with bright nuclei in domain 0's real polarity: dark in the nets' space
    mask = np.zeros((2, 36, 36), bool)
    mask[:, 10:20, 10:20] = True
    real = torch.where(torch.from_numpy(mask)[:, None], 0.8, -0.8).repeat(1, 3, 1, 1)
    fakes = torch.cat([real, real, real]) * -1.0  # as the nets render domain 0
    term = trainer._structure_term(fakes, mask, np.array([0, 0]))
    assert term.item() == 0.0  # bright and clear once inverted back
    plain = GanTrainer(GanConfig(**{**cfg.fingerprint(), "polarity": "as_is"}), torch.device("cpu"),
                       looks=[bright, dark, dark])  # fmt: skip
    assert plain._structure_term(fakes, mask, np.array([0, 0])).item() > 2  # inverted nuclei


# -- the fast paths of networks.py compute the layers of docs/gan.md -----------------------------


@pytest.mark.parametrize("pad", [(1, 1, 1, 1), (3, 3, 3, 3), (2, 1, 0, 3)])
def test_reflect_pad_backward_is_atens(pad: tuple[int, int, int, int]) -> None:
    from nucleistyle.gan.networks import _ReflectPad

    x = torch.randn(2, 3, 7, 9, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(2, 3, 7 + pad[2] + pad[3], 9 + pad[0] + pad[1], dtype=torch.float64)
    ours = _ReflectPad.apply(x, pad)
    assert torch.equal(ours, torch.nn.functional.pad(x, pad, mode="reflect"))
    (expected,) = torch.autograd.grad(torch.nn.functional.pad(x, pad, mode="reflect"), x, grad)
    (got,) = torch.autograd.grad(ours, x, grad)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    assert torch.autograd.gradcheck(lambda t: _ReflectPad.apply(t, pad), (x,))


@pytest.mark.parametrize("side", [16, 27])  # 27: the average pool floors odd sizes
def test_attribute_block_conv_and_pool_as_one_convolution(side: int) -> None:
    from nucleistyle.gan.networks import _BasicBlock

    torch.manual_seed(0)
    block = _BasicBlock(5, 7).double()
    x = torch.randn(2, 5, side, side + 3, dtype=torch.float64, requires_grad=True)
    reference = block.main(x) + block.shortcut(x)  # layer by layer, with nn.AvgPool2d
    fused = block(x)
    torch.testing.assert_close(fused, reference, rtol=0, atol=1e-12)
    grad = torch.randn_like(reference)
    inputs = [x, *block.parameters()]
    for a, b in zip(
        torch.autograd.grad(fused, inputs, grad),
        torch.autograd.grad(reference, inputs, grad),
        strict=True,
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def _assert_same_gradients(
    fast: torch.nn.Module, plain: torch.nn.Module, inputs: list, outputs: list
) -> None:
    """Back-propagate the same random gradients through both; compare input and weight grads
    (float32 sums in another order; a bias before an instance norm has a zero gradient plus
    rounding noise, so the tolerance is 1e-4 of the largest gradient of the net)."""
    grads = [torch.randn_like(out) for out in outputs[0]]
    found = []
    for net, outs in zip((fast, plain), outputs, strict=True):
        params = list(net.parameters())
        found.append(torch.autograd.grad(outs, [*inputs, *params], grads, allow_unused=True))
    scale = max(float(g.abs().max()) for g in found[1])
    for a, b in zip(*found, strict=True):
        torch.testing.assert_close(a.reshape(b.shape), b, rtol=1e-4, atol=1e-4 * scale)


@pytest.mark.parametrize("crop", [40, 64])  # E_a pools odd sizes; D has 3 and 4 layers
def test_each_net_computes_its_plain_layer_by_layer_form(crop: int) -> None:
    """networks.py's rewrites (reflect padding in the conv, E_a's conv + pool as one conv, the
    constant planes folded into vectors, GroupNorm for the LayerNorm, G's 1x1 transposed conv
    as a product, D_c's global pool) against gan_reference's plain nets with the same weights:
    the same outputs and the same gradients."""
    from tests.gan_reference import PlainGanNets, copy_weights

    cfg = GanConfig(n_domains=3, crop=crop, base_channels=4)
    torch.manual_seed(0)
    fast, plain = GanNets(cfg).eval(), PlainGanNets(cfg).eval()
    copy_weights(fast, plain)
    x = (torch.rand(3, 3, crop, crop + 4) * 2 - 1).requires_grad_()
    domain = one_hot([0, 2, 1], 3)
    content = torch.randn(3, 16, crop // 4, crop // 4 + 1, requires_grad=True)
    attribute = torch.randn(3, 8, requires_grad=True)
    calls = {
        "enc_c": lambda net: (net(x),),
        "enc_a": lambda net: net(x, domain),
        "gen": lambda net: (net(content, attribute, domain),),
        "dis1": lambda net: net(x),
        "dis_c": lambda net: (net(content),),
    }
    for name, call in calls.items():
        outputs = [call(getattr(nets, name)) for nets in (fast, plain)]
        for a, b in zip(*outputs, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
        inputs = [x] if name in ("enc_c", "enc_a", "dis1") else [content]
        inputs += [attribute] if name == "gen" else []
        _assert_same_gradients(getattr(fast, name), getattr(plain, name), inputs, outputs)


@pytest.mark.parametrize("dtype", [None, torch.bfloat16], ids=["fp32", "bf16"])
def test_plain_trainer_runs_the_trainers_update(dtype: torch.dtype | None) -> None:
    """gan_reference.PlainTrainer (the bench's baseline): the same losses, the same update, in
    fp32 and under the same bf16 autocast as ours (there to bf16's precision)."""
    from tests.gan_reference import PlainTrainer

    cfg = GanConfig(n_domains=3, crop=36, resize=40, base_channels=4, device="cpu")
    cpu = torch.device("cpu")
    torch.manual_seed(0)
    fast = GanTrainer(cfg, cpu, dtype)
    torch.manual_seed(0)
    plain = PlainTrainer(cfg, cpu, dtype)  # starts from the trainer's weights
    assert plain.dtype is dtype
    tolerance = {"rel": 1e-3, "abs": 1e-5} if dtype is None else {"rel": 5e-2, "abs": 2e-2}
    rng = np.random.default_rng(0)
    images, domains = rng.integers(0, 256, (2, 36, 36, 3), dtype=np.uint8), np.array([0, 2])
    for _ in range(2):  # the second step sees the weights after one update of each
        torch.manual_seed(1)
        ours = fast.full_step(images, domains) | fast.content_step(images, domains)
        torch.manual_seed(1)
        reference = plain.full_step(images, domains) | plain.content_step(images, domains)
        assert ours.keys() == reference.keys()
        for key, value in ours.items():
            assert value == pytest.approx(reference[key], **tolerance), key
    if dtype is not None:  # autocast is in effect: not the fp32 losses
        torch.manual_seed(0)
        fp32 = PlainTrainer(cfg, cpu)
        torch.manual_seed(1)
        first = fp32.full_step(images, domains)
        torch.manual_seed(0)
        bf16 = PlainTrainer(cfg, cpu, dtype)
        torch.manual_seed(1)
        assert bf16.full_step(images, domains) != first
