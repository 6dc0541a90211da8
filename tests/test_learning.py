"""Every learned stage can learn, and nothing after it caps a perfect prediction.

* Ceilings: the ground truth of real images, passed through each baseline's post-processing
  (single pass, and through its TTA merge with identical variants), scores >= 0.99.
* Learning: each Mask R-CNN baseline overfits four real images; the GAN learns a known
  two-domain translation better than the flat mean colour of the target domain.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from nucleistyle.data.bbbc038 import iter_samples, list_images
from nucleistyle.errors import NucleistyleError
from nucleistyle.segment.calibration import ceiling_score
from nucleistyle.segment.configs import get_config
from nucleistyle.tta import TTAConfig

BASELINES = ("deep_retina", "mirzaev")


@pytest.fixture(scope="module")
def real_truths(shared_bbbc038: Path) -> list[np.ndarray]:
    """Ground truth of 20 native 256-px real images: 14 fluorescence, 6 purple tissue."""
    manifest = pd.read_csv(shared_bbbc038 / "manifest.csv")
    small = manifest[manifest.height == 256]
    chosen = set(small[small.group == "Default"].ImageId[:14]) | set(
        small[small.group == "Purple"].ImageId[:6]
    )
    records = [r for r in list_images(shared_bbbc038 / "stage1_train") if r.image_id in chosen]
    return [sample.labels for sample in iter_samples(records, workers=1)]


@pytest.mark.parametrize("baseline", BASELINES)
def test_ground_truth_survives_the_baselines_post_processing(baseline, real_truths):
    assert ceiling_score(real_truths, get_config(baseline)) >= 0.99


@pytest.mark.parametrize("baseline", BASELINES)
def test_ground_truth_survives_the_baselines_tta_merge(baseline, real_truths):
    tta = TTAConfig.for_baseline(baseline)
    assert ceiling_score(real_truths[:8], get_config(baseline), tta) >= 0.99


def test_a_one_pixel_dilation_would_cap_the_ground_truth(real_truths):
    """Why Deep Retina's dilation is off: torchvision's masks need no growing."""
    dilated = get_config("deep_retina", {"post": {"dilation": 1}})
    assert ceiling_score(real_truths, dilated) < 0.8


def test_each_baseline_uses_its_own_solutions_tta():
    deep_retina, mirzaev = (TTAConfig.for_baseline(b) for b in BASELINES)
    assert len(deep_retina.transforms) == 15 and deep_retina.merge == "vote"
    assert deep_retina.vote_base == "variants" and round(deep_retina.pixel_vote * 15) == 5
    assert mirzaev.transforms == ("identity", "hflip") and mirzaev.merge == "union"
    overridden = TTAConfig.for_baseline("mirzaev", {"batch_size": 2, "deep_retina": {"x": 1}})
    assert overridden.batch_size == 2 and overridden.transforms == ("identity", "hflip")
    with pytest.raises(NucleistyleError, match=r"tta\.mirzaev"):
        TTAConfig.for_baseline("mirzaev", {"mirzaev": {"merge": "mean"}})


# -- learning checks ---------------------------------------------------------------------------
# Bounded runs on two cores: the Mask R-CNNs and the GAN toy run in two worker processes of one
# torch thread each. Each check fails when learning breaks (a frozen optimiser, a broken loss or
# post-processing gives scores near 0 / L1 at or above the flat baseline).

CROP = 128  # px of each real image used (its top-left corner)
OVERFIT = {
    "backbone": "resnet18",
    "weights": "none",
    "iterations": 400,
    "log_every": 50,
    "val_every": 400,
    "checkpoint_every": 400,
    "val_fraction": 0.0,
    "selection": "last",
    "optim": {"optimizer": "adam", "amsgrad": False, "lr": 1e-3, "warmup_iters": 20,
              "milestones": [0.8], "lr_factors": [1.0, 0.1]},
    "augment": {"rot90": "none", "rotate_p": 0.0, "channel_shift": 0.0, "affine_p": 0.0},
    "model": {"fpn_channels": 64, "representation_size": 256, "head_norm": True,
              "rpn_pre_nms_top_n_train": 600, "rpn_post_nms_top_n_train": 300,
              "rpn_pre_nms_top_n_test": 500, "rpn_post_nms_top_n_test": 300,
              "box_batch_size_per_image": 128, "box_detections_per_img": 200,
              "box_score_thresh": 0.5},
}  # fmt: skip
PREP = {  # both at twice the crop: Deep Retina upscales small images, Mirzaev fits to its size
    "deep_retina": {"size": 2 * CROP, "min_enlarge": 2.0, "zoom": 1.0},
    "mirzaev": {"size": 2 * CROP, "crop_p": 0.0},
}
GAN_TOY = {"crop": 32, "base_channels": 8, "iterations": 150, "lr": 2e-4, "decay_start": 0.8}
GAN_SEEDS = (0, 1, 2)


def _four_real_images(shared: Path, out: Path) -> Path:
    """Four fluorescence images (the top-left ``CROP`` px, with their masks) in BBBC038 layout."""
    import imageio.v3 as iio

    manifest = pd.read_csv(shared / "manifest.csv")
    rows = manifest[(manifest.group == "Default") & (manifest.height == 256)]
    for image_id in rows[rows.n_masks >= 40].ImageId.iloc[[0, 3, 6, 9]]:
        source = shared / "stage1_train" / image_id
        (out / image_id / "images").mkdir(parents=True)
        (out / image_id / "masks").mkdir()
        image = iio.imread(source / "images" / f"{image_id}.png")[:CROP, :CROP]
        iio.imwrite(out / image_id / "images" / f"{image_id}.png", image)
        for mask_path in (source / "masks").glob("*.png"):
            mask = iio.imread(mask_path)[:CROP, :CROP]
            if mask.any():
                iio.imwrite(out / image_id / "masks" / mask_path.name, mask)
    return out


def _train_segmenter(baseline: str, images: Path, out: Path) -> float:
    """Worker: train on the four images, return the last DSB score on them."""
    from nucleistyle.segment.engine import train_segmenter

    torch.set_num_threads(1)
    cfg = get_config(baseline, {**OVERFIT, "prep": PREP[baseline]})
    train_segmenter([images], out / "model.pt", cfg, history_tsv=out / "history.tsv")
    history = pd.read_csv(out / "history.tsv", sep="\t").dropna(subset="train_score")
    return float(history["train_score"].iloc[-1])


def _blobs(rng: np.random.Generator, size: int) -> np.ndarray:
    """A fluorescence-like intensity image in [0, 1]: blurred discs covering about half of a
    black image (so that a flat colour is a poor answer in both domains)."""
    from scipy import ndimage as ndi

    yy, xx = np.mgrid[:size, :size]
    image = np.zeros((size, size), np.float32)
    for _ in range(int(rng.integers(8, 14))):
        cy, cx = rng.uniform(4, size - 4, 2)
        radius = rng.uniform(5, 9)
        image[(yy - cy) ** 2 + (xx - cx) ** 2 < radius**2] = rng.uniform(0.6, 1.0)
    return np.clip(ndi.gaussian_filter(image, 1.0) + rng.normal(0, 0.02, image.shape), 0, 1)


def _grey(v: np.ndarray) -> np.ndarray:
    return np.repeat(np.rint(v * 255).astype(np.uint8)[..., None], 3, axis=2)


def _purple(v: np.ndarray) -> np.ndarray:
    """The fixed recolouring of the toy's second domain: pink nuclei on dark purple.

    It keeps the polarity (bright nuclei stay bright): a polarity flip, as between fluorescence
    and bright-field, takes far longer to learn (after 200 iterations the GAN recoloured but
    did not invert; measured)."""
    background, nucleus = np.array([40, 20, 70.0]), np.array([250, 170, 230.0])
    return np.rint(background * (1 - v[..., None]) + nucleus * v[..., None]).astype(np.uint8)


def _train_gan_toy(seed: int, out: Path) -> dict[str, tuple[float, float]]:
    """Worker: train on grey and purple renderings of different images (unpaired), then
    translate new images both ways; returns ``{direction: (L1 to the truth, L1 of the target
    domain's flat mean colour)}`` in grey levels."""
    from nucleistyle.data.bbbc038 import write_sample
    from nucleistyle.gan.configs import GanConfig
    from nucleistyle.gan.engine import train_gan
    from nucleistyle.gan.stylize import load_stylizer

    torch.set_num_threads(1)
    size, rng = 48, np.random.default_rng(100)
    rows = []
    for i in range(32):
        domain = i % 2
        image = (_grey, _purple)[domain](_blobs(rng, size))
        write_sample(out / "train", f"img{i:03d}", image)
        rows.append((f"img{i:03d}", domain))
    pd.DataFrame(rows, columns=["ImageId", "cluster"]).to_csv(out / "clusters.csv", index=False)
    cfg = GanConfig(n_domains=2, resize=0, precision="fp32", device="cpu", workers=1,
                    seed=seed, checkpoint_every=10**6, **GAN_TOY)  # fmt: skip
    train_gan(out / "train", out / "clusters.csv", out / "model.pt", cfg)
    stylizer = load_stylizer(out / "model.pt", "cpu")
    tests = [_blobs(np.random.default_rng(1000 + k), size) for k in range(8)]
    result = {}
    for name, source, target, render_in, render_out in (
        ("grey->purple", 0, 1, _grey, _purple),
        ("purple->grey", 1, 0, _purple, _grey),
    ):
        del source
        truths = [render_out(v).astype(np.float32) for v in tests]
        styled = stylizer.stylize([render_in(v) for v in tests], target, seed=0)
        l1 = np.mean([np.abs(s - t).mean() for s, t in zip(styled, truths, strict=True)])
        flat_colour = np.mean([t.reshape(-1, 3).mean(0) for t in truths], axis=0)
        flat = np.mean([np.abs(t - flat_colour).mean() for t in truths])
        result[name] = (float(l1), float(flat))
    return result


@pytest.fixture(scope="module")
def learning_runs(shared_bbbc038, tmp_path_factory) -> dict:
    """Both Mask R-CNN baselines and three GAN seeds, trained in two worker processes."""
    import concurrent.futures
    import multiprocessing

    root = tmp_path_factory.mktemp("learning")
    images = _four_real_images(shared_bbbc038, root / "four")
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=context) as pool:
        jobs = {}
        for baseline in BASELINES:
            (root / baseline).mkdir()
            jobs[baseline] = pool.submit(_train_segmenter, baseline, images, root / baseline)
        for seed in GAN_SEEDS:
            (root / f"gan{seed}").mkdir()
            jobs[f"gan{seed}"] = pool.submit(_train_gan_toy, seed, root / f"gan{seed}")
        return {name: job.result() for name, job in jobs.items()}


OVERFIT_SCORE = 0.6
"""Measured on this project's 2-core Intel Xeon (AMX): 0.645 (Deep Retina) and 0.725 (Mirzaev)
after these 400 iterations (about 170 s each), 0.630 / 0.723 after 300; at the crop's own size,
300 iterations: 0.608 / 0.674. Untrained or broken models score below 0.1. Before masks were
pasted where they are learned (:func:`nucleistyle.segment.model.project_masks`) the same 300
iterations at the crop's size gave 0.469 / 0.521, and longer runs levelled off near 0.55."""


@pytest.mark.learning
@pytest.mark.parametrize("baseline", BASELINES)
def test_each_baseline_overfits_four_real_images(baseline, learning_runs):
    assert learning_runs[baseline] >= OVERFIT_SCORE


@pytest.mark.learning
@pytest.mark.parametrize("seed", GAN_SEEDS)
def test_the_gan_learns_a_known_translation_both_ways(seed, learning_runs):
    for direction, (l1, flat) in learning_runs[f"gan{seed}"].items():
        assert l1 < flat, f"{direction}: L1 {l1:.1f} not below the flat mean colour's {flat:.1f}"
