"""``LightS3Store`` (S3 without boto3, for a cold ``wml upload``) against MinIO, which checks every
signature: awkward keys and prefixes, refusals in words, and when it steps aside for boto3."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from wml_core.errors import StorageError
from wml_core.objectstore import StoreConfig
from wml_core.objectstore.s3 import S3Store
from wml_core.objectstore.s3http import BOTO_ONLY, LightS3Store, light_store
from wml_core.objectstore.sync import upload

#: Names that need escaping in a signed path or query: spaces, plus, tilde, percent, unicode...
AWKWARD = ["plain.txt", "with space.bin", "plus+sign.txt", "tilde~and=equals&amp.txt", "per%cent;semi.txt",
           "ünïcödé/深い/🎉 party.bin", "a/b/c/d/e.txt", "quote'and(paren).txt"]


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    """Digest caches in a per-test home; no credentials or endpoint from the environment."""
    monkeypatch.setenv("WML_HOME", str(tmp_path / "home"))
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL",
                 "AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_DEFAULT_PROFILE", *BOTO_ONLY):
        monkeypatch.delenv(name, raising=False)


def config(minio, secret: str | None = None) -> StoreConfig:
    return StoreConfig(kind="s3", endpoint=minio.endpoint, region="us-east-1", access_key=minio.root_key,
                       secret_key=secret or minio.root_secret)


def tree(root: Path) -> Path:
    for i, name in enumerate(AWKWARD):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(os.urandom(100 + i))
    return root


def test_awkward_keys_round_trip_and_resync_skips_them(minio, tmp_path):
    light = light_store(config(minio))
    assert isinstance(light, LightS3Store)
    src = tree(tmp_path / "src")
    sent = upload(light, src, "light-awkward", "pre fix/ü+")
    assert (sent.sent, sent.skipped) == (len(AWKWARD), 0)
    full = S3Store(config(minio))
    listed = {o.key: o.etag for o in full.list("light-awkward", "pre fix/ü+")}
    assert listed == {o.key: o.etag for o in light.list("light-awkward", "pre fix/ü+")}
    assert set(listed) == {f"pre fix/ü+/{name}" for name in AWKWARD}
    for name in AWKWARD:
        full.get_file("light-awkward", f"pre fix/ü+/{name}", tmp_path / "back" / name)
        assert (tmp_path / "back" / name).read_bytes() == (src / name).read_bytes()
    again = upload(light, src, "light-awkward", "pre fix/ü+")
    assert (again.sent, again.skipped) == (0, len(AWKWARD))


def test_listing_pages_and_ranges(minio, tmp_path):
    light = light_store(config(minio))
    light.create_bucket("light-pages")
    for i in range(7):
        path = tmp_path / f"f{i}"
        path.write_bytes(b"x" * i)
        light.put_file("light-pages", f"k/{i} +", path)
    assert [o.key for o in light.list_range("light-pages", "k/", page_size=2)] == [f"k/{i} +" for i in range(7)]
    assert [o.key for o in light.list_range("light-pages", "k/", after="k/1 +", until="k/4 +", page_size=2)] \
        == ["k/2 +", "k/3 +", "k/4 +"]


def test_wrong_secret_is_one_line_naming_bucket_and_endpoint_only(minio, tmp_path):
    planted = "planted-Secret/Key+0123456789abcdefghij"
    light = light_store(config(minio, secret=planted))
    with pytest.raises(StorageError) as err:
        upload(light, tree(tmp_path / "src"), "light-denied")
    message = str(err.value)
    assert "credentials rejected" in message and "light-denied" in message and minio.endpoint in message
    assert "\n" not in message and planted not in message and minio.root_secret not in message


def test_unreachable_endpoint_is_one_line(tmp_path):
    light = light_store(StoreConfig(kind="s3", endpoint="http://127.0.0.1:9", access_key="k", secret_key="s"))
    with pytest.raises(StorageError, match=r"cannot reach S3 endpoint http://127.0.0.1:9 for bucket 'b'"):
        light.bucket_exists("b")


def test_steps_aside_where_boto3_would_resolve_otherwise(minio, monkeypatch):
    """No endpoint, no static keys, a named AWS profile, a proxy or anonymous access: boto3's store is used."""
    assert light_store(StoreConfig(kind="s3", access_key="k", secret_key="s")) is None
    assert light_store(StoreConfig(kind="s3", endpoint=minio.endpoint)) is None
    assert light_store(StoreConfig(kind="s3", endpoint=minio.endpoint, anonymous=True)) is None
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", minio.root_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", minio.root_secret)
    assert light_store(StoreConfig(kind="s3", endpoint=minio.endpoint)) is not None
    for name, value in (("HTTPS_PROXY", "http://proxy:3128"), ("AWS_PROFILE", "elsewhere")):
        monkeypatch.setenv(name, value)
        assert light_store(StoreConfig(kind="s3", endpoint=minio.endpoint)) is None, name
        monkeypatch.delenv(name)


def test_big_file_goes_through_the_resumable_multipart_upload(minio, tmp_path):
    light = light_store(config(minio))
    big = tmp_path / "src" / "big.bin"
    big.parent.mkdir()
    big.write_bytes(os.urandom(9 * 1024 * 1024))
    assert light.part_size(big.stat().st_size) > 0
    assert upload(light, big.parent, "light-big").sent == 1
    (listed,) = light.list("light-big")
    assert listed.etag.endswith("-2") and listed.size == big.stat().st_size
    assert upload(light, big.parent, "light-big").skipped == 1


SYNC_THEN_HANG = """
import json, sys, time
from pathlib import Path
from wml_core.objectstore import StoreConfig
from wml_core.objectstore.s3http import light_store
from wml_core.objectstore.sync import SyncProgress, upload
config, src, bucket = StoreConfig(**json.loads(sys.argv[1])), Path(sys.argv[2]), sys.argv[3]

class SlowDown(SyncProgress):
    def advance(self, nbytes):
        print(nbytes, flush=True)
        time.sleep(0.05)

upload(light_store(config), src, bucket, progress=SlowDown())
"""


def test_killed_upload_leaves_only_whole_objects_and_the_next_one_finishes(minio, tmp_path):
    """SIGKILL in the middle of a sync: every object listed is a whole file; the next sync sends the rest."""
    import json
    import subprocess
    import sys
    from wml_core.objectstore.digests import file_etag
    src = tree(tmp_path / "src")
    (src / "big.bin").write_bytes(os.urandom(17 * 1024 * 1024))
    cfg = config(minio)
    args = json.dumps({"kind": "s3", "endpoint": cfg.endpoint, "region": cfg.region, "access_key": cfg.access_key,
                       "secret_key": cfg.secret_key})
    proc = subprocess.Popen([sys.executable, "-c", SYNC_THEN_HANG, args, str(src), "light-killed"],
                            stdout=subprocess.PIPE, text=True, env={**os.environ, "WML_HOME": str(tmp_path / "h")})
    for _ in range(3):  # some files (or parts) are through
        assert proc.stdout.readline()
    proc.kill()
    proc.wait()
    light = light_store(cfg)
    for info in light.list("light-killed"):
        assert info.etag == file_etag(src / info.key, light.part_size(info.size)), info.key
    again = upload(light, src, "light-killed")
    assert again.sent + again.skipped == len(AWKWARD) + 1 and again.sent >= 1
    assert {o.key for o in light.list("light-killed")} == {*AWKWARD, "big.bin"}


def test_interrupted_multipart_upload_resumes_sending_only_missing_parts(minio, tmp_path, monkeypatch):
    light = light_store(config(minio))
    light.create_bucket("light-resume")
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(3 * 8 * 1024 * 1024 + 5))
    parts = -(-big.stat().st_size // light.part_size(big.stat().st_size))

    def stop(nbytes):
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        light.put_file("light-resume", "big.bin", big, progress=stop)
    assert list(light.list("light-resume")) == []  # an open upload is never listed
    sent = []
    request = light._request
    monkeypatch.setattr(light, "_request", lambda method, *a, **kw: (
        sent.append(a[2]) if method == "PUT" and len(a) > 2 and "partNumber" in (a[2] or {}) else None,
        request(method, *a, **kw))[1])
    etag = light.put_file_etag("light-resume", "big.bin", big)
    assert len(sent) < parts  # the parts the interrupted upload finished are not sent again
    (listed,) = light.list("light-resume")
    assert listed.etag == etag == file_etag_of(big, light)


def file_etag_of(path: Path, store) -> str:
    from wml_core.objectstore.digests import file_etag
    return file_etag(path, store.part_size(path.stat().st_size))


COLD_UPLOAD = """
import json, sys
from pathlib import Path
from wml_core.objectstore import StoreConfig
from wml_core.objectstore.s3http import light_store
from wml_core.objectstore.sync import upload
summary = upload(light_store(StoreConfig(**json.loads(sys.argv[1]))), Path(sys.argv[2]), "light-cold")
print(summary.sent, sorted(m for m in ("boto3", "botocore", "s3transfer") if m in sys.modules))
"""


def test_an_upload_of_small_and_big_files_never_imports_boto3(minio, tmp_path):
    """What makes a cold ``wml upload`` start at once: no boto3, even for a multipart upload."""
    import json
    import subprocess
    import sys
    src = tree(tmp_path / "src")
    (src / "big.bin").write_bytes(os.urandom(9 * 1024 * 1024))
    cfg = config(minio)
    args = json.dumps({"kind": "s3", "endpoint": cfg.endpoint, "access_key": cfg.access_key,
                       "secret_key": cfg.secret_key})
    out = subprocess.run([sys.executable, "-c", COLD_UPLOAD, args, str(src)], capture_output=True, text=True,
                         env={**os.environ, "WML_HOME": str(tmp_path / "h")}, check=True)
    assert out.stdout.split(None, 1) == [str(len(AWKWARD) + 1), "[]\n"]
