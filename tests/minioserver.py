"""A MinIO server for tests: a real S3 that checks signatures, IAM and session policies, and STS.

The binary is built from the Go module proxy by ``scripts/minio/build.sh`` (cached under
``~/.cache/wml-minio/<version>/``); ``WML_MINIO`` may name it. The server listens on 127.0.0.1 on
a free port with a temporary folder and root credentials drawn at random for the session, and
is stopped at the end. Without the binary the tests that need it are skipped, saying how to
build it, unless ``WML_REQUIRE_MINIO`` is set (as CI does): then they fail.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import boto3
import httpx
import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

#: Set (to anything but "" or "0") where a missing MinIO must fail the tests, not skip them.
REQUIRE_ENV = "WML_REQUIRE_MINIO"
#: The variable that may name the binary (else the build script's cache is looked in).
BINARY_ENV = "WML_MINIO"
REPO = Path(__file__).resolve().parent.parent
#: Seconds MinIO may take to answer its health check.
START_TIMEOUT_S = 60
#: madmin's sealing of admin API bodies: the id of PBKDF2-SHA256 (this many rounds) with AES-256-GCM.
MADMIN_PBKDF2_AES_GCM, MADMIN_PBKDF2_ROUNDS = b"\x02", 8192


def minio_binary() -> Path | None:
    """The MinIO binary: ``WML_MINIO``, or the one ``scripts/minio/build.sh`` cached; None if absent."""
    named = os.environ.get(BINARY_ENV)
    if named:
        return Path(named) if os.access(named, os.X_OK) else None
    versions = (REPO / "scripts" / "minio" / "versions.sh").read_text()
    version = next(line.split("=", 1)[1].strip() for line in versions.splitlines()
                   if line.startswith("MINIO_VERSION="))
    cache = os.environ.get("WML_MINIO_CACHE") or str(Path.home() / ".cache" / "wml-minio" / version)
    binary = Path(cache) / "minio"
    return binary if os.access(binary, os.X_OK) else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class MinIO:
    """One running MinIO server: its endpoint, its root credentials and clients of it."""

    def __init__(self, binary: Path, folder: Path):
        self.root_key = "wmlroot" + secrets.token_hex(6)
        self.root_secret = secrets.token_urlsafe(24)
        self.port = _free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        env = {"PATH": os.environ.get("PATH", ""), "HOME": str(folder), "MINIO_ROOT_USER": self.root_key,
               "MINIO_ROOT_PASSWORD": self.root_secret, "MINIO_UPDATE": "off", "MINIO_BROWSER": "off",
               "MINIO_CI_CD": "1"}
        self._log = open(folder / "minio.log", "wb")
        self._proc = subprocess.Popen(
            [str(binary), "server", str(folder / "data"), "--address", f"127.0.0.1:{self.port}", "--quiet"],
            env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        self._wait_ready(folder)

    def _wait_ready(self, folder: Path) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"MinIO exited ({self._proc.returncode}): "
                                   f"{(folder / 'minio.log').read_text(errors='replace')[-2000:]}")
            try:
                if httpx.get(f"{self.endpoint}/minio/health/ready", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"MinIO did not answer within {START_TIMEOUT_S} s")

    def client(self, service: str = "s3", key: str | None = None, secret: str | None = None,
               token: str | None = None):
        """A boto3 client of this server: the root's, or one with the credentials given."""
        return boto3.client(service, endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=key or self.root_key,
                            aws_secret_access_key=secret or self.root_secret, aws_session_token=token)

    def user(self) -> tuple[str, str]:
        """A new user with no policy: the store knows its keys and denies it everything (madmin's
        ``add-user``). Its (access key, secret key)."""
        key, secret = "wmluser" + secrets.token_hex(6), secrets.token_urlsafe(24)
        body = madmin_encrypt(self.root_secret, json.dumps({"secretKey": secret, "status": "enabled"}).encode())
        answer = self._admin("PUT", "add-user", {"accessKey": key}, body)
        assert answer.status_code == 200, answer.text
        return key, secret

    def _admin(self, method: str, action: str, query: dict[str, str], body: bytes) -> httpx.Response:
        """A call of MinIO's admin API, signed with the root's keys."""
        url = f"{self.endpoint}/minio/admin/v3/{action}?{urllib.parse.urlencode(query)}"
        request = AWSRequest(method, url, data=body)
        S3SigV4Auth(Credentials(self.root_key, self.root_secret), "s3", "us-east-1").add_auth(request)
        return httpx.request(method, url, content=body, headers=dict(request.headers.items()), timeout=10)

    def env(self) -> dict[str, str]:
        """The variables that make a backend (or boto3) use this server with the root's keys."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": self.root_key,
                "AWS_SECRET_ACCESS_KEY": self.root_secret, "AWS_DEFAULT_REGION": "us-east-1"}

    def stop(self) -> None:
        """Stop the server."""
        self._proc.terminate()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._log.close()


def madmin_encrypt(password: str, data: bytes) -> bytes:
    """``data`` (under 16 KiB) sealed as madmin's ``EncryptData`` does, in its PBKDF2 and
    AES-256-GCM variant: salt, algorithm id, nonce, then one final sio stream fragment."""
    salt, nonce = os.urandom(32), os.urandom(8)
    aead = AESGCM(hashlib.pbkdf2_hmac("sha256", password.encode(), salt, MADMIN_PBKDF2_ROUNDS, 32))
    header_tag = aead.encrypt(nonce + (0).to_bytes(4, "little"), b"", None)
    final = aead.encrypt(nonce + (1).to_bytes(4, "little"), data, b"\x80" + header_tag)
    return salt + MADMIN_PBKDF2_AES_GCM + nonce + final


def missing_minio() -> None:
    """Skip for want of MinIO, or fail where it is required."""
    reason = "no MinIO binary: build it with `bash scripts/minio/build.sh` (or name one in WML_MINIO)"
    if os.environ.get(REQUIRE_ENV, "") not in ("", "0"):
        pytest.fail(f"{reason}, and {REQUIRE_ENV} is set", pytrace=False)
    pytest.skip(reason)


@contextmanager
def running_minio() -> Iterator[MinIO]:
    """A MinIO server for the duration of the block (wrap it in a session fixture); skips (or
    fails, where required) without the binary."""
    binary = minio_binary()
    if binary is None:
        missing_minio()
    folder = Path(tempfile.mkdtemp(prefix="wml-minio-"))
    server = MinIO(binary, folder)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)
