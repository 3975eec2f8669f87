"""The object-store contract, run against the file store and an S3 store (moto), plus sync.

``TestObjectStoreContract`` is the one contract every store passes; ``TestS3Store`` adds what
only S3 has: multipart ETags, resumed part uploads, endpoints and credentials.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from boto3.s3.transfer import TransferConfig
from s3server import ALLOW_ALL_S3, ANY_KEY, ANY_SECRET, running_moto
from wml_core.errors import StorageError
from wml_core.objectstore import StoreConfig, digests
from wml_core.objectstore.digests import file_etag
from wml_core.objectstore.file import FileStore
from wml_core.objectstore.s3 import S3Store
from wml_core.objectstore.s3http import light_store
from wml_core.objectstore.sync import (
    SyncProgress,
    download,
    tqdm_progress,
    upload,
)

MIB = 1 << 20
#: A small multipart threshold and part size (S3's minimum) keeps the test files small.
PART = 5 * MIB
#: Planted credentials that must never appear in an error message.
SECRET = "planted-Secret/Key+0123456789abcdefghijklmn"
ACCESS_KEY = "AKIAPLANTEDKEY123456"

TREE = {
    "top level.txt": 300,
    "ünïcödé dir/file one.txt": 4096,
    "ünïcödé dir/nested/deep 🎉.bin": 10_000,
    "日本語/ファイル.txt": 1,
    "a/b/c/d/e.bin": 0,
}


def s3_store(endpoint: str, access_key: str = ANY_KEY, secret_key: str = ANY_SECRET) -> S3Store:
    """An S3 store on ``endpoint`` that goes multipart at ``PART`` bytes."""
    config = StoreConfig(kind="s3", endpoint=endpoint, region="us-east-1",
                         access_key=access_key, secret_key=secret_key)
    return S3Store(config, transfer=TransferConfig(multipart_threshold=PART,
                                                   multipart_chunksize=PART))


def write(path: Path, size: int) -> Path:
    """A file of ``size`` random bytes at ``path`` (parents created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(size))
    return path


def make_tree(root: Path, tree: dict[str, int] = TREE) -> Path:
    for rel, size in tree.items():
        write(root / rel, size)
    return root


def read_tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def etags(store, bucket: str, prefix: str = "") -> dict[str, str]:
    return {o.key: o.etag for o in store.list(bucket, prefix)}


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Interrupted(Exception):
    """Raised by ``StopAfter`` to simulate a crash or Ctrl-C in the middle of a sync."""


class StopAfter(SyncProgress):
    """A progress sink that interrupts the sync once more than ``limit`` bytes went by."""

    def __init__(self, limit: int):
        self.limit, self.seen = limit, 0

    def advance(self, nbytes: int) -> None:
        self.seen += nbytes
        if self.seen > self.limit:
            raise Interrupted(f"stopped after {self.seen} bytes")


class Recorder(SyncProgress):
    """Remembers every progress call."""

    def __init__(self):
        self.totals, self.bytes, self.done, self.closed = None, 0, [], False

    def start(self, total_files: int, total_bytes: int) -> None:
        self.totals = (total_files, total_bytes)

    def advance(self, nbytes: int) -> None:
        self.bytes += nbytes

    def file_done(self, skipped: bool) -> None:
        self.done.append(skipped)

    def close(self) -> None:
        self.closed = True


@pytest.fixture(scope="session")
def moto_s3():
    """The session's moto S3 server."""
    with running_moto() as server:
        yield server


@pytest.fixture(autouse=True)
def wml_home(tmp_path, monkeypatch):
    """Digest caches go to a per-test home, never to ~/.wml."""
    monkeypatch.setenv("WML_HOME", str(tmp_path / "home"))


@pytest.fixture
def bucket() -> str:
    """A fresh bucket name (the moto server lives for the whole session)."""
    return f"bucket-{uuid.uuid4().hex[:12]}"


@pytest.fixture(params=["file", "s3", "light s3"])
def store(request, tmp_path):
    """Each store the contract covers."""
    if request.param == "file":
        yield FileStore(StoreConfig(kind="file", root=str(tmp_path / "store")))
        return
    s3 = s3_store(request.getfixturevalue("moto_s3").endpoint)
    yield s3 if request.param == "s3" else light_store(s3.config, full=s3)
    s3.close()


DOWNLOAD_PEAK = """
import json, sys, tracemalloc
from wml_core.objectstore import StoreConfig, open_store
from wml_core.objectstore.sync import download
config, bucket, prefix, dest = json.loads(sys.argv[1]), *sys.argv[2:]
store = open_store(StoreConfig(**config))
tracemalloc.start()
summary = download(store, bucket, prefix, dest)
print(json.dumps({"peak": tracemalloc.get_traced_memory()[1], "sent": summary.sent}))
"""


class TestObjectStoreContract:
    """What every ``ObjectStore`` does, through its own API and through ``sync``."""

    def test_put_get_list(self, store, bucket, tmp_path):
        store.create_bucket(bucket)
        store.put_bytes(bucket, "dir/a.txt", b"alpha")
        store.put_file(bucket, "dir/sub/b c.bin", write(tmp_path / "b", 1000))
        store.put_bytes(bucket, "other.txt", b"x")
        assert store.bucket_exists(bucket)
        assert etags(store, bucket, "dir/") == {
            "dir/a.txt": md5(b"alpha"), "dir/sub/b c.bin": md5((tmp_path / "b").read_bytes())}
        assert [o.size for o in store.list(bucket, "dir/a")] == [5]
        store.get_file(bucket, "dir/sub/b c.bin", tmp_path / "out" / "b")
        assert (tmp_path / "out" / "b").read_bytes() == (tmp_path / "b").read_bytes()
        store.create_bucket(bucket)  # idempotent

    def test_list_range_lists_only_its_keys_in_order(self, store, bucket):
        store.create_bucket(bucket)
        for key in ("p/d", "p/a", "p/c", "p/b", "q/a"):
            store.put_bytes(bucket, key, key.encode())
        assert [o.key for o in store.list_range(bucket, "p/", "p/a", "p/c", page_size=1)] == ["p/b", "p/c"]
        assert [o.key for o in store.list_range(bucket, "p/", until="p/b")] == ["p/a", "p/b"]
        assert [o.key for o in store.list_range(bucket, "p/", after="p/c")] == ["p/d"]

    def test_put_file_etag_is_the_listed_etag_or_none(self, store, bucket, tmp_path):
        store.create_bucket(bucket)
        for size in (10, 2 * PART + 1):
            etag = store.put_file_etag(bucket, f"f{size}", write(tmp_path / f"f{size}", size))
            assert etag in (None, etags(store, bucket)[f"f{size}"])
            assert etags(store, bucket)[f"f{size}"] == file_etag(tmp_path / f"f{size}", store.part_size(size))

    def test_put_is_atomic(self, store, bucket, tmp_path):
        store.create_bucket(bucket)
        store.put_file(bucket, "k", write(tmp_path / "old", 2 * PART + 7))
        before = etags(store, bucket)
        during = []
        store.put_file(bucket, "k", write(tmp_path / "new", 2 * PART + 7),
                       progress=lambda n: during.append(etags(store, bucket)))
        assert during and all(seen == before for seen in during)
        store.get_file(bucket, "k", tmp_path / "back")
        assert (tmp_path / "back").read_bytes() == (tmp_path / "new").read_bytes()

    def test_interrupted_put_is_never_listed(self, store, bucket, tmp_path):
        store.create_bucket(bucket)

        def crash(nbytes):
            raise Interrupted()
        with pytest.raises(Interrupted):
            store.put_file(bucket, "half", write(tmp_path / "f", 2 * PART + 1), progress=crash)
        assert etags(store, bucket) == {}

    def test_sync_nested_unicode_tree(self, store, bucket, tmp_path):
        src = make_tree(tmp_path / "src")
        sent = upload(store, src, bucket, "runs/ünï x")
        assert (sent.sent, sent.skipped, sent.bytes) == (len(TREE), 0, sum(TREE.values()))
        assert set(etags(store, bucket)) == {f"runs/ünï x/{rel}" for rel in TREE}
        got = download(store, bucket, "runs/ünï x", tmp_path / "dst")
        assert got.sent == len(TREE)
        assert read_tree(tmp_path / "dst") == read_tree(src)

    def test_resync_sends_nothing_and_hashes_nothing(self, store, bucket, tmp_path, monkeypatch):
        src = make_tree(tmp_path / "src")
        upload(store, src, bucket)
        upload(store, src, bucket)  # stores whose put_file_etag says no ETag learn digests here
        hashed = []
        monkeypatch.setattr(digests, "file_etag", lambda *a: hashed.append(a) or file_etag(*a))
        again = upload(store, src, bucket)
        assert (again.sent, again.skipped, again.bytes) == (0, len(TREE), 0)
        # (the file store's own objects, seconds old, may be hashed: test_file_store_digests)
        assert [a for a in hashed if src in Path(a[0]).parents] == []

    def test_changed_file_is_resent(self, store, bucket, tmp_path):
        src = make_tree(tmp_path / "src")
        upload(store, src, bucket, "p")
        changed = src / "ünïcödé dir" / "file one.txt"
        changed.write_bytes(os.urandom(4096))  # same size, new content
        stat = changed.stat()
        os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
        again = upload(store, src, bucket, "p")
        assert (again.sent, again.skipped, again.bytes) == (1, len(TREE) - 1, 4096)
        download(store, bucket, "p", tmp_path / "dst")
        assert read_tree(tmp_path / "dst") == read_tree(src)

    def test_same_size_rewrite_with_restored_mtime_is_resent(self, store, bucket, tmp_path):
        """A writer that puts the old modification time back (``cp -p``, ``rsync -t``) still
        changes the file's change time: the new content is sent, not taken for unchanged."""
        src = make_tree(tmp_path / "src")
        upload(store, src, bucket, "p")
        changed = src / "ünïcödé dir" / "file one.txt"
        before = changed.stat()
        changed.write_bytes(os.urandom(4096))
        os.utime(changed, ns=(before.st_atime_ns, before.st_mtime_ns))
        assert changed.stat().st_mtime_ns == before.st_mtime_ns
        again = upload(store, src, bucket, "p")
        assert (again.sent, again.skipped) == (1, len(TREE) - 1)
        download(store, bucket, "p", tmp_path / "dst")
        assert read_tree(tmp_path / "dst") == read_tree(src)

    def test_large_file_goes_in_parts_and_is_skipped_after(self, store, bucket, tmp_path):
        big = write(tmp_path / "src" / "big file.bin", 2 * PART + 12345)
        assert upload(store, tmp_path / "src", bucket).sent == 1
        assert upload(store, tmp_path / "src", bucket).skipped == 1
        download(store, bucket, "", tmp_path / "dst")
        assert (tmp_path / "dst" / "big file.bin").read_bytes() == big.read_bytes()

    def test_resume_after_interrupted_sync(self, store, bucket, tmp_path):
        src = make_tree(tmp_path / "src", {"a.txt": 4096, "b.txt": 4096, "c.txt": 4096})
        write(src / "z big.bin", 2 * PART + 1000)
        with pytest.raises(Interrupted):
            upload(store, src, bucket, "run", progress=StopAfter(3 * 4096 + PART), workers=1)
        assert "run/z big.bin" not in etags(store, bucket)
        again = upload(store, src, bucket, "run")
        assert (again.sent, again.skipped) == (1, 3)
        download(store, bucket, "run", tmp_path / "dst")
        assert read_tree(tmp_path / "dst") == read_tree(src)

    def test_progress_reports_every_file_and_byte(self, store, bucket, tmp_path):
        src = make_tree(tmp_path / "src")
        upload(store, src / "top level.txt", bucket)
        seen = Recorder()
        upload(store, src, bucket, progress=seen)
        assert seen.totals == (len(TREE), sum(TREE.values()))
        assert seen.bytes == sum(TREE.values()) and seen.closed
        assert sorted(seen.done) == [False] * (len(TREE) - 1) + [True]

    def test_tqdm_progress_draws_bars(self, store, bucket, tmp_path):
        out = io.StringIO()
        upload(store, make_tree(tmp_path / "src"), bucket, progress=tqdm_progress("up", file=out))
        assert "files" in out.getvalue() and f"{len(TREE)}/{len(TREE)}" in out.getvalue()

    def test_single_file_upload_lands_under_prefix(self, store, bucket, tmp_path):
        upload(store, write(tmp_path / "model.zip", 100), bucket, "defs/")
        assert list(etags(store, bucket)) == ["defs/model.zip"]
        assert upload(store, tmp_path / "model.zip", bucket, "defs").skipped == 1

    def test_download_skips_unchanged_and_repairs_changed(self, store, bucket, tmp_path):
        src = make_tree(tmp_path / "src")
        upload(store, src, bucket, "d")
        download(store, bucket, "d", tmp_path / "dst")
        assert download(store, bucket, "d", tmp_path / "dst").sent == 0
        (tmp_path / "dst" / "top level.txt").write_bytes(b"local edit")
        assert download(store, bucket, "d", tmp_path / "dst").sent == 1
        assert read_tree(tmp_path / "dst") == read_tree(src)

    def test_download_streams_with_bounded_memory(self, store, bucket, tmp_path):
        big = write(tmp_path / "src" / "weights.bin", 50 * MIB)
        upload(store, tmp_path / "src", bucket, "m")
        config = {"kind": store.config.kind, "root": store.config.root,
                  "endpoint": store.config.endpoint, "access_key": ANY_KEY,
                  "secret_key": ANY_SECRET}
        run = subprocess.run([sys.executable, "-c", DOWNLOAD_PEAK, json.dumps(config), bucket,
                              "m", str(tmp_path / "dst")], capture_output=True, text=True,
                             env={**os.environ, "WML_HOME": str(tmp_path / "home2")}, check=True)
        result = json.loads(run.stdout)
        assert result["sent"] == 1
        assert result["peak"] < 50 * MIB / 4, f"peak {result['peak'] / MIB:.1f} MiB"
        assert md5((tmp_path / "dst" / "weights.bin").read_bytes()) == md5(big.read_bytes())

    def test_missing_bucket_is_a_one_line_error(self, store, tmp_path):
        with pytest.raises(StorageError) as err:
            store.check_bucket("no-such-bucket")
        assert "no-such-bucket" in str(err.value) and "\n" not in str(err.value)
        assert not store.bucket_exists("no-such-bucket")
        with pytest.raises(StorageError, match="no-such-bucket"):
            download(store, "no-such-bucket", "", tmp_path / "dst")


def assert_clean(message: str, *secrets: str) -> None:
    """One line, and none of ``secrets`` in it."""
    assert "\n" not in message
    for secret in secrets:
        assert secret not in message


class TestS3Store:
    """What only S3 has: part ETags and resumed parts, endpoints, credentials, IAM."""

    def test_multipart_etag_matches_local_formula(self, moto_s3, bucket, tmp_path):
        store = s3_store(moto_s3.endpoint)
        big = write(tmp_path / "src" / "big", 2 * PART + 1)
        upload(store, tmp_path / "src", bucket)
        assert etags(store, bucket) == {"big": file_etag(big, PART)}
        assert etags(store, bucket)["big"].endswith("-3")

    def test_resumed_upload_reuses_finished_parts(self, moto_s3, bucket, tmp_path):
        store = s3_store(moto_s3.endpoint)
        big = write(tmp_path / "src" / "big", 2 * PART + 1000)
        with pytest.raises(Interrupted):
            upload(store, tmp_path / "src", bucket, progress=StopAfter(PART), workers=1)
        sent_parts = []
        store.client.meta.events.register("before-call.s3.UploadPart",
                                          lambda **kw: sent_parts.append(kw["params"]))
        upload(store, tmp_path / "src", bucket)
        assert len(sent_parts) <= 1, "parts 1 and 2 were finished before the interruption"
        assert etags(store, bucket) == {"big": file_etag(big, PART)}
        assert moto_s3.client().list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []

    def test_resume_ignores_parts_of_other_content(self, moto_s3, bucket, tmp_path):
        store = s3_store(moto_s3.endpoint)
        big = write(tmp_path / "src" / "big", 2 * PART + 1000)
        with pytest.raises(Interrupted):
            upload(store, tmp_path / "src", bucket, progress=StopAfter(PART), workers=1)
        write(big, 2 * PART + 1000)  # the file changed before the retry
        upload(store, tmp_path / "src", bucket)
        store.get_file(bucket, "big", tmp_path / "back")
        assert md5((tmp_path / "back").read_bytes()) == md5(big.read_bytes())

    def test_credentials_and_endpoint_from_environment(self, moto_s3, bucket, monkeypatch):
        monkeypatch.setenv("AWS_ENDPOINT_URL", moto_s3.endpoint)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", ANY_KEY)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", ANY_SECRET)
        monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        store = S3Store(StoreConfig(kind="s3"))
        assert store.endpoint == moto_s3.endpoint
        store.create_bucket(bucket)
        store.check_bucket(bucket)

    def test_unreachable_endpoint_fails_fast(self, bucket, tmp_path):
        port = closed_port()
        store = s3_store(f"http://127.0.0.1:{port}", ACCESS_KEY, SECRET)
        started = time.monotonic()
        with pytest.raises(StorageError) as err:
            store.check_bucket(bucket)
        assert time.monotonic() - started < 3
        assert f"127.0.0.1:{port}" in str(err.value) and bucket in str(err.value)
        assert_clean(str(err.value), SECRET, ACCESS_KEY)
        with pytest.raises(StorageError, match="cannot reach"):
            upload(store, write(tmp_path / "f", 10), bucket)

    def test_unsafe_keys_are_not_downloaded(self, moto_s3, bucket, tmp_path):
        client = moto_s3.client()
        client.create_bucket(Bucket=bucket)
        for key in ("p/ok.txt", "p/../escape.txt", "p/dir/"):
            client.put_object(Bucket=bucket, Key=key, Body=b"x")
        assert len(client.list_objects_v2(Bucket=bucket)["Contents"]) == 3
        download(s3_store(moto_s3.endpoint), bucket, "p", tmp_path / "area" / "dst")
        assert read_tree(tmp_path / "area") == {"dst/ok.txt": b"x"}

    @pytest.mark.parametrize("who, expected", [
        ("no policy", "access denied"),
        ("wrong secret", "credentials rejected (SignatureDoesNotMatch)"),
        ("unknown key", "credentials rejected (InvalidAccessKeyId)"),
    ])
    def test_credential_errors_name_bucket_and_endpoint_only(self, moto_s3, bucket, who, expected):
        owner = moto_s3.user(f"owner-{bucket}", ALLOW_ALL_S3)
        keys = {"no policy": moto_s3.user(f"nobody-{bucket}"),
                "wrong secret": (owner[0], SECRET),
                "unknown key": (ACCESS_KEY, SECRET)}[who]
        moto_s3.client().create_bucket(Bucket=bucket)
        store = s3_store(moto_s3.endpoint, *keys)
        with moto_s3.iam_checks():
            s3_store(moto_s3.endpoint, *owner).check_bucket(bucket)
            with pytest.raises(StorageError) as err:
                store.check_bucket(bucket)
            with pytest.raises(StorageError) as put_err:
                store.put_bytes(bucket, "k", b"data")
        for message in (str(err.value), str(put_err.value)):
            assert expected in message and bucket in message and moto_s3.endpoint in message
            assert_clean(message, *keys, *owner)
        assert SECRET not in repr(store.config)
