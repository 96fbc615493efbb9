import hashlib

import pytest

from tests.sources.test_datasets import write_official
from trtprune.errors import TrtpruneError
from trtprune.sources import fetch
from trtprune.sources.datasets import ensure_cifar10, load_cifar10


def local_resources(tmp_path, tarball, corrupt=False):
    raw = tarball.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    if corrupt:
        digest = "0" * 64
    return {
        "cifar10": fetch.Resource(tarball.resolve().as_uri(), "cifar-10-python.tar.gz", len(raw), digest, "cifar10")
    }


def test_download_verifies_and_the_data_loads(tmp_path):
    write_official(tmp_path / "mirror")
    res = local_resources(tmp_path, tmp_path / "mirror" / "cifar-10-python.tar.gz")
    cache = tmp_path / "cache"
    root = ensure_cifar10(cache, may_download=True, resources=res)
    assert (cache / "cifar10" / "cifar-10-python.tar.gz").is_file()
    x, y = load_cifar10(root, "test")
    assert x.shape == (20, 32, 32, 3)
    assert fetch.sha256_of(cache / "cifar10" / "cifar-10-python.tar.gz") == res["cifar10"].sha256
    # present: not downloaded again (the mirror may disappear)
    (tmp_path / "mirror" / "cifar-10-python.tar.gz").unlink()
    assert ensure_cifar10(cache, may_download=True, resources=res) == cache


def test_a_checksum_mismatch_leaves_nothing_behind(tmp_path):
    write_official(tmp_path / "mirror")
    res = local_resources(tmp_path, tmp_path / "mirror" / "cifar-10-python.tar.gz", corrupt=True)
    with pytest.raises(TrtpruneError, match="failed verification") as e:
        ensure_cifar10(tmp_path / "cache", may_download=True, resources=res)
    assert "expected" in e.value.why and "sha256" in e.value.why
    assert not any((tmp_path / "cache").rglob("*.tar.gz*"))


def test_offline_says_how_to_use_a_local_copy(tmp_path):
    res = {
        "cifar10": fetch.Resource(
            (tmp_path / "absent.tar.gz").as_uri(), "cifar-10-python.tar.gz", 1, "0" * 64, "cifar10"
        )
    }
    with pytest.raises(TrtpruneError, match="could not download") as e:
        ensure_cifar10(tmp_path / "cache", may_download=True, resources=res)
    assert "TRTPRUNE_DATA" in e.value.fix
    assert not any((tmp_path / "cache").rglob("*.tar.gz*"))


def test_a_user_folder_is_never_written(tmp_path, monkeypatch):
    monkeypatch.setenv("TRTPRUNE_DATA", str(tmp_path))
    root, may_download = fetch.data_root(None)
    assert root == tmp_path and not may_download
    with pytest.raises(TrtpruneError, match="resnet56-4bfd9763.th is not in") as e:
        fetch.ensure_resource("resnet56", root, may_download)
    assert "weights/resnet56-4bfd9763.th" in e.value.why
    assert list(tmp_path.iterdir()) == []


def test_data_root_order(tmp_path, monkeypatch):
    monkeypatch.setenv("TRTPRUNE_CACHE", str(tmp_path / "c"))
    assert fetch.data_root(None) == (tmp_path / "c" / "data", True)
    assert fetch.data_root(str(tmp_path)) == (tmp_path, False)
    with pytest.raises(TrtpruneError, match="from --data"):
        fetch.data_root(str(tmp_path / "missing"))
    monkeypatch.setenv("TRTPRUNE_DATA", str(tmp_path / "missing"))
    with pytest.raises(TrtpruneError, match="from TRTPRUNE_DATA"):
        fetch.data_root(None)


def test_published_checksums_match_the_shared_files(real_data):
    for name in ("resnet20", "resnet32", "resnet56"):
        res = fetch.RESOURCES[name]
        path = real_data / "weights" / res.filename
        assert path.stat().st_size == res.size and fetch.sha256_of(path) == res.sha256
