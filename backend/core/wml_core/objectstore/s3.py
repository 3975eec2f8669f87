"""The S3 object store: one boto3 code path for AWS S3, IBM COS, MinIO and Ceph.

The endpoint comes from ``StoreConfig.endpoint`` or boto3's own chain (``AWS_ENDPOINT_URL``,
profiles); so do credentials when the configuration has none. Transient failures (throttling,
5xx, dropped connections) are retried with jittered backoff by botocore's ``standard`` retry
mode, and interrupted download streams by s3transfer. Puts are atomic by nature in S3: a
single PUT or a completed multipart upload. An interrupted multipart upload stays open, is never
listed, and the next ``put_file`` of the same key resumes it, re-sending only the parts whose
MD5 differs from the local bytes. Set a bucket lifecycle rule (AbortIncompleteMultipartUpload)
to reclaim uploads that are never resumed.
"""

from __future__ import annotations

import base64
import hashlib
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import boto3
import botocore.session
from boto3.s3.transfer import TransferConfig
from botocore import UNSIGNED
from botocore import exceptions as bex
from botocore.config import Config
from botocore.credentials import CredentialProvider, CredentialResolver, Credentials, RefreshableCredentials
from botocore.handlers import add_expect_header
from botocore.utils import determine_content_length
from s3transfer.manager import TransferManager
from s3transfer.subscribers import BaseSubscriber

from wml_core.errors import StorageError
from wml_core.objectstore.base import ObjectInfo, ObjectStore, Progress, StoreConfig
from wml_core.objectstore.s3rules import (MULTIPART_THRESHOLD, PART_SIZE, FileSpan, Span, missing_message,
                                          part_size_for, refusal, scrub, send_parts)

#: Seconds to wait for a TCP connection: a dead endpoint fails fast.
CONNECT_TIMEOUT_S = 2
#: Seconds to wait for an answer once connected (large parts on slow links need some).
READ_TIMEOUT_S = 60
#: Attempts per request for data operations (botocore "standard" mode, jittered backoff).
OPERATION_ATTEMPTS = 5
#: Attempts and connect timeout when probing a bucket, so a bad endpoint is reported in seconds.
PROBE_ATTEMPTS = 2
PROBE_CONNECT_TIMEOUT_S = 1
#: Seconds before a refreshing credential expires when it is fetched again, at least.
REFRESH_MARGIN_S = 120
#: HTTP connections kept per client: sync workers plus part uploads run at once.
POOL_CONNECTIONS = 50
#: Bodies from this size on ask ``Expect: 100-continue`` first (as the AWS SDK for Go v2 does, at
#: 2 MB): for a small PUT, waiting for the server's go-ahead is a round trip that saves nothing.
EXPECT_CONTINUE_MIN_BYTES = 2 * 1024 * 1024

DEFAULT_TRANSFER = TransferConfig(multipart_threshold=MULTIPART_THRESHOLD,
                                  multipart_chunksize=PART_SIZE, max_concurrency=8,
                                  max_io_queue=16)

_UNREACHABLE = (bex.EndpointConnectionError, bex.ConnectTimeoutError,
                bex.ConnectionClosedError, bex.ReadTimeoutError)


def _md5(data: bytes) -> hashlib._Hash:
    return hashlib.md5(data, usedforsecurity=False)


def _expect_continue_if_large(model, params, **kwargs) -> None:
    """botocore's ``Expect: 100-continue``, for bodies of ``EXPECT_CONTINUE_MIN_BYTES`` or more."""
    size = determine_content_length(params.get("body"))
    if size is None or size >= EXPECT_CONTINUE_MIN_BYTES:
        add_expect_header(model, params, **kwargs)


class _ProgressSubscriber(BaseSubscriber):
    """Forwards s3transfer's byte counts to a ``Progress`` callback."""

    def __init__(self, progress: Progress):
        self._progress = progress

    def on_progress(self, future, bytes_transferred, **kwargs):
        if self._progress:
            self._progress(bytes_transferred)


def refreshing_credentials(fetch: Callable[[], dict], time_fetcher: Callable[[], datetime] | None = None
                           ) -> RefreshableCredentials:
    """Credentials that call ``fetch`` again (a dict of ``access_key``, ``secret_key``, ``token``,
    ``expiry_time``) when a third of their life, but at least ``REFRESH_MARGIN_S``, is left."""
    first = fetch()
    life = (_as_utc(first["expiry_time"]) - datetime.now(timezone.utc)).total_seconds()
    margin = max(REFRESH_MARGIN_S, life / 3)
    extra = {"time_fetcher": time_fetcher} if time_fetcher else {}
    return RefreshableCredentials(first["access_key"], first["secret_key"], first["token"],
                                  _as_utc(first["expiry_time"]), fetch, "wml-runner", advisory_timeout=margin,
                                  mandatory_timeout=margin / 2, **extra)


class _Given(CredentialProvider):
    """A credential provider that hands out the credentials it was given."""

    METHOD = "wml-given"

    def __init__(self, credentials: Credentials):
        super().__init__()
        self._credentials = credentials

    def load(self) -> Credentials:
        return self._credentials


def _as_utc(when) -> datetime:
    """An expiry as an aware UTC datetime (botocore compares it with its clock's)."""
    when = datetime.fromisoformat(when) if isinstance(when, str) else when
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


class S3Store(ObjectStore):
    """Buckets and objects of an S3-compatible service, reached through boto3.

    ``credentials`` (botocore's, e.g. ``refreshing_credentials``) win over the configuration's keys
    and boto3's chain: a run's scoped, short-lived credential."""

    def __init__(self, config: StoreConfig, transfer: TransferConfig | None = None,
                 credentials: Credentials | None = None):
        self.config = config
        self.transfer = transfer or DEFAULT_TRANSFER
        self.credentials = credentials
        core = botocore.session.get_session()
        # Keep timestamps as text: parsing them was half the client's time on big listings.
        core.get_component("response_parser_factory").set_parser_defaults(timestamp_parser=str)
        if credentials is not None:
            core.register_component("credential_provider", CredentialResolver([_Given(credentials)]))
        self._session = boto3.session.Session(aws_access_key_id=config.access_key,
                                              aws_secret_access_key=config.secret_key,
                                              region_name=config.region, botocore_session=core)
        self.client = self._client(OPERATION_ATTEMPTS)
        self.endpoint = self.client.meta.endpoint_url
        self._lock = threading.Lock()
        self._probe = None
        self._parts: ThreadPoolExecutor | None = None
        self._transfers: TransferManager | None = None

    # -- plumbing ---------------------------------------------------------------------------

    def _client(self, attempts: int, connect_timeout: float = CONNECT_TIMEOUT_S):
        """A client with our timeouts and retries; path-style addressing off AWS."""
        def make(style: str):
            return self._session.client("s3", endpoint_url=self.config.endpoint, config=Config(
                connect_timeout=connect_timeout, read_timeout=READ_TIMEOUT_S,
                retries={"mode": "standard", "max_attempts": attempts},
                max_pool_connections=POOL_CONNECTIONS, s3={"addressing_style": style},
                **({"signature_version": UNSIGNED} if self.config.anonymous else {}),
                # We send Content-MD5 ourselves; newer default checksums break MinIO/Ceph/COS.
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required"))
        client = make("path" if self.config.endpoint else "auto")
        if not self.config.endpoint and "amazonaws.com" not in client.meta.endpoint_url:
            client = make("path")  # AWS_ENDPOINT_URL or a profile named a non-AWS service
        client.meta.events.unregister("before-call.s3", add_expect_header)
        client.meta.events.register("before-call.s3", _expect_continue_if_large)
        return client

    def _probe_client(self):
        """The client for bucket checks: one retry, so a dead endpoint answers in seconds."""
        with self._lock:
            if self._probe is None:
                self._probe = self._client(PROBE_ATTEMPTS, PROBE_CONNECT_TIMEOUT_S)
            return self._probe

    def _pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._parts is None:
                self._parts = ThreadPoolExecutor(self.transfer.max_request_concurrency,
                                                 thread_name_prefix="s3-part")
            return self._parts

    def _manager(self) -> TransferManager:
        with self._lock:
            if self._transfers is None:
                self._transfers = TransferManager(self.client, self.transfer)
            return self._transfers

    def close(self) -> None:
        """Stop the worker threads of part uploads and downloads."""
        if self._parts:
            self._parts.shutdown()
        if self._transfers:
            self._transfers.shutdown()

    @contextmanager
    def _errors(self, bucket: str, key: str | None = None):
        """Turn botocore's exceptions into one-line ``StorageError``s."""
        try:
            yield
        except (bex.BotoCoreError, bex.ClientError) as exc:
            raise self._error(exc, bucket, key) from exc

    def _error(self, exc: Exception, bucket: str, key: str | None = None) -> StorageError:
        """The ``StorageError`` for ``exc``: one line naming bucket and endpoint, no keys."""
        return StorageError(self._scrub(self._message(exc, bucket, key)))

    def _message(self, exc: Exception, bucket: str, key: str | None) -> str:
        """What went wrong, in words: transport problems first, then the server's refusal."""
        where = f"bucket {bucket!r} at {self.endpoint}"
        if isinstance(exc, bex.NoCredentialsError):
            return (f"no S3 credentials for {where}: configure a key pair, set "
                    "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or choose an AWS profile")
        if isinstance(exc, _UNREACHABLE):
            return f"cannot reach S3 endpoint {self.endpoint} for bucket {bucket!r}: {_reason(exc)}"
        if isinstance(exc, bex.ParamValidationError):
            return f"invalid S3 request for {where}: {str(exc).splitlines()[-1].strip()}"
        if isinstance(exc, bex.ClientError):
            return _refusal(exc, bucket, self.endpoint, key)
        return f"S3 request failed for {where}: {type(exc).__name__}"

    def _scrub(self, message: str) -> str:
        """Never show a key, even if a server echoes one back."""
        return scrub(message, (self.config.access_key, self.config.secret_key))

    # -- buckets ----------------------------------------------------------------------------

    def bucket_exists(self, bucket: str) -> bool:
        """Whether ``bucket`` exists and these credentials may use it (False on 404 and 403). A
        scoped credential (``credentials``) is issued for buckets that exist, and may not look at a
        whole bucket (HEAD): True."""
        if self.credentials is not None:
            return True
        try:
            self._probe_client().head_bucket(Bucket=bucket)
            return True
        except (bex.BotoCoreError, bex.ClientError) as exc:
            if _code(exc) in {"404", "NoSuchBucket", "403", "AccessDenied"}:
                return False
            raise self._error(exc, bucket) from exc

    def create_bucket(self, bucket: str) -> None:
        region = self.client.meta.region_name
        args = {"Bucket": bucket}
        if region and region not in ("us-east-1", "aws-global"):
            args["CreateBucketConfiguration"] = {"LocationConstraint": region}
        try:
            self.client.create_bucket(**args)
        except (bex.BotoCoreError, bex.ClientError) as exc:
            if _code(exc) != "BucketAlreadyOwnedByYou":
                raise self._error(exc, bucket) from exc

    def check_bucket(self, bucket: str) -> None:
        """List one key (HEAD answers carry no error code to tell denied from bad keys)."""
        with self._errors(bucket):
            self._probe_client().list_objects_v2(Bucket=bucket, MaxKeys=1)

    def missing(self, bucket: str) -> StorageError:
        return StorageError(missing_message(bucket, self.endpoint))

    # -- objects ----------------------------------------------------------------------------

    def list(self, bucket: str, prefix: str = "") -> Iterator[ObjectInfo]:
        return self.list_range(bucket, prefix)

    #: A listing starts at a key (``StartAfter``): disjoint ranges are listed in parallel.
    ranged_listing = True

    def list_range(self, bucket: str, prefix: str = "", after: str | None = None,
                   until: str | None = None, page_size: int = 1000) -> Iterator[ObjectInfo]:
        """Objects under ``prefix`` with ``after < key <= until`` (None: no bound), in key order,
        reading only that range: one LIST from ``after``, in pages of ``page_size``."""
        start = {"StartAfter": after} if after else {}
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=prefix, PaginationConfig={"PageSize": page_size}, **start)
        with self._errors(bucket):
            for page in pages:
                for item in page.get("Contents", ()):
                    if until is not None and item["Key"] > until:
                        return
                    yield ObjectInfo(item["Key"], item["Size"], item["ETag"].strip('"'))

    def get_file(self, bucket: str, key: str, path: Path, progress: Progress = None) -> None:
        """Stream ``key`` into a temporary file beside ``path``, then rename it (s3transfer)."""
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with self._errors(bucket, key):
            self._manager().download(bucket, key, str(path),
                                     subscribers=[_ProgressSubscriber(progress)]).result()

    def put_file(self, bucket: str, key: str, path: Path, progress: Progress = None) -> None:
        self.put_file_etag(bucket, key, path, progress)

    def part_size(self, size: int) -> int:
        """The part size a file of ``size`` bytes is uploaded with; 0 means a single PUT."""
        return part_size_for(size, self.transfer.multipart_threshold, self.transfer.multipart_chunksize)

    def put_file_etag(self, bucket: str, key: str, path: Path, progress: Progress = None) -> str:
        """``put_file`` that returns the object's MD5-style ETag (computed as the bytes go)."""
        path = Path(path)
        part = self.part_size(path.stat().st_size)
        with self._errors(bucket, key):
            if part:
                return self._put_multipart(bucket, key, path, part, progress)
            return self._put_single(bucket, key, path, progress)

    def _put_single(self, bucket: str, key: str, path: Path, progress: Progress) -> str:
        data = path.read_bytes()
        digest = _md5(data)
        self.client.put_object(Bucket=bucket, Key=key, Body=data,
                               ContentMD5=base64.b64encode(digest.digest()).decode())
        if progress:
            progress(len(data))
        return digest.hexdigest()

    def _put_multipart(self, bucket: str, key: str, path: Path, part: int,
                       progress: Progress) -> str:
        upload_id, done = self._open_upload(bucket, key)
        parts, etag = send_parts(self._pool(), path, part, done,
                                 lambda span, digest: self._upload_part(bucket, key, upload_id, path, span, digest),
                                 progress)
        self.client.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={
            "Parts": [{"PartNumber": n, "ETag": etag} for n, etag in parts]})
        return etag

    def _open_upload(self, bucket: str, key: str) -> tuple[str, dict[int, tuple[int, str]]]:
        """The newest unfinished upload of ``key`` and its parts, or a new upload."""
        pages = self.client.get_paginator("list_multipart_uploads").paginate(Bucket=bucket,
                                                                             Prefix=key)
        uploads = [u for page in pages for u in page.get("Uploads", ()) if u["Key"] == key]
        if not uploads:
            return self.client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"], {}
        upload_id = max(uploads, key=lambda u: u["Initiated"])["UploadId"]
        pages = self.client.get_paginator("list_parts").paginate(Bucket=bucket, Key=key,
                                                                 UploadId=upload_id)
        return upload_id, {p["PartNumber"]: (p["Size"], p["ETag"].strip('"'))
                           for page in pages for p in page.get("Parts", ())}

    def _upload_part(self, bucket: str, key: str, upload_id: str, path: Path, span: Span, digest) -> str:
        """Send one part, streamed from the file; its ETag."""
        number, offset, length = span
        body = FileSpan(path, offset, length)
        try:
            return self.client.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=body,
                                           ContentMD5=base64.b64encode(digest.digest()).decode())["ETag"]
        finally:
            body.close()

    def delete_prefix(self, bucket: str, prefix: str) -> None:
        """Remove every object under ``prefix`` (used by tests, benchmarks and cleanup)."""
        keys = [{"Key": o.key} for o in self.list(bucket, prefix)]
        with self._errors(bucket):
            for start in range(0, len(keys), 1000):
                self.client.delete_objects(Bucket=bucket,
                                           Delete={"Objects": keys[start:start + 1000]})


def _refusal(exc: bex.ClientError, bucket: str, endpoint: str, key: str | None) -> str:
    """The message for an error answer of the S3 service at ``endpoint``."""
    return refusal(_code(exc), exc.response.get("Error", {}).get("Message", ""), bucket, endpoint, key)


def _code(exc: Exception) -> str:
    """The S3 error code of a ``ClientError`` ("" for other exceptions)."""
    return exc.response.get("Error", {}).get("Code", "") if isinstance(exc, bex.ClientError) else ""


def _reason(exc: Exception) -> str:
    """A few words on why a connection failed, without the request URL."""
    if isinstance(exc, bex.ConnectTimeoutError):
        return "the connection timed out"
    if isinstance(exc, bex.ReadTimeoutError):
        return f"no answer within {READ_TIMEOUT_S} s"
    if isinstance(exc, bex.ConnectionClosedError):
        return "the connection was closed"
    return "connection refused or host unknown"
