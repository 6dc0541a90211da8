"""The benchmarks' own logic: reports and ratios, the targets that apply to a CPU, the bf16-absent
path, the GPU smoke check's CPU paths, config overlays."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

BENCH = REPO / "bench"
sys.path.insert(0, str(BENCH))

import bench_gan  # noqa: E402  (bench/ is scripts, not a package)
import bench_segment  # noqa: E402

CPUINFO_AVX2 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC
flags\t\t: fpu sse2 avx fma avx2 bmi2

processor\t: 1
model name\t: AMD EPYC
flags\t\t: fpu sse2 avx fma avx2 bmi2
"""


def _run(script: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(BENCH / script), *args],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", **env},
        cwd=REPO,
        timeout=900,
    )


# -- bench_gan -----------------------------------------------------------------------------------


def test_cpu_flags_are_read_and_a_cpu_without_bf16_units_is_named_in_one_line() -> None:
    model, flags = bench_gan.cpu_info(CPUINFO_AVX2)
    assert model == "AMD EPYC" and "avx2" in flags and "avx512_bf16" not in flags
    line = bench_gan.no_bf16_line(model, flags)
    assert "\n" not in line
    assert line.startswith("no bf16 on this CPU (AMD EPYC: avx2, no avx512_bf16 or amx_bf16")
    assert line.endswith("fp32 only, bf16 not measured")
    assert bench_gan.cpu_info("") == ("unknown CPU", set())


def test_gan_report_gives_ours_as_ratios_to_the_plain_update_in_the_same_precision() -> None:
    fp32_only = {"plain-fp32": 50.0, "ours-fp32": 40.0}
    assert bench_gan.ratio_line(2, fp32_only) == (
        "2 thread(s), implementation, like for like: fp32: ours 1.25x the plain update (50.00 s)"
    )
    both = {**fp32_only, "plain-bf16": 15.0, "ours-bf16": 12.5}
    assert bench_gan.ratio_line(1, both) == (
        "1 thread(s), implementation, like for like: fp32: ours 1.25x the plain update (50.00 s); "
        "bf16: ours 1.20x the plain update (15.00 s); precision factor of ours: bf16 3.20x the "
        "speed of fp32"
    )
    timing = {"full_best": 40.0, "full_median": 41.0, "content_best": 2.5, "peak_rss_gib": 3.5}
    assert bench_gan.speed_line(1, "ours-fp32", timing) == (
        "1 thread(s), our fp32: full update 40.00 s (median 41.00), content-D update 2.50 s, "
        "peak RSS 3.50 GiB"
    )
    assert bench_gan.speed_line(1, "plain-bf16", timing).startswith("1 thread(s), plain bf16:")
    roofline = bench_gan.speed_line(1, "ours-fp32", {**timing, "gflop": 1200.0, "matmul": 60.0})
    assert roofline.endswith("1200 GFLOP per update = 30 GFLOP/s, 50% of this CPU's fp32 "
                             "2048^3 matmul rate (60 GFLOP/s)")  # fmt: skip
    contention = bench_gan.contention_line("ours-fp32", 64, {1: 3.0, 2: 12.0})
    assert contention.endswith("1 thread 3.00 s, 2 threads 12.00 s per update (2 threads 0.25x "
                               "the speed of 1)")  # fmt: skip


def _speed(kinds: list[str], seconds: dict[str, float], rss: float = 3.0) -> dict:
    return {
        (kind, n): {"full_best": seconds[kind], "peak_rss_gib": 9.0 if "plain" in kind else rss}
        for kind in kinds
        for n in (1, 2)
    }


def test_gan_targets_are_like_for_like_ratios_that_apply_to_the_cpu() -> None:
    assert bench_gan.kinds_for(["fp32"]) == ["plain-fp32", "ours-fp32"]
    fp32 = bench_gan.kinds_for(["fp32"])
    checks = bench_gan.target_checks(_speed(fp32, {"plain-fp32": 50.0, "ours-fp32": 40.0}),
                                     [1, 2], None)  # fmt: skip
    assert list(checks.values()) == [True, True, True] and "peak RSS 3.00 GiB" in next(iter(checks))
    assert "1 thread(s): our fp32 update 1.25x the plain fp32 one (target >= 0.95x)" in checks
    too_big = bench_gan.target_checks(
        _speed(fp32, {"plain-fp32": 50.0, "ours-fp32": 40.0}, 4.5), [1, 2], None
    )
    assert list(too_big.values()) == [False, True, True]  # the plain baseline's RSS is not one
    slow = bench_gan.target_checks(_speed(fp32, {"plain-fp32": 50.0, "ours-fp32": 55.0}),
                                   [1, 2], None)  # fmt: skip
    assert list(slow.values()) == [True, False, False]

    both = bench_gan.kinds_for(["fp32", "bf16"])
    seconds = {"plain-fp32": 50.0, "ours-fp32": 40.0, "plain-bf16": 20.0, "ours-bf16": 22.0}
    checks = bench_gan.target_checks(_speed(both, seconds), [1, 2], (True, 0.05))
    assert len(checks) == 6 and list(checks.values()) == [True, True, True, False, False, True]
    # bf16 ours against bf16 plain (0.91x), not against the plain fp32 update (2.3x)
    assert "1 thread(s): our bf16 update 0.91x the plain bf16 one (target >= 0.95x)" in checks


def test_gan_bench_without_bf16_reports_fp32_only_and_passes_on_its_targets(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import nucleistyle.torchutils

    measured: list[list[str]] = []
    seconds = {"plain-fp32": 50.0, "ours-fp32": 40.0, "plain-bf16": 10.0, "ours-bf16": 8.0}

    def fake_speed(args, kinds):
        measured.append(kinds)
        return _speed(kinds, seconds)

    monkeypatch.setattr(nucleistyle.torchutils, "cpu_has_bf16", lambda: False)
    monkeypatch.setattr(bench_gan, "cpu_info", lambda: ("AMD EPYC", {"avx2"}))
    monkeypatch.setattr(bench_gan, "_speed", fake_speed)
    monkeypatch.setattr(bench_gan, "_stability", lambda args: pytest.fail("bf16 stability run"))
    assert bench_gan.main(["--contention-crop", "0"]) == 0
    out = capsys.readouterr().out
    assert measured == [["plain-fp32", "ours-fp32"]]
    assert sum("no bf16 on this CPU" in line for line in out.splitlines()) == 1
    assert "PASS: peak RSS 3.00 GiB" in out and "FAIL" not in out
    assert next(line for line in out.splitlines() if "bf16" in line).startswith("no bf16")
    assert sum("bf16" in line for line in out.splitlines()) == 1

    monkeypatch.setattr(nucleistyle.torchutils, "cpu_has_bf16", lambda: True)
    monkeypatch.setattr(bench_gan, "_stability", lambda args: (True, 0.01))
    assert bench_gan.main(["--contention-crop", "0"]) == 0  # every target met
    assert measured[-1] == ["plain-fp32", "ours-fp32", "plain-bf16", "ours-bf16"]
    out = capsys.readouterr().out
    assert "no bf16" not in out and "PASS: 2 thread(s): our bf16 update 1.25x the plain bf16" in out


# -- bench_segment -------------------------------------------------------------------------------


def test_roi_align_bench_times_training_steps_with_both_poolers(tmp_path: Path) -> None:
    data = bench_segment.make_data(tmp_path / "data", (64, 64), 10)
    seconds = bench_segment.roi_align_seconds(data, rounds=2, iterations=1)
    assert set(seconds) == {"stock", "ours"} and all(0 < v < 60 for v in seconds.values())
    line = bench_segment.roi_align_line({"stock": 0.5, "ours": 0.4})
    assert "torchvision's poolers 0.500 s (the 1.0x baseline), ours 0.400 s (1.25x)" in line


def test_segment_twin_is_torchvisions_maskrcnn_with_our_hyper_parameters_and_weights() -> None:
    import torch
    from torchvision.models.detection.roi_heads import RoIHeads
    from torchvision.models.detection.transform import GeneralizedRCNNTransform
    from torchvision.ops import MultiScaleRoIAlign

    from nucleistyle.segment.model import build_model

    for name in ("demo", "paper"):
        for baseline in ("deep_retina", "mirzaev"):
            cfg = bench_segment._training_config({"config": name, "baseline": baseline}, 1)
            torch.manual_seed(0)
            ours = build_model(cfg, pretrained=False)
            twin = bench_segment.torchvision_twin(cfg, ours)
            assert bench_segment.hyper_parameters(twin) == bench_segment.hyper_parameters(ours)
            assert type(twin.transform) is GeneralizedRCNNTransform
            assert twin.transform.min_size == (cfg.prep.size,) == (twin.transform.max_size,)
            assert type(twin.roi_heads) is RoIHeads
            assert type(twin.roi_heads.box_roi_pool) is MultiScaleRoIAlign
            assert type(twin.roi_heads.mask_roi_pool) is MultiScaleRoIAlign
            theirs = twin.state_dict()
            assert all(torch.equal(v, theirs[k]) for k, v in ours.state_dict().items())


@pytest.mark.parametrize(
    "change",
    [
        {"backbone": "resnet34"},
        {"weights": "imagenet"},  # frozen batch norm, fewer layers trained
        {"model": {"fpn_channels": 64}},
        {"model": {"representation_size": 128}},
        {"model": {"anchor_sizes": [16, 32, 64, 128, 256]}},
        {"model": {"aspect_ratios": [1.0]}},
        {"model": {"rpn_post_nms_top_n_train": 100}},
        {"model": {"rpn_batch_size_per_image": 64}},
        {"model": {"box_batch_size_per_image": 32}},
        {"model": {"box_positive_fraction": 0.5}},
        {"model": {"box_detections_per_img": 10}},
        {"model": {"image_mean": [0.5, 0.5, 0.5]}},
        {"prep": {"size": 96}},  # Mirzaev pads to its size
    ],
)
def test_segment_twin_check_sees_every_hyper_parameter(change: dict) -> None:
    import torch

    from nucleistyle.segment.configs import merge_overrides
    from nucleistyle.segment.model import build_model

    spec = {"config": "demo", "baseline": "mirzaev"}
    cfg = bench_segment._training_config(spec, 1)
    other = bench_segment._training_config(
        spec, 1, **merge_overrides(bench_segment.segment_overrides("demo", "mirzaev"), change)
    )
    torch.manual_seed(0)
    ours = build_model(cfg, pretrained=False)
    assert bench_segment.hyper_parameters(build_model(other, pretrained=False)) != (
        bench_segment.hyper_parameters(ours)
    )


def test_segment_twin_computes_our_losses_on_the_same_batch(tmp_path: Path) -> None:
    """Same weights, same inputs: every training loss agrees (the mask loss too at the start,
    where the logits are near 0; the two differ in their mask targets by design)."""
    import copy

    import torch

    from nucleistyle.segment import engine
    from nucleistyle.segment.model import build_model

    data = bench_segment.make_data(tmp_path / "data", (64, 64), 10)
    for baseline in ("deep_retina", "mirzaev"):
        cfg = bench_segment._training_config({"config": "demo", "baseline": baseline}, 1)
        batch = next(engine._batches(bench_segment._draw_dataset(cfg, str(data), 1), 0, 2, 0))
        torch.manual_seed(0)
        ours = build_model(cfg, pretrained=False)
        twin = bench_segment.torchvision_twin(cfg, ours)
        twin.transform.torch_choice = lambda sizes: sizes[0]  # its one draw: the same samples
        losses = []
        for model in (ours, twin):
            images, targets = engine._to_device(copy.deepcopy(batch), torch.device("cpu"))
            torch.manual_seed(1)
            with torch.no_grad():
                losses.append({k: float(v) for k, v in model(images, targets).items()})
        assert losses[0] == pytest.approx(losses[1], rel=1e-4), baseline


def test_segment_compare_times_both_sides_in_each_precision(tmp_path: Path) -> None:
    data = bench_segment.make_data(tmp_path / "data", (64, 64), 10)
    spec = {"config": "demo", "data": str(data), "baseline": "deep_retina", "threads": 1,
            "precisions": ["fp32"], "warmup": 0, "iterations": 1}  # fmt: skip
    result = bench_segment._child_compare(spec)
    assert set(result["seconds"]) == {"ours fp32", "torchvision fp32"}
    assert all(0 < s < 120 for s in result["seconds"].values())
    assert result["batch_size"] == 8 and result["backbone"] == "resnet18"


def test_segment_report_gives_like_for_like_ratios_and_separate_factors() -> None:
    demo = {"batch_size": 8, "backbone": "resnet18", "size": 128,
            "seconds": {"ours fp32": 0.4, "torchvision fp32": 0.44, "ours bf16": 0.2,
                        "torchvision bf16": 0.25}}  # fmt: skip
    paper = {"batch_size": 2, "backbone": "resnet50", "size": 512,
             "seconds": {"ours fp32": 5.0, "torchvision fp32": 4.5}}  # fmt: skip
    line = bench_segment.compare_line("demo", "mirzaev", "bf16", demo)
    assert line == (
        "demo: mirzaev     bf16: ours 0.200 s, torchvision's MaskRCNN of the same "
        "hyper-parameters 0.250 s per iteration of 8 images (resnet18, 128 px): implementation "
        "1.25x"
    )
    rows = bench_segment.factor_rows({"demo": {"mirzaev": demo}, "paper": {"mirzaev": paper}},
                                     ["mirzaev"])  # fmt: skip
    assert rows == [
        "implementation, demo, fp32: ours vs torchvision's MaskRCNN: mirzaev 1.10x",
        "implementation, demo, bf16: ours vs torchvision's MaskRCNN: mirzaev 1.25x",
        "implementation, paper, fp32: ours vs torchvision's MaskRCNN: mirzaev 0.90x",
        "precision factor of ours, demo: bf16 vs fp32: mirzaev 2.00x",
        "model-size factor of ours, fp32: time per image, paper's settings vs the demo's: "
        "mirzaev 50.00x",
    ]
    key = ("mirzaev", "fp32", 2, 1)
    line = bench_segment.setting_line("cpu", key, {"images_per_s": 2.0, "peak_rss_gib": 1.2})
    assert (
        line
        == "cpu: mirzaev     fp32, 2 thread(s), 1 worker(s):    2.00 images/s; peak RSS 1.20 GiB"
    )

    results = {
        ("deep_retina", "fp32", 1, 0): 3.0,
        ("deep_retina", "fp32", 1, 1): 3.3,
        ("deep_retina", "fp32", 2, 0): 1.5,
        ("deep_retina", "fp32", 2, 1): 1.1,
    }
    assert bench_segment.comparison_lines("demo", results) == [
        "demo: deep_retina fp32: 2 threads vs 1: 0.50x/0.33x; 1 worker(s) vs 0: 1.10x/0.73x "
        "(at 0/1 workers / 1/2 threads)"
    ]
    assert bench_segment.comparison_lines("demo", {("mirzaev", "fp32", 1, 0): 3.0}) == []
    line = bench_segment.contention_line("demo", "deep_retina", {1: 3.0, 2: 0.6})
    assert line.endswith("1 thread 3.00 images/s, 2 threads 0.60 images/s (2 threads 0.20x the "
                         "speed of 1)")  # fmt: skip


def test_fastest_setting_is_the_best_geometric_mean(capsys: pytest.CaptureFixture[str]) -> None:
    results = {
        ("deep_retina", "fp32", 1, 0): 3.0,
        ("deep_retina", "fp32", 1, 1): 3.6,
        ("mirzaev", "fp32", 1, 0): 2.0,
        ("mirzaev", "fp32", 1, 1): 1.8,
    }
    assert bench_segment._fastest("demo", results, ["deep_retina", "mirzaev"]) == ("fp32", 1, 1)
    out = capsys.readouterr().out
    assert "fastest for mirzaev: fp32, 1 thread(s), 0 worker(s)" in out


def test_bench_configs_are_the_workflows_overlays() -> None:
    def segment(name: str) -> dict:
        return yaml.safe_load((REPO / name).read_text())["segment"]

    small, cpu_file, demo_file = (segment(f"config.{n}.yaml") for n in ("small", "cpu", "demo"))
    demo = bench_segment.segment_overrides("demo", "deep_retina")
    assert demo["backbone"] == "resnet18" and demo["prep"] == demo_file["deep_retina"]["prep"]
    assert demo["model"] == {**small["common"]["model"], **demo_file["common"]["model"]}
    cpu = bench_segment.segment_overrides("cpu", "mirzaev")
    assert cpu["prep"] == cpu_file["mirzaev"]["prep"]
    assert cpu["model"] == {
        **small["common"]["model"],
        **cpu_file["common"]["model"],
        **cpu_file["mirzaev"]["model"],
    }
    paper = bench_segment.segment_overrides("paper", "deep_retina")
    assert paper["backbone"] == "resnet50" and "iterations" not in paper


def test_learning_report_reads_the_score_within_each_cpu_budget(capsys) -> None:
    rows = [
        {"iteration": 10, "sec_per_it": 0.5},
        {"iteration": 50, "val_score": 0.1, "cpu_s": 30.0},
        {"iteration": 100, "val_score": 0.3, "cpu_s": 70.0},
    ]
    bench_segment._print_learning("demo", "mirzaev", rows, [0.25, 0.5, 1.0, 2.0])
    out = capsys.readouterr().out
    assert "iteration   50,  0.50 CPU-min, 1.67 it/CPU-s, val_score 0.100" in out
    assert "0.25 CPU-min: -, 0.5 CPU-min: 0.100, 1 CPU-min: 0.100, 2 CPU-min: 0.300" in out


def test_learning_report_without_scores_gives_iterations_per_second(capsys) -> None:
    rows = [{"iteration": 1, "sec_per_it": 0.5}, {"iteration": 2, "sec_per_it": 0.25}]
    bench_segment._print_learning("demo", "deep_retina", rows, [1.0])
    out = capsys.readouterr().out
    assert "records no score" in out and "2.67 iterations/s" in out


# -- gpu_smoke -----------------------------------------------------------------------------------


def test_gpu_smoke_without_cuda_says_so_in_one_line_and_succeeds() -> None:
    result = _run("gpu_smoke.py", CUDA_VISIBLE_DEVICES="")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1 and "no CUDA device" in lines[0]


@pytest.mark.full
def test_gpu_smoke_tiny_on_the_cpu_trains_and_predicts_every_stage() -> None:
    """The CUDA path's code (the library calls, the projections) at tiny size on the CPU."""
    result = _run("gpu_smoke.py", "--device", "cpu", "--tiny", "--precision", "fp32")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "GAN (2 domains, crop 36" in out and "120,000 iterations" in out
    for baseline, total in (("deep_retina", "25,125"), ("mirzaev", "22,650")):
        # the paper's schedule: 75 epochs of 670 images (Mirzaev: 603 after its 10 % split)
        assert re.search(rf"{baseline} \(resnet18, 64 px, batch \d+", out)  # the demo's batch
        assert f"{total} iterations (75 epochs" in out
        assert f"{baseline} prediction with TTA" in out
        stand_in = "imagenet start: a stand-in in resnet18-f37072fd.pth's layout, random values"
        assert f"{baseline}: {stand_in} (--tiny)" in out
    assert "gpu_smoke: done" in out


def test_gpu_smoke_takes_a_present_start_without_download_and_stands_in_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A released file already in resources/weights/ is used after its hash check, with no
    request; none there and no network: a stand-in in the released layout, saying why."""
    import hashlib
    import socket

    import gpu_smoke
    import torch

    from nucleistyle.segment import weights as weights_module
    from nucleistyle.segment.configs import get_config
    from nucleistyle.segment.model import released_standin

    with socket.socket() as sock:  # a loopback port that nobody listens on
        sock.bind(("127.0.0.1", 0))
        offline = f"http://127.0.0.1:{sock.getsockname()[1]}/"
    monkeypatch.setattr(weights_module, "TORCHVISION_MODELS", offline)
    monkeypatch.setattr(gpu_smoke, "REPO", tmp_path)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    cfg = get_config("mirzaev", {"backbone": "resnet18"})
    (tmp_path / "standin").mkdir()

    path, said = gpu_smoke.pretrained_start(cfg, tmp_path / "standin", tiny=False)
    assert path == tmp_path / "standin" / "resnet18-f37072fd.pth" and path.is_file()
    assert said.startswith("imagenet start: a stand-in in resnet18-f37072fd.pth's layout")
    assert f"(cannot download {offline}resnet18-f37072fd.pth: Connection refused)" in said

    present = tmp_path / "resources" / "weights"
    present.mkdir(parents=True, exist_ok=True)  # the failed fetch made it
    torch.save(released_standin("imagenet", "resnet18"), tmp_path / "file.pth")
    data = (tmp_path / "file.pth").read_bytes()
    name = f"resnet18-{hashlib.sha256(data).hexdigest()[:8]}.pth"  # named by its own hash
    (present / name).write_bytes(data)
    monkeypatch.setitem(weights_module.RELEASED, ("imagenet", "resnet18"), name)
    path, said = gpu_smoke.pretrained_start(cfg, tmp_path / "standin", tiny=False)
    assert path == present / name and said == f"imagenet start {name} (present)"


@pytest.mark.slow
def test_gpu_smoke_tiny_runs_the_bf16_autocast_path() -> None:
    """bf16 autocast through every stage (emulated on a CPU without bf16 units: ~70 s)."""
    result = _run("gpu_smoke.py", "--device", "cpu", "--tiny", "--precision", "bf16")
    assert result.returncode == 0, result.stderr
    assert "crop 36, batch 2, width 4, bf16)" in result.stdout
    assert result.stdout.count("batch 2, bf16)") == 3


@pytest.mark.slow
def test_gan_bench_runs_its_plain_baseline_and_reports_ratios() -> None:
    result = _run(
        "bench_gan.py", "--crop", "36", "--repeats", "1", "--threads", "1",
        "--contention-crop", "0", "--stability-iterations", "3",
    )  # fmt: skip
    assert result.returncode in (0, 1), result.stderr  # 1: a target missed at this toy size
    assert "1 thread(s), plain fp32: full update" in result.stdout
    assert "1 thread(s), implementation, like for like: fp32: ours " in result.stdout
    assert "our fp32" in result.stdout and "peak RSS" in result.stdout
