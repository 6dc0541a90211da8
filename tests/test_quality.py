"""Copy quality: visibility of the inherited nuclei against the target domain, and phantoms."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage as ndi

from nucleistyle.data.bbbc038 import list_images, load_sample
from nucleistyle.enhance import ClaheConfig, enhance_image
from nucleistyle.gan.quality import (
    copy_quality,
    domain_look,
    domain_looks,
    phantom_objects,
    signed_contrasts,
    visibility,
)


def _draw(
    centres, size=96, radius=5, bright=True, seed=0, noise=6.0
) -> tuple[np.ndarray, np.ndarray]:
    """Grey disks on a flat ground with noise (fluorescence-like, or bright-field when not
    ``bright``), and their labels."""
    yy, xx = np.mgrid[:size, :size]
    labels = np.zeros((size, size), np.int32)
    for k, (y, x) in enumerate(centres, start=1):
        labels[(yy - y) ** 2 + (xx - x) ** 2 <= radius**2] = k
    rng = np.random.default_rng(seed)
    ground, nucleus = (30.0, 190.0) if bright else (220.0, 70.0)
    image = np.where(labels > 0, nucleus, ground) + rng.normal(0, noise, labels.shape)
    image = np.clip(ndi.gaussian_filter(image, 0.7), 0, 255).astype(np.uint8)
    return np.repeat(image[..., None], 3, axis=2), labels


CENTRES = [(15, 15), (15, 50), (40, 30), (60, 70), (80, 20), (75, 80)]


@pytest.fixture(scope="module")
def fluorescence():
    pairs = [_draw(CENTRES, seed=s) for s in range(4)]
    return domain_look([p[0] for p in pairs], [p[1] for p in pairs])


def test_a_domain_look_finds_the_polarity_of_its_nuclei():
    bright = [_draw(CENTRES, seed=s) for s in range(3)]
    dark = [_draw(CENTRES, bright=False, seed=s) for s in range(3)]
    assert domain_look(*zip(*bright, strict=True)).polarity == 1
    look = domain_look(*zip(*dark, strict=True))
    assert look.polarity == -1 and look.visibility > 5 and look.phantoms == 0
    image, labels = bright[0]
    assert signed_contrasts(image, labels)[0] > 5 > -5 > signed_contrasts(255 - image, labels)[0]


def test_a_faithful_copy_scores_one_and_no_phantoms(fluorescence):
    image, labels = _draw(CENTRES, seed=9)
    quality = copy_quality(image, labels, fluorescence)
    assert quality["visibility_ratio"] == pytest.approx(1.0, abs=0.15)
    assert quality["phantoms_per_100"] == 0 and quality["nuclei"] == len(CENTRES)


def test_nuclei_in_the_wrong_polarity_or_washed_out_are_not_visible(fluorescence):
    image, labels = _draw(CENTRES, seed=9)
    assert copy_quality(255 - image, labels, fluorescence)["visibility_ratio"] == 0.0
    assert visibility(255 - image, labels, fluorescence) < 0
    rng = np.random.default_rng(1)
    faded = ndi.gaussian_filter(image.astype(float), (4, 4, 0)) + rng.normal(0, 12, image.shape)
    faded = np.clip(faded, 0, 255).astype(np.uint8)
    assert copy_quality(faded, labels, fluorescence)["visibility_ratio"] < 0.5
    dim = (30 + (image.astype(float) - 30) * 0.1).astype(np.uint8)  # a trace in a blank image
    assert visibility(dim, labels, fluorescence) > 5  # still separable ...
    assert copy_quality(dim, labels, fluorescence)["visibility_ratio"] < 0.15  # ... not clear


def test_nucleus_like_objects_outside_the_masks_are_counted_in_nucleus_units(fluorescence):
    image, labels = _draw(CENTRES, seed=9)
    extra, _ = _draw([(45, 80), (88, 55), (5, 88)], seed=9)
    painted = np.maximum(image, extra)  # three nuclei the masks call background
    assert phantom_objects(painted, labels, fluorescence) == (3, len(CENTRES))
    assert copy_quality(painted, labels, fluorescence)["phantoms_per_100"] == pytest.approx(50.0)
    region = image.copy()
    region[50:70, 2:16] = 190  # a false region of 280 px, 3.5 nuclei of 81 px
    assert 3 <= phantom_objects(region, labels, fluorescence)[0] <= 4
    speck = image.copy()
    speck[45:47, 80:82] = 250  # 4 px: noise, not a nucleus
    assert phantom_objects(speck, labels, fluorescence)[0] == 0


def test_an_image_without_nuclei_has_no_look_and_no_count():
    image, labels = _draw([], seed=0)
    with pytest.raises(ValueError, match="no image"):
        domain_look([image], [labels])
    assert phantom_objects(image, labels, _look()) == (0, 0)
    assert domain_looks([(image, labels, 0), (image, None, 1)], 2) == [None, None]


def _look():
    image, labels = _draw(CENTRES)
    return domain_look([image], [labels])


def test_real_images_calibrate_both_ends_of_the_scale(shared_bbbc038):
    """On real BBBC038 images: an image against its own masks scores near 1 and few phantoms;
    an unrelated image of the same domain against those masks near 0 and many phantoms."""
    records = list_images(shared_bbbc038 / "stage1_train")[:40]
    # dark fluorescence images, with the CLAHE the pipeline applies before any measure
    pairs = [
        (enhance_image(s.image, ClaheConfig()), s.labels)
        for s in map(load_sample, records)
        if s.image.mean() < 40
    ][:12]
    if len(pairs) < 6:
        pytest.skip("too few dark fluorescence images in the sample")
    look = domain_look([p[0] for p in pairs[:6]], [p[1] for p in pairs[:6]])
    own, unrelated = [], []
    for (image, labels), (other, _) in zip(pairs[6:], pairs[7:] + pairs[6:7], strict=True):
        own.append(copy_quality(image, labels, look))
        h, w = labels.shape
        unrelated.append(
            copy_quality(np.asarray(Image.fromarray(other).resize((w, h))), labels, look)
        )
    assert np.median([q["visibility_ratio"] for q in own]) > 0.8
    assert np.median([q["phantoms_per_100"] for q in own]) < 10
    assert np.median([q["visibility_ratio"] for q in unrelated]) < 0.2
    assert np.median([q["phantoms_per_100"] for q in unrelated]) > 50
