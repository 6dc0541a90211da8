"""Acquisition: resumable verified download (loopback HTTP only), safe unzip, digests, fixes."""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
import socket
import stat
import subprocess
import threading
import zipfile
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from nucleistyle.data.acquire import (
    FIXES_COMMIT,
    MANIFEST_COLUMNS,
    apply_fixes,
    content_digest,
    download,
    extract_set,
    find_fixes_root,
    safe_extract,
    sha256_file,
)
from nucleistyle.errors import NucleistyleError
from nucleistyle.segment.weights import check_downloadable, fetch_weights, find_cached

MAX_REQUESTS = 50  # the server answers 503 after this many requests: no test can loop forever
SHELL_RECIPE = "find {sub} -type f -name '*.png' | LC_ALL=C sort | xargs sha256sum | sha256sum"
PRE_FIX = {  # ImageId prefix -> (masks before, masks after) in ../shared/bbbc038
    "58c593bc": (2, 3),
    "a7f767ca": (11, 12),
}


# ---------------------------------------------------------------------------------------------
# loopback HTTP server


@dataclass
class ServerState:
    """What the handler serves and how; the requests it saw as (path, Range header)."""

    files: dict[str, bytes] = field(default_factory=dict)
    mode: str = "normal"  # normal | truncate | stall | ignore_range
    truncate_at: int = 0
    release: threading.Event = field(default_factory=threading.Event)  # ends a stall
    requests: list[tuple[str, str | None]] = field(default_factory=list)


def _handler(state: ServerState) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            rng = self.headers.get("Range")
            state.requests.append((self.path, rng))
            body = state.files.get(self.path)
            if len(state.requests) > MAX_REQUESTS:
                self.send_error(503)
                return
            if body is None:
                self.send_error(404)
                return
            if state.mode == "truncate":  # promise everything, send a part, hang up
                self._send(200, body[: state.truncate_at], {"Content-Length": str(len(body))})
                return
            if state.mode == "stall":  # promise everything, send a part, go silent (bounded)
                self._send(200, body[: state.truncate_at], {"Content-Length": str(len(body))})
                state.release.wait(timeout=5)
                return
            if rng and state.mode == "normal":
                first, last = re.fullmatch(r"bytes=(\d+)-(\d*)", rng).groups()
                start = int(first)
                end = min(int(last or len(body) - 1), len(body) - 1)
                if start >= len(body):
                    self._send(416, b"", {"Content-Range": f"bytes */{len(body)}"})
                    return
                headers = {"Content-Range": f"bytes {start}-{end}/{len(body)}"}
                self._send(206, body[start : end + 1], headers)
                return
            self._send(200, body)

        def _send(self, code: int, payload: bytes, headers: dict[str, str] | None = None) -> None:
            headers = {"Content-Length": str(len(payload))} | (headers or {})
            self.send_response(code)
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(payload)
            self.wfile.flush()
            self.close_connection = True

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


@pytest.fixture
def server():
    """(base URL, state) of a ThreadingHTTPServer on 127.0.0.1, shut down after the test."""
    state = ServerState()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", state
    finally:
        state.release.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


# ---------------------------------------------------------------------------------------------
# data builders


def _png(path: Path, value: int, shape: tuple[int, int] = (8, 8), mode: str = "L") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.full(shape + ((4,) if mode == "RGBA" else ()), value, dtype=np.uint8)
    Image.fromarray(arr, mode=mode).save(path)


def _image_dir(root: Path, image_id: str, masks: dict[str, int], image_value: int = 10) -> None:
    _png(root / image_id / "images" / f"{image_id}.png", image_value, mode="RGBA")
    for mask_id, value in masks.items():
        _png(root / image_id / "masks" / f"{mask_id}.png", value)


@pytest.fixture
def synthetic_set(tmp_path: Path) -> Path:
    """tmp/src/stage1_train with 3 tiny images (1-2 masks each)."""
    root = tmp_path / "src" / "stage1_train"
    _image_dir(root, "aa01", {"m1": 255})
    _image_dir(root, "Ab02", {"m1": 200, "m2": 255})
    _image_dir(root, "b_03", {"x": 128})
    return root


@pytest.fixture
def real_set(shared_bbbc038: Path, tmp_path: Path) -> Path:
    """tmp/real/stage1_train with 3 real 256x256 images from ../shared/bbbc038."""
    manifest = pd.read_csv(shared_bbbc038 / "manifest.csv")
    ids = manifest[manifest["height"] == 256].sort_values("ImageId")["ImageId"].head(3)
    root = tmp_path / "real" / "stage1_train"
    for image_id in ids:
        shutil.copytree(shared_bbbc038 / "stage1_train" / image_id, root / image_id)
    return root


def _zip_folder(folder: Path, zip_path: Path, prefix: str = "") -> Path:
    """Zip ``folder``'s contents as ``<prefix><relpath>`` (directory entries included)."""
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.rglob("*")):
            zf.write(path, prefix + path.relative_to(folder).as_posix())
    return zip_path


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _listing(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


# ---------------------------------------------------------------------------------------------
# download


def test_download_streams_verifies_and_leaves_no_part(server, real_set, tmp_path, caplog):
    base, state = server
    payload = _zip_folder(real_set, tmp_path / "payload.zip").read_bytes()
    digest = hashlib.sha256(payload).hexdigest()
    state.files["/stage1_train.zip"] = payload
    dest = tmp_path / "dl" / "stage1_train.zip"

    with caplog.at_level(logging.INFO, logger="nucleistyle.data.acquire"):
        out = download(f"{base}/stage1_train.zip", dest, sha256=digest, chunk_size=4096)

    assert out == dest
    assert dest.read_bytes() == payload
    assert sha256_file(dest) == digest
    assert not dest.with_name("stage1_train.zip.part").exists()
    assert state.requests == [("/stage1_train.zip", None)]
    assert digest in caplog.text
    # a second call finds a verified dest and makes no request
    download(f"{base}/stage1_train.zip", dest, sha256=digest)
    assert len(state.requests) == 1


def test_download_checksum_mismatch_deletes_part_and_creates_no_dest(server, tmp_path):
    base, state = server
    state.files["/f.zip"] = b"x" * 5000
    dest = tmp_path / "f.zip"
    wrong = "0" * 64
    actual = hashlib.sha256(b"x" * 5000).hexdigest()

    with pytest.raises(NucleistyleError, match="checksum mismatch") as err:
        download(f"{base}/f.zip", dest, sha256=wrong)

    assert f"{base}/f.zip" in str(err.value)
    assert wrong in str(err.value) and actual in str(err.value)
    assert not dest.exists()
    assert not (tmp_path / "f.zip.part").exists()


def test_download_truncated_keeps_part_and_rerun_resumes_with_range(server, tmp_path):
    base, state = server
    payload = bytes(range(256)) * 100  # 25,600 bytes
    state.files["/big.zip"] = payload
    state.mode, state.truncate_at = "truncate", 10_000
    dest = tmp_path / "big.zip"
    part = tmp_path / "big.zip.part"
    digest = hashlib.sha256(payload).hexdigest()

    with pytest.raises(NucleistyleError, match="10000 of 25600 bytes") as err:
        download(f"{base}/big.zip", dest, sha256=digest, chunk_size=1024)
    assert str(part) in str(err.value) and "rerun resumes" in str(err.value)
    assert part.read_bytes() == payload[:10_000]
    assert not dest.exists()

    state.mode = "normal"
    download(f"{base}/big.zip", dest, sha256=digest, chunk_size=1024)

    assert state.requests[-1] == ("/big.zip", "bytes=10000-")
    assert dest.read_bytes() == payload
    assert not part.exists()


def test_download_read_timeout_keeps_part_and_rerun_resumes(server, tmp_path):
    base, state = server
    payload = b"abcdefgh" * 2000
    state.files["/slow.zip"] = payload
    state.mode, state.truncate_at = "stall", 6000
    dest, part = tmp_path / "slow.zip", tmp_path / "slow.zip.part"

    with pytest.raises(NucleistyleError, match=r"6000 of 16000 bytes \(timed out\)") as err:
        download(f"{base}/slow.zip", dest, timeout=0.3, chunk_size=1000)
    assert str(part) in str(err.value)
    assert part.read_bytes() == payload[:6000]

    state.release.set()
    state.mode = "normal"
    download(f"{base}/slow.zip", dest, sha256=hashlib.sha256(payload).hexdigest())

    assert state.requests[-1] == ("/slow.zip", "bytes=6000-")
    assert dest.read_bytes() == payload and not part.exists()


def test_download_restarts_cleanly_when_server_ignores_range(server, tmp_path):
    base, state = server
    payload = b"0123456789" * 1000
    state.files["/a.bin"] = payload
    state.mode = "ignore_range"
    dest = tmp_path / "a.bin"
    (tmp_path / "a.bin.part").write_bytes(b"stale garbage")  # 13 bytes that must not survive

    download(f"{base}/a.bin", dest, sha256=hashlib.sha256(payload).hexdigest(), chunk_size=512)

    assert state.requests == [("/a.bin", "bytes=13-")]
    assert dest.read_bytes() == payload
    assert not (tmp_path / "a.bin.part").exists()


def test_download_finishes_a_complete_part_when_server_answers_416(server, tmp_path):
    base, state = server
    payload = b"complete" * 100
    state.files["/c.bin"] = payload
    (tmp_path / "c.bin.part").write_bytes(payload)

    download(f"{base}/c.bin", tmp_path / "c.bin", sha256=hashlib.sha256(payload).hexdigest())

    assert state.requests == [("/c.bin", f"bytes={len(payload)}-")]
    assert (tmp_path / "c.bin").read_bytes() == payload


def test_download_unreachable_port_gives_one_line_offline_message(tmp_path):
    with socket.socket() as sock:  # a loopback port that nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/stage1_train.zip"

    with pytest.raises(NucleistyleError) as err:
        download(url, tmp_path / "x.zip", timeout=5)

    message = str(err.value)
    assert message.startswith(f"cannot download {url}: ")
    assert "Offline? Point data.bbbc038.base_url at a mirror" in message
    assert "data.source: local" in message and "\n" not in message
    assert not (tmp_path / "x.zip").exists()


def test_download_http_error_names_status(server, tmp_path):
    base, _ = server
    with pytest.raises(NucleistyleError, match=r"cannot download .*/missing.zip: HTTP 404"):
        download(f"{base}/missing.zip", tmp_path / "m.zip")
    assert not (tmp_path / "m.zip").exists()


def test_download_from_file_url_and_plain_path_mirrors(tmp_path):
    src = tmp_path / "mirror" / "stage1_test.zip"
    src.parent.mkdir()
    src.write_bytes(b"mirror bytes" * 1000)
    digest = sha256_file(src)

    a = download(src.as_uri(), tmp_path / "a" / "stage1_test.zip", sha256=digest, chunk_size=999)
    b = download(str(src), tmp_path / "b" / "stage1_test.zip", sha256=digest)

    assert a.read_bytes() == b.read_bytes() == src.read_bytes()
    with pytest.raises(NucleistyleError, match="no such file"):
        download((tmp_path / "mirror" / "nope.zip").as_uri(), tmp_path / "c.zip")


def test_download_rejects_malformed_sha256(tmp_path):
    with pytest.raises(NucleistyleError, match="not 8 to 64 hex digits"):
        download("file:///nonexistent", tmp_path / "x", sha256="abc")


# ---------------------------------------------------------------------------------------------
# safe extraction


def _evil_zip(path: Path, kind: str) -> Path:
    """A zip with one good member followed by one unsafe member of the given kind."""
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("good/ok.txt", b"fine")
        if kind == "dotdot":
            zf.writestr("good/../../evil", b"evil")
        elif kind == "absolute":
            zf.writestr(zipfile.ZipInfo(str(path.parent / "abs_evil")), b"evil")
        elif kind == "drive":
            zf.writestr("C:/evil", b"evil")
        elif kind == "symlink":
            info = zipfile.ZipInfo("good/link")
            info.create_system = 3
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, "../../evil")
        elif kind == "fifo":
            info = zipfile.ZipInfo("good/pipe")
            info.create_system = 3
            info.external_attr = (stat.S_IFIFO | 0o644) << 16
            zf.writestr(info, b"")
    return path


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("dotdot", "'..' path component"),
        ("absolute", "absolute path"),
        ("drive", "drive letter"),
        ("symlink", "symbolic link"),
        ("fifo", "special file"),
    ],
)
def test_safe_extract_rejects_unsafe_member_and_writes_nothing(tmp_path, kind, reason):
    zip_path = _evil_zip(tmp_path / "evil.zip", kind)
    before = _listing(tmp_path)
    dest = tmp_path / "work" / "out"

    with pytest.raises(NucleistyleError, match=re.escape(reason)) as err:
        safe_extract(zip_path, dest)

    assert str(zip_path) in str(err.value)
    assert _listing(tmp_path) == before  # checked before anything, even dest's parent, exists


def test_safe_extract_corrupt_member_leaves_no_partial_dest(tmp_path):
    zip_path = tmp_path / "crc.zip"
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("a/first.txt", b"first member is fine")
        zf.writestr("a/second.txt", b"PAYLOAD-TO-CORRUPT")
    raw = zip_path.read_bytes()
    zip_path.write_bytes(raw.replace(b"PAYLOAD-TO-CORRUPT", b"PAYLOAD-TO-CORRUPX"))

    with pytest.raises(NucleistyleError, match=r"crc.zip member 'a/second.txt'.*CRC"):
        safe_extract(zip_path, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["crc.zip"]

    (tmp_path / "junk.zip").write_bytes(b"not a zip at all")
    with pytest.raises(NucleistyleError, match=r"cannot extract .*junk\.zip"):
        safe_extract(tmp_path / "junk.zip", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_safe_extract_replaces_existing_dest_with_exact_contents(tmp_path, synthetic_set):
    zip_path = _zip_folder(synthetic_set, tmp_path / "s.zip")
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "stale.txt").write_text("old")

    assert safe_extract(zip_path, dest) == dest
    assert _tree(dest) == _tree(synthetic_set)


# ---------------------------------------------------------------------------------------------
# content digest


def _shell_digest(root: Path, sub: str) -> str:
    if shutil.which("sha256sum") is None:
        pytest.skip("sha256sum not available")
    out = subprocess.run(
        ["bash", "-c", SHELL_RECIPE.format(sub=sub)],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.split()[0]


def test_content_digest_equals_shell_recipe(tmp_path, synthetic_set):
    root = synthetic_set.parent
    # C-locale order cases, a nested file, and files the recipe must ignore
    _png(synthetic_set / "aa01" / "masks" / "B.png", 7)
    _png(synthetic_set / "aa01" / "masks" / "a-b.png", 9)
    (synthetic_set / "aa01" / "notes.txt").write_text("not a png")
    (synthetic_set / "aa01" / "masks" / "link.png").symlink_to("B.png")

    digest = content_digest(root, "stage1_train")

    assert digest == _shell_digest(root, "stage1_train")
    assert re.fullmatch(r"[0-9a-f]{64}", digest)
    (synthetic_set / "aa01" / "masks" / "B.png").write_bytes(b"changed")
    assert content_digest(root) != digest


def test_content_digest_equals_shell_recipe_on_real_images(shared_bbbc038):
    sub = "stage1_train_original"
    assert content_digest(shared_bbbc038, sub) == _shell_digest(shared_bbbc038, sub)


def test_content_digest_names_missing_folder(tmp_path):
    with pytest.raises(NucleistyleError, match="stage1_train: not a directory"):
        content_digest(tmp_path)


# ---------------------------------------------------------------------------------------------
# extract_set


def test_extract_set_normalises_top_level_and_nested_layouts(tmp_path, synthetic_set):
    flat = _zip_folder(synthetic_set, tmp_path / "flat.zip")
    nested = _zip_folder(synthetic_set, tmp_path / "nested.zip", prefix="stage1_train/")
    expected = content_digest(synthetic_set.parent)

    rec_flat = extract_set(flat, tmp_path / "x" / "stage1_train", name="stage1_train")
    rec_nested = extract_set(
        nested, tmp_path / "y" / "train", name="stage1_train", expected_digest=expected
    )

    want = {"name": "stage1_train", "n_images": 3, "n_masks": 4, "content_digest": expected}
    assert rec_flat == rec_nested == want
    assert _tree(tmp_path / "x" / "stage1_train") == _tree(synthetic_set)
    assert _tree(tmp_path / "y" / "train") == _tree(synthetic_set)
    assert not [p for p in (tmp_path / "y").iterdir() if p.name != "train"]


def test_extract_set_digest_mismatch_leaves_nothing_at_dest(tmp_path, synthetic_set):
    zip_path = _zip_folder(synthetic_set, tmp_path / "s.zip")
    dest = tmp_path / "out" / "stage1_train"

    with pytest.raises(NucleistyleError, match="stage1_train: content digest mismatch") as err:
        extract_set(zip_path, dest, name="stage1_train", expected_digest="f" * 64)

    assert "f" * 64 in str(err.value) and content_digest(synthetic_set.parent) in str(err.value)
    assert not (tmp_path / "out").exists()  # nor the parent folder made for it


def test_extract_set_rejects_wrong_layout(tmp_path):
    zip_path = tmp_path / "bad.zip"
    with zipfile.ZipFile(zip_path, "w") as zf:
        zf.writestr("stage1_test/abc/images/other.png", b"x")
        zf.writestr("stage1_test/def/images/def.png", b"x")
    with pytest.raises(NucleistyleError, match=r"stage1_test: missing image .*abc/images/abc.png"):
        extract_set(zip_path, tmp_path / "stage1_test", name="stage1_test")
    assert not (tmp_path / "stage1_test").exists()


def test_download_then_extract_real_set_end_to_end(server, real_set, tmp_path):
    base, state = server
    state.files["/stage1_train.zip"] = _zip_folder(real_set, tmp_path / "r.zip").read_bytes()
    zip_path = download(f"{base}/stage1_train.zip", tmp_path / "res" / "stage1_train.zip")

    record = extract_set(
        zip_path,
        tmp_path / "res" / "stage1_train",
        name="stage1_train",
        expected_digest=content_digest(real_set.parent),
    )

    n_masks = sum(len(list((d / "masks").glob("*.png"))) for d in real_set.iterdir())
    assert record["n_images"] == 3 and record["n_masks"] == n_masks
    assert _tree(tmp_path / "res" / "stage1_train") == _tree(real_set)


# ---------------------------------------------------------------------------------------------
# community fixes


def test_apply_fixes_on_real_pre_fix_pair(shared_bbbc038, tmp_path):
    original = shared_bbbc038 / "stage1_train_original"
    fixed = tmp_path / "fixed" / "stage1_train"
    for d in original.iterdir():
        shutil.copytree(shared_bbbc038 / "stage1_train" / d.name, fixed / d.name)
    original_before = content_digest(shared_bbbc038, "stage1_train_original")
    dest, manifest = tmp_path / "res" / "stage1_train", tmp_path / "res" / "fixes.tsv"

    table = apply_fixes(original, fixed, dest, manifest)

    assert list(table.columns) == list(MANIFEST_COLUMNS)
    assert [i[:8] for i in table["ImageId"]] == sorted(PRE_FIX)
    assert (table["change"] == "modified").all()
    assert list(table["masks_before"]) == [v[0] for v in PRE_FIX.values()]
    assert list(table["masks_after"]) == [v[1] for v in PRE_FIX.values()]
    assert list(table["masks_added"]) == [1, 1]
    assert list(table["masks_removed"]) == list(table["masks_modified"]) == [0, 0]
    assert not table["image_changed"].any()
    pd.testing.assert_frame_equal(pd.read_csv(manifest, sep="\t"), table)
    assert _tree(dest) == _tree(fixed)
    assert content_digest(shared_bbbc038, "stage1_train_original") == original_before


def test_apply_fixes_lists_removed_added_and_modified_images(tmp_path):
    original, fixed = tmp_path / "orig", tmp_path / "fix"
    _image_dir(original, "same", {"m1": 255})
    _image_dir(fixed, "same", {"m1": 255})
    _image_dir(original, "edit", {"m1": 255, "m2": 255, "m3": 255})
    _image_dir(fixed, "edit", {"m1": 200, "m2": 255, "m4": 255, "m5": 255}, image_value=11)
    _image_dir(original, "gone", {"m1": 255, "m2": 255})
    _image_dir(fixed, "new", {"m1": 255})
    trees = _tree(original), _tree(fixed)
    (tmp_path / "dest").mkdir()
    (tmp_path / "dest" / "stale").write_text("replaced")

    table = apply_fixes(original, fixed, tmp_path / "dest", tmp_path / "m.tsv")

    rows = {r.ImageId: r for r in table.itertuples(index=False)}
    assert list(rows) == ["edit", "gone", "new"]
    assert rows["edit"][1:] == ("modified", 3, 4, 2, 1, 1, True)
    assert rows["gone"][1:] == ("removed", 2, 0, 0, 2, 0, False)
    assert rows["new"][1:] == ("added", 0, 1, 1, 0, 0, False)
    assert (_tree(original), _tree(fixed)) == trees
    assert _tree(tmp_path / "dest") == trees[1]
    assert (tmp_path / "m.tsv").read_text().splitlines()[0].split("\t") == list(MANIFEST_COLUMNS)


def test_find_fixes_root_in_github_archive_layout(tmp_path):
    top = tmp_path / "x" / f"kaggle-dsbowl-2018-dataset-fixes-{FIXES_COMMIT}"
    (top / "stage1_train").mkdir(parents=True)
    (top / "README.md").write_text("readme")
    assert find_fixes_root(tmp_path / "x") == top / "stage1_train"

    (tmp_path / "empty" / "something").mkdir(parents=True)
    with pytest.raises(NucleistyleError, match="no stage1_train folder"):
        find_fixes_root(tmp_path / "empty")


# ---------------------------------------------------------------------------------------------
# pretrained weights (torchvision's released files; a small fake file named by its own hash)


def _closed_port_url() -> str:
    with socket.socket() as sock:  # a loopback port that nobody listens on
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}/"


@pytest.fixture
def fake_weights(monkeypatch, tmp_path) -> tuple[str, bytes]:
    """(file name, bytes) of a small fake weights file named ``<model>-<sha256[:8]>.pth``, as
    torchvision names its releases; the torch hub caches point into tmp_path (empty)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    payload = b"fake weights " * 5000
    return f"fake-{hashlib.sha256(payload).hexdigest()[:8]}.pth", payload


def test_fetch_weights_downloads_once_verified_against_the_hash_in_its_name(
    server, fake_weights, tmp_path
):
    base, state = server
    name, payload = fake_weights
    state.files[f"/{name}"] = payload
    dest = tmp_path / "resources" / "weights" / name

    assert fetch_weights(name, dest, f"{base}/") == dest
    assert dest.read_bytes() == payload and not dest.with_name(name + ".part").exists()
    assert state.requests == [(f"/{name}", None)]
    fetch_weights(name, dest, f"{base}/")  # present and matching: no request
    assert len(state.requests) == 1

    wrong = "fake-00000000.pth"  # a file whose bytes do not match its name
    state.files[f"/{wrong}"] = payload
    with pytest.raises(NucleistyleError, match=r"checksum mismatch .*expected sha256 00000000"):
        fetch_weights(wrong, tmp_path / "w" / wrong, f"{base}/")
    assert not (tmp_path / "w").exists() or not any((tmp_path / "w").iterdir())


def test_fetch_weights_interrupted_resumes_with_range(server, fake_weights, tmp_path):
    base, state = server
    name, payload = fake_weights
    state.files[f"/{name}"] = payload
    state.mode, state.truncate_at = "truncate", 1000
    dest = tmp_path / name
    with pytest.raises(NucleistyleError, match="a rerun resumes from there"):
        fetch_weights(name, dest, f"{base}/")
    state.mode = "normal"
    fetch_weights(name, dest, f"{base}/")
    assert dest.read_bytes() == payload
    assert state.requests[-1] == (f"/{name}", "bytes=1000-")


def test_fetch_weights_copies_a_torch_hub_cache_without_network(fake_weights, tmp_path):
    name, payload = fake_weights
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    (cache / name).write_bytes(payload)
    assert find_cached(name) == cache / name

    dest = fetch_weights(name, tmp_path / "weights" / name, _closed_port_url())
    assert dest.read_bytes() == payload
    (cache / name).write_bytes(b"corrupt")  # a damaged cache copy is not taken
    with pytest.raises(NucleistyleError, match=rf"checksum mismatch for {re.escape(str(cache))}"):
        fetch_weights(name, tmp_path / "other" / name, _closed_port_url())


def test_fetch_weights_offline_says_what_to_download_and_where(fake_weights, tmp_path):
    name, _ = fake_weights
    url = _closed_port_url()
    dest = tmp_path / "resources" / "weights" / name
    with pytest.raises(NucleistyleError) as err:
        fetch_weights(name, dest, url, timeout=5)
    message = str(err.value)
    assert message.startswith(f"cannot download {url}{name}: Connection refused. ")
    assert f"Download https://download.pytorch.org/models/{name} on a machine" in message
    assert f"put it into {dest.parent}/" in message and "\n" not in message
    assert str(tmp_path / "torch" / "hub" / "checkpoints") in message
    assert not dest.exists() and not dest.with_name(name + ".part").exists()


def test_check_downloadable_uses_no_network_unless_asked(server, fake_weights, tmp_path):
    base, state = server
    name, payload = fake_weights
    dest_dir = tmp_path / "weights"
    offline = _closed_port_url()
    check_downloadable([name], offline, dest_dir=dest_dir, probe=False)  # a dry run: no request
    with pytest.raises(NucleistyleError, match=rf"cannot download {offline}{name}: Connection"):
        check_downloadable([name], offline, dest_dir=dest_dir, probe=True)
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    with pytest.raises(NucleistyleError, match=rf"no such file {re.escape(str(mirror))}"):
        check_downloadable([name], mirror.as_uri() + "/", dest_dir=dest_dir, probe=False)
    (mirror / name).write_bytes(payload)
    check_downloadable([name], mirror.as_uri() + "/", dest_dir=dest_dir, probe=False)

    state.files[f"/{name}"] = payload  # a server that has the file: one byte asked for
    check_downloadable([name], f"{base}/", dest_dir=dest_dir, probe=True)
    assert state.requests == [(f"/{name}", "bytes=0-0")]
    with pytest.raises(NucleistyleError, match="HTTP 404"):
        check_downloadable(["other-12345678.pth"], f"{base}/", dest_dir=dest_dir, probe=True)
    dest_dir.mkdir()
    (dest_dir / name).write_bytes(payload)  # already there: nothing to check
    check_downloadable([name], offline, dest_dir=dest_dir, probe=True)
