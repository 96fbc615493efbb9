"""Where data and weights come from: a local copy, or a verified download into the user cache.

The data root is ``--data``, else ``TRTPRUNE_DATA``, else ``<user cache>/trtprune/data``. Only the
cache is ever written to: a root the user named is read, never filled. Downloads go to a temporary
file and are renamed into place only after their size and SHA-256 match the published ones.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from trtprune.errors import TrtpruneError
from trtprune.fsutil import atomic_path
from trtprune.log import progress

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Resource:
    url: str
    filename: str
    size: int  # bytes
    sha256: str
    subdir: str  # folder under the data root


_WEIGHTS_URL = "https://github.com/akamaster/pytorch_resnet_cifar10/raw/master/pretrained_models/"
RESOURCES = {
    # Krizhevsky 2009, the official python version; SHA-256 as published by e.g. Keras' cifar10 loader
    "cifar10": Resource(
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        "cifar-10-python.tar.gz",
        170_498_071,
        "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",
        "cifar10",
    ),
    # Idelbayev's pretrained CIFAR ResNets (BSD-2); the file names carry their SHA-256 prefix
    "resnet20": Resource(
        _WEIGHTS_URL + "resnet20-12fca82f.th",
        "resnet20-12fca82f.th",
        1_099_231,
        "12fca82f0bebc4135bf1f32f6e3710e61d5108578464b84fd6d7f5c1b04036c8",
        "weights",
    ),
    "resnet32": Resource(
        _WEIGHTS_URL + "resnet32-d509ac18.th",
        "resnet32-d509ac18.th",
        1_890_043,
        "d509ac1820d7f25398913559d7e81a13229b1e7adc5648e3bfa5e22dc137f850",
        "weights",
    ),
    "resnet56": Resource(
        _WEIGHTS_URL + "resnet56-4bfd9763.th",
        "resnet56-4bfd9763.th",
        3_471_733,
        "4bfd97631478d6b638d2764fd2baff3edb1d7d82252d54439343b6596b9b5367",
        "weights",
    ),
}

LAYOUT_HELP = (
    "a folder with cifar10/ (cifar10_train.npz + cifar10_test.npz, or cifar-10-python.tar.gz) "
    "and weights/ (e.g. resnet56-4bfd9763.th)"
)


def cache_dir() -> Path:
    """``TRTPRUNE_CACHE``, else the platform's user cache folder (``~/.cache/trtprune`` on Linux)."""
    if os.environ.get("TRTPRUNE_CACHE"):
        return Path(os.environ["TRTPRUNE_CACHE"])
    import platformdirs

    return Path(platformdirs.user_cache_dir("trtprune"))


def data_root(data: str | os.PathLike | None = None) -> tuple[Path, bool]:
    """``(root, may_download)``: the user's folder (read only) or the cache (filled on demand)."""
    given = data or os.environ.get("TRTPRUNE_DATA")
    if given:
        root = Path(given).expanduser()
        source = "--data" if data else "TRTPRUNE_DATA"
        if root.suffix == ".py" and not root.is_dir():
            raise TrtpruneError(
                f"data '{given}' (from {source}) is a Python file without ':function'",
                why="a loaders file is given as --data path/file.py:function, the function returning "
                "(train_loader, val_loader); without ':' it is read as a dataset folder",
                fix=f"name the function after ':', e.g. --data {given}:loaders"
                + ("" if data else f"; TRTPRUNE_DATA names a dataset folder ({LAYOUT_HELP})"),
            )
        if root.exists() and not root.is_dir():
            raise TrtpruneError(
                f"data folder '{root}' (from {source}) is a file, not a folder",
                fix=f"point it at {LAYOUT_HELP}",
            )
        if not root.is_dir():
            raise TrtpruneError(
                f"data folder '{root}' (from {source}) does not exist", fix=f"point it at {LAYOUT_HELP}"
            )
        return root, False
    return cache_dir() / "data", True


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def download(res: Resource, dest_dir: Path, *, timeout_s: float = 60.0) -> Path:
    """Download ``res`` into ``dest_dir`` with a progress bar; verified, atomic. Returns the path."""

    dest = Path(dest_dir) / res.filename
    log.info("downloading %s from %s", res.filename, res.url)
    try:
        with atomic_path(dest) as tmp:
            with (
                urllib.request.urlopen(res.url, timeout=timeout_s) as r,
                open(tmp, "wb") as f,
                progress(total=res.size, unit="B", unit_scale=True, desc=res.filename) as bar,
            ):
                while block := r.read(1 << 20):
                    f.write(block)
                    bar.update(len(block))
            size = tmp.stat().st_size
            if size != res.size or (digest := sha256_of(tmp)) != res.sha256:
                found = f"{size:,} bytes" if size != res.size else f"sha256 {digest}"
                raise TrtpruneError(
                    f"the download of {res.filename} from {res.url} failed verification",
                    why=f"expected {res.size:,} bytes with sha256 {res.sha256}, got {found}",
                    fix="try again; if it persists, fetch the file by hand and point TRTPRUNE_DATA at it",
                )
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
        raise TrtpruneError(
            f"could not download {res.filename} from {res.url}",
            why=f"{type(e).__name__}: {e}",
            fix=f"if this machine is offline, copy the files to {LAYOUT_HELP}, and set TRTPRUNE_DATA=/that/folder "
            "(or pass --data)",
        ) from e
    return dest


def ensure_resource(name: str, root: Path, may_download: bool, *, resources=None) -> Path:
    """The local file of resource ``name`` under ``root``, downloading it if allowed and absent."""
    res = (resources or RESOURCES)[name]
    for path in (root / res.subdir / res.filename, root / res.filename):
        if path.is_file():
            return path
    if not may_download:
        raise TrtpruneError(
            f"{res.filename} is not in '{root}'",
            why=f"looked for {root / res.subdir / res.filename} and {root / res.filename}",
            fix=f"copy it there from {res.url}, or set neither --data nor TRTPRUNE_DATA to download it into the cache",
        )
    return download(res, root / res.subdir)
