"""Property tests: generated bad inputs for every command, each refused the same way.

For every case: exit status 2, exactly one ``error:`` line on stderr and no traceback, the inputs
byte-identical afterwards and nothing new anywhere in the workspace (which holds the inputs and
the outputs' parents). Cases: truncated, garbage and odd-mode images and masks, headers declaring
more pixels than the limit, malformed CSV and RLE files (values beyond int64 too), wrong sizes,
bad paths (missing, wrong kind, inside an input, FIFO, a training output that is a folder), names
no ImageId may hold, options missing the option they need, files that are no model or table,
out-of-range numbers. The training commands' cases are all refused before any training. Examples
are bounded (``settings``) so that the module takes about a minute (373 cases).
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from nucleistyle.data.bbbc038 import read_image
from nucleistyle.data.images import DEFAULT_MAX_PIXELS
from nucleistyle.errors import NucleistyleError
from tests.cli_checks import (
    assert_refused,
    flat_folder,
    png,
    png_header,
    sample_folder,
    score_files,
    tiff_header,
)

# A case: files to create in a fresh copy of the template workspace (relative path -> bytes,
# DIR, FIFO) and the command line ("{ws}" stands for the workspace).
DIR, FIFO = "<dir>", "<fifo>"
Case = tuple[dict[str, object], list[str]]

SETTINGS = settings(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Good inputs of every command; each case mutates a fresh copy."""
    root = tmp_path_factory.mktemp("template")
    flat_folder(root / "flat", n=3)
    sample_folder(root / "train", n=4)
    score_files(root)
    (root / "groups.csv").write_text("ImageId,modality\na,x\nb,y\n")
    (root / "model.pt").write_bytes(b"PK\x03\x04 not a model")
    png(root / "mine" / "images" / "p0.png", np.zeros((16, 16, 3), np.uint8))  # a paired folder
    png(root / "mine" / "masks" / "p0.png", np.zeros((16, 16), np.uint8))
    (root / "assignments.csv").write_text("ImageId,cluster\ns0,0\ns1,1\ns2,0\ns3,1\n")
    return root


def check(template: Path, case: Case) -> None:
    """Apply ``case`` to a copy of ``template`` and assert the command refuses it cleanly."""
    files, argv = case
    ws = Path(tempfile.mkdtemp(prefix="case-", dir=template.parent))
    try:
        shutil.copytree(template, ws, dirs_exist_ok=True)
        for rel, content in files.items():
            path = ws / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            if content == DIR:
                path.mkdir(exist_ok=True)
            elif content == FIFO:
                os.mkfifo(path)
            else:
                path.write_bytes(content)  # type: ignore[arg-type]
        assert_refused([a.format(ws=ws) for a in argv], ws)
    finally:
        shutil.rmtree(ws)


# ------------------------------------------------------------------------------------------------
# bad content


def _png(mode: str, shape: tuple[int, int], seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    array = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array, "RGB").convert(mode).save(buffer, format="PNG")
    return buffer.getvalue()


ODD_MODES = ("1", "L", "P", "LA", "RGB", "RGBA", "I;16")


def _undecodable(data: bytes) -> bool:
    with tempfile.NamedTemporaryFile(suffix=".png") as f:
        f.write(data)
        f.flush()
        try:
            read_image(f.name)
        except NucleistyleError:
            return True
    return False


@st.composite
def bad_png(draw: st.DrawFn) -> bytes:
    """Garbage, truncated or overwritten PNG bytes, of any mode, that cannot be decoded."""
    good = _png(draw(st.sampled_from(ODD_MODES)), (16, 16), draw(st.integers(0, 9)))
    kind = draw(st.sampled_from(["garbage", "truncated", "overwritten", "fixed"]))
    if kind == "garbage":
        data = draw(st.binary(max_size=120))
    elif kind == "truncated":
        data = good[: draw(st.integers(0, len(good) - 20))]
    elif kind == "overwritten":
        at = draw(st.integers(8, 40))
        data = good[:at] + draw(st.binary(min_size=4, max_size=12)) + good[at + 12 :]
    else:
        data = draw(st.sampled_from([b"", b"not a png\n", b"\x89PNG\r\n\x1a\n", b"GIF89a\x01"]))
    return data


BAD_PNG = bad_png().filter(_undecodable)


@st.composite
def huge_image(draw: st.DrawFn) -> tuple[str, bytes]:
    """(suffix, bytes) of a PNG or TIFF header declaring more pixels than the limit."""
    width = draw(st.integers(1, 2**31 - 1))
    height = draw(st.integers(DEFAULT_MAX_PIXELS // width + 1, 2**31 - 1))
    suffix = draw(st.sampled_from(["png", "tif", "tiff"]))
    header = png_header if suffix == "png" else tiff_header
    return suffix, header(width, height)


def _huge(d: st.DrawFn, where: str) -> dict[str, object]:
    suffix, data = d(huge_image())
    return {f"{where}.{suffix}": data}


@st.composite
def wrong_size_mask(draw: st.DrawFn) -> bytes:
    """A decodable mask PNG in an odd mode whose size differs from its 16 x 16 image."""
    height, width = draw(
        st.tuples(st.integers(1, 19), st.integers(1, 19)).filter(lambda s: s != (16, 16))
    )
    return _png(draw(st.sampled_from(ODD_MODES)), (height, width), draw(st.integers(0, 9)))


BAD_RLE = st.sampled_from(
    ["1", "1 2 3", "a b", "0 3", "3 0", "60 10", "10 2 3 2", "3 4 5 2", "-1 2", "1.5 2", "1 99999",
     "99999999999999999999999 5", "9223372036854775807 5", "5 9223372036854775807"]
)  # fmt: skip
NOT_UTF8 = st.sampled_from([b"\xff", b"\xfe\xfe", b"\xc3\x28", b"\xe2\x82", b"\x80abc"])


@st.composite
def bad_solution(draw: st.DrawFn) -> bytes:
    header = "ImageId,EncodedPixels,Height,Width,Usage\n"
    good = "a,1 3,8,8,Public\nb,10 2,8,8,Public\n"
    kind = draw(st.sampled_from(["header", "size", "rle", "columns", "bytes", "empty", "usage"]))
    if kind == "header":
        text = draw(st.text(min_size=1, max_size=30).filter(lambda h: "\n" not in h))
        return f"{text}\n{good}".encode("utf-8", "surrogatepass")
    if kind == "size":
        value = draw(
            st.sampled_from(["0", "-8", "x", "1.5", "", "8.0", "99999999999999999999", "100000"])
        )
        return f"{header}{good}c,1 1,{value},8,Public\n".encode()
    if kind == "rle":
        return f"{header}{good}c,{draw(BAD_RLE)},8,8,Public\n".encode()
    if kind == "columns":
        return f"{header}{good}c,1 1,8\n".encode()
    if kind == "usage":  # Height or Usage changing within one image
        return f"{header}{good}a,20 1,8,9,Public\n".encode()
    if kind == "bytes":
        data = (header + good).encode()
        at = draw(st.integers(0, len(data)))
        return data[:at] + draw(NOT_UTF8) + data[at:]
    return b""


@st.composite
def bad_submission(draw: st.DrawFn) -> bytes:
    header = "ImageId,EncodedPixels\n"
    kind = draw(st.sampled_from(["header", "rle", "unknown", "overlap", "bytes", "newline"]))
    if kind == "header":
        bad = draw(st.sampled_from(["Id,Pixels", "ImageId", "ImageId,EncodedPixels,x"]))
        return f"{bad}\na,1 1\n".encode()
    if kind == "rle":
        return f"{header}a,{draw(BAD_RLE)}\n".encode()
    if kind == "unknown":
        return f"{header}{draw(st.sampled_from(['zz', 'A', 'a ', 'é']))}x,1 1\n".encode()
    if kind == "overlap":
        return f"{header}a,1 5\na,3 2\n".encode()
    if kind == "newline":
        rest = draw(st.sampled_from(["b", "error: x", "\r\nb"]))
        return f'{header}"a\n{rest}",1 1\n'.encode()
    data = f"{header}a,1 1\nb,5 2\n".encode()
    at = draw(st.integers(0, len(data)))
    return data[:at] + draw(NOT_UTF8) + data[at:]


@st.composite
def bad_groups(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["empty", "binary", "column", "duplicate", "cells", "bytes"]))
    if kind == "binary":
        return b"\x00\x9f\xff" + draw(st.binary(min_size=1, max_size=40))
    if kind == "column":
        return b"ImageId,group\na,x\n"
    if kind == "duplicate":
        first, second = draw(st.lists(st.text("xyz", min_size=1, max_size=3), min_size=2,
                                      max_size=2, unique=True))  # fmt: skip
        return f"ImageId,modality\na,{first}\nb,y\na,{second}\n".encode()
    if kind == "cells":
        return b"ImageId,modality\na\n"
    if kind == "bytes":
        return b"ImageId,modality\na,\xff\n"
    return b""


# ------------------------------------------------------------------------------------------------
# bad numbers and paths


def outside(low: int | None, high: int | None) -> st.SearchStrategy[str]:
    """Text of an integer outside [low, high], or of no integer at all."""
    parts = [st.sampled_from(["x", "1.5", "nan", "inf", "", "1e3", "0x10"])]
    if low is not None:
        parts.append(st.integers(max_value=low - 1).map(str))
    if high is not None:
        parts.append(st.integers(min_value=high + 1).map(str))
    return st.one_of(parts)


def option(draw: st.DrawFn, values: dict[str, st.SearchStrategy[str]]) -> tuple[str, str]:
    """One of the options and a bad value for it."""
    name = draw(st.sampled_from(sorted(values)))
    return name, draw(values[name])


def cases(choices: dict[str, Callable[[st.DrawFn], Case]]) -> st.SearchStrategy[Case]:
    """A strategy drawing one of the named case builders, then its case."""

    @st.composite
    def draw_case(draw: st.DrawFn) -> Case:
        return choices[draw(st.sampled_from(sorted(choices)))](draw)

    return draw_case()


SOL, SUB = "{ws}/solution.csv", "{ws}/submission.csv"
FLAT, TRAIN, MODEL = "{ws}/flat", "{ws}/train", "{ws}/model.pt"


SCORE = cases({
    "solution": lambda d: ({"solution.csv": d(bad_solution())}, ["score", SOL, SUB]),
    "submission": lambda d: ({"submission.csv": d(bad_submission())}, ["score", SOL, SUB]),
    "groups": lambda d: ({"groups.csv": d(bad_groups())},
                         ["score", SOL, SUB, "--groups", "{ws}/groups.csv"]),
    "paths": lambda d: d(st.sampled_from([
        ({}, ["score", "{ws}/missing.csv", SUB]),
        ({}, ["score", SOL, "{ws}/flat"]),
        ({}, ["score", SOL, SUB, "--per-image", SUB]),
        ({}, ["score", SOL, SUB, "--per-image", "{ws}/flat"]),
        ({}, ["score", SOL, SUB, "--per-image", "{ws}/groups.csv/x.csv"]),
        ({}, ["score", SOL, SUB, "--per-image", "{ws}/flat/t.csv", "--groups", "{ws}/no.csv"]),
        ({"sub2.csv": b"ImageId,EncodedPixels\nzz,1 1\n"},
         ["score", SOL, "{ws}/sub2.csv", "--per-image", "{ws}/new/deep/t.csv"]),
    ])),
})  # fmt: skip

SYNTHESIZE = cases({
    "numbers": lambda d: ({}, ["synthesize", "{ws}/d", *option(d, {
        "--size": outside(64, 2048), "--n-train": outside(10, None),
        "--n-test-per-modality": outside(1, None), "--seed": outside(0, None),
    })]),
    "paths": lambda d: d(st.sampled_from([
        ({}, ["synthesize", SOL]),
        ({"fifo": FIFO}, ["synthesize", "{ws}/fifo"]),
        ({}, ["synthesize", FLAT]),
        ({}, ["synthesize", FLAT, "--overwrite"]),
        ({}, ["synthesize", "{ws}/groups.csv/d"]),
        ({"d/.nucleistyle": b"nucleistyle holdout\n", "d/x": b"x"},
         ["synthesize", "{ws}/d", "--overwrite"]),
    ])),
})  # fmt: skip


def _classical(d: st.DrawFn, images: str) -> list[str]:
    labels = d(st.sampled_from([[], ["--labels-dir", "{ws}/out/labels"]]))
    workers = d(st.sampled_from(["1", "2"]))
    return ["classical", images, "{ws}/out/sub.csv", *labels, "--workers", workers]


CLASSICAL = cases({
    "flat_image": lambda d: ({"flat/zz.png": d(BAD_PNG)}, _classical(d, FLAT)),
    "huge_image": lambda d: (_huge(d, "flat/zz"), _classical(d, FLAT)),
    "sample_image": lambda d: ({"train/s9/images/s9.png": d(BAD_PNG)}, _classical(d, TRAIN)),
    "layout": lambda d: d(st.sampled_from([
        ({"train/s9": DIR}, _classical(d, TRAIN)),
        ({"train/loose.png": _png("RGB", (16, 16))}, _classical(d, TRAIN)),
        ({"empty": DIR}, _classical(d, "{ws}/empty")),
        ({"flat/a.PNG": b"", "flat/a.png": b""}, _classical(d, FLAT)),
    ])),
    "paths": lambda d: d(st.sampled_from([
        ({}, ["classical", "{ws}/nowhere", "{ws}/s.csv"]),
        ({}, ["classical", SOL, "{ws}/s.csv"]),
        ({}, ["classical", FLAT, FLAT]),
        ({}, ["classical", FLAT, "{ws}/flat/s.csv"]),
        ({}, ["classical", FLAT, "{ws}/flat/im0.png"]),
        ({}, ["classical", FLAT, "{ws}/s.csv", "--labels-dir", FLAT]),
        ({}, ["classical", FLAT, "{ws}/s.csv", "--labels-dir", "{ws}/flat/l"]),
        ({}, ["classical", FLAT, "{ws}/s.csv", "--labels-dir", SOL]),
        ({"fifo": FIFO}, ["classical", FLAT, "{ws}/s.csv", "--labels-dir", "{ws}/fifo"]),
        ({}, ["classical", FLAT, "{ws}/solution.csv/s.csv"]),
        ({}, ["classical", FLAT, "{ws}/s.csv", "--labels-dir", "{ws}/s.csv"]),
    ])),
    "workers": lambda d: ({}, ["classical", FLAT, "{ws}/s.csv", "--workers",
                               d(outside(1, 1024))]),
})  # fmt: skip


def _cluster(*extra: str) -> list[str]:
    return ["cluster", FLAT, "--out", "{ws}/out/a.csv", "--k", "2", "--workers", "1", *extra]


CLUSTER = cases({
    "image": lambda d: ({"flat/zz.png": d(BAD_PNG)}, _cluster()),
    "huge_image": lambda d: (_huge(d, "flat/zz"), _cluster()),
    "too_many_clusters": lambda d: ({}, _cluster("--k", d(st.sampled_from(["4", "9"])))),
    "numbers": lambda d: ({}, _cluster(*option(d, {
        "--k": outside(2, 50), "--n-init": outside(1, None), "--seed": outside(0, None),
        "--workers": outside(1, 1024),
    }))),
    "paths": lambda d: d(st.sampled_from([
        ({}, _cluster("--model", "{ws}/out/a.csv")),
        ({}, _cluster("--model", "{ws}/flat/m.json")),
        ({}, _cluster("--model", FLAT)),
        ({}, ["cluster", FLAT, "--out", FLAT]),
        ({}, ["cluster", "{ws}/nowhere", "--out", "{ws}/a.csv"]),
        ({}, ["cluster", SOL, "--out", "{ws}/a.csv"]),
    ])),
})  # fmt: skip


def _holdout(*extra: str) -> list[str]:
    return ["holdout", TRAIN, "{ws}/held", "--k", "2", *extra]


HOLDOUT = cases({
    "mask": lambda d: ({f"train/s{d(st.integers(0, 3))}/masks/m1.png":
                        d(st.one_of(BAD_PNG, wrong_size_mask()))}, _holdout()),
    "image": lambda d: ({"train/s{0}/images/s{0}.png".format(d(st.integers(0, 3))):
                         d(BAD_PNG)}, _holdout()),
    "no_masks": lambda d: ({"train/s9/images/s9.png": _png("RGB", (16, 16))}, _holdout()),
    "numbers": lambda d: ({}, _holdout(*option(d, {
        "--fraction": st.sampled_from(["0", "1", "-0.1", "1.5", "nan", "inf", "x"]),
        "--k": outside(2, 50), "--seed": outside(0, None),
    }))),
    "paths": lambda d: d(st.sampled_from([
        ({}, ["holdout", TRAIN, "{ws}/train/held"]),
        ({}, ["holdout", TRAIN, TRAIN]),
        ({}, ["holdout", TRAIN, FLAT]),
        ({}, ["holdout", TRAIN, FLAT, "--overwrite"]),
        ({}, ["holdout", TRAIN, SOL]),
        ({}, ["holdout", FLAT, "{ws}/held"]),
        ({}, ["holdout", "{ws}/nowhere", "{ws}/held"]),
    ])),
})  # fmt: skip


def _torch_cases(command: str, extra: list[str]) -> st.SearchStrategy[Case]:
    def argv(images: str, out: str, *more: str) -> list[str]:
        return [command, MODEL, images, out, *extra, *more]

    return cases({
        "paths": lambda d: d(st.sampled_from([
            ({}, [command, "{ws}/missing.pt", FLAT, "{ws}/out", *extra]),
            ({}, [command, FLAT, FLAT, "{ws}/out", *extra]),
            ({}, argv("{ws}/nowhere", "{ws}/out")),
            ({}, argv(SOL, "{ws}/out")),
            ({"empty": DIR}, argv("{ws}/empty", "{ws}/out")),
            ({}, argv(FLAT, FLAT)),
            ({}, argv(TRAIN, "{ws}/train/s0/images")),
            ({}, argv(FLAT, SOL)),
            ({"fifo": FIFO}, argv(FLAT, "{ws}/fifo")),
            ({}, argv(FLAT, "{ws}")),
        ])),
        "threads": lambda d: ({}, argv(FLAT, "{ws}/out", "--threads", d(outside(1, 1024)))),
    })  # fmt: skip


SEGMENT = st.one_of(
    _torch_cases("segment", []),
    st.sampled_from([
        ({}, ["segment", MODEL, FLAT, "{ws}/out", "--submission", MODEL]),
        ({}, ["segment", MODEL, FLAT, "{ws}/out", "--submission", "{ws}/out/s.csv"]),
        ({}, ["segment", MODEL, FLAT, "{ws}/out", "--submission", "{ws}/flat/s.csv"]),
    ]),
)  # fmt: skip
STYLIZE = st.one_of(
    _torch_cases("stylize", ["--domain", "0"]),
    st.builds(lambda seed: ({}, ["stylize", MODEL, FLAT, "{ws}/o", "--domain", "0", "--seed",
                                 seed]), outside(0, None)),
)  # fmt: skip


# ------------------------------------------------------------------------------------------------
# the properties


@st.composite
def bad_image_name(draw: st.DrawFn) -> str:
    """A file stem with a character no ImageId may hold (a comma, a quote or a line break)."""
    text = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="/\0"),
                   max_size=8)  # fmt: skip
    name = draw(text) + draw(st.sampled_from([",", '"', "\n", "\r"])) + draw(text)
    return "x" + name if name.startswith(".") else name  # a hidden file would just be skipped


def _import(*extra: str) -> list[str]:
    return ["import-folder", "{ws}/mine", "{ws}/out", *extra]


def _paired(name: str, image: bytes, mask: bytes) -> dict[str, object]:
    return {f"mine/images/{name}": image, f"mine/masks/{name}": mask}


IMPORT_FOLDER = cases({
    "name": lambda d: (_paired(d(bad_image_name()) + ".png", _png("RGB", (16, 16)),
                               _png("L", (16, 16))), _import()),
    "image": lambda d: (_paired("q.png", d(BAD_PNG), _png("L", (16, 16))), _import()),
    "mask": lambda d: (_paired("q.png", _png("RGB", (16, 16)),
                               d(st.one_of(BAD_PNG, wrong_size_mask()))), _import()),
    "huge": lambda d: (_huge(d, f"mine/{d(st.sampled_from(['images', 'masks']))}/p0"),
                       _import()),
    "options": lambda d: d(st.sampled_from([
        ({}, _import("--solution", "{ws}/s.csv")),
        ({}, _import("--test")),  # labelled test folder without --solution
        ({}, _import("--channel-axis", "-1")),
        ({}, _import("--channel-axis", "x")),
        ({}, _import("--channels", "3")),
        ({}, _import("--percentiles", "50", "50")),
        ({}, _import("--percentiles", "1", "101")),
        ({}, ["import-folder", "{ws}/mine", "{ws}/mine/out"]),
        ({"out/x": b"x"}, _import()),
        ({"out/x": b"x", "out/.nucleistyle": b"nucleistyle synthesize\n"},
         _import("--overwrite")),
    ])),
})  # fmt: skip

# training commands: every case is refused before any training starts
TRAINING_OUTPUTS = st.sampled_from(["model.pt", "checkpoint.pt", "history.tsv"])
_SEG = ["train-segmenter", TRAIN, "{ws}/out", "--baseline", "mirzaev"]
_GAN = ["train-gan", TRAIN, "{ws}/assignments.csv", "{ws}/out"]
TRAIN_SEGMENTER = cases({
    "options": lambda d: d(st.sampled_from([
        ({}, [*_SEG, "--style-dir", FLAT]),
        ({}, [*_SEG, "--style-manifest", SOL]),
        ({}, [*_SEG, "--iterations", "0"]),
        ({}, [*_SEG, "--threads", "0"]),
        ({}, ["train-segmenter", TRAIN, "{ws}/out"]),
        ({"bad.yaml": b"segment: [unclosed"}, [*_SEG, "--config", "{ws}/bad.yaml"]),
        ({"bad.yaml": b"segment: {nonsense_key: 1}"}, [*_SEG, "--config", "{ws}/bad.yaml"]),
    ])),
    "outputs": lambda d: ({f"out/{d(TRAINING_OUTPUTS)}": DIR}, _SEG),
    "paths": lambda d: d(st.sampled_from([
        ({}, ["train-segmenter", "{ws}/nowhere", "{ws}/out", "--baseline", "mirzaev"]),
        ({}, ["train-segmenter", TRAIN, SOL, "--baseline", "mirzaev"]),
        ({}, ["train-segmenter", TRAIN, "{ws}/train/out", "--baseline", "mirzaev"]),
    ])),
})  # fmt: skip
TRAIN_GAN = cases({
    "assignments": lambda d: ({"assignments.csv": d(st.sampled_from([
        b"ImageId,cluster\n", b"", b"ImageId\ns0\n", b"ImageId,cluster\ns0,-1\ns1,1\n",
        b"ImageId,cluster\ns0,x\ns1,1\n", b"ImageId,cluster\ns0,0\ns0,1\n",
        b"\xff\xfe\x00",
    ]))}, _GAN),
    "outputs": lambda d: ({f"out/{d(TRAINING_OUTPUTS)}": DIR}, _GAN),
    "cluster_model": lambda d: ({"m.json": d(st.sampled_from([b"[1]", b"{}", b"x", b"\xff"]))},
                                [*_GAN, "--cluster-model", "{ws}/m.json"]),
    "numbers": lambda d: ({}, [*_GAN, *option(d, {
        "--iterations": outside(1, None), "--threads": outside(1, 1024)})]),
})  # fmt: skip


COMMANDS = {
    "score": SCORE,
    "synthesize": SYNTHESIZE,
    "classical": CLASSICAL,
    "cluster": CLUSTER,
    "holdout": HOLDOUT,
    "segment": SEGMENT,
    "stylize": STYLIZE,
    "import-folder": IMPORT_FOLDER,
    "train-segmenter": TRAIN_SEGMENTER,
    "train-gan": TRAIN_GAN,
}


@pytest.mark.parametrize("command", list(COMMANDS))
@settings(SETTINGS, max_examples=40)
@given(data=st.data())
def test_bad_input_is_refused_with_one_line_and_nothing_touched(template, command, data):
    check(template, data.draw(COMMANDS[command], label="case"))
