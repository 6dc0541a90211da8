"""Nothing the user had is lost, every bad input gets one line: one test per class of fault."""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from nucleistyle.cli import build_parser, main
from nucleistyle.cluster import ClusterConfig, ClusterModel, cluster_dataset
from nucleistyle.data.acquire import safe_extract
from nucleistyle.errors import NucleistyleError
from nucleistyle.holdout import make_holdout
from nucleistyle.outputs import atomic_path, describe_os_error, published_together
from tests.cli_checks import (
    assert_refused,
    flat_folder,
    png,
    png_header,
    run,
    sample_folder,
    score_files,
    snapshot,
    tiff_header,
)
from tests.conftest import REPO

SYNTH = ["--n-train", "10", "--n-test-per-modality", "1", "--size", "64"]


# ------------------------------------------------------------------------------------------------
# 1. data loss: an existing OUT_DIR


def test_synthesize_refuses_a_folder_with_the_users_files_and_keeps_them(tmp_path):
    out = tmp_path / "data"
    out.mkdir()
    (out / "thesis.docx").write_bytes(b"years of work")
    assert_refused(["synthesize", out, *SYNTH], tmp_path, "already exists and is not empty")
    message = assert_refused(["synthesize", out, *SYNTH, "--overwrite"], tmp_path)
    assert "was not written by nucleistyle synthesize" in message


def test_synthesize_refuses_a_file_at_out_dir_and_keeps_it(tmp_path):
    (tmp_path / "data").write_text("mine")
    for extra in ([], ["--overwrite"]):
        message = assert_refused(["synthesize", tmp_path / "data", *SYNTH, *extra], tmp_path)
        assert message.endswith("is a file, expected a folder")


def test_synthesize_into_an_empty_folder_then_overwrite_replaces_only_its_own(tmp_path):
    out = tmp_path / "data"
    out.mkdir()
    assert run(["synthesize", out, *SYNTH])[0] == 0
    marker = (out / ".nucleistyle").read_text().splitlines()
    assert marker[0] == "nucleistyle synthesize" and '"stage1_solution.csv"' in marker
    first = snapshot(out)
    assert_refused(["synthesize", out, *SYNTH], tmp_path, "pass --overwrite")
    assert run(["synthesize", out, *SYNTH, "--overwrite"])[0] == 0
    assert snapshot(out) == first and sorted(p.name for p in tmp_path.iterdir()) == ["data"]
    (out / ".nucleistyle").write_text("nucleistyle holdout\n")  # another command's folder
    assert_refused(["synthesize", out, *SYNTH, "--overwrite"], tmp_path, "not written by")


@pytest.mark.parametrize("where", ["notes.txt", "stage1_train/notes.txt", "stage1_train/mine"])
def test_overwrite_refuses_a_folder_holding_files_you_added_and_keeps_them(tmp_path, where):
    out = tmp_path / "data"
    assert run(["synthesize", out, *SYNTH])[0] == 0
    added = out / where
    if where.endswith("mine"):
        added.mkdir()
    else:
        added.write_text("mine")
    message = assert_refused(["synthesize", out, *SYNTH, "--overwrite"], tmp_path)
    assert f"holds 1 file(s) that nucleistyle synthesize did not write ({where})" in message


def test_overwrite_replaces_a_folder_missing_some_of_its_files_and_refuses_an_old_marker(
    tmp_path,
):
    out = tmp_path / "data"
    assert run(["synthesize", out, *SYNTH])[0] == 0
    first = snapshot(out)
    (out / "stage1_solution.csv").unlink()  # less than it wrote: nothing of yours to lose
    assert run(["synthesize", out, *SYNTH, "--overwrite"])[0] == 0
    assert snapshot(out) == first
    (out / ".nucleistyle").write_text("nucleistyle synthesize\n")  # no list of its files
    assert_refused(["synthesize", out, *SYNTH, "--overwrite"], tmp_path, "kept no list")


@pytest.mark.parametrize("target", ["file", "nothing"])
def test_an_output_file_that_is_a_link_is_refused_and_what_it_points_to_is_kept(tmp_path, target):
    solution, submission = score_files(tmp_path)
    mine = tmp_path / "mine.csv"
    if target == "file":
        mine.write_text("my table\n")
    (tmp_path / "t.csv").symlink_to(mine)
    argv = ["score", solution, submission, "--per-image", tmp_path / "t.csv"]
    assert_refused(argv, tmp_path, f"t.csv is a symbolic link to {mine}: refusing to write")
    argv = ["classical", flat_folder(tmp_path / "flat"), tmp_path / "t.csv"]
    assert_refused(argv, tmp_path, "refusing to write through it")


def test_a_linked_label_file_is_replaced_by_the_output_not_written_through(tmp_path):
    flat = flat_folder(tmp_path / "flat")
    (tmp_path / "mine.png").write_bytes(b"my file")
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "im0.png").symlink_to(tmp_path / "mine.png")
    argv = ["classical", flat, tmp_path / "s.csv", "--labels-dir", tmp_path / "labels"]
    assert run(argv)[0] == 0
    assert (tmp_path / "mine.png").read_bytes() == b"my file"
    assert not (tmp_path / "labels" / "im0.png").is_symlink()


# ------------------------------------------------------------------------------------------------
# 2. special files are written in place, never replaced


def test_an_output_file_that_is_a_fifo_is_written_in_place_and_stays_a_fifo(tmp_path):
    solution, submission = score_files(tmp_path)
    fifo = tmp_path / "table.fifo"
    os.mkfifo(fifo)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()))
    reader.start()
    assert run(["score", solution, submission, "--per-image", fifo])[0] == 0
    reader.join(10)
    assert stat.S_ISFIFO(fifo.lstat().st_mode)
    assert received[0].startswith(b"ImageId,n_gt,n_pred,score")


def test_an_output_linked_to_dev_null_leaves_the_device_alone(tmp_path):
    solution, submission = score_files(tmp_path)
    link = tmp_path / "sink.csv"
    link.symlink_to("/dev/null")
    before = os.stat("/dev/null")
    assert run(["score", solution, submission, "--per-image", link])[0] == 0
    assert link.is_symlink() and os.readlink(link) == "/dev/null"
    after = os.stat("/dev/null")
    assert stat.S_ISCHR(after.st_mode) and (after.st_ino, after.st_rdev) == (
        before.st_ino,
        before.st_rdev,
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "sink.csv",
        "solution.csv",
        "submission.csv",
    ]


def test_a_fifo_or_a_folder_where_the_other_kind_is_wanted_is_refused(tmp_path):
    images = flat_folder(tmp_path / "images")
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "folder").mkdir()
    assert_refused(
        ["synthesize", tmp_path / "fifo", *SYNTH], tmp_path, "is a FIFO, expected a folder"
    )
    assert_refused(
        ["classical", images, tmp_path / "sub.csv", "--labels-dir", tmp_path / "fifo"],
        tmp_path,
        "is a FIFO, expected a folder",
    )
    assert_refused(["classical", images, tmp_path / "folder"], tmp_path, "is a folder, expected")


# ------------------------------------------------------------------------------------------------
# 3. no output may be, contain or lie inside an input


def _overlap_case(name: str, root: Path) -> list[object]:
    """The command line of one overlap case (inputs made under ``root``)."""
    flat = flat_folder(root / "flat")
    train = sample_folder(root / "train")
    model = root / "model.pt"
    model.write_bytes(b"not a model")
    solution, submission = score_files(root)
    sample_images = train / "s0" / "images"
    sub, labels, domain = root / "s.csv", "--labels-dir", ["--domain", "0"]
    cases = {
        "segment_out_is_images": ["segment", model, flat, flat],
        "classical_labels_is_the_flat_input": ["classical", flat, sub, labels, flat],
        "classical_submission_is_an_input_image": ["classical", flat, flat / "im0.png"],
        "stylize_out_inside_a_samples_images": ["stylize", model, train, sample_images, *domain],
        "score_per_image_is_the_submission": ["score", solution, submission, "--per-image",
                                              submission],
        "holdout_out_inside_train": ["holdout", train, train / "held"],
        "cluster_out_is_the_model": ["cluster", flat, "--out", sub, "--model", sub],
        "segment_out_contains_the_model": ["segment", model, flat, root],
        "a_link_to_the_input_folder": ["segment", model, flat, _link(root / "link", flat)],
    }  # fmt: skip
    return cases[name]


def _link(link: Path, target: Path) -> Path:
    link.symlink_to(target)
    return link


@pytest.mark.parametrize(
    "case",
    [
        "segment_out_is_images",
        "classical_labels_is_the_flat_input",
        "classical_submission_is_an_input_image",
        "stylize_out_inside_a_samples_images",
        "score_per_image_is_the_submission",
        "holdout_out_inside_train",
        "cluster_out_is_the_model",
        "segment_out_contains_the_model",
        "a_link_to_the_input_folder",
    ],
)
def test_no_output_may_be_contain_or_lie_inside_an_input(case, tmp_path):
    message = assert_refused(_overlap_case(case, tmp_path), tmp_path)
    assert any(word in message for word in (" is the ", " lies inside ", " contains the "))


def test_holdout_library_refuses_an_out_dir_inside_the_training_folder(tmp_path):
    train = sample_folder(tmp_path / "train")
    with pytest.raises(NucleistyleError, match="lies inside the training folder"):
        make_holdout(train, train / "s0" / "held", k=2)


# ------------------------------------------------------------------------------------------------
# 4. half-written outputs: staged, published together, leftovers of a kill removed


@pytest.mark.parametrize("workers", ["1", "2"])
def test_classical_with_a_bad_image_late_in_the_folder_writes_no_labels_and_no_submission(
    tmp_path, workers
):
    flat = flat_folder(tmp_path / "flat", n=6)
    (flat / "zz.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    argv = [
        "classical",
        flat,
        tmp_path / "out" / "sub.csv",
        "--labels-dir",
        tmp_path / "out" / "labels",
    ]
    assert_refused([*argv, "--workers", workers], tmp_path, "zz.png")


def test_cluster_writes_the_table_and_the_model_together_or_neither(tmp_path, monkeypatch):
    flat = flat_folder(tmp_path / "flat", n=4)
    (tmp_path / "model.json").mkdir()  # the model cannot be written: no table either
    with pytest.raises(NucleistyleError, match="is a folder, expected a file"):
        cluster_dataset(flat, tmp_path / "a.csv", ClusterConfig(k=2, n_init=1), workers=1,
                        model_json=tmp_path / "model.json")  # fmt: skip
    assert not (tmp_path / "a.csv").exists()

    def broken(self, path, outputs=None):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(ClusterModel, "to_json", broken)
    argv = [
        "cluster",
        flat,
        "--k",
        "2",
        "--out",
        tmp_path / "a.csv",
        "--model",
        tmp_path / "m.json",
    ]
    assert_refused(argv, tmp_path, "cannot write")


def test_outputs_published_together_are_restored_when_one_fails(tmp_path, monkeypatch):
    (tmp_path / "a.csv").write_text("old a\n")
    real = os.replace
    calls = []

    def failing_second(src, dst, *args, **kwargs):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError(5, "Input/output error", str(dst))
        return real(src, dst, *args, **kwargs)

    with pytest.raises(OSError, match="Input/output"):
        with published_together() as outputs:
            outputs.file(tmp_path / "a.csv").write_text("new a\n")
            outputs.file(tmp_path / "new" / "b.csv").write_text("new b\n")
            outputs.file(tmp_path / "new" / "deep" / "er" / "c.csv").write_text("new c\n")
            monkeypatch.setattr(os, "replace", failing_second)
    monkeypatch.setattr(os, "replace", real)
    assert (tmp_path / "a.csv").read_text() == "old a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.csv"]  # no new/, no staging


# SIGINT as in an interactive shell: a background job of a non-interactive shell (CI started
# with `&`) inherits SIGINT ignored, and Python then installs no KeyboardInterrupt handler.
_SLOW_CLASSICAL = """
import signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)
for signum in (signal.SIGTERM, signal.SIGHUP):  # as in a shell, even under nohup
    signal.signal(signum, signal.SIG_DFL)
import nucleistyle.classical as c
real = c.segment_image
def slow(image, cfg=None):
    time.sleep(0.2)
    return real(image, cfg)
c.segment_image = slow
if "--slow-cleanup" in sys.argv:  # the clean-up after a signal takes a minute
    sys.argv.remove("--slow-cleanup")
    import nucleistyle.outputs as u
    discard = u.OutputSet.discard
    def slow_discard(self):
        open("clean-up-began", "w").close()
        time.sleep(60)
        return discard(self)
    u.OutputSet.discard = slow_discard
from nucleistyle.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _start_slow_classical(root: Path, workers: str, *extra: str) -> subprocess.Popen:
    """A classical run (each image made slow) in its own session, once its staging exists."""
    argv = ["classical", "flat", "sub.csv", "--labels-dir", "labels", "--workers", workers, *extra]
    proc = subprocess.Popen(
        [sys.executable, "-c", _SLOW_CLASSICAL, *argv], cwd=root, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not any(p.name.startswith(".labels.") for p in root.iterdir()):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.02)
    time.sleep(0.3)
    return proc


@pytest.mark.kill
@pytest.mark.parametrize("workers", ["1", "2"])
def test_ctrl_c_prints_one_line_exits_130_and_leaves_nothing(tmp_path, workers):
    flat_folder(tmp_path / "flat", n=12)
    before = snapshot(tmp_path)
    proc = _start_slow_classical(tmp_path, workers)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and err == "error: interrupted\n" and out == ""
    assert snapshot(tmp_path) == before


@pytest.mark.kill
def test_a_killed_run_leaves_staging_that_the_next_run_into_the_same_place_removes(tmp_path):
    flat_folder(tmp_path / "flat", n=12)
    proc = _start_slow_classical(tmp_path, "1")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    left = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert len(left) == 1 and left[0].startswith(".labels.")  # the dead run's staging
    assert not (tmp_path / "labels").exists() and not (tmp_path / "sub.csv").exists()
    # a live run's staging (locked) is left alone; the dead run's is removed
    live = tmp_path / ".labels.abcdefgh.tmp"
    live.mkdir()
    fd = os.open(live, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        argv = [
            "classical",
            tmp_path / "flat",
            tmp_path / "sub.csv",
            "--labels-dir",
            tmp_path / "labels",
        ]
        assert run([*argv, "--workers", "1"])[0] == 0
    finally:
        os.close(fd)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [".labels.abcdefgh.tmp", "flat", "labels", "sub.csv"]


def _live_processes(group: int) -> list[str]:
    """The processes of process group ``group`` still running (zombies not counted)."""
    live = []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat_file.read_text()
        except OSError:
            continue
        state, _, pgrp = text[text.rindex(")") + 2 :].split()[:3]
        if int(pgrp) == group and state != "Z":
            live.append(text[: text.rindex(")") + 1])
    return live


def _wait_until_none_live(group: int) -> None:
    deadline = time.monotonic() + 10
    while (live := _live_processes(group)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not live, f"still running after the command ended: {live}"


@pytest.mark.kill
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
@pytest.mark.parametrize(
    "signum", [signal.SIGKILL, signal.SIGTERM, signal.SIGHUP], ids=lambda s: signal.Signals(s).name
)
def test_a_signal_to_the_pid_alone_leaves_no_worker_running_and_the_next_run_cleans_up(
    tmp_path, signum
):
    flat_folder(tmp_path / "flat", n=24)
    before = snapshot(tmp_path)
    proc = _start_slow_classical(tmp_path, "2")
    assert len(_live_processes(proc.pid)) == 3  # the command and its two workers
    os.kill(proc.pid, signum)  # what `kill PID` or a scheduler does: the workers get nothing
    out, err = proc.communicate(timeout=60)
    _wait_until_none_live(proc.pid)
    if signum != signal.SIGKILL:  # stopped cleanly: one line, nothing left
        name = signal.Signals(signum).name
        assert proc.returncode == 128 + signum and err == f"error: terminated by {name}\n"
        assert out == "" and snapshot(tmp_path) == before
    argv = ["classical", tmp_path / "flat", tmp_path / "sub.csv", "--labels-dir",
            tmp_path / "labels", "--workers", "2"]  # fmt: skip
    assert run(argv)[0] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["flat", "labels", "sub.csv"]


_HELPER_THREAD = """
import signal, sys, threading
from nucleistyle import cli

def run_failing_thread():
    def fail():
        raise RuntimeError("helper thread failed")
    thread = threading.Thread(target=fail)
    thread.start()
    thread.join()
    print("--", file=sys.stderr, flush=True)

with cli._stop_signals():
    run_failing_thread()
    try:
        cli._stop(signal.SIGINT, None)
    except KeyboardInterrupt:
        pass
    run_failing_thread()
run_failing_thread()
"""


def test_after_a_stop_signal_a_failing_helper_thread_prints_nothing():
    """A worker pool's manager thread can fail while Ctrl-C's clean-up kills the pool; the
    command's output stays its one line. Before a stop, and after the command, thread errors
    are printed as usual."""
    run = subprocess.run([sys.executable, "-c", _HELPER_THREAD], capture_output=True, text=True)
    before, during, after, _ = run.stderr.split("--\n")
    assert "helper thread failed" in before and "helper thread failed" in after
    assert during == ""


@pytest.mark.kill
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_a_second_ctrl_c_during_the_clean_up_ends_the_command_at_once(tmp_path):
    flat_folder(tmp_path / "flat", n=24)
    proc = _start_slow_classical(tmp_path, "2", "--slow-cleanup")
    began = tmp_path / "clean-up-began"  # written by every discard (the output-path probe's too)
    began.unlink(missing_ok=True)
    os.kill(proc.pid, signal.SIGINT)
    deadline = time.monotonic() + 60
    while not began.exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGINT)  # the clean-up (made to take a minute) has begun
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 130 and err == "error: interrupted\n" and out == ""
    _wait_until_none_live(proc.pid)
    began.unlink()
    argv = ["classical", tmp_path / "flat", tmp_path / "sub.csv", "--labels-dir",
            tmp_path / "labels", "--workers", "1"]  # fmt: skip
    assert run(argv)[0] == 0  # and the next run removes the staging left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["flat", "labels", "sub.csv"]


# ------------------------------------------------------------------------------------------------
# 5. holdout validates every image it writes, on both sides


@pytest.mark.parametrize("fault", ["corrupt", "wrong_size"])
def test_holdout_validates_the_masks_of_training_images_too(tmp_path, fault):
    train = sample_folder(tmp_path / "train", n=6)
    split = make_holdout(train, tmp_path / "probe", fraction=0.3, k=2, workers=1)
    shutil.rmtree(tmp_path / "probe")
    image_id = split.loc[split["set"] == "stage1_train", "ImageId"].iloc[0]
    mask = train / image_id / "masks" / "m1.png"
    if fault == "corrupt":
        mask.write_bytes(mask.read_bytes()[:40])
    else:
        png(mask, np.zeros((17, 16), np.uint8))
    argv = ["holdout", train, tmp_path / "out", "--fraction", "0.3", "--k", "2"]
    message = assert_refused(argv, tmp_path)
    assert "m1.png" in message and image_id in message


# ------------------------------------------------------------------------------------------------
# 6. every OSError and parse error is one line naming the user's path


def test_not_found_is_said_only_of_a_missing_path(tmp_path):
    image = flat_folder(tmp_path / "flat") / "im0.png"
    assert_refused(["classical", image, tmp_path / "s.csv"], tmp_path,
                   f"image folder {image}: is a file, expected a folder")  # fmt: skip
    assert_refused(["classical", tmp_path / "nope", tmp_path / "s.csv"], tmp_path,
                   f"image folder not found: {tmp_path / 'nope'}")  # fmt: skip
    assert_refused(["classical", image / "x", tmp_path / "s.csv"], tmp_path,
                   f"{image} is a file, expected a folder")  # fmt: skip


def test_an_output_below_a_file_is_one_line(tmp_path):
    solution, submission = score_files(tmp_path)
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    argv = ["score", solution, submission, "--per-image", notes / "x" / "t.csv"]
    assert_refused(argv, tmp_path, f"{notes} is a file, expected a folder")


@pytest.mark.parametrize(
    "exc",
    [
        PermissionError(13, "Permission denied", "/data/.out.csv.abcd_123.tmp"),
        IsADirectoryError(21, "Is a directory", "/data/out.csv"),
        FileExistsError(17, "File exists", "/data/.labels.x1y2z3w4.tmp/a.png"),
        NotADirectoryError(20, "Not a directory", "/data/out.csv"),
        OSError(28, "No space left on device", "/data/.out.csv.abcd_123.tmp"),
        pd.errors.ParserError("Error tokenizing data. C error: Expected 2 fields in line 3"),
        pd.errors.EmptyDataError("No columns to parse from file"),
        UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_every_os_and_parse_error_is_one_line_without_internal_names(exc, tmp_path, monkeypatch):
    import nucleistyle.metrics

    def fail(*args, **kwargs):
        raise exc

    monkeypatch.setattr(nucleistyle.metrics, "score_files", fail)
    solution, submission = score_files(tmp_path)
    message = assert_refused(["score", solution, submission], tmp_path)
    assert ".tmp" not in message and "abcd_123" not in message
    if isinstance(exc, OSError):
        assert message.startswith("error: cannot ") and "/data/" in message


def test_os_error_messages_map_staging_names_to_the_users_path():
    exc = PermissionError(13, "Permission denied", "/d/.labels.ab12cd34.tmp/x.png")
    assert describe_os_error(exc) == "cannot access /d/labels/x.png: permission denied"


def test_a_message_with_a_line_break_stays_one_line(tmp_path):
    solution, _ = score_files(tmp_path)
    bad = tmp_path / "bad.csv"
    bad.write_text('ImageId,EncodedPixels\n"evil\nline",1 1\n')
    message = assert_refused(["score", solution, bad], tmp_path)
    assert "evil\\nline" in message


@pytest.mark.parametrize("good_lines", [0, 3, 2000])  # 2000: beyond the first decoded block
def test_csv_errors_name_the_line_of_the_bad_bytes(tmp_path, good_lines):
    solution, _ = score_files(tmp_path)
    bad = tmp_path / "bad.csv"
    bad.write_bytes(b"ImageId,EncodedPixels\n" + b"a,1 2\n" * good_lines + b"b,\xff\xfe 3\n")
    assert_refused(["score", solution, bad], tmp_path, f"bad.csv line {good_lines + 2}: not UTF-8")


@pytest.mark.parametrize("content", [b"", b"\x00\x01\x02\xff" * 50, b"modality\nx\n"])
def test_an_empty_binary_or_columnless_groups_file_is_one_line(tmp_path, content):
    solution, submission = score_files(tmp_path)
    (tmp_path / "groups.csv").write_bytes(content)
    assert_refused(["score", solution, submission, "--groups", tmp_path / "groups.csv"],
                   tmp_path, "groups.csv")  # fmt: skip


def _world_readable_tmp() -> Path:
    root = Path(tempfile.mkdtemp(prefix="nucleistyle-nobody-"))
    root.chmod(0o755)
    return root


def _as_nobody(argv: list[object], cwd: Path) -> subprocess.CompletedProcess:
    """Run the command line as an unprivileged user (root drops privileges with setpriv)."""
    prefix: list[str] = []
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root and setpriv is missing: cannot drop privileges")
        prefix = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    return subprocess.run(
        [*prefix, sys.executable, "-m", "nucleistyle.cli", *map(str, argv)],
        cwd=cwd, capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip


@pytest.mark.parametrize("where", ["output_folder", "output_file", "input_file", "input_folder"])
def test_unwritable_and_unreadable_paths_are_one_line(where):
    root = _world_readable_tmp()
    try:
        flat = flat_folder(root / "flat")
        solution, submission = score_files(root)
        locked = root / "locked"
        locked.mkdir()
        for path in [*root.rglob("*"), root]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        locked.chmod(0o555)
        argv = {
            "output_folder": ["classical", flat, root / "s.csv", "--labels-dir", locked / "l"],
            "output_file": ["score", solution, submission, "--per-image", locked / "t.csv"],
            "input_file": ["score", solution, submission],
            "input_folder": ["classical", flat, root / "s.csv"],
        }[where]
        if where == "input_file":
            submission.chmod(0o600)
        if where == "input_folder":
            flat.chmod(0o700)
        before = snapshot(root)
        result = _as_nobody(argv, root)
        lines = result.stderr.splitlines()
        assert result.returncode == 2 and len(lines) == 1, result.stderr
        assert lines[0].startswith("error: ") and "permission denied" in lines[0]
        assert snapshot(root) == before
    finally:
        for path in [root, *root.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        shutil.rmtree(root)


@pytest.mark.parametrize("command", ["segment", "stylize"])
def test_a_truncated_model_file_is_one_line(command, tmp_path):
    model = tmp_path / "model.pt"
    model.write_bytes(b"\x80\x02")  # a pickle cut after its protocol header
    argv = [command, model, flat_folder(tmp_path / "flat"), tmp_path / "out", "--device", "cpu"]
    assert_refused(argv + (["--domain", "0"] if command == "stylize" else []), tmp_path)


def test_warnings_are_printed_after_a_success_only(tmp_path):
    solution, _ = score_files(tmp_path)
    empty = tmp_path / "empty.csv"
    empty.write_text("ImageId,EncodedPixels\n")
    code, _, err = run(["score", solution, empty])
    assert code == 0 and err == f"warning: {empty}: 2 scored images missing (scored 0)\n"
    train = sample_folder(tmp_path / "train")
    png(train / "s0" / "masks" / "m2.png", np.zeros((16, 16), np.uint8))  # warns: no pixel
    (train / "s3" / "masks" / "m1.png").write_bytes(b"broken")
    result = subprocess.run(
        [sys.executable, "-m", "nucleistyle.cli", "holdout", str(train), str(tmp_path / "out")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2 and result.stderr.startswith("error: cannot read mask")
    assert len(result.stderr.splitlines()) == 1  # the warning about m2.png is dropped


# ------------------------------------------------------------------------------------------------
# 7. bounds: the schema's, one source for the command line and the workflow


def _schema_node(key: str) -> dict:
    node = yaml.safe_load((REPO / "src/nucleistyle/schemas/config.schema.yaml").read_text())
    for part in key.split("."):
        node = node["properties"][part]
    return node


@pytest.mark.parametrize(
    ("command", "option", "key"),
    [
        ("synthesize", "--size", "data.synthetic.height"),
        ("synthesize", "--n-train", "data.synthetic.n_train"),
        ("synthesize", "--n-test-per-modality", "data.synthetic.n_test_per_modality"),
        ("synthesize", "--seed", "data.synthetic.seed"),
        ("cluster", "--k", "cluster.k"),
        ("cluster", "--n-init", "cluster.n_init"),
        ("cluster", "--seed", "seed"),
        ("holdout", "--k", "cluster.k"),
        ("holdout", "--seed", "seed"),
        ("stylize", "--seed", "seed"),
    ],
)
def test_numeric_options_take_the_bounds_of_the_config_schema(command, option, key, tmp_path):
    node = _schema_node(key)
    required = {
        "synthesize": ["x"], "cluster": ["x", "--out", "o"], "holdout": ["x", "y"],
        "stylize": ["m", "x", "y", "--domain", "0"],
    }[command]  # fmt: skip
    low = node["minimum"]
    args = build_parser().parse_args([command, *required, option, str(low)])
    assert getattr(args, option[2:].replace("-", "_")) == low
    outside = [low - 1] + ([node["maximum"] + 1] if "maximum" in node else [])
    for bad in [*outside, "nan", "x"]:
        message = assert_refused([command, *required, option, bad], tmp_path)
        assert option in message
        if isinstance(bad, int):
            assert f"config key {key}" in message


@pytest.mark.parametrize("command", ["classical", "cluster", "segment", "stylize"])
@pytest.mark.parametrize("value", ["0", "-2", "1.5"])
def test_workers_and_threads_must_be_positive_integers_in_every_command(command, value, tmp_path):
    argv = {
        "classical": ["classical", "x", "y", "--workers"],
        "cluster": ["cluster", "x", "--out", "y", "--workers"],
        "segment": ["segment", "m", "x", "y", "--threads"],
        "stylize": ["stylize", "m", "x", "y", "--domain", "0", "--threads"],
    }[command]
    assert_refused([*argv, value], tmp_path)


def test_synthesize_size_100000_is_refused_before_any_work(tmp_path):
    assert_refused(["synthesize", tmp_path / "d", "--size", "100000"], tmp_path, "at most 2048")


def test_holdout_fraction_must_lie_strictly_between_zero_and_one(tmp_path):
    for value in ["0", "1", "-0.5", "nan", "inf"]:
        assert_refused(["holdout", "x", "y", "--fraction", value], tmp_path, "--fraction")


# ------------------------------------------------------------------------------------------------
# 8. ambiguous groups


def test_groups_giving_one_image_two_groups_is_refused_naming_both_lines(tmp_path):
    solution, submission = score_files(tmp_path)
    groups = tmp_path / "groups.csv"
    groups.write_text("ImageId,modality\na,tissue\nb,fluo\n\na,fluo\n")
    message = assert_refused(["score", solution, submission, "--groups", groups], tmp_path)
    assert message.endswith("ImageId a has group 'tissue' on line 2 and 'fluo' on line 5")


def test_groups_repeating_the_same_group_is_fine(tmp_path, capsys):
    solution, submission = score_files(tmp_path)
    groups = tmp_path / "groups.csv"
    groups.write_text("ImageId,modality,note\na,tissue,x\na,tissue,y\nb,fluo,z\n")
    assert main(["score", str(solution), str(submission), "--groups", str(groups)]) == 0
    assert "tissue" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------
# 9. decompression bombs


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def test_a_zip_declaring_more_than_the_limit_is_refused_before_writing(tmp_path):
    archive = _zip(tmp_path / "a.zip", {"x/a.bin": os.urandom(3000), "x/b.bin": os.urandom(3000)})
    before = snapshot(tmp_path)
    with pytest.raises(NucleistyleError, match="refusing to extract 6,000 bytes"):
        safe_extract(archive, tmp_path / "out" / "x", max_bytes=5000)
    assert snapshot(tmp_path) == before
    assert safe_extract(archive, tmp_path / "ok", max_bytes=6000).is_dir()


def test_a_zip_member_expanding_too_much_is_refused_before_writing(tmp_path):
    archive = _zip(tmp_path / "bomb.zip", {"zeros.bin": bytes(20 << 20)})  # 20 MiB -> ~20 KB
    assert archive.stat().st_size < 100_000
    before = snapshot(tmp_path)
    with pytest.raises(NucleistyleError, match=r"member 'zeros.bin': it expands [\d,]+ times"):
        safe_extract(archive, tmp_path / "out")
    assert snapshot(tmp_path) == before


def test_a_zip_member_larger_than_declared_stops_mid_stream(tmp_path):
    archive = _zip(tmp_path / "liar.zip", {"big.bin": bytes(200_000)})
    with zipfile.ZipFile(archive) as zf:
        info = zf.getinfo("big.bin")
    data = bytearray(archive.read_bytes())
    central = data.rindex(b"PK\x01\x02")  # the central directory entry: declared size at +24
    assert int.from_bytes(data[central + 24 : central + 28], "little") == info.file_size
    data[central + 24 : central + 28] = (1000).to_bytes(4, "little")
    archive.write_bytes(bytes(data))
    before = snapshot(tmp_path)
    with pytest.raises(NucleistyleError, match=r"big\.bin"):
        safe_extract(archive, tmp_path / "out", max_ratio=1e9)
    assert snapshot(tmp_path) == before


# ------------------------------------------------------------------------------------------------
# --threads of the PyTorch commands (issue 14)


@pytest.mark.parametrize("command", ["segment", "stylize"])
def test_torch_commands_set_threads_before_working_default_the_available_cores(
    command, tmp_path, monkeypatch
):
    import nucleistyle.gan.stylize
    import nucleistyle.segment.predict
    import nucleistyle.torchutils

    events: list[object] = []
    monkeypatch.setattr(nucleistyle.torchutils, "set_torch_threads", events.append)
    monkeypatch.setattr(nucleistyle.segment.predict, "predict_folder",
                        lambda *a, **k: events.append("work") or 0)  # fmt: skip
    monkeypatch.setattr(nucleistyle.gan.stylize, "stylize_folder",
                        lambda *a, **k: events.append("work") or 0)  # fmt: skip
    model = tmp_path / "model.pt"
    model.write_bytes(b"x")
    argv = [command, model, flat_folder(tmp_path / "flat"), tmp_path / "out"]
    argv += ["--domain", "0"] if command == "stylize" else []
    assert run(argv)[0] == 0
    assert run([*argv, "--threads", "3"])[0] == 0
    assert events == [len(os.sched_getaffinity(0)), "work", 3, "work"]


def test_set_torch_threads_sets_the_thread_count_and_refuses_nonsense():
    import torch

    from nucleistyle.torchutils import set_torch_threads

    threads = torch.get_num_threads()
    try:
        set_torch_threads(1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(NucleistyleError, match="threads"):
            set_torch_threads(bad)


def test_atomic_path_still_replaces_a_regular_file(tmp_path):
    (tmp_path / "a.txt").write_text("old")
    with atomic_path(tmp_path / "a.txt") as tmp:
        tmp.write_text("new")
    assert (tmp_path / "a.txt").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


# ------------------------------------------------------------------------------------------------
# 10. one pixel limit for every image format, read from the header before decoding


@pytest.mark.parametrize("fmt", ["png", "tif"])
def test_an_image_declaring_a_huge_size_is_refused_from_its_header(tmp_path, fmt):
    flat = flat_folder(tmp_path / "flat")
    header = png_header if fmt == "png" else tiff_header
    (flat / f"zz.{fmt}").write_bytes(header(100_000, 100_000))  # 10^10 pixels, a few bytes
    argv = ["classical", flat, tmp_path / "s.csv", "--workers", "1"]
    message = assert_refused(argv, tmp_path, f"zz.{fmt} has ")
    assert "10,000,000,000 pixels, more than the limit of 178,956,970" in message


def test_a_huge_label_image_or_mask_is_refused_like_an_image(tmp_path):
    folder = tmp_path / "mine"
    png(folder / "images" / "a.png", np.zeros((16, 16, 3), np.uint8))
    (folder / "masks").mkdir()
    (folder / "masks" / "a.tif").write_bytes(tiff_header(20_000, 20_000))
    assert_refused(["import-folder", folder, tmp_path / "out"], tmp_path, "more than the limit")
    train = sample_folder(tmp_path / "train")
    (train / "s1" / "masks" / "m1.png").write_bytes(png_header(20_000, 20_000))
    assert_refused(["holdout", train, tmp_path / "held", "--k", "2"], tmp_path, "m1.png has ")


def test_the_pixel_limit_is_configurable_and_the_same_for_png_tiff_and_jpeg(tmp_path, monkeypatch):
    import tifffile
    from PIL import Image

    from nucleistyle.data.images import DEFAULT_MAX_PIXELS, read_image

    assert DEFAULT_MAX_PIXELS == 2 * Image.MAX_IMAGE_PIXELS  # Pillow's own refusal of PNGs
    monkeypatch.setenv("NUCLEISTYLE_MAX_PIXELS", "1000")
    for side, allowed in [(30, True), (40, False)]:  # 900 and 1,600 pixels
        data = np.full((side, side), 7, np.uint8)
        paths = [png(tmp_path / f"{side}.png", data), tmp_path / f"{side}.tif"]
        tifffile.imwrite(paths[1], data, compression="zlib")
        Image.fromarray(data).save(tmp_path / f"{side}.jpg")
        for path in [*paths, tmp_path / f"{side}.jpg"]:
            if allowed:
                assert read_image(path)[0].shape == (side, side, 3)
            else:
                with pytest.raises(
                    NucleistyleError, match="1,600 pixels, more than the limit of 1,000"
                ):
                    read_image(path)
    monkeypatch.setenv("NUCLEISTYLE_MAX_PIXELS", "lots")
    with pytest.raises(NucleistyleError, match="environment variable NUCLEISTYLE_MAX_PIXELS"):
        read_image(tmp_path / "30.png")


def test_a_higher_pixel_limit_lifts_pillows_own_refusal_too(tmp_path, monkeypatch):
    from PIL import Image

    from nucleistyle.data.images import read_image

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # restored after
    (tmp_path / "big.png").write_bytes(png_header(20_000, 20_000))  # 4 x 10^8, header only
    with pytest.raises(NucleistyleError, match="more than the limit"):
        read_image(tmp_path / "big.png")
    monkeypatch.setenv("NUCLEISTYLE_MAX_PIXELS", str(500_000_000))
    with pytest.raises(NucleistyleError) as refused:  # now read, and found to have no pixel data
        read_image(tmp_path / "big.png")
    assert "more than the limit" not in str(refused.value)


# ------------------------------------------------------------------------------------------------
# 11. the last tracebacks, options that need each other, files that are not what they should be


def test_an_rle_start_beyond_int64_is_one_line(tmp_path):
    solution, _ = score_files(tmp_path)
    for value in ["99999999999999999999999 5", "9223372036854775807 5", "1 9223372036854775807"]:
        (tmp_path / "sub.csv").write_text(f"ImageId,EncodedPixels\na,{value}\n")
        message = assert_refused(["score", solution, tmp_path / "sub.csv"], tmp_path)
        assert "sub.csv line 2, ImageId a" in message and "the image size 64" in message


@pytest.mark.parametrize(
    ("given", "needed"),
    [("--style-dir", "--style-manifest"), ("--style-manifest", "--style-dir")],
)
def test_train_segmenter_refuses_a_style_option_without_its_partner_before_any_work(
    tmp_path, given, needed
):
    train = sample_folder(tmp_path / "train")
    (tmp_path / "manifest.csv").write_text("ImageId,source_ImageId\n")
    value = tmp_path / ("train" if given == "--style-dir" else "manifest.csv")
    argv = ["train-segmenter", train, tmp_path / "out", "--baseline", "mirzaev", given, value]
    assert_refused(argv, tmp_path, f"train-segmenter {given} needs {needed}")


def test_import_folder_refuses_a_solution_without_test(tmp_path):
    folder = tmp_path / "mine"
    png(folder / "images" / "a.png", np.zeros((16, 16, 3), np.uint8))
    png(folder / "masks" / "a.png", np.zeros((16, 16), np.uint8))
    argv = ["import-folder", folder, tmp_path / "out", "--solution", tmp_path / "s.csv"]
    assert_refused(argv, tmp_path, "import-folder --solution needs --test")


def test_train_gan_refuses_a_header_only_assignment_table(tmp_path):
    flat = flat_folder(tmp_path / "flat")
    (tmp_path / "a.csv").write_text("ImageId,cluster\n")
    argv = ["train-gan", flat, tmp_path / "a.csv", tmp_path / "out", "--iterations", "1"]
    assert_refused(argv, tmp_path, "a.csv: no rows, only the header")


def _not_a_model(kind: str) -> bytes:
    import io
    import pickle

    import torch

    if kind in ("list", "code"):
        buffer = io.BytesIO()
        torch.save([1, 2] if kind == "list" else {"f": print}, buffer)
        return buffer.getvalue()
    return {"empty": b"", "text": b"ImageId,EncodedPixels\n", "random": os.urandom(3000),
            "pickle": pickle.dumps({"model": 1})}[kind]  # fmt: skip


@pytest.mark.parametrize("command", ["segment", "stylize"])
@pytest.mark.parametrize("kind", ["empty", "text", "random", "pickle", "list", "code"])
def test_a_file_that_is_no_model_says_so_and_never_suggests_weights_only_false(
    tmp_path, command, kind
):
    model = tmp_path / "model.pt"
    model.write_bytes(_not_a_model(kind))
    argv = [command, model, flat_folder(tmp_path / "flat"), tmp_path / "out", "--device", "cpu"]
    message = assert_refused(argv + (["--domain", "0"] if command == "stylize" else []), tmp_path)
    assert f"{model} is not a nucleistyle model file: " in message
    assert "weights_only" not in message and "Weights only" not in message


@pytest.mark.parametrize("content", [b"[1, 2]", b"not json", b"\xff\xfe"])
def test_a_file_that_is_no_cluster_model_says_so(tmp_path, content):
    flat = flat_folder(tmp_path / "flat", n=4)
    (tmp_path / "a.csv").write_text("ImageId,cluster\nim0,0\nim1,1\nim2,0\nim3,1\n")
    (tmp_path / "m.json").write_bytes(content)
    argv = ["train-gan", flat, tmp_path / "a.csv", tmp_path / "out", "--iterations", "1",
            "--device", "cpu", "--cluster-model", tmp_path / "m.json"]  # fmt: skip
    assert_refused(argv, tmp_path, "m.json is not a nucleistyle cluster model file")


# ------------------------------------------------------------------------------------------------
# 12. what a later stage refuses is refused at once; every output path is checked before the work


@pytest.mark.parametrize("name", ["a,b", 'say "hi"', "line\nbreak", "cr\rname"])
def test_import_folder_refuses_a_file_name_that_cannot_be_an_image_id(tmp_path, name):
    folder = tmp_path / "mine"
    for sub, data in [("images", np.zeros((16, 16, 3), np.uint8)), ("masks", None)]:
        png(folder / sub / f"{name}.png", np.zeros((16, 16), np.uint8) if data is None else data)
    message = assert_refused(["import-folder", folder, tmp_path / "out"], tmp_path)
    assert "invalid ImageId" in message and "mine/images/" in message


def test_classical_refuses_an_image_id_the_submission_cannot_hold_before_any_work(
    tmp_path, monkeypatch
):
    import nucleistyle.classical

    monkeypatch.setattr(nucleistyle.classical, "segment_image", _never("segmented"))
    flat = flat_folder(tmp_path / "flat")
    png(flat / "a,b.png", np.zeros((16, 16, 3), np.uint8))
    argv = ["classical", flat, tmp_path / "s.csv", "--workers", "1"]
    assert_refused(argv, tmp_path, "invalid ImageId 'a,b'")


def _never(what: str):
    def fail(*args, **kwargs):
        raise AssertionError(f"{what} before the output paths were checked")

    return fail


@pytest.mark.parametrize("command", ["train-segmenter", "train-gan"])
@pytest.mark.parametrize("output", ["model.pt", "checkpoint.pt", "history.tsv"])
def test_training_refuses_an_output_that_is_a_folder_before_training(
    tmp_path, monkeypatch, command, output
):
    import nucleistyle.gan.engine
    import nucleistyle.segment.engine

    monkeypatch.setattr(nucleistyle.segment.engine, "train_segmenter", _never("trained"))
    monkeypatch.setattr(nucleistyle.gan.engine, "train_gan", _never("trained"))
    train = sample_folder(tmp_path / "train")
    (tmp_path / "a.csv").write_text("ImageId,cluster\ns0,0\ns1,1\ns2,0\ns3,1\n")
    (tmp_path / "out" / output).mkdir(parents=True)
    argv = {
        "train-segmenter": ["train-segmenter", train, tmp_path / "out", "--baseline", "mirzaev"],
        "train-gan": ["train-gan", train, tmp_path / "a.csv", tmp_path / "out"],
    }[command]
    assert_refused(argv, tmp_path, f"out/{output}: is a folder, expected a file")


def test_a_folder_of_yours_named_like_an_output_file_is_refused_before_work_and_kept(tmp_path):
    flat = flat_folder(tmp_path / "flat")
    mine = tmp_path / "labels" / "im1.png"  # where classical would write im1's labels
    mine.mkdir(parents=True)
    (mine / "thesis.txt").write_text("years of work")
    argv = ["classical", flat, tmp_path / "s.csv", "--labels-dir", tmp_path / "labels"]
    assert_refused(argv, tmp_path, f"output file {mine}: is a folder, expected a file")


# ------------------------------------------------------------------------------------------------
# 13. long loops report progress in the log (the pipeline's job logs, -v), not only on a terminal


def test_progress_logs_a_line_at_every_tenth_and_at_the_end(caplog):
    import logging

    from nucleistyle.utils import Progress

    caplog.set_level(logging.INFO, "nucleistyle.test")
    with Progress(25, "augment", logging.getLogger("nucleistyle.test")) as progress:
        for _ in range(25):
            progress.update()
    done = [int(m.split(": ")[1].split("/")[0]) for m in caplog.messages]
    assert done == [3, 6, 9, 12, 15, 18, 21, 24, 25]
    assert caplog.messages[-1].startswith("augment: 25/25 images (")
    assert "images/s, about 0 s left)" in caplog.messages[-1]
    caplog.clear()
    with Progress(7, "predict", logging.getLogger("nucleistyle.test")) as progress:
        progress.update(4)  # a chunk of images at once
        progress.update(3)
    assert [m.split(" (")[0] for m in caplog.messages] == [
        "predict: 4/7 images",
        "predict: 7/7 images",
    ]
