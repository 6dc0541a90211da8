"""Style transfer with a trained GAN: keep an image's content code, change domain and attribute.

``G(E_c(x), z_a, onehot(target))`` with z_a drawn from N(0, I) (``prior``) or from the target
domain's attribute statistics on the training set (``domain_stats``, HistAuGAN's choice; the
model file's ``attribute_source`` is the default), or given explicitly. The nets run in eval mode
(E_c's training noise off) under ``torch.no_grad``.

Any image size works: E_c and G are fully convolutional and G returns 4·⌈H/4⌉ x 4·⌈W/4⌉, so the
image is reflect-padded at the bottom and right to a multiple of 4 (at least 8, the smallest
size whose content map survives E_c's reflect padding) and the output cropped back. Images run
whole, one at a time (instance normalisation is global, so tiles would not match); a
1024 x 1360 image needs about 2 GB in fp32.

For users' own images, :func:`stylize_folder` renders a whole folder (the ``nucleistyle
stylize`` command): each image's attribute is drawn with :func:`image_seed` (the run's seed and
the ImageId), so an image's result does not depend on which other images are in the folder.

Example:
    >>> stylizer = load_stylizer("results/gan/model.pt")  # doctest: +SKIP
    >>> out = stylizer.stylize([image], target_domain=2, seed=0)[0]  # doctest: +SKIP
    >>> stylize_folder("results/gan/model.pt", "my_images", "my_images_d2", domain=2)
    ... # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from nucleistyle.data.bbbc038 import list_images, read_image
from nucleistyle.errors import NucleistyleError
from nucleistyle.gan.configs import ATTRIBUTE_SOURCES
from nucleistyle.gan.data import one_hot
from nucleistyle.gan.engine import MODEL_FORMAT
from nucleistyle.gan.networks import AttributeEncoder, ContentEncoder, Generator
from nucleistyle.outputs import staged_files
from nucleistyle.paths import PathLike
from nucleistyle.torchutils import autocast, load_checkpoint, resolve_precision, select_device
from nucleistyle.utils import Progress

__all__ = ["Stylizer", "image_seed", "load_stylizer", "pad_to_multiple", "stylize_folder"]

log = logging.getLogger(__name__)
MIN_SIDE = 8


def pad_to_multiple(image: np.ndarray, multiple: int = 4, minimum: int = MIN_SIDE) -> np.ndarray:
    """Reflect-pad (H, W, ...) at the bottom/right to multiples of ``multiple`` (>= ``minimum``).

    numpy's reflect mode repeats the reflection when the pad is longer than the side; a side of
    1 px is repeated instead (reflection needs two pixels).
    """
    h, w = image.shape[:2]
    target = [max(minimum, -(-s // multiple) * multiple) for s in (h, w)]
    pads = [(0, t - s) for t, s in zip(target, (h, w), strict=True)]
    pads += [(0, 0)] * (image.ndim - 2)
    if target == [h, w]:
        return image
    mode = "reflect" if min(h, w) > 1 else "edge"
    return np.pad(image, pads, mode=mode)  # type: ignore[call-overload]  # numpy stubs: list pads


def _as_rgb_list(images: np.ndarray | Sequence[np.ndarray]) -> list[np.ndarray]:
    if (
        isinstance(images, np.ndarray)
        and images.ndim in (2, 3)
        and (images.ndim == 2 or images.shape[-1] == 3)
    ):
        images = [images]
    out = []
    for i, image in enumerate(images):
        image = np.asarray(image)
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or image.size == 0:
            raise NucleistyleError(
                f"stylize: image {i} must be a non-empty uint8 (H, W, 3) or (H, W) array, got "
                f"{image.dtype} {image.shape}"
            )
        out.append(image)
    return out


class Stylizer:
    """A loaded generator side (E_c, E_a, G) with its domain names and attribute statistics.

    Build with :func:`load_stylizer`.

    Attributes:
        n_domains: Number of domains C.
        domain_names: Name of each domain (from the cluster table).
        cluster_ids: Cluster id of each domain.
        attribute_source: Default attribute sampling, ``prior`` or ``domain_stats``.
        attribute_mean: (C, A) per-domain attribute means; ``attribute_std`` likewise.
        inverted: Domains the nets see inverted (``gan.polarity: canonical``): an image from
            one of them is inverted (255 - x) before encoding, an output into one of them after
            rendering, so that callers see every domain in its real polarity.
    """

    def __init__(self, state: dict[str, Any], device: torch.device, dtype: torch.dtype | None):
        cfg = state["config"]
        self.config = cfg
        self.device, self.dtype = device, dtype
        self.n_domains = int(cfg["n_domains"])
        self.attribute_dim = int(cfg["attribute_dim"])
        self.domain_names = tuple(state["domain_names"])
        self.cluster_ids = tuple(int(k) for k in state["cluster_ids"])
        self.attribute_source = str(cfg["attribute_source"])
        self.attribute_mean = state["attribute_mean"].float()
        self.attribute_std = state["attribute_std"].float()
        self.inverted = frozenset(int(d) for d in state.get("inverted_domains", ()))
        b = int(cfg["base_channels"])
        self.enc_c = ContentEncoder(b)
        self.enc_a = AttributeEncoder(self.n_domains, b, self.attribute_dim, cfg["logvar_clamp"])
        self.gen = Generator(
            self.n_domains, b, self.attribute_dim, cfg.get("upsample", "transpose")
        )
        for name in ("enc_c", "enc_a", "gen"):
            net = getattr(self, name)
            net.load_state_dict(state["nets"][name])
            net.to(device).eval().requires_grad_(False)

    def _check_domain(self, domain: int, what: str = "target domain") -> int:
        if (
            isinstance(domain, bool)
            or not isinstance(domain, int | np.integer)
            or not (0 <= domain < self.n_domains)
        ):
            raise NucleistyleError(
                f"{what} must be an integer in 0..{self.n_domains - 1}, got {domain!r}"
            )
        return int(domain)

    def _source_sign(self, source_domain: int | None) -> bool:
        """Whether images of ``source_domain`` are inverted before encoding."""
        if not self.inverted:
            return False
        if source_domain is None:
            names = ", ".join(self.domain_names[d] for d in sorted(self.inverted))
            raise NucleistyleError(
                f"this GAN sees {names} inverted (gan.polarity: canonical): give the source "
                "domain of the images (source_domain; --source-domain)"
            )
        return self._check_domain(source_domain, "source domain") in self.inverted

    def sample_attributes(
        self, n: int, target_domain: int, seed: int = 0, source: str | None = None
    ) -> np.ndarray:
        """``n`` attribute vectors for ``target_domain``, float32 (n, A), reproducible by seed.

        Args:
            n: How many.
            target_domain: Domain index.
            seed: Seed of the draw.
            source: ``prior`` or ``domain_stats`` (None: the model's ``attribute_source``).
        """
        domain = self._check_domain(target_domain)
        source = self.attribute_source if source is None else source
        if source not in ATTRIBUTE_SOURCES:
            raise NucleistyleError(f"attribute source must be one of {ATTRIBUTE_SOURCES}")
        noise = torch.randn(n, self.attribute_dim, generator=torch.Generator().manual_seed(seed))
        if source == "domain_stats":
            noise = self.attribute_mean[domain] + noise * self.attribute_std[domain]
        return noise.numpy()

    def _tensor(self, image: np.ndarray) -> torch.Tensor:
        padded = np.array(pad_to_multiple(image))  # a writable, contiguous copy
        x = torch.from_numpy(padded).to(self.device).permute(2, 0, 1)[None].float()
        return x / 127.5 - 1.0

    @torch.no_grad()
    def encode_attribute(self, image: np.ndarray, domain: int) -> np.ndarray:
        """The attribute mean μ = E_a(x, c) of ``image`` in its own ``domain``, float32 (A,)."""
        (image,) = _as_rgb_list([image])
        c = one_hot([self._check_domain(domain)], self.n_domains).to(self.device)
        if domain in self.inverted:
            image = 255 - image
        with autocast(self.device, self.dtype):
            mu, _ = self.enc_a(self._tensor(image), c)
        return mu[0].float().cpu().numpy()

    @torch.no_grad()
    def stylize(
        self,
        images: np.ndarray | Sequence[np.ndarray],
        target_domain: int,
        attribute: np.ndarray | None = None,
        seed: int = 0,
        source_domain: int | None = None,
    ) -> list[np.ndarray]:
        """Render each image in ``target_domain``, keeping its content.

        Args:
            images: One uint8 (H, W, 3) / (H, W) image, an (N, H, W, 3) array, or a list of
                images of any sizes.
            target_domain: Domain index, 0..C-1.
            attribute: (A,) for all images or (N, A) per image; None: drawn per image with
                :meth:`sample_attributes` (``seed``, the model's attribute source).
            seed: Seed of the attribute draw.
            source_domain: The images' own domain; needed (and used) only by a model that
                sees some domains inverted (:attr:`inverted`).

        Returns:
            One uint8 (H, W, 3) image per input, each the size of its input.

        Raises:
            NucleistyleError: A bad image, domain or attribute shape; no source domain where
                the model needs one.
        """
        images = _as_rgb_list(images)
        domain = self._check_domain(target_domain)
        invert_in, invert_out = self._source_sign(source_domain), domain in self.inverted
        if attribute is None:
            attributes = self.sample_attributes(len(images), domain, seed)
        else:
            attributes = np.asarray(attribute, np.float32)
            if attributes.ndim == 1:
                attributes = np.broadcast_to(attributes, (len(images), attributes.size))
            if attributes.shape != (len(images), self.attribute_dim):
                raise NucleistyleError(
                    f"attribute must have shape ({self.attribute_dim},) or "
                    f"({len(images)}, {self.attribute_dim}), got {np.shape(attribute)}"
                )
        c = one_hot([domain], self.n_domains).to(self.device)
        out = []
        for image, z in zip(images, attributes, strict=True):
            z_a = torch.as_tensor(np.array(z, np.float32), device=self.device)[None]
            with autocast(self.device, self.dtype):
                y = self.gen(self.enc_c(self._tensor(255 - image if invert_in else image)), z_a, c)
            h, w = image.shape[:2]
            y = y[0, :, :h, :w].float().add(1.0).mul(127.5).round().clamp(0, 255)
            styled = y.to(torch.uint8).permute(1, 2, 0).cpu().numpy()
            out.append(255 - styled if invert_out else styled)
        return out


def load_stylizer(
    model_path: PathLike, device: str = "auto", precision: str | None = None
) -> Stylizer:
    """Load a model written by :func:`nucleistyle.gan.engine.train_gan`.

    Args:
        model_path: The model file.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        precision: ``fp32``, ``bf16`` or ``auto``; None: the model's training setting.

    Returns:
        A :class:`Stylizer` in eval mode.

    Raises:
        NucleistyleError: The file is unreadable or not a GAN model (named).
    """
    state = load_checkpoint(model_path, what="model")
    if state.get("format") != MODEL_FORMAT:
        raise NucleistyleError(
            f"{model_path} is not a nucleistyle GAN model file (format {state.get('format')!r}, "
            f"expected {MODEL_FORMAT!r})"
        )
    dev = select_device(device)
    dtype = resolve_precision(precision or state["config"]["precision"], dev)
    stylizer = Stylizer(state, dev, dtype)
    log.info(
        "loaded %s: %d domains (%s), iteration %d, %s on %s",
        model_path,
        stylizer.n_domains,
        ", ".join(stylizer.domain_names),
        int(state["iteration"]),
        "fp32" if dtype is None else str(dtype).removeprefix("torch."),
        dev,
    )
    return stylizer


def image_seed(seed: int, image_id: str) -> int:
    """Seed of one image's attribute draw, derived from the run's ``seed`` and its ImageId.

    The first 8 bytes of SHA-256(``"<seed>:<ImageId>"``) as an integer below 2**63: stable
    across runs, platforms and Python versions (unlike ``hash``), and independent of the other
    images processed with it.

    Example:
        >>> image_seed(0, "a") == image_seed(0, "a") != image_seed(1, "a")
        True
    """
    digest = hashlib.sha256(f"{int(seed)}:{image_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def stylize_folder(
    model_path: PathLike,
    images_dir: PathLike,
    out_dir: PathLike,
    domain: int,
    seed: int = 0,
    attribute_source: str | None = None,
    device: str = "auto",
    source_domain: int | None = None,
) -> int:
    """Render every image of a folder in the target ``domain``: ``<out_dir>/<ImageId>.png``.

    Each output is a uint8 RGB PNG of its input's size. Image ``i``'s attribute vector is drawn
    with :meth:`Stylizer.sample_attributes` seeded by :func:`image_seed` (``seed``, ImageId),
    and images run one at a time, so the result for an image depends only on the model, the
    image, its ImageId, ``domain``, ``seed`` and ``attribute_source`` (on one device), not on
    the other images of the folder.

    Outputs appear only once every image is done: they are staged in a hidden folder beside
    ``out_dir`` and then moved in, each by an atomic rename (files of ``out_dir`` with other
    names are left alone; same names are replaced). On an error nothing is written.

    Args:
        model_path: A GAN model from :func:`nucleistyle.gan.engine.train_gan`
            (``results/gan/model.pt`` in the pipeline).
        images_dir: BBBC038-layout (``<id>/images/<id>.png``) or flat folder of images.
        out_dir: Output folder (created if missing); must not be ``images_dir``.
        domain: Target domain index, 0..C-1 (the model's clusters).
        seed: Seed of the attribute draws.
        attribute_source: ``prior`` (N(0, I)) or ``domain_stats`` (the target domain's
            training statistics); None: the model's ``attribute_source``.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        source_domain: The images' own domain (every image of the folder); needed by a model
            trained with ``gan.polarity: canonical``.

    Returns:
        The number of images written.

    Raises:
        NucleistyleError: A bad attribute source or seed, a missing or foreign model file, a
            domain outside 0..C-1, a missing or empty image folder, an unreadable image, or an
            output folder that is a file or the image folder (each named).
    """
    out = _check_request(model_path, out_dir, seed, attribute_source)
    records = list_images(images_dir)
    if out.resolve() == Path(images_dir).resolve():
        raise NucleistyleError(f"output folder {out} is the image folder; choose another")
    stylizer = load_stylizer(model_path, device)
    domain = _check_domain(domain, stylizer, model_path)
    stylizer._source_sign(source_domain)  # refuse a missing or bad source before any work
    source = stylizer.attribute_source if attribute_source is None else attribute_source
    log.info(
        "stylizing %d images of %s into domain %d (%s), attribute %s, seed %d, on %s",
        len(records),
        images_dir,
        domain,
        stylizer.domain_names[domain],
        source,
        int(seed),
        stylizer.device,
    )
    outputs = [f"{r.image_id}.png" for r in records]
    with staged_files(out, outputs) as staging, Progress(len(records), "stylize", log) as progress:
        for record in records:
            image = read_image(record.image_path)[0]
            z = stylizer.sample_attributes(
                1, domain, seed=image_seed(int(seed), record.image_id), source=source
            )
            styled = stylizer.stylize([image], domain, attribute=z, source_domain=source_domain)[0]
            Image.fromarray(styled, "RGB").save(staging / f"{record.image_id}.png", format="PNG")
            progress.update()
    log.info("wrote %d stylized images to %s", len(records), out)
    return len(records)


def _check_request(
    model_path: PathLike, out_dir: PathLike, seed: int, attribute_source: str | None
) -> Path:
    """Refuse arguments that cannot work, before the model is loaded; the output folder."""
    if attribute_source is not None and attribute_source not in ATTRIBUTE_SOURCES:
        raise NucleistyleError(
            f"attribute source must be one of {', '.join(ATTRIBUTE_SOURCES)}, "
            f"got {attribute_source!r}"
        )
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise NucleistyleError(f"seed must be an integer, got {seed!r}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NucleistyleError(f"output folder {out} exists and is not a folder")
    if not Path(model_path).is_file():
        raise NucleistyleError(f"model file not found: {model_path}")
    return out


def _check_domain(domain: int, stylizer: Stylizer, model_path: PathLike) -> int:
    """``domain`` as an int, refused (naming the model's domains) unless in 0..C-1."""
    n = stylizer.n_domains
    if isinstance(domain, bool) or not isinstance(domain, int | np.integer) or not 0 <= domain < n:
        names = ", ".join(f"{i} {name}" for i, name in enumerate(stylizer.domain_names))
        raise NucleistyleError(
            f"target domain must be an integer in 0..{n - 1} ({model_path}: {names}), "
            f"got {domain!r}"
        )
    return int(domain)
