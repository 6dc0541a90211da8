"""Pretrained starts: torchvision's released weight files, found or fetched once and verified.

Deep Retina started from a COCO-trained Mask R-CNN and Mirzaev from an ImageNet ResNet
(docs/baselines.md); their torchvision counterparts are the files of :data:`RELEASED`, published
at :data:`TORCHVISION_MODELS`. torchvision names each file ``<model>-<hash>.pth``, where
``<hash>`` is the first digits of the file's SHA-256 (``torch.hub`` checks it the same way), so
every copy is verified against its own name.

The workflow's local rule ``fetch_pretrained`` puts each needed file into :data:`WEIGHTS_DIR`
once, on the machine that runs Snakemake (:func:`fetch_weights`: a verified copy from a torch hub
cache when there is one, otherwise a download through :func:`nucleistyle.data.acquire.download`).
Without the workflow, :func:`released_weights` does the same into torch's own hub cache.

This module imports no torch: the workflow plans and checks the files while it parses.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable
from pathlib import Path

from nucleistyle.data.acquire import check_reachable, download
from nucleistyle.errors import NucleistyleError
from nucleistyle.paths import PathLike

__all__ = [
    "PRETRAINED_STARTS",
    "RELEASED",
    "TORCHVISION_MODELS",
    "WEIGHTS_DIR",
    "check_downloadable",
    "fetch_weights",
    "find_cached",
    "hash_prefix",
    "hub_checkpoint_dirs",
    "missing_hint",
    "released_file",
    "released_weights",
]

log = logging.getLogger(__name__)

# torchvision's model zoo (the URL of every file below is this folder plus its name)
TORCHVISION_MODELS = "https://download.pytorch.org/models/"
# where the workflow keeps the files (relative to its working directory)
WEIGHTS_DIR = "resources/weights"
# The starts that name a released file (segment weights); "none" and local files name none.
PRETRAINED_STARTS = ("coco", "imagenet")
# (start, backbone) -> torchvision's released file: the COCO Mask R-CNN of
# MaskRCNN_ResNet50_FPN_Weights.COCO_V1 (torchvision has no other COCO Mask R-CNN with this
# architecture) and the ImageNet classifiers of ResNet*_Weights.IMAGENET1K_V1 (the weights the
# torchvision docs list for each; a test checks every name against the installed torchvision).
RELEASED: dict[tuple[str, str], str] = {
    ("coco", "resnet50"): "maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth",
    ("imagenet", "resnet18"): "resnet18-f37072fd.pth",
    ("imagenet", "resnet34"): "resnet34-b627a593.pth",
    ("imagenet", "resnet50"): "resnet50-0676ba61.pth",
    ("imagenet", "resnet101"): "resnet101-63fe2227.pth",
}
_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.pth$")


def released_file(weights: str, backbone: str) -> str | None:
    """The file name of torchvision's release for a start, or None (``none``, a local file).

    Raises:
        NucleistyleError: a start torchvision does not publish for this backbone (COCO weights
            exist for ResNet-50 only).
    """
    if weights not in PRETRAINED_STARTS:
        return None
    name = RELEASED.get((weights, backbone))
    if name is None:
        have = ", ".join(b for w, b in RELEASED if w == weights)
        raise NucleistyleError(
            f"config key segment.weights: torchvision publishes {weights} weights for {have} "
            f"only, not {backbone}; use another start or a local weights file"
        )
    return name


def hash_prefix(name: str) -> str:
    """The SHA-256 prefix in a torchvision file name (``resnet50-0676ba61.pth``: ``0676ba61``).

    Raises:
        NucleistyleError: the name carries no such prefix.
    """
    match = _HASH_IN_NAME.search(name)
    if match is None:
        raise NucleistyleError(f"{name}: no SHA-256 prefix in the name (<model>-<hex>.pth)")
    return match.group(1)


def hub_checkpoint_dirs() -> list[Path]:
    """The torch hub caches a released file may already be in: ``torch.hub.get_dir()``'s
    ``checkpoints`` (``$TORCH_HOME/hub``, else ``$XDG_CACHE_HOME/torch/hub``, else
    ``~/.cache/torch/hub``), then the default ``~/.cache/torch/hub/checkpoints``."""
    default = Path("~/.cache/torch").expanduser()
    cache = os.environ.get("XDG_CACHE_HOME")
    home = os.environ.get("TORCH_HOME") or (str(Path(cache, "torch")) if cache else default)
    folders = [Path(home).expanduser() / "hub" / "checkpoints", default / "hub" / "checkpoints"]
    return list(dict.fromkeys(folders))


def find_cached(name: str, folders: Iterable[Path] | None = None) -> Path | None:
    """The first copy of ``name`` in ``folders`` (default: :func:`hub_checkpoint_dirs`);
    not verified here (:func:`fetch_weights` verifies what it copies)."""
    for folder in hub_checkpoint_dirs() if folders is None else folders:
        if Path(folder, name).is_file():
            return Path(folder, name)
    return None


def missing_hint(name: str, dest: Path) -> str:
    """What to do when a released file can be neither found nor downloaded (one sentence)."""
    hub = hub_checkpoint_dirs()[0]
    also = f" (or into the torch hub cache {hub}/)" if dest.parent != hub else ""
    return (
        f"Download {TORCHVISION_MODELS}{name} on a machine with internet and put it into "
        f"{dest.parent}/{also}, or set the baseline's segment weights to a local file"
    )


def fetch_weights(
    name: str,
    dest: PathLike,
    base_url: str | None = None,
    caches: Iterable[Path] | None = None,
    timeout: float = 60.0,
) -> Path:
    """Put the released file ``name`` at ``dest``, verified against the hash in its name.

    A copy in a torch hub cache is used first (no network); otherwise the file is downloaded
    from ``base_url`` (resumed after an interruption, verified, renamed into place only when
    complete: :func:`~nucleistyle.data.acquire.download`). An existing, matching ``dest`` is
    kept as it is.

    Args:
        name: a file name of :data:`RELEASED` (or any ``<model>-<hash>.pth``).
        dest: the file to create.
        base_url: the folder to download from (default :data:`TORCHVISION_MODELS`, or a
            mirror: http(s)://, file://).
        caches: the folders to look in first (default: :func:`hub_checkpoint_dirs`).
        timeout: socket timeout of the download in seconds.

    Raises:
        NucleistyleError: one line: the file cannot be had (saying what to download and where
            to put it), or a copy does not match its hash.
    """
    dest = Path(dest)
    cached = find_cached(name, caches)
    if cached is not None and not dest.is_file():
        log.info("%s: copying the torch hub cache's %s", name, cached)
    source = str(cached) if cached is not None else (base_url or TORCHVISION_MODELS) + name
    hint = missing_hint(name, dest)
    return download(source, dest, sha256=hash_prefix(name), timeout=timeout, hint=hint)


def released_weights(weights: str, backbone: str, base_url: str | None = None) -> Path:
    """The released file of a start outside the workflow (the command line, the Python API):
    the workflow's copy in :data:`WEIGHTS_DIR` under the working directory or a torch hub
    cache's, else downloaded into torch's (``torch.hub.get_dir()/checkpoints``, where torch
    would put it).

    Raises:
        NucleistyleError: see :func:`released_file` and :func:`fetch_weights`.
    """
    name = released_file(weights, backbone)
    if name is None:
        raise NucleistyleError(f"segment weights {weights!r} name no released file")
    cached = find_cached(name, [Path(WEIGHTS_DIR), *hub_checkpoint_dirs()])
    if cached is not None:
        return cached
    return fetch_weights(name, hub_checkpoint_dirs()[0] / name, base_url, caches=())


def check_downloadable(
    names: Iterable[str],
    base_url: str,
    *,
    dest_dir: PathLike = WEIGHTS_DIR,
    probe: bool,
    timeout: float = 10.0,
) -> None:
    """Stop a run that would need a released file it cannot get, before any job starts.

    Each of ``names`` that is neither in ``dest_dir`` nor in a torch hub cache must be
    downloadable: from a local mirror (``file://``) it must exist there, which is checked
    without any network; from an http(s) URL a request for its first byte must succeed, which
    is done only with ``probe`` (a real run; a dry run plans the download without network).

    Raises:
        NucleistyleError: one line naming the file, what to download and where to put it.
    """
    for name in names:
        dest = Path(dest_dir, name)
        if dest.is_file() or find_cached(name) is not None:
            continue
        url = base_url + name
        hint = missing_hint(name, dest)
        if url.startswith("file://"):
            check_reachable(url, hint=hint)
        elif probe:
            check_reachable(url, timeout=timeout, hint=hint)
