"""The file store remembers its objects' MD5s: a listing reads only new or changed files.

Real files throughout; the one spy is on ``digests.file_etag``, the function that reads and
hashes a file's content, to count which files a listing read.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from wml_core.errors import StorageError
from wml_core.objectstore import StoreConfig, digests
from wml_core.objectstore.file import DIGESTS, FileStore
from wml_core.objectstore.sync import download

MIB = 1 << 20
BUCKET = "data"

LIST_IN_SUBPROCESS = """
import sys
from wml_core.objectstore import StoreConfig
from wml_core.objectstore.file import FileStore
store = FileStore(StoreConfig(kind="file", root=sys.argv[1]))
for _ in range(int(sys.argv[2])):
    print(len(list(store.list(sys.argv[3]))), flush=True)
"""


@pytest.fixture(autouse=True)
def wml_home(tmp_path, monkeypatch):
    """Nothing goes to ~/.wml."""
    monkeypatch.setenv("WML_HOME", str(tmp_path / "home"))


@pytest.fixture
def store(tmp_path) -> FileStore:
    """A file store with an empty bucket ``BUCKET``."""
    store = FileStore(StoreConfig(kind="file", root=str(tmp_path / "store")))
    store.create_bucket(BUCKET)
    return store


@pytest.fixture
def hashed(monkeypatch) -> list[Path]:
    """The files whose content is read and hashed from now on, in order."""
    calls, real = [], digests.file_etag
    monkeypatch.setattr(digests, "file_etag",
                        lambda path, *args: calls.append(Path(path)) or real(path, *args))
    return calls


def age(path: Path, seconds: float = 3600) -> Path:
    """Set ``path``'s mtime ``seconds`` into the past, as for data stored a while ago."""
    when = time.time() - seconds
    os.utime(path, (when, when))
    return path


def put(store: FileStore, key: str, size: int, settled: bool = True, bucket: str = BUCKET) -> Path:
    """Write ``size`` random bytes as object ``key`` (aged an hour if ``settled``)."""
    path = store.root / bucket / key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(size))
    return age(path) if settled else path


def etags(store: FileStore, bucket: str = BUCKET, prefix: str = "") -> dict[str, str]:
    return {o.key: o.etag for o in store.list(bucket, prefix)}


def md5s(store: FileStore, bucket: str = BUCKET) -> dict[str, str]:
    """The true MD5 of every file in ``bucket``, read here."""
    base = store.root / bucket
    return {p.relative_to(base).as_posix(): hashlib.md5(p.read_bytes()).hexdigest()
            for p in base.rglob("*") if p.is_file()}


def test_second_listing_reads_no_file(store, hashed):
    for i in range(50):
        put(store, f"part-{i:02d}.bin", MIB)
    first = etags(store)
    assert len(hashed) == 50 and first == md5s(store)
    hashed.clear()
    assert etags(store) == first
    assert hashed == []


def test_rewritten_file_gets_its_new_digest(store, hashed):
    for i in range(5):
        put(store, f"f{i}", 4096)
    etags(store)
    changed = put(store, "f3", 4096, settled=False)  # same size, new content
    age(changed, 60)  # a new mtime, itself settled
    hashed.clear()
    assert etags(store) == md5s(store)
    assert hashed == [changed]


def test_fresh_file_is_hashed_until_settled(store, hashed):
    """A file modified within the last seconds could change again without a new mtime."""
    fresh = put(store, "being-written", 1000, settled=False)
    etags(store)
    etags(store)
    assert hashed == [fresh, fresh]
    age(fresh)
    etags(store)
    etags(store)
    assert hashed == [fresh] * 3


def test_cache_is_never_an_object(store, tmp_path):
    put(store, "a/b.txt", 10)
    store.create_bucket("other")
    etags(store)
    cache = store.root / DIGESTS
    assert cache.is_file() and stat.S_IMODE(cache.stat().st_mode) == 0o600
    assert list(etags(store)) == ["a/b.txt"] and etags(store, "other") == {}
    download(store, BUCKET, "", tmp_path / "dst")
    assert sorted(p.name for p in (tmp_path / "dst").rglob("*")) == ["a", "b.txt"]
    with pytest.raises(StorageError, match="invalid bucket name"):
        etags(store, DIGESTS)


def test_cache_of_a_store_inside_a_bucket_is_hidden(store):
    inner = FileStore(StoreConfig(kind="file", root=str(store.root / BUCKET / "nested")))
    inner.create_bucket("x")
    put(inner, "y", 10, bucket="x")
    assert list(etags(inner, "x")) == ["y"]
    assert (inner.root / DIGESTS).is_file()
    assert list(etags(store)) == ["nested/x/y"]


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_damaged_cache_is_recomputed_then_rebuilt(store, hashed, damage):
    for i in range(3):
        put(store, f"f{i}", 1000)
    etags(store)
    cache = store.root / DIGESTS
    if damage == "garbage":
        cache.write_bytes(os.urandom(5000))
    else:
        cache.write_bytes(cache.read_bytes()[:700])
    hashed.clear()
    assert etags(store) == md5s(store)
    assert len(hashed) == 3
    assert etags(store) == md5s(store)
    assert len(hashed) == 3, "the damaged cache was replaced by a working one"


def test_unusable_cache_only_costs_hashing(store, hashed):
    (store.root / DIGESTS).mkdir()  # SQLite cannot open a folder
    put(store, "f", 1000)
    assert etags(store) == md5s(store)
    assert etags(store) == md5s(store)
    assert len(hashed) == 2


def test_partial_listing_keeps_what_it_hashed(store, hashed):
    """A caller taking the first N objects (submission provenance) still fills the cache."""
    for i in range(6):
        put(store, f"f{i}", 100)
    assert len(list(itertools.islice(store.list(BUCKET), 2))) == 2
    assert etags(store) == md5s(store)
    assert len(hashed) == 6


def test_prefix_listing_uses_the_cache(store, hashed):
    for key in ("sub/a1", "sub/a2", "sub/b", "top"):
        put(store, key, 100)
    etags(store)
    hashed.clear()
    assert list(etags(store, prefix="sub/a")) == ["sub/a1", "sub/a2"]
    assert list(etags(store, prefix="sub/")) == ["sub/a1", "sub/a2", "sub/b"]
    assert hashed == []


def test_file_deleted_while_listed_is_skipped(store):
    for i in range(3):
        put(store, f"f{i}", 100)
    listing = store.list(BUCKET)
    assert next(listing).key == "f0"
    (store.root / BUCKET / "f1").unlink()
    assert [o.key for o in listing] == ["f2"]


def test_concurrent_listings_and_writes(store, tmp_path):
    """Threads and other processes listing while objects are written: no error, right MD5s."""
    for i in range(20):
        put(store, f"data/{i:02d}", 10_000)
    stable = md5s(store)
    errors, stop = [], threading.Event()

    def lister():
        try:
            while not stop.is_set():
                seen = etags(store)
                assert {k: seen[k] for k in stable} == stable
        except Exception as err:  # noqa: BLE001 - reported by the main thread
            errors.append(err)

    procs = [subprocess.Popen([sys.executable, "-c", LIST_IN_SUBPROCESS, str(store.root), "5",
                               BUCKET], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    threads = [threading.Thread(target=lister) for _ in range(3)]
    for thread in threads:
        thread.start()
    src = tmp_path / "result"
    for i in range(30):  # as a runner storing results, some rewritten
        src.write_bytes(os.urandom(5000))
        store.put_file(BUCKET, f"results/{i % 5}", src)
    stop.set()
    for thread in threads:
        thread.join()
    for proc in procs:
        assert proc.wait(timeout=60) == 0 and len(proc.stdout.read().split()) == 5
    assert errors == []
    assert etags(store) == md5s(store)
