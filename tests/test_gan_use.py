"""Using a trained GAN: stylize, the augmented training set, transfer evaluation, figures."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from nucleistyle.data.bbbc038 import list_images, load_sample, read_image
from nucleistyle.errors import NucleistyleError
from nucleistyle.gan import augment as augment_module
from nucleistyle.gan.augment import MANIFEST_COLUMNS, AugmentConfig, augment_dataset, augmented_id
from nucleistyle.gan.data import load_domain_set
from nucleistyle.gan.evaluate import (
    EVALUATION_COLUMNS,
    TransferMonitor,
    edge_similarity,
    evaluate_transfer,
    perfect_transfer,
    threshold_iou,
)
from nucleistyle.gan.stylize import image_seed, load_stylizer, pad_to_multiple, stylize_folder
from nucleistyle.report.gan import plot_augmented_gallery, plot_figure3
from nucleistyle.segment.dataset import attach_variants, list_training_records, load_items


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def trained(tiny_gan: dict[str, Path]) -> dict[str, Path]:
    """The session's tiny GAN (``tiny_gan`` in conftest.py), shared with the CLI tests."""
    return tiny_gan


def test_pad_to_multiple_of_four_reflects_and_keeps_the_original() -> None:
    image = np.arange(5 * 6 * 3, dtype=np.uint8).reshape(5, 6, 3)
    padded = pad_to_multiple(image)
    assert padded.shape == (8, 8, 3)
    assert np.array_equal(padded[:5, :6], image)
    assert np.array_equal(padded[5, :6], image[3])  # reflection, not repetition of the edge
    assert np.array_equal(padded[:5, 6], image[:, 4])
    assert pad_to_multiple(np.zeros((1, 1, 3), np.uint8)).shape == (8, 8, 3)
    same = np.zeros((12, 16, 3), np.uint8)
    assert pad_to_multiple(same) is same


@pytest.mark.parametrize("shape", [(37, 53), (5, 7), (1, 1), (48, 48)])
def test_stylize_returns_uint8_rgb_of_the_input_size(trained: dict, shape: tuple) -> None:
    stylizer = load_stylizer(trained["model"], "cpu")
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    out = stylizer.stylize([image, image[..., 0]], target_domain=1, seed=5)
    assert [o.shape for o in out] == [(*shape, 3)] * 2
    assert all(o.dtype == np.uint8 for o in out)


def test_stylize_is_deterministic_per_seed_and_depends_on_domain(trained: dict) -> None:
    stylizer = load_stylizer(trained["model"], "cpu")
    image = read_image(list_images(trained["images"])[0].image_path)[0]
    a = stylizer.stylize(image, 0, seed=1)[0]
    assert np.array_equal(a, stylizer.stylize(image, 0, seed=1)[0])
    assert not np.array_equal(a, stylizer.stylize(image, 2, seed=1)[0])
    z = stylizer.sample_attributes(1, 0, seed=1)[0]
    assert np.array_equal(a, stylizer.stylize(image, 0, attribute=z)[0])
    prior = stylizer.sample_attributes(3, 0, seed=1, source="prior")
    stats = stylizer.sample_attributes(3, 0, seed=1, source="domain_stats")
    expected = stylizer.attribute_mean[0].numpy() + prior * stylizer.attribute_std[0].numpy()
    np.testing.assert_allclose(stats, expected, rtol=1e-6)
    assert stylizer.encode_attribute(image, 0).shape == (8,)


def test_stylize_rejects_bad_domain_and_attribute(trained: dict) -> None:
    stylizer = load_stylizer(trained["model"], "cpu")
    image = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(NucleistyleError, match="target domain"):
        stylizer.stylize(image, 3)
    with pytest.raises(NucleistyleError, match="attribute must have shape"):
        stylizer.stylize(image, 0, attribute=np.zeros(5))
    with pytest.raises(NucleistyleError, match="uint8"):
        stylizer.stylize(np.zeros((8, 8, 3), np.float32), 0)


def _canonical(model: Path, tmp_path: Path, inverted: list[int]) -> Path:
    """The model file as if trained with gan.polarity canonical, ``inverted`` seen inverted."""
    state = torch.load(model, weights_only=True)
    state["inverted_domains"] = inverted
    torch.save(state, tmp_path / "canonical.pt")
    return tmp_path / "canonical.pt"


def test_a_canonical_model_inverts_inputs_from_and_outputs_into_its_inverted_domains(
    trained: dict, tmp_path: Path
) -> None:
    plain = load_stylizer(trained["model"], "cpu")
    canonical = load_stylizer(_canonical(trained["model"], tmp_path, [0]), "cpu")
    image = read_image(list_images(trained["images"])[0].image_path)[0]
    z = plain.sample_attributes(1, 1, seed=3)[0]
    # from domain 0: the nets see the inverted image; into domain 1: the output as rendered
    ours = canonical.stylize(image, 1, attribute=z, source_domain=0)[0]
    assert np.array_equal(ours, plain.stylize(255 - image, 1, attribute=z)[0])
    assert np.array_equal(ours, canonical.stylize(255 - image, 1, attribute=z, source_domain=2)[0])
    # into domain 0: the rendering inverted back
    z0 = plain.sample_attributes(1, 0, seed=3)[0]
    into = canonical.stylize(image, 0, attribute=z0, source_domain=1)[0]
    assert np.array_equal(into, 255 - plain.stylize(image, 0, attribute=z0)[0])
    np.testing.assert_array_equal(
        canonical.encode_attribute(image, 0), plain.encode_attribute(255 - image, 0)
    )
    same = canonical.encode_attribute(image, 1)
    np.testing.assert_array_equal(same, plain.encode_attribute(image, 1))


def test_a_canonical_model_needs_the_source_domain(trained: dict, tmp_path: Path) -> None:
    model = _canonical(trained["model"], tmp_path, [0])
    stylizer = load_stylizer(model, "cpu")
    image = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(NucleistyleError, match=r"inverted .*source domain"):
        stylizer.stylize(image, 1)
    with pytest.raises(NucleistyleError, match="source domain must be an integer"):
        stylizer.stylize(image, 1, source_domain=7)
    folder = _flat_folder(tmp_path / "in", {"a": (8, 8, 3)})
    with pytest.raises(NucleistyleError, match="--source-domain"):
        stylize_folder(model, folder, tmp_path / "out", domain=1, device="cpu")
    assert not (tmp_path / "out").exists()
    assert stylize_folder(model, folder, tmp_path / "out", 1, device="cpu", source_domain=0) == 1


def test_load_stylizer_rejects_a_training_checkpoint(trained: dict, tmp_path: Path) -> None:
    torch.save({"format": "other", "config": {}}, tmp_path / "x.pt")
    with pytest.raises(NucleistyleError, match=r"x\.pt is not a nucleistyle GAN model"):
        load_stylizer(tmp_path / "x.pt", "cpu")


def _flat_folder(folder: Path, shapes: dict[str, tuple[int, ...]], seed: int = 0) -> Path:
    """Random uint8 PNGs ``<name>.png`` of the given (H, W) / (H, W, 3) shapes."""
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for name, shape in shapes.items():
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(folder / f"{name}.png")
    return folder


def _read_png(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        assert im.mode == "RGB", path
        return np.asarray(im)


def test_image_seed_is_sha256_of_seed_and_image_id() -> None:
    import hashlib

    expected = int.from_bytes(hashlib.sha256(b"7:abc").digest()[:8], "big") >> 1
    assert image_seed(7, "abc") == expected
    assert 0 <= expected < 2**63
    assert len({image_seed(7, "abc"), image_seed(8, "abc"), image_seed(7, "abd")}) == 3


def test_stylize_folder_writes_each_image_as_the_stylizer_renders_it(
    trained: dict, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    shapes = {"odd": (37, 53, 3), "grey": (21, 9), "tiny": (1, 3, 3), "square": (48, 48, 3)}
    flat = _flat_folder(tmp_path / "flat", shapes)
    out = tmp_path / "deep" / "out"
    caplog.set_level(logging.INFO, "nucleistyle")
    assert stylize_folder(trained["model"], flat, out, domain=2, seed=4, device="cpu") == 4
    assert "stylize: 2/4 images" in caplog.text and "stylize: 4/4 images" in caplog.text
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{n}.png" for n in shapes)
    assert sorted(p.name for p in (tmp_path / "deep").iterdir()) == ["out"]  # no staging left
    stylizer = load_stylizer(trained["model"], "cpu")
    for name, shape in shapes.items():
        written = _read_png(out / f"{name}.png")
        assert written.shape == (*shape[:2], 3)
        image = read_image(flat / f"{name}.png")[0]
        z = stylizer.sample_attributes(1, 2, seed=image_seed(4, name))
        assert np.array_equal(written, stylizer.stylize(image, 2, attribute=z)[0])
    # BBBC038 layout: ImageId = folder name
    records = list_images(trained["images"])[:2]
    bbbc = tmp_path / "bbbc"
    for record in records:
        (bbbc / record.image_id / "images").mkdir(parents=True)
        (bbbc / record.image_id / "images" / record.image_path.name).write_bytes(
            record.image_path.read_bytes()
        )
    assert stylize_folder(trained["model"], bbbc, tmp_path / "b", domain=0, device="cpu") == 2
    assert sorted(p.stem for p in (tmp_path / "b").iterdir()) == [r.image_id for r in records]


def test_stylize_folder_result_of_an_image_does_not_depend_on_the_folder(
    trained: dict, tmp_path: Path
) -> None:
    shapes = {"a": (30, 41, 3), "b": (25, 25, 3), "c": (16, 40, 3)}
    full = _flat_folder(tmp_path / "full", shapes)
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "b.png").write_bytes((full / "b.png").read_bytes())
    run = {}
    for name, folder, seed in [("full", full, 3), ("alone", alone, 3), ("again", full, 3),
                               ("seed4", full, 4)]:  # fmt: skip
        out = tmp_path / f"out_{name}"
        stylize_folder(trained["model"], folder, out, domain=1, seed=seed, device="cpu")
        run[name] = {p.stem: _read_png(p) for p in out.iterdir()}
    assert np.array_equal(run["alone"]["b"], run["full"]["b"])
    assert all(np.array_equal(run["again"][k], run["full"][k]) for k in shapes)
    assert not np.array_equal(run["seed4"]["b"], run["full"]["b"])
    # same pixels under another name: another attribute draw
    (alone / "b.png").rename(alone / "renamed.png")
    stylize_folder(trained["model"], alone, tmp_path / "renamed", domain=1, seed=3, device="cpu")
    assert not np.array_equal(_read_png(tmp_path / "renamed" / "renamed.png"), run["full"]["b"])


def test_stylize_folder_attribute_source_overrides_the_model_default(
    trained: dict, tmp_path: Path
) -> None:
    flat = _flat_folder(tmp_path / "flat", {"x": (24, 28, 3)})
    stylizer = load_stylizer(trained["model"], "cpu")
    image = read_image(flat / "x.png")[0]
    for source in ("prior", "domain_stats"):
        stylize_folder(trained["model"], flat, tmp_path / source, 1, seed=0,
                       attribute_source=source, device="cpu")  # fmt: skip
        z = stylizer.sample_attributes(1, 1, seed=image_seed(0, "x"), source=source)
        expected = stylizer.stylize(image, 1, attribute=z)[0]
        assert np.array_equal(_read_png(tmp_path / source / "x.png"), expected)
    assert not np.array_equal(
        _read_png(tmp_path / "prior" / "x.png"), _read_png(tmp_path / "domain_stats" / "x.png")
    )


def test_stylize_folder_error_leaves_the_output_folder_untouched(
    trained: dict, tmp_path: Path
) -> None:
    flat = _flat_folder(tmp_path / "flat", {"a": (20, 20, 3), "c": (20, 20, 3)})
    (flat / "b.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.png").write_bytes(b"old")
    (out / "keep.txt").write_text("mine")
    with pytest.raises(NucleistyleError, match=r"cannot read image .*b\.png"):
        stylize_folder(trained["model"], flat, out, domain=0, device="cpu")
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "keep.txt"]
    assert (out / "a.png").read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["flat", "out"]
    (flat / "b.png").unlink()
    assert stylize_folder(trained["model"], flat, out, domain=0, device="cpu") == 2
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "c.png", "keep.txt"]
    assert _read_png(out / "a.png").shape == (20, 20, 3)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"domain": 3}, r"target domain must be an integer in 0\.\.2 \(.*model\.pt: 0 "),
        ({"domain": -1}, r"in 0\.\.2 .*got -1"),
        ({"domain": True}, r"in 0\.\.2 .*got True"),
        ({"domain": 0, "attribute_source": "uniform"}, r"prior, domain_stats, got 'uniform'"),
        ({"domain": 0, "seed": 1.5}, r"seed must be an integer, got 1\.5"),
    ],
)
def test_stylize_folder_rejects_bad_arguments(
    trained: dict, tmp_path: Path, kwargs: dict, message: str
) -> None:
    flat = _flat_folder(tmp_path / "flat", {"a": (12, 12, 3)})
    with pytest.raises(NucleistyleError, match=message):
        stylize_folder(trained["model"], flat, tmp_path / "out", device="cpu", **kwargs)
    assert not (tmp_path / "out").exists()


def test_stylize_folder_refuses_to_write_into_the_image_folder(
    trained: dict, tmp_path: Path
) -> None:
    flat = _flat_folder(tmp_path / "flat", {"a": (12, 12, 3)})
    before = (flat / "a.png").read_bytes()
    with pytest.raises(NucleistyleError, match="is the image folder"):
        stylize_folder(trained["model"], flat, tmp_path / "x" / ".." / "flat", 0, device="cpu")
    assert (flat / "a.png").read_bytes() == before
    (tmp_path / "file").write_text("")
    with pytest.raises(NucleistyleError, match=r"file exists and is not a folder"):
        stylize_folder(trained["model"], flat, tmp_path / "file", 0, device="cpu")


def test_augment_writes_stylised_copies_with_identical_masks(
    trained: dict, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out, manifest_csv = tmp_path / "aug", tmp_path / "manifest.csv"
    caplog.set_level(logging.INFO, "nucleistyle")
    manifest = augment_dataset(
        trained["images"], trained["assignments"], trained["model"], out, manifest_csv,
        AugmentConfig(copies=2), seed=3, device="cpu",
    )  # fmt: skip
    originals = {r.image_id: r for r in list_images(trained["images"])}
    n = len(originals)  # progress in the log, where no terminal shows a bar
    assert f"augment: {n}/{n} images" in caplog.text and caplog.text.count("augment: ") >= 2
    assert len(manifest) == 2 * len(originals)
    assert tuple(manifest.columns) == MANIFEST_COLUMNS
    assert (manifest["source_ImageId"].value_counts() == 2).all()
    assert manifest["ImageId"].is_unique
    assert all(re.fullmatch("[0-9a-f]{64}", i) for i in manifest["ImageId"])
    assert not set(manifest["ImageId"]) & set(originals)
    assert (manifest["target_domain"] != manifest["source_cluster"]).all()
    table = pd.read_csv(trained["assignments"]).set_index("ImageId")["cluster"]
    assert (
        manifest["source_cluster"].to_numpy() == table[manifest["source_ImageId"]].to_numpy()
    ).all()
    written = {r.image_id: r for r in list_images(out)}
    assert set(written) == set(manifest["ImageId"])
    for row in manifest.itertuples(index=False):
        assert row.ImageId == augmented_id(row.source_ImageId, row.target_domain, row.seed)
        source, copy = originals[row.source_ImageId], written[row.ImageId]
        assert [p.name for p in copy.mask_paths] == [p.name for p in source.mask_paths]
        for a, b in zip(source.mask_paths, copy.mask_paths, strict=True):
            assert a.read_bytes() == b.read_bytes()
        image = load_sample(copy).image
        assert image.shape == read_image(source.image_path)[0].shape
    saved = pd.read_csv(manifest_csv, dtype={"ImageId": str})
    pd.testing.assert_frame_equal(saved, manifest, atol=1e-4)
    assert (manifest["draws"] == 1).all()  # no gate: every first draw is kept
    assert manifest["visibility_ratio"].between(0, 1).all()
    again = augment_dataset(
        trained["images"], trained["assignments"], trained["model"], tmp_path / "aug2",
        tmp_path / "m2.csv", AugmentConfig(copies=2), seed=3, device="cpu",
    )  # fmt: skip
    pd.testing.assert_frame_equal(
        again.drop(columns="source_image"), manifest.drop(columns="source_image")
    )

    plot_augmented_gallery(out, manifest_csv, tmp_path / "gallery.png", n=4)
    assert (tmp_path / "gallery.png").stat().st_size > 1000


def test_the_quality_gate_keeps_only_copies_that_pass_and_redraws_the_others(
    trained: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def run(name: str, **gate: float) -> pd.DataFrame:
        config = AugmentConfig(copies=2, gate=True, tries=3, **gate)
        return augment_dataset(
            trained["images"], trained["assignments"], trained["model"], tmp_path / name,
            tmp_path / f"{name}.csv", config, seed=3, device="cpu",
        )  # fmt: skip

    ungated = augment_dataset(
        trained["images"], trained["assignments"], trained["model"], tmp_path / "u",
        tmp_path / "u.csv", AugmentConfig(copies=2), seed=3, device="cpu",
    )  # fmt: skip
    open_gate = run("open", min_visibility=0.0, max_phantoms=1e9)
    pd.testing.assert_frame_equal(  # everything passes at the first draw
        open_gate.drop(columns="source_image"), ungated.drop(columns="source_image")
    )
    best = float(ungated["visibility_ratio"].max())
    gated = run("gated", min_visibility=best, max_phantoms=1e9)
    assert (gated["visibility_ratio"] >= best).all() and len(gated) < len(ungated)
    shut = run("shut", min_visibility=1.5)  # no copy can be clearer than 1
    assert shut.empty and not any((tmp_path / "shut").iterdir())
    items = load_items(list_training_records([trained["images"]]), fill_holes=False, workers=1)
    attached, n_copies = attach_variants(items, [tmp_path / "shut"], [tmp_path / "shut.csv"])
    assert n_copies == 0 and all(not item.variants for item in attached)  # style arm = originals

    # a copy refused twice is kept at its third draw
    calls = {"n": 0}

    def every_third(styled, labels, look):
        calls["n"] += 1
        ok = calls["n"] % 3 == 0
        return {"visibility_ratio": 1.0 if ok else 0.0, "phantoms_per_100": 0.0}

    monkeypatch.setattr(augment_module, "_quality", every_third)
    third = run("third", min_visibility=0.5)
    assert (third["draws"] == 3).all() and len(third) == len(ungated)


def test_augment_rejects_images_missing_from_assignments(trained: dict, tmp_path: Path) -> None:
    table = pd.read_csv(trained["assignments"])
    table.iloc[:-1].to_csv(tmp_path / "partial.csv", index=False)
    with pytest.raises(
        NucleistyleError, match=rf"partial.csv: no row for ImageId {table.ImageId.iloc[-1]}"
    ):
        augment_dataset(
            trained["images"], tmp_path / "partial.csv", trained["model"], tmp_path / "a",
            tmp_path / "m.csv", device="cpu",
        )  # fmt: skip


def test_edge_similarity_ignores_polarity_and_detects_moved_structure() -> None:
    image = np.zeros((32, 32), np.uint8)
    image[8:20, 10:22] = 200
    assert edge_similarity(image, 255 - image) == pytest.approx(1.0)
    assert edge_similarity(image, image // 2 + 30) == pytest.approx(1.0)
    moved = np.roll(image, 9, axis=1)
    assert edge_similarity(image, moved) < 0.5
    assert np.isnan(edge_similarity(image, np.zeros_like(image)))


def test_threshold_iou_finds_the_nuclei_in_any_style_and_not_in_other_images() -> None:
    mask = np.zeros((32, 32), bool)
    mask[8:20, 10:22] = True
    bright = np.where(mask, 200, 30).astype(np.uint8)
    assert threshold_iou(bright, mask, sigma=0) == 1.0
    assert threshold_iou(255 - bright, mask, sigma=0) == 1.0  # dark nuclei on bright
    purple = np.stack(
        [np.where(mask, 120, 230), np.where(mask, 60, 60), np.full((32, 32), 200)], -1
    )
    assert threshold_iou(purple.astype(np.uint8), mask, sigma=0) == 1.0  # only red differs
    moved = np.roll(bright, 16, axis=1)
    assert threshold_iou(moved, mask, sigma=0) < 0.5
    assert threshold_iou(np.full((32, 32), 90, np.uint8), mask) == pytest.approx(mask.mean())
    assert np.isnan(threshold_iou(bright, np.zeros_like(mask)))


def test_perfect_transfer_is_the_reference_a_gan_is_read_against() -> None:
    synthetic = {"height": 64, "width": 64}
    table = perfect_transfer(synthetic, {"select": "dark"}, per_pair=2)
    assert len(table) == 5 * 4  # every ordered pair of different modalities
    assert set(table.n_images) == {2}
    means = table[["fg_iou", "fg_iou_unrelated", "edge_corr"]].mean()
    assert means.fg_iou > 0.6  # the nuclei still show in every other style ...
    assert means.fg_iou_unrelated < 0.3  # ... and other nuclei do not fit their masks
    assert 0.2 < means.edge_corr < 0.8
    # the copy-quality scale: the same nuclei visible, another image's not
    assert table.visibility_ratio.median() > 0.8 > 0.2 > table.visibility_ratio_unrelated.median()
    assert table.phantoms_per_100.median() < table.phantoms_per_100_unrelated.median()
    close = table.set_index(["source_name", "target_name"]).loc[
        ("small_fluorescent", "large_fluorescent")
    ]
    assert close.fg_iou > 0.6  # the same nuclei found again in a similar style
    two = ("small_fluorescent", "purple_tissue")
    pair = perfect_transfer(synthetic, per_pair=1, modalities=two)
    assert list(pair.target_name) == ["purple_tissue", "small_fluorescent"]


@pytest.mark.parametrize("resize", [0, 40])
def test_monitor_reads_structure_against_the_true_masks(trained: dict, resize: int) -> None:
    data = load_domain_set(trained["images"], trained["assignments"], 3, resize=resize, crop=36)
    state = torch.load(trained["model"], weights_only=True)
    monitor = TransferMonitor(trained["clusters"], trained["images"], per_domain=1, device="cpu")
    scores = monitor(state, data)
    assert scores["eval_style_hit_chance"] == pytest.approx(1 / 3)
    assert 0 <= scores["eval_fg_iou"] <= 1 and 0 <= scores["eval_style_hit"] <= 1
    assert 0 <= scores["eval_visibility_ratio"] <= 1 and scores["eval_phantoms_per_100"] >= 0
    assert np.isfinite(scores["eval_self_visibility_kept"])
    records = {r.image_id: r for r in list_images(trained["images"])}
    kept = []
    for members in data.members:
        index = members[0]
        labels = load_sample(records[data.image_ids[index]]).labels
        image = data.images[index]
        inherited = monitor._labels_of(data, int(index))
        assert inherited.shape == image.shape[:2]
        if resize == 0:  # native size: exactly the true nuclei
            assert np.array_equal(inherited, labels)
        kept.append(threshold_iou(image, inherited))
    assert scores["eval_fg_iou_original"] == pytest.approx(np.mean(kept))
    assert scores["eval_fg_iou_original"] > 0.6  # the synthetic nuclei show in the originals
    blind = TransferMonitor(trained["clusters"], None, per_domain=1, device="cpu")
    assert blind(state, data)["eval_fg_iou_original"] != scores["eval_fg_iou_original"]


def test_evaluate_transfer_reports_every_domain_pair(trained: dict, tmp_path: Path) -> None:
    result = evaluate_transfer(
        trained["images"], trained["assignments"], trained["model"], trained["clusters"],
        tmp_path / "eval.csv", per_domain=2, seed=0, device="cpu",
    )  # fmt: skip
    assert tuple(result.columns) == EVALUATION_COLUMNS
    assert len(result) == 9
    assert set(zip(result.source_domain, result.target_domain, strict=True)) == {
        (s, t) for s in range(3) for t in range(3)
    }
    assert result["n_images"].between(1, 2).all()
    for column in ("seg_score", "style_hit", "gt_score_original", "gt_score_stylised"):
        assert result[column].between(0, 1).all()
    assert result["edge_corr"].between(-1, 1).all()
    for column in ("visibility_ratio", "visibility_ratio_unrelated"):
        assert result[column].between(0, 1).all()
    assert (result[["phantoms_per_100", "phantoms_per_100_unrelated"]] >= 0).all().all()
    for _, rows in result.groupby("target_domain"):  # the target domain's own real images
        assert rows["phantoms_per_100_real"].nunique() == 1
    saved = pd.read_csv(tmp_path / "eval.csv")
    assert len(saved) == 9


def test_figure3_is_written(trained: dict, tmp_path: Path) -> None:
    plot_figure3(
        trained["images"], trained["assignments"], trained["model"], tmp_path / "f3.png",
        device="cpu",
    )  # fmt: skip
    assert (tmp_path / "f3.png").stat().st_size > 5000


def test_figure3_shows_images_at_the_gan_training_scale() -> None:
    from nucleistyle.report.gan import _square

    image = np.arange(40 * 60 * 3, dtype=np.uint8).reshape(40, 60, 3)
    native = _square(image, 0)  # gan.resize: 0 trains at native scale: no resampling
    np.testing.assert_array_equal(native, image[:, 10:50])
    assert _square(image, 256).shape == (256, 256, 3)
